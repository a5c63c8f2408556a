"""A local mirror of python-build-standalone for the tests and the benchmarks: the machines
that run them reach no Python download site.

It is built honestly from an interpreter already on the machine (pyenv's, under /root,
which no other user can read): packaged in python-build-standalone's `install_only`
layout (a tarball of `python/bin/python3.X`, `python/lib/…`), its text files naming the
prefix python-build-standalone builds have (/install, which uv rewrites to where it
installs), its binaries' RUNPATH made relative to themselves (patchelf), its test suite
and caches left out; listed with its sha256 in a download list in uv's format, and also
put where a python-build-standalone mirror keeps the real 3.13.0 build (whose checksum
uv knows, so uv refuses this one there). Served from loopback by http.server.

The tarball is kept in the tests' shared cache, so a machine packages it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.conftest import require_tool, shared_cache_dir

SOURCE = Path("/root/.pyenv/versions/3.13.0")
VERSION = (3, 13, 0)
KEY = "cpython-3.13.0-linux-x86_64-gnu"
ARCHIVE = "cpython-3.13.0-opustest-x86_64-unknown-linux-gnu-install_only.tar.gz"
# Where python-build-standalone's mirrors keep the real build (uv's own list names it).
PBS_PATH = "20241016/cpython-3.13.0+20241016-x86_64-unknown-linux-gnu-install_only_stripped.tar.gz"
LAYOUT = "1"        # bump when the packaging changes
LEFT_OUT_DIRS = {"test", "idlelib", "tkinter", "turtledemo", "__pycache__", "site-packages"}


@dataclasses.dataclass
class Mirror:
    """A running mirror: its base URL and download lists, and the archive it serves."""

    url: str
    archive: Path
    sha256: str

    @property
    def downloads(self) -> str:
        """The download list naming the archive with its true sha256."""
        return f"{self.url}/downloads.json"

    @property
    def wrong_checksum(self) -> str:
        """The same list with a sha256 the archive does not have."""
        return f"{self.url}/wrong-checksum.json"

    @property
    def unchecked(self) -> str:
        """The same list without a sha256 at all."""
        return f"{self.url}/unchecked.json"


def package(source: Path = SOURCE) -> tuple[Path, str]:
    """The install_only tarball of `source` (made once per machine) and its sha256."""
    cache = shared_cache_dir() / "python-mirror" / f"{source.name}-{LAYOUT}"
    archive, checksum = cache / ARCHIVE, cache / f"{ARCHIVE}.sha256"
    if checksum.is_file() and archive.is_file():
        return archive, checksum.read_text().strip()
    if not (source / "bin" / "python3").exists():
        raise AssertionError(f"{source} is missing: the test mirror packages pyenv's "
                             f"{source.name} (the test machines have it)")
    require_tool("patchelf")
    work = cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "python"
    shutil.copytree(source, root, symlinks=True, ignore=_left_out(source))
    minor = f"python{VERSION[0]}.{VERSION[1]}"
    (root / "lib" / minor / "site-packages").mkdir()
    _rewrite_prefix(root, str(source))
    _relative_runpaths(root)
    leftovers = [str(p) for p in _text_files(root) if str(source).encode() in p.read_bytes()]
    assert not leftovers, f"still naming {source}: {leftovers}"
    partial = cache / f"{ARCHIVE}.part"
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        tar.add(root, arcname="python")
    digest = hashlib.sha256(partial.read_bytes()).hexdigest()
    partial.replace(archive)
    checksum.write_text(digest + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return archive, digest


def _left_out(source: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        return {n for n in names
                if (n in LEFT_OUT_DIRS and (here / n).is_dir()) or n.endswith((".pyc", ".a"))
                or (here == source / "bin" and not n.startswith("python"))}
    return ignore


def _text_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                if handle.read(4) != b"\x7fELF":
                    yield path


def _rewrite_prefix(root: Path, prefix: str) -> None:
    """Name /install where the build names its prefix (sysconfig data, Makefile,
    pkg-config, python-config), dropping the rpath pyenv adds to the link flags."""
    for path in _text_files(root):
        data = path.read_bytes()
        if prefix.encode() in data:
            data = data.replace(f"-Wl,-rpath,{prefix}/lib".encode(), b"")
            path.write_bytes(data.replace(prefix.encode(), b"/install"))


def _relative_runpaths(root: Path) -> None:
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        with path.open("rb") as handle:
            header = handle.read(18)
        if header[:4] != b"\x7fELF" or header[16] not in (2, 3):     # executables, libraries
            continue
        runpath = subprocess.run(["patchelf", "--print-rpath", str(path)], check=True,
                                 capture_output=True, text=True).stdout.strip()
        if not runpath:
            continue
        if path.parent.name == "bin":
            subprocess.run(["patchelf", "--set-rpath", "$ORIGIN/../lib", str(path)], check=True)
        else:       # libpython and extension modules find what they need without one
            subprocess.run(["patchelf", "--remove-rpath", str(path)], check=True)


def download_list(url: str, sha256: str | None) -> dict[str, object]:
    """uv's download list format, with one entry: the archive at `url`."""
    major, minor, patch = VERSION
    entry: dict[str, object] = {
        "name": "cpython", "arch": {"family": "x86_64", "variant": None}, "os": "linux",
        "libc": "gnu", "major": major, "minor": minor, "patch": patch, "prerelease": "",
        "url": url, "variant": None, "build": "opustest"}
    if sha256 is not None:
        entry["sha256"] = sha256
    return {KEY: entry}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[Mirror]:
    """The mirror, served from `directory` on a loopback port until the block ends."""
    archive, digest = package()
    for served in (directory / ARCHIVE, directory / PBS_PATH):
        served.parent.mkdir(parents=True, exist_ok=True)
        if not served.is_symlink():
            served.symlink_to(archive)
    handler = functools.partial(_Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    lists = {"downloads.json": digest, "wrong-checksum.json": "0" * 64, "unchecked.json": None}
    for name, sha in lists.items():
        (directory / name).write_text(json.dumps(download_list(f"{url}/{ARCHIVE}", sha)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Mirror(url, directory / ARCHIVE, digest)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
