"""The process-tree guard (opus_runtime/guard.py) with real processes: nothing a guarded
command starts outlives the command, the guard, or the guard's parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
