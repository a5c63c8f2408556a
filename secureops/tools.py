"""What every app's build reads and none may write: the interpreters Opus fetched and the
wheels built against them (mod_wsgi, once per interpreter).

Opus prepares each in its staging directory (OPUS_HOME/staging, its own); these verbs
copy it into place (root's and world-readable in system mode), a descriptor at a time:
directories, regular files and links only, every one of them the home owner's (a file
of anyone else's, hard-linked in, would be published by root); modes made plain (no
set-id bit, nothing writable but by root); links that stay inside the tree; bounded in
size and count. A tree is copied beside its place and renamed in whole. What Opus
changes in its staging copy afterwards never reaches the installed one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from secureops import checks
from secureops.layout import Denied, Layout
from secureops.verbs import Request, Verb, _open_dir, _remove, _trusted_dir

MAX_ENTRIES = 100_000
MAX_BYTES = 2 << 30
MAX_DEPTH = 64
MAX_WHEELS = 16
MAX_WHEEL_BYTES = 64 << 20
CHUNK = 1 << 20


# ---- the verbs ----------------------------------------------------------------------------

def python_install(request: Request) -> int:
    """Copy staging/pythons/NAME to pythons/NAME; an installed NAME is left alone."""
    name = checks.python_name(request.spec)
    layout = request.layout
    owner = _home_owner(layout)
    source = _open_staged(layout, owner, "pythons", name)
    try:
        target = _target_dir(layout.pythons, request.same_user)
        try:
            if _exists(target, name):
                raise Denied(f"{name} is installed already; remove it first")
            _install_tree(source, target, name, owner, layout.pythons)
        finally:
            os.close(target)
    finally:
        os.close(source)
    return 0


def python_remove(request: Request) -> int:
    name = checks.python_name(request.spec)
    _remove_from(request.layout.pythons, name, request.same_user)
    return 0


def wheels_install(request: Request) -> int:
    """Copy the wheels in staging/wheels/KEY into wheels/KEY, each file whole or not at
    all (written aside, renamed into place)."""
    key = checks.wheelhouse_key(request.spec)
    layout = request.layout
    owner = _home_owner(layout)
    source = _open_staged(layout, owner, "wheels", key)
    try:
        wheels = _wheels(source, owner)
        top = _target_dir(layout.wheels, request.same_user)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(key, 0o755, dir_fd=top)
            target = _open_dir(top, key)
        finally:
            os.close(top)
        try:
            os.fchmod(target, 0o755)
            for name, size in wheels:
                _copy_file(source, target, name, size, 0o644, owner)
        finally:
            os.close(target)
    finally:
        os.close(source)
    return 0


def wheels_remove(request: Request) -> int:
    key = checks.wheelhouse_key(request.spec)
    _remove_from(request.layout.wheels, key, request.same_user)
    return 0


TABLE: dict[str, Verb] = {
    "python-install": Verb(python_install, takes_spec=True, takes_app=False),
    "python-remove": Verb(python_remove, takes_spec=True, takes_app=False),
    "wheels-install": Verb(wheels_install, takes_spec=True, takes_app=False),
    "wheels-remove": Verb(wheels_remove, takes_spec=True, takes_app=False),
}


# ---- where things are -------------------------------------------------------------------

def _home_owner(layout: Layout) -> int:
    fd = os.open(layout.home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        return os.fstat(fd).st_uid
    finally:
        os.close(fd)


def _open_staged(layout: Layout, owner: int, kind: str, name: str) -> int:
    """home/staging/KIND/NAME, each directory opened without following a link and each
    the home owner's."""
    fd = os.open(layout.home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in ("staging", kind, name):
            try:
                child = _open_dir(fd, part)
            except FileNotFoundError:
                raise Denied(f"nothing is staged at staging/{kind}/{name}") from None
            os.close(fd)
            fd = child
            if os.fstat(fd).st_uid != owner:
                raise Denied(f"staging/{kind}/{name} is not the Opus home owner's")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _target_dir(path: Path, same_user: bool) -> int:
    """`path` (made if missing), opened: in system mode root's alone at 0755, below
    directories root alone can write."""
    if same_user:
        path.mkdir(parents=True, exist_ok=True)
    else:
        _trusted_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if not same_user:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o755)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_from(path: Path, name: str, same_user: bool) -> None:
    if not same_user:
        _trusted_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        _remove(fd, name)
    finally:
        os.close(fd)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


# ---- copying ------------------------------------------------------------------------------

class _Budget:
    def __init__(self) -> None:
        self.entries = 0
        self.bytes = 0

    def take(self, size: int) -> None:
        self.entries += 1
        self.bytes += size
        if self.entries > MAX_ENTRIES or self.bytes > MAX_BYTES:
            raise Denied(f"the tree is larger than {MAX_ENTRIES} entries or "
                         f"{MAX_BYTES >> 30} GiB")


