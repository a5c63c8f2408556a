"""The front's copy of each release's static files: what an app's /static/ serves.

The front reads nothing in an app's tree: the app's user owns its releases and could
swap any file or directory there for a link (into another app's release, say) while the
front reads it. So secureops copies a release's collected static files
(releases/vN/.opus/static) into a tree the app cannot change, and the front serves that:

    <front>/static/APP/vN        one release's copy (directories 0750, files 0640)
    <front>/static/APP/current   a link to the live release's copy (swapped by rename(2))

Every directory there is root's, group the front's, 0750 (same-user mode: the caller's).
The copy takes directories and regular files only, each opened by descriptor without
following a link (O_DIRECTORY|O_NOFOLLOW; a file with O_NONBLOCK and checked with
fstat, so a FIFO swapped in is never waited on); a link, FIFO, socket or device is
skipped and said, and so, in system mode, is a file that is not the app's user's own (a
hard link). It stops at MAX_ENTRIES entries or MAX_BYTES bytes. A copy, once made, is
not changed (a release is immutable); release-remove and app-remove remove it.
"""

from __future__ import annotations

import contextlib
import os
import stat

from secureops import checks
from secureops.layout import Denied
from secureops.verbs import (
    Request,
    Verb,
    _group,
    _open_dir,
    _remove,
    _trusted_dir,
    app_user,
    open_app_dir,
)

SOURCE = (".opus", "static")     # where the buildpack collects a release's static files
LIVE = "current"
MAX_ENTRIES = 20_000
MAX_BYTES = 512 << 20
MAX_DEPTH = 32
MAX_NOTES = 20
DIR_MODE, FILE_MODE = 0o750, 0o640
CHUNK = 1 << 20


def static_install(request: Request) -> int:
    """Copy release vN's static files for the front (unless copied already); with
    "live", make that copy the one the front serves."""
    version, live = checks.static_release(request.spec)
    name = f"v{version}"
    copy = _Copy(gid=_group(request.layout.front_group),
                 owner=None if request.same_user else app_user(request).pw_uid)
    target = _app_dir(request, copy.gid)
    try:
        if not _exists(target, name):
            _copy_release(request, version, target, name, copy)
            request.notes.extend(copy.said())
        if live:
            _point(target, name)
    finally:
        os.close(target)
    return 0


class _Copy:
    """What a copy has taken so far, and what it skipped."""

    def __init__(self, gid: int, owner: int | None) -> None:
        self.gid = gid
        self.owner = owner           # uid every file must have (None: same-user mode)
        self.entries = 0
        self.bytes = 0
        self.skipped: list[str] = []

    @property
    def same_user(self) -> bool:
        return self.owner is None

    def take(self, size: int = 0, *, entries: int = 1) -> None:
        self.entries += entries
        self.bytes += size
        if self.entries > MAX_ENTRIES or self.bytes > MAX_BYTES:
            raise Denied(f"the release's static files are more than {MAX_ENTRIES} entries "
                         f"or {MAX_BYTES >> 20} MiB; the front serves a copy of them: "
                         "collect fewer, or serve large files from elsewhere")

    def skip(self, path: str, why: str) -> None:
        self.skipped.append(f"skipped static/{path!r}: {why}; the front serves only the "
                            "app's own plain files")

    def said(self) -> list[str]:
        notes = self.skipped[:MAX_NOTES]
        if len(self.skipped) > MAX_NOTES:
            notes.append(f"skipped {len(self.skipped) - MAX_NOTES} more entries")
        files = self.entries
        return [f"copied {files} entr{'y' if files == 1 else 'ies'} "
                f"({self.bytes // 1024} KiB) for the front", *notes]


