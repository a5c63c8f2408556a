"""Deterministic image layers: a host tree becomes a tar whose bytes depend only on the
files' contents, names and executable bits (sorted, root-owned, fixed mtimes), so the
same release always gives the same layer digest.

The trees are the app's (built by its code): nothing here follows a symlink, a
symlink may only point inside the image (`allowed_link`), setuid/setgid/sticky bits are
dropped, and device files, FIFOs and sockets are refused.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from opus_paas.errors import OpusError

FIXED_MTIME = 0          # app layers: 1970-01-01 (the base keeps Debian's own mtimes)


class LayerError(OpusError):
    """A tree cannot become an image layer (a device file, a symlink leaving the image)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One member of a layer: `name` is its path in the image, without a leading /."""

    name: str
    kind: str                 # "dir", "file" or "link"
    mode: int = 0o755
    data: bytes = b""
    target: str = ""          # a link's target
    mtime: int = FIXED_MTIME
    owner: int = 0            # uid and gid (root's, but for a pinned app's /data)


def normal_mode(kind: str, mode: int) -> int:
    """Root-owned and world-readable: directories and executables 0755, other files
    0644; setuid, setgid and sticky bits never survive."""
    if kind == "dir" or (kind == "file" and mode & 0o111):
        return 0o755
    return 0o644


def link_target_in_image(link_name: str, target: str) -> str:
    """Where a symlink at `link_name` (an image path) points, as an image path, or ""
    when it climbs out of / (which the kernel would clamp, but says the tree is hostile)."""
    if target.startswith("/"):
        joined = posixpath.normpath(target)
    else:
        joined = posixpath.normpath(posixpath.join("/" + posixpath.dirname(link_name), target))
        depth = 0
        for part in posixpath.dirname(link_name).split("/") + target.split("/"):
            depth = depth - 1 if part == ".." else depth + (part not in ("", "."))
            if depth < 0:
                return ""
    return joined


def tree_entries(root: Path, dest: str, *, allowed_link: Callable[[str], bool],
                 skip: Callable[[str], bool] = lambda name: False,
                 rewrite: Callable[[str, bytes], bytes] | None = None,
                 keep_mtime: bool = False) -> list[Entry]:
    """The entries for the tree at `root`, placed at image path `dest` ("app/.opus/venv").
    `allowed_link(image_path)` says whether a symlink may point there; `skip(name)`
    leaves an image path out; `rewrite(name, data)` may change a file's bytes."""
    entries: list[Entry] = []
    for name, kind, mode, data, target, mtime in _walk(root, dest, skip):
        if kind == "link":
            where = link_target_in_image(name, target)
            if not where or not allowed_link(where):
                raise LayerError(f"/{name} is a symlink to {target}, outside the image; "
                                 "replace it with a copy of the file or a relative link "
                                 "inside the app")
        if kind == "file" and rewrite is not None:
            data = rewrite(name, data)
        entries.append(Entry(name, kind, normal_mode(kind, mode), data, target,
                             mtime if keep_mtime else FIXED_MTIME))
    return entries


def _walk(root: Path, dest: str, skip: Callable[[str], bool]
          ) -> Iterable[tuple[str, str, int, bytes, str, int]]:
    """(image path, kind, mode, data, link target, mtime) of `root` and below, by lstat
    only; a file is read through O_NOFOLLOW and judged by what was opened (a swap to a
    symlink or a FIFO fails, never follows or blocks). A hard link to a file whose owner
    is not the tree's (the app planting a link to a file it cannot read) is refused."""
    owner = os.lstat(root).st_uid
    stack = [(root, dest.strip("/"))]
    while stack:
        path, name = stack.pop()
        if skip(name):
            continue
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            yield name, "link", 0o777, b"", os.readlink(path), int(info.st_mtime)
        elif stat.S_ISDIR(info.st_mode):
            yield name, "dir", info.st_mode, b"", "", int(info.st_mtime)
            for child in sorted(os.listdir(path), reverse=True):
                stack.append((path / child, f"{name}/{child}" if name else child))
        elif stat.S_ISREG(info.st_mode):
            yield name, "file", info.st_mode, _read(path, name, owner), "", \
                int(info.st_mtime)
        else:
            raise LayerError(f"/{name} is a device file, FIFO or socket, which an image "
                             "cannot hold; remove it from the app")


def _read(path: Path, name: str, owner: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        opened = os.fstat(file.fileno())
        if not stat.S_ISREG(opened.st_mode):
            raise LayerError(f"/{name} changed while it was read; publish again")
        if opened.st_nlink > 1 and opened.st_uid != owner:
            raise LayerError(f"/{name} is a hard link to a file owned by uid "
                             f"{opened.st_uid}, not the app; replace it with a copy")
        return file.read()


def parents(names: Iterable[str]) -> list[Entry]:
    """Directory entries for every parent of `names` (a tar's members need them)."""
    dirs = set()
    for name in names:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return [Entry(d, "dir") for d in dirs]


def write_tar(entries: Iterable[Entry], out: BinaryIO) -> None:
    """A plain (uncompressed) tar of `entries`, sorted by name, with their parents, each
    owned by its `owner` (root, unless said); the same entries always give the same
    bytes. A later entry of the same name replaces an earlier one."""
    by_name: dict[str, Entry] = {}
    listed = list(entries)
    for entry in [*parents(e.name for e in listed), *listed]:
        by_name[entry.name] = entry
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(by_name):
            entry = by_name[name]
            info = tarfile.TarInfo(name)
            info.uid = info.gid = entry.owner
            info.uname = info.gname = ""
            info.mtime = entry.mtime
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "link":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.target, 0o777
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer as a registry holds it: gzip bytes, their digest, and the digest of the
    plain tar (the image config's diff_id)."""

    gzipped: bytes
    digest: str
    diff_id: str

    @property
    def size(self) -> int:
        return len(self.gzipped)


def layer(entries: Iterable[Entry]) -> Layer:
    plain = io.BytesIO()
    write_tar(entries, plain)
    return layer_of_tar(plain.getvalue())


def layer_of_tar(plain: bytes) -> Layer:
    # mtime=0 and no file name in the gzip header: the same tar, the same bytes.
    gzipped = gzip.compress(plain, compresslevel=6, mtime=0)
    return Layer(gzipped, "sha256:" + hashlib.sha256(gzipped).hexdigest(),
                 "sha256:" + hashlib.sha256(plain).hexdigest())
