"""Procfile process types besides web: scaled, listed, stopped, started and restarted per
type, kept across deploys, and restarted with backoff when they keep dying. Counts are
taken from the OS (/proc), not from Opus's own records."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Opus, SshKey, commit_all, git, push_main

APP = "workers"
PROCFILE = """\
web: python -m http.server $PORT --bind 127.0.0.1
worker: python worker.py
crasher: python crasher.py
"""
WORKER = """\
import os, time
print("worker", os.environ["DYNO"], "up; release says", os.environ.get("RELEASE_NOTE"),
      flush=True)
while True:
    time.sleep(1)
"""
CRASHER = """\
import sys, time
print("crasher up", flush=True)
time.sleep(0.5)
sys.exit(3)
"""




def running(script: str) -> list[int]:
    """PIDs whose command line runs `script` (the OS's view)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv[:2] == [b"python", script.encode()] or \
                        (len(argv) > 1 and argv[0].endswith(b"/python") and
                         argv[1] == script.encode()):
                    found.append(int(entry.name))
    return sorted(found)


def wait_for(predicate, seconds: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def ps(opus: Opus) -> list[dict[str, object]]:
    return list(json.loads(opus.cli("ps", APP, "--json").stdout))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, opus: Opus, admin_key: SshKey) -> Path:
    project = tmp_path_factory.mktemp("workers") / APP
    project.mkdir()
    (project / "requirements.txt").write_text("six==1.16.0\n")
    (project / "Procfile").write_text(PROCFILE)
    (project / "worker.py").write_text(WORKER)
    (project / "crasher.py").write_text(CRASHER)
    (project / "index.html").write_text("workers' web\n")
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "web, worker, crasher")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
    output = push_main(project, opus, admin_key)
    assert "Scaled to 0: crasher, worker (run one with `opus ps:scale workers crasher=1`)" \
        in output
    return project


def test_types_scale_up_and_down_and_survive_a_deploy(
        opus: Opus, admin_key: SshKey, project: Path) -> None:
    assert running("worker.py") == []
    scaled = opus.cli("ps:scale", APP, "worker=2")
    assert "Scaled workers: web=1 worker=2." in scaled.stdout
    wait_for(lambda: len(running("worker.py")) == 2)
    wait_for(lambda: all(p["state"] == "RUNNING" for p in ps(opus)))
    listed = [(p["type"], p["number"], p["state"]) for p in ps(opus)]
    assert listed == [("web", 1, "RUNNING"), ("worker", 1, "RUNNING"), ("worker", 2, "RUNNING")]
    opus.cli("ps:scale", APP, "worker=1")
    wait_for(lambda: len(running("worker.py")) == 1)
    before = running("worker.py")

    # A new release keeps the scale; its worker is a new process with the new config.
    opus.cli("config:set", APP, "RELEASE_NOTE=second")
    wait_for(lambda: len(running("worker.py")) == 1 and running("worker.py") != before)
    logs = opus.cli("logs", APP, "--ps", "worker", "-n", "50").stdout
    assert "worker worker.1 up; release says second" in logs
    (project / "index.html").write_text("workers' web, v2\n")
    commit_all(project, "v2")
    push_main(project, opus, admin_key)
    wait_for(lambda: len(running("worker.py")) == 1)
    assert opus.get(opus.app_host(APP))[2] == "workers' web, v2\n"


def test_stop_start_and_restart_one_type(opus: Opus, project: Path) -> None:
    opus.cli("ps:scale", APP, "worker=1")
    wait_for(lambda: len(running("worker.py")) == 1)
    stopped = opus.cli("ps:stop", APP, "worker")
    assert "Stopped workers worker" in stopped.stdout
    wait_for(lambda: running("worker.py") == [])
    assert "worker  stopped (`opus ps:start workers worker` starts it)" in \
        opus.cli("ps", APP).stdout
    assert opus.get(opus.app_host(APP))[0] == 200          # web is untouched
    opus.cli("ps:start", APP, "worker")
    wait_for(lambda: len(running("worker.py")) == 1)
    pid = running("worker.py")
    opus.cli("ps:restart", APP, "worker")
    wait_for(lambda: len(running("worker.py")) == 1 and running("worker.py") != pid)
    for hostile in ("release", "nope", "../x", "wörker", "a;b"):
        refused = opus.cli("ps:restart", APP, hostile, check=False)
        assert refused.returncode != 0 and refused.stderr.count("\n") == 1, refused.stderr
    assert opus.cli("ps:scale", APP, "nope=1", check=False).returncode != 0
    assert opus.cli("ps:scale", APP, "worker=17", check=False).returncode != 0


