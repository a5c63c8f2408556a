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
from pathlib import Path, PurePosixPath
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
MAX_DEPTH = 256
MAX_USER_NAME = 32          # useradd's limit


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
    if len(name) > MAX_USER_NAME:
        raise Denied(f"{name} is longer than a Unix user name may be ({MAX_USER_NAME}); "
                     f"app names of at most {MAX_USER_NAME - len(name) + len(request.app)} "
                     "characters get users of their own")
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
    """Remove the app's user once nothing of the app is left: no directory (its files
    would pass to the next user given the same uid), no supervisor programs, no process."""
    if request.same_user:
        return 0
    entry = app_user(request)
    if os.path.lexists(request.layout.app_dir(request.app)):
        raise Denied(f"{request.app}'s directory still exists; remove it first")
    if os.path.lexists(request.layout.conf_d / _conf_name(request.app)):
        raise Denied(f"{request.app} still has supervisor programs; programs-remove first")
    if _processes_of(entry.pw_uid):
        raise Denied(f"{entry.pw_name} still runs processes; stop them first")
    subprocess.run([USERDEL, entry.pw_name], check=True, env={"PATH": SAFE_PATH},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return 0


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# ---- files ----------------------------------------------------------------------------

def hand_over(request: Request) -> int:
    """Give the app's trees to its user (releases also readable by the front's group),
    dirs and files at their modes, never following a symlink: each directory is opened
    by descriptor, relative to its parent's, with O_NOFOLLOW."""
    if request.same_user:
        uid, app_gid, front_gid = os.getuid(), os.getgid(), os.getgid()
    else:
        _require_protected_hardlinks()
        entry = app_user(request)
        uid, app_gid = entry.pw_uid, entry.pw_gid
        try:
            front_gid = grp.getgrnam(request.layout.front_group).gr_gid
        except KeyError:
            raise Denied(f"group {request.layout.front_group} does not exist") from None
    top = open_app_dir(request.layout, request.app)
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


def _require_protected_hardlinks() -> None:
    """fchown goes through hard links: only with the kernel's protection (no hard link
    to a file one does not own) can a link in an app's tree be trusted to be the app's."""
    try:
        on = Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "1"
    except OSError:
        on = False
    if not on:
        raise Denied("fs.protected_hardlinks is off; turn it on (sysctl -w "
                     "fs.protected_hardlinks=1) before handing trees over")


def open_app_dir(layout: Layout, app: str) -> int:
    """The app's directory, opened without following a symlink at either step."""
    apps = os.open(layout.apps, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return _open_dir(apps, app)
    finally:
        os.close(apps)


def _open_dir(parent_fd: int, name: str) -> int:
    """`name` in `parent_fd`, opened as a directory; a symlink in its place is refused."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            raise Denied(f"{name} is not a plain directory (a symlink?); refused") from None
        raise


def _walk(top: int, uid: int, gid: int, dir_mode: int, file_mode: int,
          same_user: bool) -> None:
    """Own and chmod everything below `top` (which this closes), depth first without
    recursion; deeper than MAX_DEPTH is refused (after what came before is done)."""
    pending = [(top, 0)]
    try:
        while pending:
            fd, depth = pending.pop()
            try:
                _own(fd, uid, gid, dir_mode, same_user)
                for entry in os.scandir(fd):
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISLNK(info.st_mode):
                        if not same_user:
                            os.chown(entry.name, uid, gid, dir_fd=fd, follow_symlinks=False)
                    elif stat.S_ISDIR(info.st_mode):
                        if depth + 1 > MAX_DEPTH:
                            raise Denied(f"the tree is deeper than {MAX_DEPTH} directories")
                        try:
                            pending.append((_open_dir(fd, entry.name), depth + 1))
                        except (Denied, FileNotFoundError):
                            continue     # swapped for a symlink, or gone, since listed
                    elif stat.S_ISREG(info.st_mode):
                        _own_file(fd, entry.name, uid, gid, dir_mode, file_mode, same_user)
            finally:
                os.close(fd)
    finally:
        for fd, _depth in pending:
            os.close(fd)


def _own_file(dir_fd: int, name: str, uid: int, gid: int, dir_mode: int, file_mode: int,
              same_user: bool) -> None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return       # swapped or gone
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            _own(fd, uid, gid, dir_mode if info.st_mode & 0o111 else file_mode, same_user)
    finally:
        os.close(fd)


def _own(fd: int, uid: int, gid: int, mode: int, same_user: bool) -> None:
    if not same_user:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


# ---- supervisor programs --------------------------------------------------------------

def _conf_name(app: str) -> str:
    return f"app-{app}.conf"


def programs_install(request: Request) -> int:
    specs = checks.programs(request.layout, request.app, request.spec)
    text = render.programs(request.layout, request.app, specs, same_user=request.same_user)
    if not request.same_user:
        app_user(request)
        # supervisord (root) reads conf.d and opens the logs, following links: both
        # must be root's alone.
        _trusted_dir(request.layout, request.layout.conf_d)
        _log_dir(request.layout, request.app)
    _replace(request.layout, _conf_name(request.app), text)
    return 0


def _trusted_dir(layout: Layout, path: Path) -> None:
    """`path` and each directory up to the filesystem's root: a real directory, owned
    by root, writable by no one else (so nobody can plant a file or a link in it)."""
    for directory in [path, *path.parents]:
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or \
                (info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and
                 not info.st_mode & stat.S_ISVTX):
            raise Denied(f"{directory} must be a directory owned by root and writable by "
                         "root alone")


def _log_dir(layout: Layout, app: str) -> None:
    """logs/<app>, made here if missing, root's alone (0755: Opus reads the logs)."""
    _trusted_dir(layout, layout.logs)
    logs = os.open(layout.logs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(app, 0o755, dir_fd=logs)
        fd = _open_dir(logs, app)
    finally:
        os.close(logs)
    try:
        info = os.fstat(fd)
        if info.st_uid != 0:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


def programs_remove(request: Request) -> int:
    conf_d = os.open(request.layout.conf_d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.unlink(_conf_name(request.app), dir_fd=conf_d)
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

    The directory is opened a component at a time from the app's own, never through a
    symlink, and the step starts in that very directory (root changes into it before
    switching users: a path could lead it anywhere). The step gets a process group of
    its own. When secureops is told to stop (SIGTERM, SIGINT or SIGHUP: sudo relays these
    from Opus, which may not signal the app's user itself), the whole group is killed,
    so nothing the step started outlives it."""
    spec = checks.run(request.layout, request.app, request.spec)
    env = {"PATH": SAFE_PATH, **spec.env}
    identity: dict[str, Any] = {}
    if not request.same_user:
        entry = app_user(request)
        identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        env["HOME"] = env.get("HOME", entry.pw_dir)
    cwd = _open_below(request.layout, request.app, spec.cwd)
    group: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group[0], signal.SIGKILL)
        else:
            raise SystemExit(128 + signum)     # before the step started: nothing to kill

    previous = {sig: signal.signal(sig, stop)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        child = subprocess.Popen(spec.argv, cwd=f"/proc/self/fd/{cwd}", pass_fds=(cwd,),
                                 env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                 **identity)
        group.append(child.pid)
        # Wait without reaping, so the pid (and so the group id) cannot be reused before
        # what the step left behind is killed.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(cwd)
    return status if status >= 0 else 128 - status


def _open_below(layout: Layout, app: str, path: PurePosixPath) -> int:
    """`path` (checked to lie lexically inside the app's directory) opened as a
    directory one component at a time with O_NOFOLLOW."""
    fd = open_app_dir(layout, app)
    try:
        for part in path.relative_to(PurePosixPath(layout.app_dir(app))).parts:
            child = _open_dir(fd, part)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


TABLE: dict[str, Verb] = {
    "user-create": Verb(user_create),
    "user-delete": Verb(user_delete),
    "hand-over": Verb(hand_over),
    "programs-install": Verb(programs_install, takes_spec=True),
    "programs-remove": Verb(programs_remove),
    "run": Verb(run, takes_spec=True),
}
