"""Puts a UTC timestamp in front of every line a process writes, so `opus logs` can merge
an app's processes and the front's access log in time order.

Usage: ``python stamp.py COMMAND [ARGS…]`` (stdlib only: it also runs as a plain script,
for releases whose environment predates it). Signals reach the command; its exit status
is this program's.
"""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import BinaryIO

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)


def stamp() -> bytes:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ").encode()


def relay(lines: Iterable[bytes], out: BinaryIO) -> None:
    """Copy `lines` to `out`, each with the time it arrived, flushed at once."""
    for line in lines:
        out.write(stamp() + line.rstrip(b"\r\n") + b"\n")
        out.flush()


def run(argv: list[str]) -> int:
    """Run `argv` with its output stamped; signals are passed on to it."""
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    assert child.stdout is not None
    relay(child.stdout, sys.stdout.buffer)
    return child.wait()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python stamp.py COMMAND [ARGS…]")
    sys.exit(run(sys.argv[1:]))