def test_a_process_that_keeps_dying_backs_off(opus: Opus, project: Path) -> None:
    opus.cli("ps:scale", APP, "crasher=1")
    started = time.monotonic()
    # It dies 0.5 s after each start: without backoff it would start ~12 times in 9 s;
    # with 1, 2, 4 s between starts it starts 4 times.
    wait_for(lambda: len(re.findall(r"restarting in", _crasher_log(opus))) >= 3, 30)
    log = _crasher_log(opus)
    delays = [int(d) for d in re.findall(r"restarting in (\d+) s \(crash \d+\)", log)]
    assert delays[:3] == [1, 2, 4], log
    assert log.count("crasher up") <= 5
    assert time.monotonic() - started >= 4       # 0.5 + 1 + 0.5 + 2 + 0.5 before the third
    # While it waits, `opus ps` says so: crashed, how often, when it starts again.
    wait_for(lambda: any(p["type"] == "crasher" and p["state"] == "CRASHED"
                         for p in ps(opus)), 15)
    shown = opus.cli("ps", APP).stdout
    assert re.search(r"crasher\.1  CRASHED   restarting in \d+ s \(crashed \d+ times in a row; "
                     r"`opus logs workers --ps crasher` shows why\)", shown), shown
    # A new release starts its count afresh.
    opus.cli("config:set", APP, "RELEASE_NOTE=third")
    wait_for(lambda: any(p["type"] == "crasher" and int(str(p.get("crashes", 0))) <= 1
                         for p in ps(opus)), 20)
    opus.cli("ps:scale", APP, "crasher=0")
    wait_for(lambda: running("crasher.py") == [])


def _crasher_log(opus: Opus) -> str:
    found = opus.cli("logs", APP, "--ps", "crasher", "-n", "200", check=False)
    return found.stdout


def test_a_planted_state_file_is_ignored(tmp_path: Path) -> None:
    """The app's user writes the backoff state: a link, a huge file or garbage there is
    ignored, never followed or trusted."""
    from opus_paas.run import ps
    from opus_paas.settings import Settings
    from opus_paas.store import App

    settings = Settings(home=tmp_path)
    app = App(1, "planted", "owner", 1, 20000)
    run = tmp_path / "apps" / "planted" / "run"
    run.mkdir(parents=True)
    (run / "worker.1.json").symlink_to("/etc/passwd")
    (run / "worker.2.json").write_text("x" * 10_000)
    (run / "worker.3.json").write_text("[not, json")
    (run / "worker.4.json").write_text('{"state": "crashed", "crashes": 2, "restart_at": 1e12}')
    now = 1e12 - 5
    assert [ps._backoff_state(settings, app, f"worker.{n}", now) for n in (1, 2, 3)] == \
        [{"crashes": 0}] * 3
    assert ps._backoff_state(settings, app, "worker.4", now) == \
        {"crashes": 2, "state": "CRASHED", "restart_in": 5}


def _web_server_pids(port: int) -> list[int]:
    wanted = ["python", "-m", "http.server", str(port)]
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().decode().split("\0")
                if argv[:4] == wanted or (argv[0].endswith("/python") and argv[1:4] == wanted[1:]):
                    found.append(int(entry.name))
    return found


def test_a_web_instance_that_keeps_dying_backs_off_too(opus: Opus, project: Path) -> None:
    """Killed twice in a row, the web instance comes back after 1 s, then 2 s; `opus ps`
    says so meanwhile, and it serves again afterwards."""
    import os
    import signal

    web = next(p for p in ps(opus) if p["type"] == "web")
    port = int(str(web["name"]).rsplit("-p", 1)[1])
    for crash in (1, 2):
        wait_for(lambda: len(_web_server_pids(port)) == 1, 20)
        os.kill(_web_server_pids(port)[0], signal.SIGKILL)
        wait_for(lambda crash=crash: any(p["type"] == "web" and p["state"] == "CRASHED" and
                                         p.get("crashes") == crash for p in ps(opus)), 10)
    shown = opus.cli("ps", APP).stdout
    assert re.search(r"web\.1  CRASHED   restarting in \d s \(crashed 2 times in a row", shown), \
        shown
    wait_for(lambda: opus.get(opus.app_host(APP))[0] == 200, 20)
    log = opus.cli("logs", APP, "--ps", "web", "-n", "300").stdout
    assert re.search(r"restarting in 1 s \(crash 1\)", log) and \
        re.search(r"restarting in 2 s \(crash 2\)", log), log
