"""The process-tree guard (opus_runtime/guard.py) with real processes: nothing a guarded
command starts outlives the command, the guard, or the guard's parent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opus_paas.guard import GUARD


def sleepers(tag: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().split(b"\0")[0] == tag.encode():
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_until(condition: object, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_daemon_the_command_left_is_ended_when_the_command_ends() -> None:
    """bash starts `sleep` in a session of its own (as a daemonizing helper would) and
    exits: the orphan comes back to the guard, which ends it."""
    tag = f"guard-test-{os.getpid()}-a"
    command = ["/bin/bash", "-c", f"setsid bash -c 'exec -a {tag} sleep 300' & sleep 0.3; exit 3"]
    done = subprocess.run([sys.executable, "-I", str(GUARD), "--grace", "1", "--", *command],
                          timeout=30, check=False)
    assert done.returncode == 3                      # the command's own status
    assert not sleepers(tag), "the daemon outlived its command"


def test_stamp_ends_what_holds_its_output_once_the_command_dies(tmp_path: Path) -> None:
    """An Apache master killed with SIGKILL leaves its children holding the instance's
    output: stamp records the death and ends them at once, instead of relaying until
    they go (it would then neither restart the instance nor stop when told to)."""
    tag = f"guard-test-{os.getpid()}-s"
    state = tmp_path / "state.json"
    command = ["/bin/bash", "-c", f"(exec -a {tag} sleep 300) & sleep 0.3; echo last; kill -9 $$"]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-I", str(RUNTIME / "opus_runtime" / "stamp.py"),
                           "--state", str(state), *command],
                          capture_output=True, text=True, timeout=60, check=False)
    assert time.monotonic() - started < 10, "stamp waited for the orphan"
    assert done.returncode == 128 + signal.SIGKILL, done.stdout + done.stderr
    assert re.search(r"Z last\n", done.stdout), done.stdout      # its output, stamped
    assert "exited with status -9" in done.stdout, done.stdout
    assert json.loads(state.read_text())["state"] == "crashed"
    assert not sleepers(tag), "what the command left outlived it"


def test_everything_dies_with_the_guards_parent(tmp_path: Path) -> None:
    """The guard's parent (supervisord, say) killed with SIGKILL: the guard and its
    whole tree go, even a child that ignores SIGTERM."""
    tag = f"guard-test-{os.getpid()}-b"
    stubborn = f"trap '' TERM; exec -a {tag} sleep 300"
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         f"subprocess.Popen([sys.executable, '-I', {str(GUARD)!r}, '--grace', '1', '--', "
         f"'/bin/bash', '-c', {stubborn!r}]); time.sleep(300)"])
    try:
        assert wait_until(lambda: sleepers(tag)), "the guarded command did not start"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: not sleepers(tag)), "the tree outlived the guard's parent"
    finally:
        for pid in sleepers(tag):
            os.kill(pid, signal.SIGKILL)


def test_signals_reach_the_command_and_its_status_comes_back() -> None:
    guarded = subprocess.Popen([sys.executable, "-I", str(GUARD), "--", "/bin/bash", "-c",
                                "trap 'exit 7' USR1; sleep 300 & wait"])
    time.sleep(0.5)
    guarded.send_signal(signal.SIGUSR1)
    assert guarded.wait(timeout=20) == 7


# A parent as hostile as they come: `nohup`-like ignored signals, Python's own ignored
# SIGPIPE, a blocked mask; exec passes all of these on.
HOSTILE_PARENT = (
    "import os, signal, sys\n"
    "for s in (signal.SIGHUP, signal.SIGPIPE, signal.SIGUSR2, signal.SIGXFSZ, signal.SIGINT):\n"
    "    signal.signal(s, signal.SIG_IGN)\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGALRM})\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n")
# `yes` ends only by SIGPIPE once `head` has gone; then the process shows what it got.
PIPE_AND_STATUS = "yes yes | head -c 4 >/dev/null; grep -E '^Sig(Ign|Blk)' /proc/self/status"
RUNTIME = GUARD.parent.parent


def status_lines(output: str) -> dict[str, str]:
    return dict(re.findall(r"(Sig(?:Ign|Blk)):\s+([0-9a-f]+)", output))


@pytest.mark.parametrize("wrapper", ["guard", "stamp", "web"])
def test_commands_start_with_default_signals_whatever_the_parent_had(wrapper: str) -> None:
    """Every wrapper that starts an app's command (the guard of steps and Opus's programs,
    stamp for web instances, web for a web: run as written) hands it default
    dispositions and an empty mask: the `yes | …` pipe ends, SigIgn and SigBlk are 0."""
    argv = {
        "guard": [str(GUARD), "--", "/bin/bash", "-c", PIPE_AND_STATUS],
        "stamp": [str(RUNTIME / "opus_runtime" / "stamp.py"), "/bin/bash", "-c",
                  PIPE_AND_STATUS],
        "web": ["-m", "opus_runtime.web", "8000", PIPE_AND_STATUS],
    }[wrapper]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(RUNTIME)}
    done = subprocess.run([sys.executable, "-c", HOSTILE_PARENT, sys.executable,
                           *(["-I"] if wrapper != "web" else []), *argv],
                          env=env, capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert status_lines(done.stdout) == {"SigIgn": "0" * 16, "SigBlk": "0" * 16}, done.stdout
