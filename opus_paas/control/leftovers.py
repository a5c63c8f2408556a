"""Processes left from an earlier run of this Opus home: when supervisord was killed
outright (or a container's init kept its children), programs and steps can outlive
it, holding ports and files. `opus up` finds them in /proc before it starts anything
(by the OPUS_INSTANCE every program and step of this home carries, or this home's
supervisord config on the command line), ends them, and says so."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from opus_paas.privileged import INSTANCE_MARKER
from opus_paas.settings import Settings

GRACE_SECONDS = 3.0


@dataclasses.dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    cmdline: bytes
    environ: bytes
    started: int = 0        # clock ticks after boot: a reused pid has another

    @property
    def command(self) -> str:
        words = self.cmdline.split(b"\0")
        return b" ".join(w for w in words[:3] if w).decode("utf-8", "replace")[:80]


def belongs(process: Process, home: Path, supervisor_conf: Path) -> bool:
    """Whether `process` was started by the Opus rooted at `home` (pure)."""
    marker = f"{INSTANCE_MARKER}={home}".encode()
    return marker in process.environ.split(b"\0") or \
        str(supervisor_conf).encode() in process.cmdline.split(b"\0")


def ancestors(processes: Iterable[Process], pid: int) -> set[int]:
    """`pid` and every process above it (pure): never ended, whatever they carry."""
    parents = {p.pid: p.ppid for p in processes}
    found = set()
    while pid and pid not in found:
        found.add(pid)
        pid = parents.get(pid, 0)
    return found


def left_over(settings: Settings, processes: list[Process]) -> list[Process]:
    """The processes of an earlier run among `processes` (pure; the caller's own line of
    ancestors excluded)."""
    conf = settings.supervisor_dir / "supervisord.conf"
    mine = ancestors(processes, os.getpid())
    return [p for p in processes if p.pid not in mine and belongs(p, settings.home, conf)]


def scan() -> list[Process]:
    """Every live process this user may look at (root: all)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        base = Path("/proc") / entry
        try:
            fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            cmdline = (base / "cmdline").read_bytes()
            environ = (base / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        found.append(Process(int(entry), int(fields[1]), cmdline, environ, int(fields[19])))
    return found


def end(settings: Settings) -> list[str]:
    """End what an earlier run of this home left (SIGTERM, then SIGKILL after a grace:
    an Apache child whose master is gone ignores SIGTERM); say what was ended."""
    found = left_over(settings, scan())
    if not found:
        return []
    for process in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGTERM)
            os.kill(process.pid, signal.SIGCONT)     # a stopped one acts on it too
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline and _alive(found):
        time.sleep(0.1)
    for process in _alive(found):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGKILL)
    shown = ", ".join(f"{p.command} ({p.pid})" for p in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return [f"Ended {len(found)} process{'es' if len(found) != 1 else ''} left from an "
            f"earlier run of Opus: {shown}{more}."]


def forget_front_pid(settings: Settings) -> None:
    """Remove the front's pid file once nothing of an earlier run is left: Apache refuses
    to start while the pid in it answers (a zombie, or a reused pid, does)."""
    (settings.front_dir / "httpd.pid").unlink(missing_ok=True)


def _alive(processes: list[Process]) -> list[Process]:
    alive = []
    for process in processes:
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[19]) == process.started:
            alive.append(process)
    return alive
