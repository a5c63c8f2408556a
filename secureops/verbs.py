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
import fcntl
import grp
import os
import pwd
import select
import signal
import stat
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from secureops import certs, checks, firewall, front, render
from secureops import redis as redis_conf
from secureops.layout import Denied, Layout

USERADD = "/usr/sbin/useradd"
USERDEL = "/usr/sbin/userdel"
NOLOGIN = "/usr/sbin/nologin"
# What the app owns in its directory, and how open each tree is: releases are read by
# Opus (its group), run/ (process states) too, the rest by the app alone; the front
# reads none of it (it serves a copy of the static files: static.py). env/ (each
# release's config) stays Opus's: its files only take the app's group, to be read.
# Opus keeps the top of releases/, env/ and build-env/ (it adds and removes entries
# there); the app gets what is inside. A release's directories are set-group-ID, so
# what the build adds is Opus's group's to read too.
TREES = {"releases": (0o2750, 0o640), "env": (0o750, 0o640), "build-env": (0o700, 0o600),
         "home": (0o700, 0o600), "data": (0o700, 0o600), "cache": (0o700, 0o600),
         "run": (0o770, 0o640), "tmp": (0o700, 0o600)}
KEEP_TOP = frozenset({"releases", "env", "build-env"})
# build-env/ is listed by the build (one file per variable): its top keeps Opus as owner
# but takes the app's group, and no one else may list it.
LISTED_BY_APP = "build-env"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_DEPTH = 256
MAX_USER_NAME = 32          # useradd's limit
# The apps' uids: above ordinary users and the usual subordinate-id ranges of containers.
FIRST_UID, LAST_UID = 300_000, 399_999


@dataclasses.dataclass(frozen=True)
class Request:
    layout: Layout
    app: str
    spec: Any
    same_user: bool
    # What the verb tells the caller once done (a file it skipped, say): standard error.
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Verb:
    run: Callable[[Request], int]
    takes_spec: bool = False
    takes_app: bool = True
    # The spec is the first line of standard input; the rest is the step's (keystrokes).
    spec_line: bool = False


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


def shared_user(layout: Layout) -> pwd.struct_passwd | None:
    """Same-user mode: the one user every app runs as, when it is not the caller."""
    if not layout.shared_user:
        return None
    try:
        entry = pwd.getpwnam(layout.shared_user)
    except KeyError:
        raise Denied(f"user {layout.shared_user} does not exist") from None
    if entry.pw_uid == 0:
        raise Denied("apps never run as root")
    return None if entry.pw_uid == os.geteuid() else entry


def _group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise Denied(f"group {name} does not exist") from None


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
        with _next_uid(request.layout) as uid:
            subprocess.run([USERADD, "--system", "--user-group", "--no-create-home",
                            "--uid", str(uid),
                            "--home-dir", str(request.layout.app_dir(request.app)),
                            "--shell", NOLOGIN, name], check=True, env={"PATH": SAFE_PATH},
                           stdout=subprocess.DEVNULL)
        return 0
    app_user(request)      # there already: it must be ours
    return 0


