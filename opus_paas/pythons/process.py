"""Running uv as Opus itself (a fetch, a wheel's build): each output line passed on as it
comes, the whole process group stopped when the build is cancelled or takes too long."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from opus_paas import privileged
from opus_paas.errors import ServiceError

POLL_SECONDS = 0.2


def run(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float,
        cancelled: threading.Event | None = None,
        each_line: Callable[[str], None] | None = None) -> tuple[int, list[str]]:
    """Run `argv` with exactly `env`; return its exit status and output lines (stdout and
    stderr together). ServiceError when it was cancelled or timed out (and killed)."""
    proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    stop = cancelled or threading.Event()
    finished = threading.Event()
    killed = threading.Event()
    why: list[str] = []

    def watch() -> None:
        # Never reaps the child (poll would): its group id stays valid for killpg.
        deadline = time.monotonic() + timeout
        while not finished.wait(POLL_SECONDS):
            if stop.is_set() or time.monotonic() > deadline:
                why.append("the client disconnected" if stop.is_set()
                           else f"it took longer than {timeout:.0f} s")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                killed.set()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in privileged.bounded_lines(proc.stdout.fileno(), until=killed):
            line = line.rstrip().rsplit("\r", 1)[-1]
            lines.append(line)
            if each_line is not None and line.strip():
                each_line(line)
    finally:
        proc.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)      # whatever it left running
        code = proc.wait()
        finished.set()
        watcher.join()
    if why:
        raise ServiceError(f"{Path(argv[0]).name} was stopped: {why[0]}")
    return code, lines
