"""What the dashboard plots: an app's request rate and latency, read from the front's
access log, and its processes' memory, sampled from /proc.

Parsing and bucketing are pure; reading the log and /proc are the thin I/O around them.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Iterable
from pathlib import Path

from opus_paas.data import redis
from opus_paas.front import httpd
from opus_paas.run import logs, programs
from opus_paas.settings import Settings
from opus_paas.store import Store
from opus_paas.supervisor import Supervisor

WINDOW_MINUTES = 60
ACCESS_TAIL_BYTES = 8 << 20     # how far back in the shared access log to read
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass(frozen=True)
class Request:
    at: float          # epoch seconds
    status: int
    millis: float


@dataclasses.dataclass(frozen=True)
class Minute:
    """One minute of an app's traffic."""

    start: float
    requests: int
    errors: int                 # 5xx answers
    p50_ms: float | None        # None: no request that minute
    p95_ms: float | None


def parse_requests(lines: Iterable[str], hosts: Iterable[str]) -> list[Request]:
    """The requests in access-log `lines` whose vhost is one of `hosts` (pure)."""
    found = []
    for line in httpd.log_lines_for(lines, hosts):
        outcome = line.status_and_millis
        if outcome is not None:
            found.append(Request(line.at.timestamp(), *outcome))
    return found


def per_minute(requests: Iterable[Request], now: float,
               minutes: int = WINDOW_MINUTES) -> list[Minute]:
    """The last `minutes` whole minutes up to `now` (the current one last), each with its
    count, errors and latency percentiles (pure)."""
    first = (int(now) // 60 - minutes + 1) * 60
    latencies: list[list[float]] = [[] for _ in range(minutes)]
    errors = [0] * minutes
    for request in requests:
        index = int(request.at - first) // 60
        if 0 <= index < minutes:
            latencies[index].append(request.millis)
            errors[index] += request.status >= 500
    return [Minute(first + 60 * i, len(values), errors[i], *_percentiles(values))
            for i, values in enumerate(latencies)]


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return statistics.median(values), cuts[18]


def traffic(settings: Settings, hosts: list[str], now: float) -> list[Minute]:
    """The app answering to `hosts`: its last hour of requests, per minute."""
    try:
        lines = logs.last_lines(settings.logs_dir / "front" / "access.log", ACCESS_TAIL_BYTES)
    except FileNotFoundError:
        lines = []
    return per_minute(parse_requests(lines, hosts), now)


# ---- memory ----------------------------------------------------------------------------

def memory_per_minute(samples: Iterable[tuple[float, int]], now: float,
                      minutes: int = WINDOW_MINUTES) -> list[float | None]:
    """The mean of the samples (time, bytes) in each of the last `minutes` minutes, in
    MiB; None for a minute without one (pure)."""
    first = (int(now) // 60 - minutes + 1) * 60
    sums, counts = [0.0] * minutes, [0] * minutes
    for at, rss in samples:
        index = int(at - first) // 60
        if 0 <= index < minutes:
            sums[index] += rss / (1 << 20)
            counts[index] += 1
    return [sums[i] / counts[i] if counts[i] else None for i in range(minutes)]


def tree_rss(roots: Iterable[int], table: dict[int, tuple[int, int]]) -> int:
    """Resident bytes of the processes `roots` and all their descendants; `table` maps
    pid → (parent pid, resident bytes) (pure)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _rss) in table.items():
        children.setdefault(parent, []).append(pid)
    total, seen, pending = 0, set(), [p for p in roots if p in table]
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][1]
        pending.extend(children.get(pid, []))
    return total


def process_table(proc: Path = Path("/proc")) -> dict[int, tuple[int, int]]:
    """pid → (parent pid, resident bytes) of every process visible now."""
    table = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pages = int((entry / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue   # gone meanwhile
        # The name in parentheses may hold spaces and parentheses: split after the last.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1].isdigit():
            table[int(entry.name)] = (int(fields[1]), pages * PAGE_SIZE)
    return table


def app_roots(processes: Iterable[dict[str, object]]) -> dict[str, list[int]]:
    """app → the pids of its supervisor processes (pure; supervisor's process list)."""
    roots: dict[str, list[int]] = {}
    for process in processes:
        group = str(process["group"])
        owner = programs.program_owner(group)
        app = owner[0] if owner is not None else redis.app_of_program(group)  # its Redis too
        pid = process.get("pid")
        if app is not None and isinstance(pid, int) and pid > 0:
            roots.setdefault(app, []).append(pid)
    return roots


def sample_memory(settings: Settings, store: Store, now: float) -> dict[int, int]:
    """Record every running app's memory now (and forget samples older than the window);
    return app id → bytes."""
    supervisor = Supervisor(settings)
    if not supervisor.is_running():
        return {}
    roots = app_roots(supervisor.processes())
    table = process_table()
    samples = {app.id: tree_rss(roots[app.name], table)
               for app in store.list_apps() if app.name in roots}
    store.add_memory_samples(samples, now, keep_since=now - WINDOW_MINUTES * 60)
    return samples