@contextlib.contextmanager
def _next_uid(layout: Layout) -> Iterator[int]:
    """A uid no user has had from secureops before: a counter root keeps beside the log
    (locked, so two requests at once never get the same). A deleted app's uid is never
    given out again: a file it left (in /var/tmp, say) must not pass to another app."""
    _trusted_dir(layout.log.parent)
    fd = os.open(layout.log.with_name("secureops.uids"),
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0:
            raise Denied("the uid counter is not a regular file of root's")
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        uid = max(int(text) if text.isdigit() else 0, FIRST_UID)
        while _uid_taken(uid):
            uid += 1
        if uid > LAST_UID:
            raise Denied("no uid is left for a new app's user")
        yield uid
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{uid + 1}\n".encode(), 0)
    finally:
        os.close(fd)


def _uid_taken(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        try:
            grp.getgrgid(uid)
        except KeyError:
            return False
    return True


def user_delete(request: Request) -> int:
    """Remove the app's user once nothing of the app is left: no directory (its files
    would pass to the next user given the same uid), no supervisor programs, no process."""
    if request.same_user:
        return 0
    try:
        pwd.getpwnam(request.layout.user(request.app))
    except KeyError:
        return 0           # gone already (a destroy that was cut off, run again)
    entry = app_user(request)
    if os.path.lexists(request.layout.app_dir(request.app)):
        raise Denied(f"{request.app}'s directory still exists; remove it first")
    if os.path.lexists(request.layout.conf_d / _conf_name(request.app)) or \
            os.path.lexists(request.layout.conf_d / redis_conf.conf_name(request.app)):
        raise Denied(f"{request.app} still has supervisor programs; programs-remove first")
    # Its programs are stopped; what is left (a process that left its group) goes too.
    deadline = time.monotonic() + 5
    while (left := _processes_of(entry.pw_uid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if _processes_of(entry.pw_uid):
        raise Denied(f"{entry.pw_name} still runs processes that would not stop")
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
    """Give the app's trees to its user (releases readable by Opus's group, run/
    writable by it), dirs and files at their modes, never following a symlink: each
    directory is opened by descriptor, relative to its parent's, with O_NOFOLLOW. What
    the app's user owns already is left as it is (only its user can have put anything
    inside it), which keeps a hand-over after each push short."""
    layout = request.layout
    if request.same_user:
        shared = shared_user(layout)
        if shared is not None and os.geteuid() != 0:
            raise Denied(f"only root can hand trees to {shared.pw_name}")
        uid, app_gid = (shared.pw_uid, shared.pw_gid) if shared else (os.geteuid(),
                                                                        os.getegid())
        front_gid = opus_gid = app_gid
        chown = shared is not None
    else:
        entry = app_user(request)
        uid, app_gid = entry.pw_uid, entry.pw_gid
        front_gid, opus_gid = _group(layout.front_group), _group(layout.opus_group)
        chown = True
    if chown:
        _require_protected_hardlinks()
    top = open_app_dir(layout, request.app)
    try:
        for tree, (dir_mode, file_mode) in TREES.items():
            try:
                fd = _open_dir(top, tree)
            except FileNotFoundError:
                continue
            gid = opus_gid if tree in ("releases", "run") else app_gid
            # The release's config stays Opus's (the app may read it, not grow it).
            owner = Owner(-1 if tree == "env" else uid, gid, dir_mode, file_mode, chown)
            if not chown:      # all the caller's already: the tops' modes are enough
                if tree not in KEEP_TOP:
                    _own(fd, owner, dir_mode)
                os.close(fd)
            elif tree in KEEP_TOP:
                if tree == LISTED_BY_APP:
                    os.fchown(fd, -1, app_gid)
                    os.fchmod(fd, 0o750)
                elif tree == "releases" and front_gid != opus_gid:
                    _regroup(fd, uid, front_gid, opus_gid)
                _walk_children(fd, owner)
            else:
                _walk(fd, owner)
    finally:
        os.close(top)
    return 0


def _regroup(releases: int, uid: int, old_gid: int, new_gid: int) -> None:
    """Each release the app's user owns that an earlier Opus gave the front's group
    (to serve static files from it): Opus's group instead, so the front reads none of
    the app's sources. The release itself only (its files are unreachable below it);
    releases/ is Opus's, so the name cannot be swapped under this."""
    for entry in os.scandir(releases):
        try:
            fd = _open_dir(releases, entry.name)
        except (Denied, FileNotFoundError):
            continue
        try:
            info = os.fstat(fd)
            if info.st_uid == uid and info.st_gid == old_gid:
                os.fchown(fd, -1, new_gid)
        finally:
            os.close(fd)


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who is to own a tree's entries, and at which modes."""

    uid: int             # -1: the owner stays as it is (only the group is given)
    gid: int
    dir_mode: int
    file_mode: int
    chown: bool          # False in same-user mode: modes only

    def has(self, info: os.stat_result) -> bool:
        """Already the app's (when handing over to another user)."""
        return self.chown and info.st_uid == self.uid


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


def _walk_children(top: int, owner: Owner) -> None:
    """Hand over what is inside `top` (which this closes), not `top` itself."""
    try:
        steady = not _changeable(os.fstat(top), owner)
        for entry in os.scandir(top):
            fd = _take(top, entry, owner, steady)
            if fd is not None:
                _walk(fd, owner, 1)
    finally:
        os.close(top)


def _walk(top: int, owner: Owner, depth: int = 0) -> None:
    """Own and chmod `top` (which this closes) and everything below it, depth first
    without recursion; deeper than MAX_DEPTH is refused (after what came before).

    A directory is handed over after everything in it: while its entries are owned, it
    is not the app's yet, so the app cannot swap one of them (a hard link in place of a
    symlink about to be chowned by name) under the walk."""
    pending = [(top, depth, False)]
    try:
        while pending:
            fd, level, listed = pending.pop()
            if listed:
                try:
                    _own(fd, owner, owner.dir_mode)
                finally:
                    os.close(fd)
                continue
            pending.append((fd, level, True))
            steady = not _changeable(os.fstat(fd), owner)
            for entry in os.scandir(fd):
                if level + 1 > MAX_DEPTH and entry.is_dir(follow_symlinks=False):
                    raise Denied(f"the tree is deeper than {MAX_DEPTH} directories")
                child = _take(fd, entry, owner, steady)
                if child is not None:
                    pending.append((child, level + 1, False))
    finally:
        for fd, _level, _listed in pending:
            os.close(fd)


def _changeable(info: os.stat_result, owner: Owner) -> bool:
    """Whether the app's user (or anyone but its owner) can change this directory's
    entries: the app's own already (a tree's top it was given before), or writable by
    a group or by others."""
    return owner.has(info) or bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _take(dir_fd: int, entry: os.DirEntry[str], owner: Owner, steady: bool) -> int | None:
    """One entry of a directory being handed over: a file is owned through a descriptor
    opened without following a link; a symlink is owned by name (lchown), only in a
    `steady` directory (one the app cannot change yet: in any other, the name could be
    a hard link by the time it is chowned); a directory comes back opened, for the
    caller to walk. What the app's user owns already is left alone."""
    info = entry.stat(follow_symlinks=False)
    if owner.has(info):
        return None
    if stat.S_ISLNK(info.st_mode):
        if owner.chown and steady:
            os.chown(entry.name, owner.uid, owner.gid, dir_fd=dir_fd, follow_symlinks=False)
    elif stat.S_ISDIR(info.st_mode):
        try:
            return _open_dir(dir_fd, entry.name)
        except (Denied, FileNotFoundError):
            return None     # swapped for a symlink, or gone, since listed
    elif stat.S_ISREG(info.st_mode):
        _own_file(dir_fd, entry.name, owner)
    return None


def _own_file(dir_fd: int, name: str, owner: Owner) -> None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return       # swapped or gone
    try:
        info = os.fstat(fd)
        # A hard link may be to a file the caller could write but does not own (the
        # kernel's protection allows that): such a file is never given away.
        if stat.S_ISREG(info.st_mode) and not (owner.chown and info.st_nlink > 1):
            executable = info.st_mode & 0o111
            _own(fd, owner, owner.dir_mode & 0o777 if executable else owner.file_mode)
    finally:
        os.close(fd)


def _own(fd: int, owner: Owner, mode: int) -> None:
    if owner.chown:
        os.fchown(fd, owner.uid, owner.gid)
    os.fchmod(fd, mode)


# ---- supervisor programs --------------------------------------------------------------

def _conf_name(app: str) -> str:
    return f"app-{app}.conf"


def programs_install(request: Request) -> int:
    layout = request.layout
    specs = checks.programs(layout, request.app, request.spec)
    if request.same_user:
        shared = shared_user(layout)
        user = shared.pw_name if shared else None
    else:
        user = layout.user(request.app)
    text = render.programs(layout, request.app, specs, user=user)
    if not request.same_user:
        app_user(request)
        # supervisord (root) reads conf.d and opens the logs, following links: both
        # must be root's alone.
        _trusted_dir(layout.conf_d)
        # logs/<app>: root's, readable by Opus's group only (no app reads another's).
        _root_dir(layout, layout.logs, request.app, 0o750)
    else:
        (layout.logs / request.app).mkdir(parents=True, exist_ok=True)
    # 0600: supervisord (root) reads it; no app reads another's commands and paths.
    _replace(layout.conf_d, _conf_name(request.app), text, 0o600)
    return 0


def _trusted_dir(path: Path) -> None:
    """`path` and each directory up to the filesystem's root: a real directory, owned
    by root, writable by no one else (so nobody can plant a file or a link in it)."""
    for directory in [path, *path.parents]:
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or \
                (info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and
                 not info.st_mode & stat.S_ISVTX):
            raise Denied(f"{directory} must be a directory owned by root and writable by "
                         "root alone")


def _root_dir(layout: Layout, parent: Path, name: str, mode: int) -> None:
    """parent/`name`, made here if missing, root's (group: Opus's, which reads the logs)
    and at `mode`; `parent` must be root's alone."""
    _trusted_dir(parent)
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=parent_fd)
        fd = _open_dir(parent_fd, name)
    finally:
        os.close(parent_fd)
    try:
        os.fchown(fd, 0, _group(layout.opus_group))
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def programs_remove(request: Request) -> int:
    _unlink(request.layout.conf_d, _conf_name(request.app))
    return 0


def _unlink(directory: Path, name: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


# ---- an app's Redis -------------------------------------------------------------------

def redis_install(request: Request) -> int:
    """Make the app's Redis directory (run/redis, 0700) and config (0600), both its
    user's, and its supervisor program (conf.d/redis-<app>.conf, root's), all rendered
    here from the spec's typed values. Notes "changed" when the config is new or
    differs (the server must restart to take it)."""
    layout = request.layout
    spec = redis_conf.check(request.spec)
    text = redis_conf.render_conf(layout, request.app, spec)
    if request.same_user:
        shared = shared_user(layout)
        ids = (shared.pw_uid, shared.pw_gid) if shared else None
        user = shared.pw_name if shared else None
    else:
        entry = app_user(request)
        ids, user = (entry.pw_uid, entry.pw_gid), entry.pw_name
        _trusted_dir(layout.conf_d)
        _root_dir(layout, layout.logs, request.app, 0o750)
    if request.same_user:
        (layout.logs / request.app).mkdir(parents=True, exist_ok=True)
    directory = _redis_dir(layout, request.app, ids)
    try:
        if _read_small(directory, redis_conf.CONF) != text.encode():
            _write_owned(directory, redis_conf.CONF, text, ids)
            request.notes.append("changed")
    finally:
        os.close(directory)
    guard = next((g for g in GUARDS if g.is_file()), None)
    if guard is None:
        raise Denied("the process-tree guard is missing from secureops's installation; run "
                     "`opus install --system` again")
    program = redis_conf.render_program(layout, request.app, user=user, guard=guard,
                                        guard_python=GUARD_PYTHON, marker=str(layout.home))
    _replace(layout.conf_d, redis_conf.conf_name(request.app), program, 0o600)
    return 0


def _redis_dir(layout: Layout, app: str, ids: tuple[int, int] | None) -> int:
    """apps/<app>/run/redis opened (made if missing), never through a symlink, owned by
    the app's user (`ids`; None: the caller) at 0700."""
    top = open_app_dir(layout, app)
    try:
        run_fd = _open_dir(top, "run")
    finally:
        os.close(top)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir("redis", 0o700, dir_fd=run_fd)
        fd = _open_dir(run_fd, "redis")
    finally:
        os.close(run_fd)
    try:
        info = os.fstat(fd)
        if ids is not None and info.st_uid not in (0, ids[0], os.geteuid()):
            raise Denied("run/redis belongs to someone else; refused")
        if ids is not None:
            os.fchown(fd, *ids)
        os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_small(dir_fd: int, name: str) -> bytes | None:
    """A regular file's first 64 KiB, opened without following a link; None if it is
    missing or anything but a regular file."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _write_owned(dir_fd: int, name: str, text: str, ids: tuple[int, int] | None) -> None:
    """`name` in the directory `dir_fd` replaced whole by a new file (0600, owned by
    `ids`), made fresh with O_EXCL|O_NOFOLLOW and renamed over the old name."""
    temporary = f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=dir_fd)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                 dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w") as out:
            if ids is not None:
                os.fchown(out.fileno(), *ids)
            os.fchmod(out.fileno(), 0o600)
            out.write(text)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def redis_remove(request: Request) -> int:
    """{"data": false}: remove the app's Redis program (Opus stops it next); {"data":
    true}: its directory and data too (once it is stopped)."""
    body = checks._exactly(request.spec, {"data"}, set(), "the spec")
    if not isinstance(body["data"], bool):
        raise Denied("data must be true or false")
    _unlink(request.layout.conf_d, redis_conf.conf_name(request.app))
    if body["data"]:
        try:
            top = open_app_dir(request.layout, request.app)
        except FileNotFoundError:
            return 0
        try:
            run_fd = _open_dir(top, "run")
        except FileNotFoundError:
            return 0
        finally:
            os.close(top)
        try:
            _remove(run_fd, "redis")
        finally:
            os.close(run_fd)
    return 0


# ---- removing what an app leaves ------------------------------------------------------

def release_remove(request: Request) -> int:
    """Remove one release's slug and env file (a pruned or failed build)."""
    version = checks.release(request.spec)
    top = open_app_dir(request.layout, request.app)
    try:
        for tree, name in (("releases", f"v{version}"), ("env", f"v{version}.json")):
            try:
                parent = _open_dir(top, tree)
            except FileNotFoundError:
                continue
            try:
                _remove(parent, name)
            finally:
                os.close(parent)
    finally:
        os.close(top)
    _remove_in(request.layout.static / request.app, f"v{version}")   # the front's copy
    return 0


def _remove_in(directory: Path, name: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        _remove(fd, name)
    finally:
        os.close(fd)


def app_remove(request: Request) -> int:
    """Remove everything of the app's but its user: its directory, its logs, its
    supervisor programs (stopped by Opus first)."""
    layout = request.layout
    _unlink(layout.conf_d, _conf_name(request.app))
    _unlink(layout.conf_d, redis_conf.conf_name(request.app))
    for parent, name in ((layout.logs, request.app), (layout.apps, request.app),
                         (layout.front / "certs", request.app), (layout.static, request.app)):
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        try:
            _remove(fd, name)
        finally:
            os.close(fd)
    return 0


OPEN_DIRS = 32    # directories _remove holds open at once, however deep the tree


@dataclasses.dataclass
class _Level:
    """A directory being emptied: its fd (-1 while closed to save fds), its name in
    its parent, its identity (to know it again by "..") and what is left to remove."""

    fd: int
    name: str
    ident: tuple[int, int]
    left: list[str]


def _open_subdir(parent_fd: int, name: str) -> int | None:
    """`name` in `parent_fd` opened as a directory, never through a symlink and never
    opening anything else (O_DIRECTORY|O_NOFOLLOW|O_NONBLOCK: a FIFO or a device swapped
    in is refused, not opened); None when it is not (or no longer) a directory."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK,
                       dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
            return None
        raise


def _ident(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _listing(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries]


def _remove(parent_fd: int, name: str) -> None:
    """Remove `name` in `parent_fd`, whatever it is and however deep, never following a
    symlink: depth first without recursion, each directory reached from its parent's fd
    (openat/unlinkat), at most OPEN_DIRS fds held; a directory whose fd was closed is
    reopened by ".." from its child and must be the same (device, inode), or the tree
    was moved meanwhile and the removal stops there."""
    while True:
        if _unlink_entry(parent_fd, name):
            return
        fd = _open_subdir(parent_fd, name)
        if fd is not None:
            break                # (else replaced meanwhile by a non-directory)
    stack = [_Level(fd, name, _ident(fd), _listing(fd))]
    try:
        while stack:
            level = stack[-1]
            if level.left:
                child = level.left.pop()
                if _unlink_entry(level.fd, child):
                    continue
                fd = _open_subdir(level.fd, child)
                if fd is None:
                    level.left.append(child)          # a non-directory now: unlink it
                    continue
                stack.append(_Level(fd, child, _ident(fd), _listing(fd)))
                _close_far(stack)
                continue
            if _listing(level.fd):                    # filled again meanwhile
                level.left = _listing(level.fd)
                continue
            stack.pop()
            above = parent_fd if not stack else _reopened(stack[-1], level.fd)
            os.close(level.fd)
            level.fd = -1
            os.rmdir(level.name, dir_fd=above)
    finally:
        for level in stack:
            if level.fd >= 0:
                os.close(level.fd)


def _unlink_entry(dir_fd: int, name: str) -> bool:
    """Unlink `name` unless it is a directory (True: gone)."""
    try:
        info = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    if stat.S_ISDIR(info.st_mode):
        return False
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        return False
    return True


def _close_far(stack: list[_Level]) -> None:
    """Keep the fds of the deepest OPEN_DIRS levels only (the first level's is kept too:
    it is closed last, by _remove)."""
    if len(stack) > OPEN_DIRS + 1:
        far = stack[-OPEN_DIRS - 1]
        if far.fd >= 0:
            os.close(far.fd)
            far.fd = -1


def _reopened(level: _Level, child_fd: int) -> int:
    """`level`'s fd, reopened by ".." from its child's if it was closed: the same
    directory or a refusal."""
    if level.fd < 0:
        fd = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=child_fd)
        if _ident(fd) != level.ident:
            os.close(fd)
            raise Denied(f"{level.name} was moved while it was being removed; refused")
        level.fd = fd
    return level.fd


# ---- the front ------------------------------------------------------------------------

def front_install(request: Request) -> int:
    """Render the front's whole config from the spec, test it with Apache, and rename
    it into place (never a config that fails its test). Opus reloads the front."""
    layout = request.layout
    spec = front.check(request.spec)
    if request.same_user:
        for path in (layout.front / "run", layout.logs / "front"):
            path.mkdir(parents=True, exist_ok=True)
    else:
        _trusted_dir(layout.front)
        _root_dir(layout, layout.front, "run", 0o755)
        _root_dir(layout, layout.logs, "front", 0o750)
    # Only names the installed certificates cover get https (never a wrong certificate).
    spec = front.with_installed_certs(spec, lambda site: certs.installed_names(layout, site))
    if front.any_tls(spec):
        certs.make_fallback(_certs_dir(request) / certs.FALLBACK_SITE)
    text = front.render(layout, spec, same_user=request.same_user)
    # System mode: the ports' rules, for every app of the spec (each must have its user).
    rules = None if request.same_user or layout.port_rules == "off" else \
        firewall.render(port_guards(layout, spec))
    candidate = _replace(layout.front, f"httpd.conf.{os.getpid()}.new", text, 0o600)
    test = subprocess.run([layout.apache_bin, "-t", "-f", str(layout.front / candidate)],
                          env={"PATH": SAFE_PATH, "LANG": "C"}, capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)
    if test.returncode != 0:
        _unlink(layout.front, candidate)
        raise Denied("the new front config failed Apache's test and was not installed: "
                     + " ".join(test.stderr.split())[:400])
    if rules is not None:
        try:
            firewall.apply(rules)
        except BaseException:
            _unlink(layout.front, candidate)
            raise
    fd = os.open(layout.front, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.rename(candidate, "httpd.conf", src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    return 0


def port_guards(layout: Layout, spec: front.FrontSpec) -> list[firewall.Guard]:
    """Who may connect to, and who may answer from, each loopback port Opus hands out:
    an app's instance ports are its own user's (Opus, the front and root may connect),
    the dashboard's and the waker's the opus user's, the balancer-manager's the front's
    (only Opus and root may connect). Users are looked up here, never taken from the request."""
    opus = _uid(layout.opus_group, "the opus user")
    front_user = _uid(layout.front_user, "the front's user")
    guards = [
        # Its master (root) listens, its children (the front's user) accept.
        firewall.Guard("the balancer-manager", (spec.manager_port, spec.manager_tls_port),
                       frozenset({0, opus}), frozenset({0, front_user})),
        firewall.Guard("the dashboard", (spec.dashboard_port,),
                       frozenset({0, opus, front_user}), frozenset({opus})),
    ]
    if spec.waker_port:
        # The waker (the opus user's) answers the front for sleeping apps: no app may
        # ask it anything, nor answer in its place.
        guards.append(firewall.Guard("the waker", (spec.waker_port,),
                                     frozenset({0, opus, front_user}), frozenset({opus})))
    for site in spec.sites:
        if not site.local_ports():       # its members are on nodes: no loopback port
            continue
        uid = app_user(Request(layout, site.app, None, same_user=False)).pw_uid
        guards.append(firewall.Guard(f"app {site.app}", site.local_ports(),
                                     frozenset({0, opus, front_user, uid}), frozenset({uid})))
    for server in spec.redis:
        # An app's Redis: its own user (and Opus, which starts it and asks it for
        # redis:info) may connect; only the app's user may answer (no other app can bind
        # the port while it is down and read the password a client sends).
        uid = app_user(Request(layout, server.app, None, same_user=False)).pw_uid
        guards.append(firewall.Guard(f"redis of {server.app}", (server.port,),
                                     frozenset({0, opus, uid}), frozenset({uid})))
    return guards


def _uid(name: str, what: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise Denied(f"{what} ({name}) does not exist") from None


def _certs_dir(request: Request) -> Path:
    """<front>/certs: root's alone (0700) in system mode, made here if missing."""
    directory = request.layout.front / "certs"
    if request.same_user:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return directory
    _trusted_dir(request.layout.front)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    _trusted_dir(directory)
    os.chmod(directory, 0o700)
    return directory


def cert_install(request: Request) -> int:
    """Install a site's certificate chain and key (PEM, rewritten here), once OpenSSL
    agrees the key is the leaf's and the leaf is valid now. The front uses it at its next
    render (front-install)."""
    cert = certs.check(request.spec)
    certs.write_pair(_certs_dir(request) / cert.site, cert, time.time())
    return 0


def cert_remove(request: Request) -> int:
    """Remove a site's certificate (its names go back to http at the next render)."""
    body = checks._exactly(request.spec, {"site"}, set(), "the spec")
    site = certs.site_name(body["site"])
    try:
        fd = os.open(request.layout.front / "certs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return 0
    try:
        _remove(fd, site)
    finally:
        os.close(fd)
    return 0


def _replace(directory: Path, name: str, text: str, mode: int) -> str:
    """Write directory/`name` whole or not at all: a temporary file of this process's
    own, created fresh (never through a planted link), then renamed over the old one.
    Returns the name it has."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    temporary = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode,
                     dir_fd=dir_fd)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), mode)
            out.write(text)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise
    finally:
        os.close(dir_fd)
    return name


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
    return _run_step(request, checks.run(request.layout, request.app, request.spec))


def run_input(request: Request) -> int:
    """`run`, the step's standard input being secureops's after the spec's line: what
    must not be in its arguments, which every local user can read (`pg:psql -c` SQL)."""
    return _run_step(request, checks.run(request.layout, request.app, request.spec),
                     keep_input=True)


def run_terminal(request: Request) -> int:
    """`run` on a pseudo-terminal (`opus run` from `ssh -t`): root opens the terminal,
    gives its end to the app's user, makes it the step's controlling terminal, and
    relays secureops's standard input (what follows the spec's line: keystrokes) to it
    and its output to secureops's standard output."""
    return _run_step(request, checks.run(request.layout, request.app, request.spec,
                                         terminal=True))


def _run_step(request: Request, spec: checks.RunSpec, *, keep_input: bool = False) -> int:
    env = {"PATH": SAFE_PATH, **spec.env}
    identity: dict[str, Any] = {}
    entry = shared_user(request.layout) if request.same_user else app_user(request)
    if entry is not None:
        identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        env["HOME"] = env.get("HOME", entry.pw_dir)
    cwd = _open_below(request.layout, request.app, spec.cwd)
    terminal = _open_terminal(spec.terminal, entry) if spec.terminal else None
    group: list[int] = []
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        # Never raises: a signal in the middle of starting the step must not leave it
        # running without us. Once the step's group is known, it is killed.
        stopping.append(signum)
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group[0], signal.SIGKILL)

    previous = {sig: signal.signal(sig, stop)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        if stopping:
            return 128 + stopping[0]      # told to stop before the step started
        # umask 027: what the step makes, its group may read (Opus, the front), no
        # one else.
        guard = _guard_fd()
        stdio: dict[str, Any] = {"stdin": 0 if keep_input else subprocess.DEVNULL}
        if terminal is not None:
            stdio = {"stdin": terminal[1], "stdout": terminal[1], "stderr": terminal[1],
                     "preexec_fn": _take_terminal}
        try:
            child = subprocess.Popen(
                [GUARD_PYTHON, "-I", f"/proc/self/fd/{guard}",
                 *(["--terminal"] if terminal else []), "--", *spec.argv],
                cwd=f"/proc/self/fd/{cwd}", pass_fds=(cwd, guard), env=env,
                start_new_session=True, umask=0o027, **stdio, **identity)
        finally:
            os.close(guard)
            if terminal is not None:
                os.close(terminal[1])
        group.append(child.pid)
        if stopping:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        if terminal is not None:
            _relay(terminal[0], child.pid)
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
        if terminal is not None:
            os.close(terminal[0])
    return status if status >= 0 else 128 - status


def _open_terminal(size: tuple[int, int],
                   entry: pwd.struct_passwd | None) -> tuple[int, int]:
    """(controller, the step's end) of a new pseudo-terminal of `size` (rows, columns),
    its end the app user's as a login's is."""
    controller, end = os.openpty()
    fcntl.ioctl(end, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    if entry is not None:
        os.fchown(end, entry.pw_uid, -1)
    return controller, end


def _take_terminal() -> None:
    """In the step (a session leader already): its standard input becomes its
    controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _relay(controller: int, pid: int) -> None:
    """Keystrokes from secureops's standard input to the terminal, the terminal's output
    to secureops's standard output, until the step and all that hold the terminal have
    gone (or the step has exited and nothing more comes)."""
    inputs = [0, controller]
    while True:
        ready, _, _ = select.select(inputs, [], [], 0.2)
        if 0 in ready:
            data = os.read(0, 65536)
            if data:
                with contextlib.suppress(OSError):
                    os.write(controller, data)
            else:
                inputs.remove(0)            # the client closed its input
        if controller in ready:
            try:
                data = os.read(controller, 65536)
            except OSError:                 # EIO: every holder of the terminal is gone
                data = b""
            if not data:
                return
            os.write(1, data)
        elif not ready and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG |
                                     os.WNOWAIT) is not None:
            return


# The process-tree guard (opus_runtime/guard.py) a step runs under, as the app's user:
# if secureops itself is killed, the guard ends the step's whole tree. Root reads it
# from where root trusts it (`opus install` puts a copy beside this package; in a
# checkout it is the buildpack's own) and hands it over in a memory file, so the app's
# user needs no access to either place.
_ROOT = Path(__file__).resolve().parent.parent
GUARDS = (_ROOT / "opus_guard.py",
          _ROOT / "buildpacks" / "python" / "lib" / "runtime" / "opus_runtime" / "guard.py")
# The host's own python, which every user may run.
GUARD_PYTHON = "/usr/bin/python3"


def _guard_fd() -> int:
    """A memory file holding the guard, inheritable by the step."""
    for guard in GUARDS:
        if guard.is_file():
            fd = os.memfd_create("opus-guard", 0)
            os.write(fd, guard.read_bytes())
            os.lseek(fd, 0, os.SEEK_SET)
            return fd
    raise Denied("the process-tree guard is missing from secureops's installation; run "
                 "`opus install --system` again")


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
    "release-remove": Verb(release_remove, takes_spec=True),
    "app-remove": Verb(app_remove),
    "front-install": Verb(front_install, takes_spec=True, takes_app=False),
    "redis-install": Verb(redis_install, takes_spec=True),
    "redis-remove": Verb(redis_remove, takes_spec=True),
    "cert-install": Verb(cert_install, takes_spec=True, takes_app=False),
    "cert-remove": Verb(cert_remove, takes_spec=True, takes_app=False),
    "run": Verb(run, takes_spec=True),
    "run-input": Verb(run_input, takes_spec=True, spec_line=True),
    "run-terminal": Verb(run_terminal, takes_spec=True, spec_line=True),
}
