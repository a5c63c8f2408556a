"""Sleeping apps (`opus ps:autosleep`): an idle app's web instance stops, the front holds
its next request while the waker starts it, and that request is answered. Real front,
real supervisor; the session's Opus lets apps sleep after 2 s (checked every second)."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from opus_paas.control import sleeping
from opus_paas.errors import UsageError
from opus_paas.run import sleep, waker
from opus_paas.store import Store
from tests.conftest import Opus, SshKey, commit_all, git, push_main, require_tool

APP = "sleepy"
OTHER = "insomniac"       # another app's name: its proof wakes no other app
PROCFILE = "web: python -m http.server $PORT --bind 127.0.0.1\n"


def make_app(root: Path, opus: Opus, key: SshKey, name: str) -> Path:
    project = root / name
    project.mkdir()
    (project / "requirements.txt").write_text("six==1.16.0\n")
    (project / "Procfile").write_text(PROCFILE)
    (project / "index.html").write_text(f"{name} is up\n")
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "web")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{name}.git")
    push_main(project, opus, key)
    return project


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, opus: Opus, admin_key: SshKey) -> Path:
    return make_app(tmp_path_factory.mktemp("sleep"), opus, admin_key, APP)


def state(opus: Opus, app: str = APP) -> dict[str, object]:
    return dict(json.loads(opus.cli("ps:autosleep", app, "--json").stdout))


def instance_port(opus: Opus, app: str = APP) -> int:
    found = Store(opus.home / "opus.db").get_app(app)
    assert found is not None and found.live_port is not None
    return found.live_port


def listening(port: int) -> bool:
    """The OS's view: something listens on the loopback port."""
    table = Path("/proc/net/tcp").read_text()
    return any(f.split()[3] == "0A" and f.split()[1].endswith(f":{port:04X}")
               for f in table.splitlines()[1:])


def wait_asleep(opus: Opus, app: str = APP, seconds: float = 15) -> float:
    start = time.monotonic()
    while not state(opus, app)["asleep"]:
        assert time.monotonic() - start < seconds, f"{app} never fell asleep"
        time.sleep(0.3)
    return time.monotonic() - start


def fall_asleep(opus: Opus) -> None:
    """Let the app sleep, then make its period long: once woken it stays awake."""
    opus.cli("ps:autosleep", APP, "2s")
    wait_asleep(opus)
    opus.cli("ps:autosleep", APP, "1h")


