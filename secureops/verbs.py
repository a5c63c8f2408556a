"""The verb table and what each verb does. Each takes an app name (checked) and, where
it says so, a spec (checked by checks.py) and derives every path from the layout.

In same-user mode (embedded Opus: the helper runs in-process as the invoking user)
every check runs the same; only what needs root is skipped: creating users and
switching to them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import os
import pwd
import signal
import stat
import subprocess
from collections.abc import Callable
from typing import Any

from secureops import checks, render
from secureops.layout import Denied, Layout

USERADD = "/usr/sbin/useradd"
USERDEL = "/usr/sbin/userdel"
NOLOGIN = "/usr/sbin/nologin"
# What the app owns in its directory, and how open each tree is: releases are read by
# the front's children too (static files), the rest by the app alone.
TREES = {"releases": (0o750, 0o640), "home": (0o700, 0o600), "data": (0o700, 0o600),
         "cache": (0o700, 0o600), "run": (0o700, 0o600)}
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclasses.dataclass(frozen=True)
class Request:
    layout: Layout
    app: str
    spec: Any
    same_user: bool


@dataclasses.dataclass(frozen=True)
class Verb:
    run: Callable[[Request], int]
    takes_spec: bool = False


def app_user(request: Request) -> pwd.struct_passwd:
    """The app's user, which must exist and have been made by secureops (its home is
    the app's directory)."""
    name = request.layout.user(request.app)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise Denied(f"user {name} does not exist; run user-create {request.app} first") \
            from None
    if entry.pw_dir != str(request.layout.app_dir(request.app)) or entry.pw_uid == 0:
        raise Denied(f"user {name} was not made by secureops for {request.app}")
    return entry


# ---- users ----------------------------------------------------------------------------

def user_create(request: Request) -> int:
    if request.same_user:
        return 0
    name = request.layout.user(request.app)
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run([USERADD, "--system", "--user-group", "--no-create-home",
                        "--home-dir", str(request.layout.app_dir(request.app)),
                        "--shell", NOLOGIN, name], check=True, env={"PATH": SAFE_PATH},
                       stdout=subprocess.DEVNULL)
        return 0
    app_user(request)      # there already: it must be ours
    return 0


def user_delete(request: Request) -> int:
    if request.same_user:
        return 0
    entry = app_user(request)
    subprocess.run([USERDEL, entry.pw_name], check=True, env={"PATH": SAFE_PATH},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return 0


# ---- files ----------------------------------------------------------------------------

def hand_over(request: Request) -> int:
    """Give the app's trees to its user (releases also readable by the front's group),
    dirs and files at their modes, never following a symlink: each directory is opened
    by descriptor, relative to its parent's, with O_NOFOLLOW."""
    if request.same_user:
        uid, app_gid, front_gid = os.getuid(), os.getgid(), os.getgid()
    else:
        entry = app_user(request)
        uid, app_gid = entry.pw_uid, entry.pw_gid
        try:
            front_gid = grp.getgrnam(request.layout.front_group).gr_gid
        except KeyError:
            raise Denied(f"group {request.layout.front_group} does not exist") from None
    apps = os.open(request.layout.apps, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        top = _open_dir(apps, request.app)
    finally:
        os.close(apps)
    try:
        for tree, (dir_mode, file_mode) in TREES.items():
            try:
                fd = _open_dir(top, tree)
            except FileNotFoundError:
                continue
            gid = front_gid if tree == "releases" else app_gid
            _walk(fd, uid, gid, dir_mode, file_mode, request.same_user)
    finally:
        os.close(top)
    return 0


def _open_dir(parent_fd: int, name: str) -> int:
    """`name` in `parent_fd`, opened as a directory; a symlink in its place is refused."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise Denied(f"{name} is not a plain directory (a symlink?); refused") from None
        raise


def _walk(fd: int, uid: int, gid: int, dir_mode: int, file_mode: int, same_user: bool) -> None:
    try:
        _own(fd, uid, gid, dir_mode, same_user)
        for entry in os.scandir(fd):
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                if not same_user:
                    os.chown(entry.name, uid, gid, dir_fd=fd, follow_symlinks=False)
            elif stat.S_ISDIR(info.st_mode):
                try:
                    child = _open_dir(fd, entry.name)
                except (Denied, FileNotFoundError):
                    continue     # swapped for a symlink, or gone, since it was listed
                _walk(child, uid, gid, dir_mode, file_mode, same_user)
            elif stat.S_ISREG(info.st_mode):
                try:
                    child = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                                    dir_fd=fd)
                except OSError:
                    continue     # swapped or gone
                try:
                    if stat.S_ISREG(os.fstat(child).st_mode):
                        executable = os.fstat(child).st_mode & 0o111
                        _own(child, uid, gid, dir_mode if executable else file_mode,
                             same_user)
                finally:
                    os.close(child)
    finally:
        os.close(fd)


def _own(fd: int, uid: int, gid: int, mode: int, same_user: bool) -> None:
    if not same_user:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


# ---- supervisor programs --------------------------------------------------------------

def _conf(request: Request) -> str:
    return f"app-{request.app}.conf"


def programs_install(request: Request) -> int:
    specs = checks.programs(request.layout, request.app, request.spec)
    if not request.same_user:
        app_user(request)
    text = render.programs(request.layout, request.app, specs)
    _replace(request.layout, _conf(request), text)
    return 0


def programs_remove(request: Request) -> int:
    conf_d = os.open(request.layout.conf_d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.unlink(_conf(request), dir_fd=conf_d)
    except FileNotFoundError:
        pass
    finally:
        os.close(conf_d)
    return 0


def _replace(layout: Layout, name: str, text: str) -> None:
    """Write conf.d/`name` whole or not at all: a temporary file of this process's own,
    created fresh (never through a planted link), then renamed over the old one."""
    conf_d = os.open(layout.conf_d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    temporary = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                     dir_fd=conf_d)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.rename(temporary, name, src_dir_fd=conf_d, dst_dir_fd=conf_d)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=conf_d)
        raise
    finally:
        os.close(conf_d)


# ---- running a step as the app's user -------------------------------------------------

def run(request: Request) -> int:
    """Run the spec's command as the app's user (supplementary groups dropped), in its
    directory, with exactly the spec's environment (PATH made safe if missing). Its
    output goes where secureops's own goes; its exit status is secureops's.

    The step gets a process group of its own. When secureops is told to stop (SIGTERM,
    SIGINT or SIGHUP: sudo relays these from Opus, which may not signal the app's user
    itself), the whole group is killed, so nothing the step started outlives it."""
    spec = checks.run(request.layout, request.app, request.spec)
    env = {"PATH": SAFE_PATH, **spec.env}
    identity: dict[str, Any] = {}
    if not request.same_user:
        entry = app_user(request)
        identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        env["HOME"] = env.get("HOME", entry.pw_dir)
    child = subprocess.Popen(spec.argv, cwd=str(spec.cwd), env=env, stdin=subprocess.DEVNULL,
                             start_new_session=True, **identity)

    def stop(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)

    previous = {sig: signal.signal(sig, stop)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)      # what it left behind, too
    return status if status >= 0 else 128 - status


TABLE: dict[str, Verb] = {
    "user-create": Verb(user_create),
    "user-delete": Verb(user_delete),
    "hand-over": Verb(hand_over),
    "programs-install": Verb(programs_install, takes_spec=True),
    "programs-remove": Verb(programs_remove),
    "run": Verb(run, takes_spec=True),
}
