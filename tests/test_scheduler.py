"""The scheduler: which jobs are due, that one failing job stops no other, and the real
`opus-scheduler` program keeping a consistent copy of Opus's database."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from opus_paas import settings as settings_module
from opus_paas.control import scheduler
from opus_paas.control.scheduler import Job
from opus_paas.settings import Settings
from opus_paas.store import Store
from tests.conftest import Opus

JOBS = (Job("hourly", 3600.0, lambda s, st: None), Job("minutely", 60.0, lambda s, st: None))


def test_a_job_never_run_is_due_at_once_then_at_its_interval() -> None:
    assert [j.name for j in scheduler.due(JOBS, {}, 1000.0)] == ["hourly", "minutely"]
    last = {"hourly": 1000.0, "minutely": 1000.0}
    assert scheduler.due(JOBS, last, 1059.0) == []
    assert [j.name for j in scheduler.due(JOBS, last, 1060.0)] == ["minutely"]
    assert [j.name for j in scheduler.due(JOBS, last, 4600.0)] == ["hourly", "minutely"]


def test_the_scheduler_sleeps_until_the_next_job_and_never_longer_than_a_minute() -> None:
    assert scheduler.seconds_to_next(JOBS, {}, 0.0) == 0.0
    assert scheduler.seconds_to_next(JOBS, {"hourly": 0.0, "minutely": 0.0}, 15.0) == 45.0
    slow = (Job("daily", 86400.0, lambda s, st: None),)
    assert scheduler.seconds_to_next(slow, {"daily": 0.0}, 10.0) == scheduler.LONGEST_SLEEP


def test_a_failing_job_is_logged_and_stops_no_other(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = Store(settings.db_path)
    store.init()
    ran = []

    def broken(_settings: Settings, _store: Store) -> None:
        raise RuntimeError("disk on fire")

    jobs = (Job("broken", 60.0, broken), Job("fine", 60.0, lambda s, st: ran.append("fine")))
    last: dict[str, float] = {}
    assert scheduler.run_due(settings, store, jobs, last, 100.0) == ["broken"]
    assert ran == ["fine"]
    assert last == {"broken": 100.0, "fine": 100.0}      # tried again at its next turn


def test_the_database_backup_is_a_consistent_copy_taken_while_others_write(
        tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    store = Store(settings.db_path)
    store.init()
    store.create_user("alice", "developer")
    writer = sqlite3.connect(settings.db_path)
    writer.execute("BEGIN")
    writer.execute("INSERT INTO users (name, role, created) VALUES ('uncommitted', "
                   "'developer', 0)")
    scheduler.backup_database(settings, store)     # while the writer's change is open
    writer.rollback()
    writer.close()
    copy = Store(settings.db_backup_path)
    assert [u.name for u in copy.list_users()] == ["alice"]
    assert settings.db_backup_path.stat().st_mode & 0o777 == 0o600


def test_opus_up_runs_the_scheduler_which_backs_up_the_database(opus: Opus) -> None:
    assert "opus-scheduler" in opus.cli("status").stdout
    settings = settings_module.load(opus.env)
    deadline = time.monotonic() + 20
    while not settings.db_backup_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    with sqlite3.connect(settings.db_backup_path) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {r[0] for r in copy.execute("SELECT name FROM sqlite_master")}
    assert {"apps", "releases", "users", "keys"} <= tables


def test_waking_the_scheduler_runs_the_jobs_that_ask_for_it_at_once(tmp_path: Path) -> None:
    """`domains:add` wakes it (SIGUSR1): a new name's certificate does not wait a minute."""
    import threading
    settings = Settings(home=tmp_path)
    Store(settings.db_path).init()
    ran: list[str] = []
    jobs = (Job("eager", 3600.0, lambda s, st: ran.append("eager"), on_wake=True),
            Job("lazy", 3600.0, lambda s, st: ran.append("lazy")))
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=scheduler.serve, args=(settings, stop, jobs),
                              kwargs={"wake": wake})
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while len(ran) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(ran) == ["eager", "lazy"]            # both at once, the first time
        wake.set()
        while len(ran) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran[2:] == ["eager"]                        # woken: only the eager one
    finally:
        stop.set()
        wake.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_the_certificates_job_is_scheduled_every_minute_and_woken() -> None:
    job = next(j for j in scheduler.JOBS if j.name == "certificates")
    assert job.every == 60.0 and job.on_wake