def _install_tree(source: int, target: int, name: str, owner: int, where: Path) -> None:
    temporary = f".{name}.{os.getpid()}.tmp"
    _remove(target, temporary)          # left by a copy that was cut off
    os.mkdir(temporary, 0o700, dir_fd=target)
    try:
        copy = _open_dir(target, temporary)
        try:
            _copy_tree(source, copy, owner)
            os.fchmod(copy, 0o755)
        finally:
            os.close(copy)
        _check_links(where / temporary)
        if not os.path.lexists(where / temporary / "bin" / "python3"):
            raise Denied(f"{name} has no bin/python3: it is not an interpreter")
        os.rename(temporary, name, src_dir_fd=target, dst_dir_fd=target)
    except BaseException:
        _remove(target, temporary)
        raise


def _copy_tree(source: int, target: int, owner: int) -> None:
    """Copy what is inside `source` into the empty directory `target`, depth first
    without recursion (the caller closes those two)."""
    budget = _Budget()
    pending: list[tuple[int, int, int]] = [(source, target, 0)]
    try:
        while pending:
            src, dst, depth = pending.pop()
            try:
                with os.scandir(src) as entries:
                    for entry in entries:
                        child = _copy_entry(src, dst, entry, owner, budget)
                        if child is not None:
                            if depth + 1 > MAX_DEPTH:
                                os.close(child[0])
                                os.close(child[1])
                                raise Denied(f"the tree is deeper than {MAX_DEPTH} "
                                             "directories")
                            pending.append((*child, depth + 1))
            finally:
                if src != source:
                    os.close(src)
                    os.close(dst)
    finally:
        for src, dst, _depth in pending:
            if src != source:
                os.close(src)
                os.close(dst)


def _copy_entry(src: int, dst: int, entry: os.DirEntry[str], owner: int,
                budget: _Budget) -> tuple[int, int] | None:
    """Copy one entry; a directory is made and comes back opened on both sides, for the
    caller to walk."""
    info = entry.stat(follow_symlinks=False)
    budget.take(info.st_size if stat.S_ISREG(info.st_mode) else 0)
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(entry.name, dir_fd=src), entry.name, dir_fd=dst)
        return None
    if info.st_uid != owner:
        raise Denied(f"{entry.name} is not the Opus home owner's; refused")
    if stat.S_ISREG(info.st_mode):
        mode = 0o755 if info.st_mode & 0o111 else 0o644
        _copy_file(src, dst, entry.name, info.st_size, mode, owner)
        return None
    if not stat.S_ISDIR(info.st_mode):
        raise Denied(f"{entry.name} is a device, FIFO or socket; refused")
    os.mkdir(entry.name, 0o700, dir_fd=dst)
    opened: list[int] = []
    try:
        opened.append(_open_dir(src, entry.name))
        opened.append(_open_dir(dst, entry.name))
        os.fchmod(opened[1], 0o755)
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return opened[0], opened[1]


def _copy_file(src_dir: int, dst_dir: int, name: str, size: int, mode: int,
               owner: int) -> None:
    """Copy one regular file (opened without following a link, never a FIFO: O_NONBLOCK)
    into a fresh file beside its place, renamed over it when whole."""
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=src_dir)
    temporary = f".{name}.{os.getpid()}.part"
    try:
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode) or info.st_size != size or info.st_uid != owner:
            raise Denied(f"{name} changed while it was copied; refused")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dst_dir)
        dst = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                      dir_fd=dst_dir)
        try:
            left = size
            while left > 0:
                chunk = os.read(src, min(CHUNK, left))
                if not chunk:
                    break
                os.write(dst, chunk)
                left -= len(chunk)
            if left or os.read(src, 1):
                raise Denied(f"{name} changed while it was copied; refused")
            os.fchmod(dst, mode)
            # Bytecode is checked against its source's time: the copy keeps it.
            os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
        finally:
            os.close(dst)
        os.rename(temporary, name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dst_dir)
        raise
    finally:
        os.close(src)


def _check_links(top: Path) -> None:
    """Every link in the copied tree (root's own now: nothing can change under this walk)
    leads to a place inside it, through whatever links it passes."""
    root = os.path.realpath(top)
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                if os.path.commonpath([root, real]) != root:
                    raise Denied(f"the link {os.path.relpath(path, top)} leads out of the "
                                 "tree; refused")


def _wheels(source: int, owner: int) -> list[tuple[str, int]]:
    """The wheel files staged in `source`: nothing else may be there."""
    found = []
    for entry in os.scandir(source):
        info = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != owner or \
                not checks.WHEEL_FILE.fullmatch(entry.name) or info.st_size > MAX_WHEEL_BYTES:
            raise Denied(f"{entry.name!r} is not a wheel file of the Opus home owner's of at "
                         f"most {MAX_WHEEL_BYTES >> 20} MiB; refused")
        found.append((entry.name, info.st_size))
    if not found or len(found) > MAX_WHEELS:
        raise Denied(f"give 1 to {MAX_WHEELS} wheels")
    return found
