"""An app's logs: the last lines of each process type's log, and following them live.

Supervisor writes each process type's output to logs/<app>/<type>.log (and rotates it
to <type>.log.1 …); a follower notices the rotation and goes on in the new file.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from opus_paas import names, privileged
from opus_paas.errors import NotFound
from opus_paas.settings import Settings

FOLLOW_POLL_SECONDS = 0.3
MAX_LINES = 10_000
READ_LIMIT = 1 << 20   # bytes a follower reads per file per round


def log_files(settings: Settings, app: str, process_type: str | None) -> list[Path]:
    """The log of each process type of `app` (or of `process_type` only)."""
    directory = settings.logs_dir / app
    if process_type is not None:
        names.check_process_type(process_type)
        found = sorted(p for p in (directory / f"{process_type}.log",
                                   *directory.glob(f"{process_type}.[0-9]*.log"))
                       if p.is_file())
        if not found:
            raise NotFound(f"no {process_type} log for {app} yet; `opus ps {app}` lists its "
                           "process types")
        return found
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.log")
                  if p.is_file() and p.name not in ("pushes.log",)
                  and not p.name.startswith("build-"))


def tail(paths: list[Path], count: int) -> list[str]:
    """The last `count` lines over `paths`, each tagged with its process type; within a
    file in order, files in name order (lines carry their own timestamps)."""
    count = max(0, min(count, MAX_LINES))
    lines: list[str] = []
    for path in paths:
        kept: deque[str] = deque(maxlen=count)
        with path.open("rb") as handle:
            kept.extend(privileged.bounded_lines(handle.fileno()))
        lines += [f"{path.stem}: {line}" for line in kept]
    return lines[-count:] if count else []


def follow(paths: list[Path], stop: threading.Event) -> Iterator[str]:
    """Lines appended to `paths` from now on, until `stop` is set."""
    positions = {path: _end(path) for path in paths}
    while not stop.is_set():
        for path in paths:
            positions[path], new = _read_new(path, positions[path])
            for line in new:
                yield f"{path.stem}: {line}"
        stop.wait(FOLLOW_POLL_SECONDS)


def _end(path: Path) -> tuple[int, int]:
    """(inode, offset) at the file's end now."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (info.st_ino, info.st_size)


def _read_new(path: Path, position: tuple[int, int]) -> tuple[tuple[int, int], list[str]]:
    inode, offset = position
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return position, []
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_ino != inode or info.st_size < offset:
            offset = 0        # rotated or truncated: the new file from its start
        handle.seek(offset)
        data = handle.read(READ_LIMIT)
    # Only whole lines; a half-written last line waits for the next round, unless it
    # is already longer than any line should be.
    complete = data[: data.rfind(b"\n") + 1] if len(data) < READ_LIMIT else data
    lines = complete.decode("utf-8", "replace").splitlines()
    return (info.st_ino, offset + len(complete)), lines