def _app_dir(request: Request, gid: int) -> int:
    """<front>/static/APP, each level made if missing, opened without following a link,
    root's (or the caller's), group the front's, 0750."""
    layout = request.layout
    if request.same_user:
        layout.front.mkdir(parents=True, exist_ok=True)
    else:
        _trusted_dir(layout.front)
    fd = os.open(layout.front, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in (layout.static.name, request.app):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
            child = _open_dir(fd, part)
            os.close(fd)
            fd = child
            _own(fd, gid, DIR_MODE, request.same_user)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _own(fd: int, gid: int, mode: int, same_user: bool) -> None:
    os.fchown(fd, -1 if same_user else 0, gid)
    os.fchmod(fd, mode)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _open_source(request: Request, version: int) -> int | None:
    """releases/vN/.opus/static, a component at a time without following a link; None
    when the release has no static files."""
    fd = open_app_dir(request.layout, request.app)
    try:
        for index, part in enumerate(("releases", f"v{version}", *SOURCE)):
            try:
                child = _open_dir(fd, part)
            except FileNotFoundError:
                if index < 2:
                    raise Denied(f"release v{version} has no build (releases/v{version}); "
                                 "push again") from None
                return None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy_release(request: Request, version: int, target: int, name: str,
                  copy: _Copy) -> None:
    """Copy into a fresh directory beside its place, renamed in whole."""
    source = _open_source(request, version)
    temporary = f".{name}.{os.getpid()}.tmp"
    try:
        _remove(target, temporary)            # left by a copy that was cut off
        os.mkdir(temporary, 0o700, dir_fd=target)
        try:
            top = _open_dir(target, temporary)
            try:
                if source is not None:
                    _copy_tree(source, top, copy)
                _own(top, copy.gid, DIR_MODE, request.same_user)
            finally:
                os.close(top)
            os.rename(temporary, name, src_dir_fd=target, dst_dir_fd=target)
        except BaseException:
            _remove(target, temporary)
            raise
    finally:
        if source is not None:
            os.close(source)


def _copy_tree(source: int, target: int, copy: _Copy) -> None:
    """Copy what is inside `source` into the empty directory `target`, depth first
    without recursion (the caller closes those two)."""
    pending: list[tuple[int, int, str, int]] = [(source, target, "", 0)]
    try:
        while pending:
            src, dst, where, depth = pending.pop()
            try:
                with os.scandir(src) as entries:
                    for entry in entries:
                        child = _copy_entry(src, dst, entry, where + entry.name, copy)
                        if child is None:
                            continue
                        if depth + 1 > MAX_DEPTH:
                            os.close(child[0])
                            os.close(child[1])
                            raise Denied(f"the release's static files are deeper than "
                                         f"{MAX_DEPTH} directories")
                        pending.append((*child, where + entry.name + "/", depth + 1))
                if src != source:
                    _own(dst, copy.gid, DIR_MODE, copy.same_user)
            finally:
                if src != source:
                    os.close(src)
                    os.close(dst)
    finally:
        for src, dst, _where, _depth in pending:
            if src != source:
                os.close(src)
                os.close(dst)


def _copy_entry(src: int, dst: int, entry: os.DirEntry[str], path: str,
                copy: _Copy) -> tuple[int, int] | None:
    """Copy one entry; a directory is made and comes back opened on both sides, for the
    caller to walk. Anything but a directory or a regular file is skipped."""
    info = entry.stat(follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode):
        copy.skip(path, "a symlink is never followed")
    elif stat.S_ISREG(info.st_mode):
        _copy_file(src, dst, entry.name, path, copy)
    elif not stat.S_ISDIR(info.st_mode):
        copy.skip(path, "a FIFO, socket or device")
    else:
        try:
            opened = _open_dir(src, entry.name)
        except (Denied, FileNotFoundError):
            copy.skip(path, "it changed while it was copied")
            return None
        try:
            copy.take()
            os.mkdir(entry.name, 0o700, dir_fd=dst)
            return opened, _open_dir(dst, entry.name)
        except BaseException:
            os.close(opened)
            raise
    return None


def _copy_file(src_dir: int, dst_dir: int, name: str, path: str, copy: _Copy) -> None:
    """One regular file, opened without following a link and checked on its descriptor;
    its bytes into a new file of the copy's."""
    try:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                      dir_fd=src_dir)
    except OSError as exc:
        copy.skip(path, f"it could not be opened ({exc.strerror})")
        return
    try:
        info = os.fstat(src)
        if not stat.S_ISREG(info.st_mode):
            copy.skip(path, "it changed while it was copied")
            return
        if copy.owner is not None and info.st_uid != copy.owner:
            copy.skip(path, "not the app's own file (a hard link?)")
            return
        copy.take()
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                      dir_fd=dst_dir)
        try:
            while chunk := os.read(src, CHUNK):
                copy.take(len(chunk), entries=0)
                os.write(dst, chunk)
            _own(dst, copy.gid, FILE_MODE, copy.same_user)
            os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))   # Last-Modified
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _point(target: int, name: str) -> None:
    """current -> vN, swapped whole."""
    temporary = f".{LIVE}.{os.getpid()}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=target)
    os.symlink(name, temporary, dir_fd=target)
    os.rename(temporary, LIVE, src_dir_fd=target, dst_dir_fd=target)


TABLE: dict[str, Verb] = {
    "static-install": Verb(static_install, takes_spec=True),
}
