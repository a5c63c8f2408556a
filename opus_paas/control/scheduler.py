"""Opus's own scheduled work: the `opus-scheduler` program.

Each capability that has periodic work (a copy of Opus's database now; certificate
renewals and app backups as they come) adds a Job to JOBS. The scheduler runs due jobs
one at a time, each at its own interval; a job that fails is logged and tried again at
its next turn, and never stops the others. Jobs decide for themselves what is due
(from the database), so a restart of the scheduler loses nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping

from opus_paas import settings as settings_module
from opus_paas.data import backups
from opus_paas.run import recovery
from opus_paas.settings import Settings
from opus_paas.store import Store

log = logging.getLogger("opus.scheduler")
LONGEST_SLEEP = 60.0


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    every: float                                  # seconds from one run to the next
    run: Callable[[Settings, Store], object]


def backup_database(settings: Settings, store: Store) -> None:
    """A consistent copy of opus.db (SQLite's online backup), which `opus up` restores
    from when the database itself is damaged."""
    store.backup(settings.db_backup_path)


def recover_deploys(settings: Settings, store: Store) -> None:
    """End deploys that stopped half-way (a process of Opus killed mid-deploy), for apps
    no deploy is running on: the host heals without waiting for `opus up`."""
    for line in recovery.recover_all(settings, store):
        log.info("%s", line)


JOBS: tuple[Job, ...] = (
    Job("database backup", 3600.0, backup_database),
    Job("deploy recovery", 60.0, recover_deploys),
    Job("app backups", 60.0, backups.run_schedules),
)


def due(jobs: tuple[Job, ...], last: Mapping[str, float], now: float) -> list[Job]:
    """The jobs whose turn it is (a job never run yet is due at once)."""
    return [job for job in jobs if job.name not in last or now - last[job.name] >= job.every]


def seconds_to_next(jobs: tuple[Job, ...], last: Mapping[str, float], now: float) -> float:
    """How long to sleep before the next job is due (at most LONGEST_SLEEP)."""
    waits = [max(0.0, last[job.name] + job.every - now) if job.name in last else 0.0
             for job in jobs]
    return min([LONGEST_SLEEP, *waits])


def run_due(settings: Settings, store: Store, jobs: tuple[Job, ...],
            last: dict[str, float], now: float) -> list[str]:
    """Run every due job once; return the names of those that failed."""
    failed = []
    for job in due(jobs, last, now):
        last[job.name] = now
        try:
            job.run(settings, store)
        except Exception:
            log.exception("%s failed; it runs again in %.0f s", job.name, job.every)
            failed.append(job.name)
    return failed


def serve(settings: Settings, stop: threading.Event,
          jobs: tuple[Job, ...] = JOBS) -> None:
    store = Store(settings.db_path)
    last: dict[str, float] = {}
    while not stop.is_set():
        run_due(settings, store, jobs, last, time.time())
        stop.wait(seconds_to_next(jobs, last, time.time()))


def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    serve(settings_module.load(), stop)


if __name__ == "__main__":
    main()
