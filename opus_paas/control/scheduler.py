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
import os
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
from opus_paas.swarm import prune as swarm_prune
from opus_paas.swarm import registry
from opus_paas.tls import certs

log = logging.getLogger("opus.scheduler")
LONGEST_SLEEP = 60.0


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    every: float                                  # seconds from one run to the next
    run: Callable[[Settings, Store], object]
    on_wake: bool = False        # also run at once when the scheduler is woken (SIGUSR1)


def backup_database(settings: Settings, store: Store) -> None:
    """A consistent copy of opus.db (SQLite's online backup), which `opus up` restores
    from when the database itself is damaged."""
    store.backup(settings.db_backup_path)


def recover_deploys(settings: Settings, store: Store) -> None:
    """End deploys that stopped half-way (a process of Opus killed mid-deploy), for apps
    no deploy is running on: the host heals without waiting for `opus up`."""
    for line in recovery.recover_all(settings, store):
        log.info("%s", line)


def order_certificates(settings: Settings, store: Store) -> None:
    """Certificates for new names, renewals, retries after a failed order (their own
    back-off decides); `domains:add` wakes the scheduler for this."""
    for site in certs.run_due(settings, store, emit=lambda line: log.info("%s", line)):
        log.info("certificate installed for %s", site)


JOBS: tuple[Job, ...] = (
    Job("database backup", 3600.0, backup_database),
    Job("deploy recovery", 60.0, recover_deploys),
    Job("app backups", 60.0, backups.run_schedules),
    Job("certificates", 60.0, order_certificates, on_wake=True),
    Job("registry garbage", 3600.0, swarm_prune.collect),
    Job("registry certificate", 86400.0, registry.renew_certificate),
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
          jobs: tuple[Job, ...] = JOBS, wake: threading.Event | None = None) -> None:
    """Run the jobs until `stop` is set; `wake` (set on SIGUSR1) runs the on_wake jobs
    at once."""
    store = Store(settings.db_path)
    last: dict[str, float] = {}
    woken = wake or threading.Event()
    while not stop.is_set():
        run_due(settings, store, jobs, last, time.time())
        if woken.wait(seconds_to_next(jobs, last, time.time())):
            woken.clear()
            for job in jobs:
                if job.on_wake:
                    last.pop(job.name, None)


def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop, wake = threading.Event(), threading.Event()
    pass_on_signals(stop, wake)
    serve(settings_module.load(), stop, wake=wake)


def pass_on_signals(stop: threading.Event, wake: threading.Event) -> None:
    """SIGTERM sets `stop` and `wake`, SIGUSR1 `wake`, from a thread of their own. A
    handler may not set them itself: it runs in the main thread, which may hold the very
    lock Event.set takes (inside wake.wait), and would wait for itself until supervisord's
    SIGKILL. The handlers do nothing; Python writes each signal's number to a pipe."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda _signum, _frame: None)
    signal.set_wakeup_fd(write_end)

    def relay() -> None:
        while True:
            for signum in os.read(read_end, 64):
                if signum == signal.SIGTERM:
                    stop.set()
                if signum in (signal.SIGTERM, signal.SIGUSR1):
                    wake.set()

    threading.Thread(target=relay, name="signals", daemon=True).start()


if __name__ == "__main__":
    main()
