"""Opus and everything it started killed with SIGKILL in the middle of a deploy, as a
crash or a power cut would: `opus up` brings every app back at its recorded release and
scale, and the next push works. Runs its own Opus (the session's one must survive)."""

from __future__ import annotations

import contextlib
import os
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
    make_key,
    opus_processes,
    start_opus,
    stop_opus,
)
from tests.test_processes import running, wait_for

PROCFILE = "web: python -m http.server $PORT --bind 127.0.0.1\nworker: python worker.py\n"
WORKER = "import time\nwhile True:\n    time.sleep(1)\n"



def workers_of(home: Path) -> list[int]:
    """worker.py processes of this Opus (the session's Opus may run some too)."""
    mine = set(opus_pids(home))
    return [pid for pid in running("worker.py") if pid in mine]


def opus_pids(home: Path) -> list[int]:
    """Every live process of this Opus: its supervisord, the programs and apps below it."""
    marker = str(home).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes() or \
                        marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def kill_everything(home: Path) -> None:
    """SIGKILL every process of this Opus, sweeping again until none is left: a process
    being started at the moment of a sweep would otherwise outlive its supervisor."""
    deadline = time.monotonic() + 20
    while pids := opus_pids(home):
        assert time.monotonic() < deadline, f"still alive: {pids}"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@pytest.fixture()
def own_opus() -> Iterator[Opus]:
    opus = start_opus()
    try:
        yield opus
    finally:
        stop_opus(opus)


def test_kill_9_mid_deploy_then_up_brings_every_app_back(own_opus: Opus,
                                                         tmp_path: Path) -> None:
    opus = own_opus
    key: SshKey = make_key(tmp_path, "recovery")
    opus.cli("keys:add", "admin", str(key.public))
    apps = {}
    for name in ("alpha", "beta"):
        project = tmp_path / name
        project.mkdir()
        (project / "requirements.txt").write_text("six==1.16.0\n")
        (project / "Procfile").write_text(PROCFILE)
        (project / "worker.py").write_text(WORKER)
        (project / "index.html").write_text(f"{name} one\n")
        git(project, "init", "-q", "-b", "main")
        commit_all(project, "one")
        git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{name}.git")
        pushed = git(project, "push", "opus", "main", env=key.git_env(opus), check=False)
        assert pushed.returncode == 0, pushed.stderr
        apps[name] = project
    opus.cli("ps:scale", "beta", "worker=2")
    wait_for(lambda: len(workers_of(opus.home)) == 2)

    # A deploy of alpha is under way when everything dies.
    (apps["alpha"] / "index.html").write_text("alpha two\n")
    commit_all(apps["alpha"], "two")
    with subprocess.Popen(["git", "-C", str(apps["alpha"]), "push", "opus", "main"],
                          env=key.git_env(opus), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as pushing:
        assert pushing.stdout is not None
        for line in pushing.stdout:
            if "Starting v" in line:
                break
        kill_everything(opus.home)
        pushing.communicate(timeout=60)
    wait_for(lambda: not opus_processes(opus.home), 20)
    assert workers_of(opus.home) == []

    opus.cli("up")
    for name in ("alpha", "beta"):
        wait_for(lambda name=name: opus.get(opus.app_host(name))[0] == 200, 30)
    assert opus.get(opus.app_host("alpha"))[2] in ("alpha one\n", "alpha two\n")
    assert opus.get(opus.app_host("beta"))[2] == "beta one\n"
    wait_for(lambda: len(workers_of(opus.home)) == 2)     # beta's scale, as recorded

    # The next push works, and goes live.
    (apps["alpha"] / "index.html").write_text("alpha three\n")
    commit_all(apps["alpha"], "three")
    pushed = git(apps["alpha"], "push", "-f", "opus", "main", env=key.git_env(opus),
                 check=False)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert opus.get(opus.app_host("alpha"))[2] == "alpha three\n"
