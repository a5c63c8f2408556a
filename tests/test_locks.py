"""The per-app deploy lock: one holder at a time, a waiter is told and gives up in time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from opus_paas import locks
from opus_paas.errors import Conflict, InvalidName, ProtocolError
from opus_paas.settings import Settings


def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, deploy_wait_timeout=5)


def test_a_second_holder_waits_is_told_and_gets_the_lock_after_the_first(
        tmp_path: Path) -> None:
    order: list[str] = []
    told = threading.Event()
    first_in = threading.Event()

    def second() -> None:
        first_in.wait()
        with locks.app_lock(settings(tmp_path), "app", on_wait=told.set):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with locks.app_lock(settings(tmp_path), "app"):
        first_in.set()
        assert told.wait(5)
        time.sleep(0.3)
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"]


def test_other_apps_do_not_wait(tmp_path: Path) -> None:
    with locks.app_lock(settings(tmp_path), "one"), \
            locks.app_lock(settings(tmp_path), "two", timeout=0):
        pass


def test_a_waiter_gives_up_after_the_timeout_with_a_message(tmp_path: Path) -> None:
    with locks.app_lock(settings(tmp_path), "app"):
        started = time.monotonic()
        with pytest.raises(Conflict, match="deploy of app is still running after 1 s; push "
                                           "again"), \
                locks.app_lock(settings(tmp_path), "app", timeout=1):
            pass
        assert 0.9 < time.monotonic() - started < 3


def test_a_cancelled_waiter_stops_waiting(tmp_path: Path) -> None:
    cancelled = threading.Event()
    cancelled.set()
    with locks.app_lock(settings(tmp_path), "app"), \
            pytest.raises(ProtocolError, match="disconnected"), \
            locks.app_lock(settings(tmp_path), "app", cancelled=cancelled):
        pass


def test_a_crashed_holder_leaves_no_lock(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), locks.app_lock(settings(tmp_path), "app"):
        raise RuntimeError("the deploy crashed")
    with locks.app_lock(settings(tmp_path), "app", timeout=0):
        pass


@pytest.mark.parametrize("name", ["../x", "a/b", "-x", "A", ""])
def test_hostile_app_names_never_reach_the_file_system(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidName), locks.app_lock(settings(tmp_path), name):
        pass
    assert not (tmp_path / "locks").exists() or not any((tmp_path / "locks").iterdir())