def get(opus: Opus, host: str, headers: dict[str, str] | None = None,
        port: int | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port or opus.http_port, timeout=30)
    try:
        conn.request("GET", "/", headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def test_autosleep_is_set_shown_and_unset(opus: Opus, project: Path) -> None:
    assert "sleepy never sleeps (`opus ps:autosleep sleepy 30m` lets it)." in \
        opus.cli("ps:autosleep", APP).stdout
    assert "sleeps after 30m without a request; it is awake." in \
        opus.cli("ps:autosleep", APP, "30m").stdout
    assert state(opus) == {"app": APP, "period": 1800, "asleep": False}
    assert "never sleeps" in opus.cli("ps:autosleep", APP, "off").stdout
    assert state(opus)["period"] is None


@pytest.mark.parametrize("period", ["-1", "1s", "1", "99999999999d", "$(id)", "30 m", "2w",
                                    "0x10", "", "3m; reboot", "\uff190s", "1h\n", "1e3",
                                    "366d", "+5m", "5M"])
def test_invalid_periods_are_refused(period: str) -> None:
    with pytest.raises(UsageError, match=r"is not a period|outside what an app may sleep"):
        sleeping.parse_period(period, 2)


def test_periods_read_as_seconds() -> None:
    assert [sleeping.parse_period(p, 60) for p in ("90s", "30m", "2h", "1d", "120")] == \
        [90, 1800, 7200, 86400, 120]
    with pytest.raises(UsageError, match="from 1m to 365d"):
        sleeping.parse_period("59s", 60)
    assert [sleeping.describe(s) for s in (90, 1800, 7200, 86400, 61)] == \
        ["90s", "30m", "2h", "1d", "61s"]


def test_hostile_periods_change_nothing(opus: Opus, project: Path) -> None:
    said = {}
    for period in ("-1", "1s", "99999999999d", "$(id)"):
        refused = opus.cli("ps:autosleep", APP, period, check=False)
        assert refused.returncode != 0
        said[period] = refused.stderr
    assert "-1 is not a period; give one such as 90s, 30m, 2h or 1d, or off" in said["-1"]
    assert "1s is outside what an app may sleep after: from 2s to 365d" in said["1s"]
    assert "99999999999d is not a period" in said["99999999999d"]
    assert "$(id) is not a period" in said["$(id)"]
    assert state(opus)["period"] is None           # nothing changed


def test_an_idle_app_sleeps_and_its_first_request_wakes_it(opus: Opus, project: Path) -> None:
    port = instance_port(opus)
    assert listening(port)
    opus.cli("ps:autosleep", APP, "2s")
    wait_asleep(opus)
    # The OS's view: the instance is gone; `opus ps` says the app sleeps.
    deadline = time.monotonic() + 10
    while listening(port):
        assert time.monotonic() < deadline, "the sleeping app's instance still listens"
        time.sleep(0.1)
    assert "web.1  asleep" in opus.cli("ps", APP).stdout
    opus.cli("ps:autosleep", APP, "1h")      # (it sleeps on; once woken it stays awake)

    start = time.monotonic()
    status, headers, body = get(opus, opus.app_host(APP))
    woke = time.monotonic() - start
    assert (status, body) == (200, "sleepy is up\n")
    assert headers.get("X-Opus-Waker") == "held"
    print(f"wake: {woke:.2f} s")
    assert woke <= 2.0, f"the first request took {woke:.2f} s"
    assert listening(port) and state(opus)["asleep"] is False
    # Later requests go straight to the instance.
    time.sleep(1.2)      # (the woken member is retried a second after its last refusal)
    for _ in range(3):
        status, headers, _ = get(opus, opus.app_host(APP))
        assert status == 200 and "X-Opus-Waker" not in headers
    opus.cli("ps:autosleep", APP, "off")


def test_the_waker_answers_only_for_the_app_its_vhost_names(
        opus: Opus, project: Path) -> None:
    fall_asleep(opus)
    waker = int(opus.env["OPUS_WAKER_PORT"])
    token = (opus.home / "front.token").read_text().strip()
    host = opus.app_host(APP)
    # Another app knows its own proof (its vhost sends it) and no other.
    other, own = sleep.wake_proof(token, OTHER), sleep.wake_proof(token, APP)
    for headers in ({}, {"X-Opus-Wake": other}, {"X-Opus-Wake": "0" * 64},
                    {"X-Opus-Wake": sleep.wake_proof("1" * 32, APP)},
                    {"X-Opus-Wake": own + "0"}, {"X-Opus-Wake": own.upper()}):
        status, _, body = get(opus, host, headers, port=waker)
        assert status == 403, (headers, body)
    for name in ("nothing.localhost", f"{host}.evil", ""):     # the proof, no app's host
        assert get(opus, name, {"X-Opus-Wake": own}, port=waker)[0] == 403
    assert state(opus)["asleep"] is True and not listening(instance_port(opus))
    # (The front's own proof wakes it: the next test's requests.)


def test_no_request_fails_under_load_while_the_app_wakes(opus: Opus, project: Path) -> None:
    wrk = require_tool("wrk")
    if not state(opus)["asleep"]:
        fall_asleep(opus)
    result = subprocess.run([wrk, "-t2", "-c8", "-d2s", "-H", f"Host: {opus.app_host(APP)}",
                             f"http://127.0.0.1:{opus.http_port}/"],
                            capture_output=True, text=True, timeout=60, check=True)
    print(result.stdout)
    requests = int(re.search(r"(\d+) requests in", result.stdout).group(1))  # type: ignore[union-attr]
    assert requests > 100, result.stdout
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", result.stdout)
    print("the slowest request (it waited for the wake):", latency and latency.group(1))
    assert "Non-2xx" not in result.stdout and "Socket errors" not in result.stdout, \
        result.stdout
    assert state(opus)["asleep"] is False
    opus.cli("ps:autosleep", APP, "off")


def test_a_push_wakes_a_sleeping_app(opus: Opus, admin_key: SshKey, project: Path) -> None:
    fall_asleep(opus)        # (a long period now: it stays awake once the push wakes it)
    (project / "index.html").write_text("sleepy, pushed\n")
    commit_all(project, "v2")
    output = push_main(project, opus, admin_key)
    assert "Waking sleepy (it was asleep)" in output
    assert state(opus)["asleep"] is False
    opus.cli("ps:autosleep", APP, "off")
    status, headers, body = get(opus, opus.app_host(APP))
    assert (status, body) == (200, "sleepy, pushed\n") and "X-Opus-Waker" not in headers


def test_the_front_and_the_waker_make_the_same_proof() -> None:
    from secureops import front

    for app in ("a", "sleepy", "x-1"):
        assert front.wake_proof("f" * 32, app) == sleep.wake_proof("f" * 32, app)
    assert sleep.wake_proof("f" * 32, "a") != sleep.wake_proof("f" * 32, "b")
    assert sleep.wake_proof("f" * 32, "a") != sleep.wake_proof("e" * 32, "a")


def test_the_waker_reads_the_app_from_the_host_alone() -> None:
    domains = {"shop.localhost": "shop", "www.shop.example": "shop"}
    assert waker.host_app("shop.localhost:8080", domains) == "shop"
    assert waker.host_app("WWW.Shop.Example.", domains) == "shop"
    for hostile in (None, "", "blog.localhost", "shop.localhost.evil", "[::1]:80",
                    "shop.localhost\r\nX: y", "shop", "x@shop.localhost"):
        assert waker.host_app(hostile, domains) is None


def test_idle_apps_count_from_the_latest_sign_of_life() -> None:
    from opus_paas.store import App

    a, b, c = (App(i, n, "o", 1, 20000 + i) for i, n in enumerate("abc", 1))
    seen = {"a": 100.0, "b": 195.0}
    sleepers = [(a, 60, 0.0), (b, 60, 0.0), (c, 60, 150.0)]
    assert waker.idle_apps(200.0, 0.0, seen, sleepers) == [a]        # c changed at 150
    assert waker.idle_apps(200.0, 180.0, seen, sleepers) == []       # the waker just started
    assert waker.idle_apps(300.0, 0.0, seen, sleepers) == [a, b, c]


def test_the_access_log_is_read_once_and_whole_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("old line\n")
    reader = waker.AccessLog(log)
    assert reader.new_lines() == []                       # what was there before
    with log.open("a") as handle:
        handle.write("one\ntw")
    assert reader.new_lines() == ["one"]
    with log.open("a") as handle:
        handle.write("o\n")
    assert reader.new_lines() == ["two"]
    log.write_text("rotated\n")                           # shorter: read from the start
    assert reader.new_lines() == ["rotated"]
