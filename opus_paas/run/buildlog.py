"""A build's log: written with a cap (a build printing without end cannot fill the disk),
read back in pieces (`builds:output` never holds a whole log in memory).

Past the cap (the `build_log_limit` setting) the log says once that output was left out
and where the limit is set, and the build goes on: a chatty build is not a broken one,
and its client still sees every line live. The last lines (where a failed build says
why, and where Opus says what it released) are kept and written at the end.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from opus_paas import output, privileged

TAIL_BYTES = 64 << 10     # at most this much of the output's end is kept past the cap
CHUNK = 64 << 10


def truncated_notice(limit: int) -> str:
    return output.alert(
        f"Build output past {limit} bytes is left out of this log (the client saw "
        "it live); the operator sets the limit with build_log_limit in opus.toml or "
        "OPUS_BUILD_LOG_LIMIT. The last lines follow.")


class CappedLog:
    """Lines written to `handle` up to `limit` bytes in all; then one notice, and the last
    lines (at most TAIL_BYTES, fewer for a small limit) written by `close`."""

    def __init__(self, handle: TextIO, limit: int) -> None:
        self._handle = handle
        self._limit = max(0, limit)
        self._written = 0
        self._over = False
        self._tail: deque[str] = deque()
        self._tail_bytes = 0
        self._tail_limit = min(TAIL_BYTES, self._limit)

    def write(self, text: str) -> None:
        size = len(text.encode("utf-8", "surrogateescape"))
        if not self._over and self._written + size <= self._limit:
            self._written += size
            self._handle.write(text)
            return
        if not self._over:
            self._over = True
            self._handle.write(truncated_notice(self._limit) + "\n")
        self._keep(text, size)

    def _keep(self, text: str, size: int) -> None:
        self._tail.append(text)
        self._tail_bytes += size
        while self._tail and self._tail_bytes > self._tail_limit:
            dropped = self._tail.popleft()
            self._tail_bytes -= len(dropped.encode("utf-8", "surrogateescape"))

    @property
    def truncated(self) -> bool:
        return self._over

    def close(self) -> None:
        """Write the kept last lines (the caller closes the handle)."""
        if self._over:
            self._handle.write(output.alert("…\n"))
            self._handle.writelines(self._tail)
            self._tail.clear()
        self._handle.flush()


def lines(path: Path, tail: int | None = None) -> Iterator[str]:
    """The log's lines, read in chunks (none longer than privileged.MAX_LINE: a longer one
    comes in pieces); with `tail`, only the last `tail`, found reading back from the end."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if tail is None:
            yield from privileged.bounded_lines(fd)
            return
        os.lseek(fd, _tail_start(fd, os.fstat(fd).st_size, tail), os.SEEK_SET)
        yield from deque(privileged.bounded_lines(fd), maxlen=tail)
    finally:
        os.close(fd)


def _tail_start(fd: int, size: int, count: int) -> int:
    """The offset where the last `count` lines of the file begin."""
    if count <= 0:
        return size
    position, found = size, 0
    while position > 0:
        step = min(CHUNK, position)
        position -= step
        chunk = os.pread(fd, step, position)
        end = len(chunk)
        while (newline := chunk.rfind(b"\n", 0, end)) >= 0:
            end = newline
            if position + newline == size - 1:
                continue          # the last line's own end
            found += 1
            if found == count:
                return position + newline + 1
    return 0
