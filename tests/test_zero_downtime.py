"""Deploys under load: wrk keeps requests flowing through the front while a push switches
the app to a new release through the balancer; not one request may fail."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    git,
    make_django_project,
    push_main,
    require_tool,
)

APP = "steady"
LONGEST = 120     # seconds of load at most
VIEW = '''\
from django.http import HttpResponse


def index(request):
    if request.GET.get("boom"):
        raise RuntimeError("boom, as the check asked")
    return HttpResponse("{text}")
'''


def commit_view(project: Path, text: str) -> None:
    (project / "pages" / "views.py").write_text(VIEW.replace("{text}", text))
    commit_all(project, text)



@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory, opus: Opus, admin_key: SshKey) -> Path:
    project = make_django_project(tmp_path_factory.mktemp("steady") / APP)
    commit_view(project, "release one")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
    push_main(project, opus, admin_key)
    return project


def failures(wrk_output: str) -> tuple[int, int, int]:
    """(requests, non-2xx/3xx responses, socket errors) from wrk's report."""
    requests = re.search(r"(\d+) requests in", wrk_output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk_output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        wrk_output)
    assert requests, wrk_output
    return (int(requests.group(1)), int(non_2xx.group(1)) if non_2xx else 0,
            sum(int(n) for n in sockets.groups()) if sockets else 0)


@contextlib.contextmanager
def under_load(opus: Opus, least: float = 3) -> Iterator[list[str]]:
    """wrk's requests through the front for as long as the block runs (at least `least`
    seconds, at most LONGEST): the whole of what the block does is under load, and no
    longer. Yields a list that holds wrk's report once the block is done."""
    wrk = require_tool("wrk")
    url = f"http://127.0.0.1:{opus.http_port}/"
    began = time.monotonic()
    load = subprocess.Popen([wrk, "-t2", "-c8", f"-d{LONGEST}s", "-H",
                             f"Host: {opus.app_host(APP)}", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    report: list[str] = []
    try:
        yield report
        time.sleep(max(0.0, least - (time.monotonic() - began)))
    finally:
        load.send_signal(signal.SIGINT)     # wrk stops and reports, as at its -d
        report.append(load.communicate(timeout=60)[0])


def test_a_deploy_under_load_fails_no_request(opus: Opus, admin_key: SshKey,
                                              steady: Path) -> None:
    status, _headers, body = opus.get(opus.app_host(APP))
    assert (status, body) == (200, "release one")
    commit_view(steady, "release two")
    with under_load(opus) as report:
        output = push_main(steady, opus, admin_key)    # (to its old instance's stop)
    assert "Switched through the front's balancer" in output
    requests, non_2xx, socket_errors = failures(report[0])
    assert requests > 100, report[0]
    assert (non_2xx, socket_errors) == (0, 0), report[0]
    status, _headers, body = opus.get(opus.app_host(APP))
    assert (status, body) == (200, "release two")


def test_restart_rescale_threads_and_rollback_under_load_fail_no_request(
        opus: Opus, steady: Path) -> None:
    with under_load(opus) as report:
        for argv in (["ps:restart", APP], ["ps:scale", APP, "web=2"],
                     ["ps:set", APP, "web", "threads=8"], ["rollback", APP]):
            assert "Switched through the front's balancer" in opus.cli(*argv).stdout, argv
    listed = json.loads(opus.cli("ps", APP, "--json").stdout)
    port = int(str(listed[0]["name"]).rsplit("-p", 1)[1])
    served_by = (opus.home / "apps" / APP / "run" / f"web-{port}" / "httpd.conf").read_text()
    assert re.search(r"WSGIDaemonProcess[^<]*?threads=8\b", served_by), served_by
    assert "2 process(es) x 8 threads" in opus.cli("ps", APP).stdout
    for bad in (["web", "threads=0"], ["web", "threads=65"], ["worker", "threads=2"],
                ["web", "threads=2;id"], ["web"]):
        refused = opus.cli("ps:set", APP, *bad, check=False)
        assert refused.returncode == 2 and "usage: opus ps:set" in refused.stderr
    requests, non_2xx, socket_errors = failures(report[0])
    assert requests > 100 and (non_2xx, socket_errors) == (0, 0), report[0]
    status, _headers, body = opus.get(opus.app_host(APP))
    assert (status, body) == (200, "release one")


def test_a_release_failing_its_check_never_gets_traffic(opus: Opus, steady: Path) -> None:
    """checks:set points the check at a path that fails: the restart is refused with what
    the check saw, and the old instance keeps serving; checks:disable switches on a
    connection alone."""
    live_before = opus.cli("releases", APP, "--json").stdout
    opus.cli("checks:set", APP, "path=/?boom=1", "attempts=2", "timeout=20")
    assert opus.cli("checks", APP).stdout.strip() == \
        "GET /?boom=1 below 500 within 20 s; attempts: 2"
    with under_load(opus) as report:
        refused = opus.cli("ps:restart", APP, check=False)
    assert refused.returncode != 0
    assert "failed its health check (GET /?boom=1) 2 times (last: HTTP 500" in refused.stderr
    assert "the old release keeps serving" in refused.stderr
    requests, non_2xx, socket_errors = failures(report[0])
    assert requests > 50 and (non_2xx, socket_errors) == (0, 0), report[0]
    assert opus.get(opus.app_host(APP))[0] == 200
    assert opus.cli("releases", APP, "--json").stdout == live_before

    opus.cli("checks:disable", APP)
    assert opus.cli("ps:restart", APP).returncode == 0
    opus.cli("checks:set", APP, "path=/", "attempts=0")
    for hostile in ("path=health", "path=/a b", "path=/\x07", "timeout=0", "timeout=9999",
                    "attempts=-1", "retries=3", "path"):
        refused = opus.cli("checks:set", APP, hostile, check=False)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert opus.cli("checks", APP).stdout.startswith("GET / below 500")
