"""Puts a UTC timestamp in front of every line a process writes, so `opus logs` can merge
an app's processes and the front's access log in time order.

Usage: ``python stamp.py [--state FILE] COMMAND [ARGS…]`` (stdlib only: it also runs as a
plain script, for releases whose environment predates it). Signals reach the command; its
exit status is this program's.

With ``--state``, a command that dies on its own is started again only after a pause that
doubles with each death in a row (1 s, 2 s, 4 s … 60 s; a run of 30 s or more starts the
count again): supervisor restarts this program at once, and this program waits. FILE
(JSON) says what is going on, for ``opus ps`` and the deploy's health check.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, BinaryIO

if not __package__:     # run as a script (python -I …/opus_runtime/stamp.py)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from opus_runtime import guard

STABLE_SECONDS = 30.0
MAX_DELAY = 60.0
RELAY_GRACE = 5.0      # for the last lines once the command and its tree are gone
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)


def stamp() -> bytes:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ").encode()


def relay(lines: Iterable[bytes], out: BinaryIO) -> None:
    """Copy `lines` to `out`, each with the time it arrived, flushed at once."""
    for line in lines:
        out.write(stamp() + line.rstrip(b"\r\n") + b"\n")
        out.flush()


def relay_while_running(child: subprocess.Popen[bytes], out: BinaryIO) -> int:
    """Relay the child's output until it exits, end what it left, then relay the rest;
    its exit status. The output is not waited out first: what the child started holds it
    open (an Apache master's children outlive a master killed with SIGKILL, serving on),
    and this wrapper would neither start the command again nor stop when told to."""
    assert child.stdout is not None
    relaying = threading.Thread(target=relay, args=(child.stdout, out), daemon=True)
    relaying.start()
    code = child.wait()
    guard.end_descendants()
    relaying.join(RELAY_GRACE)      # (what is not ours, if anything, still holds it)
    return code


def delay_for(crashes: int) -> float:
    """Seconds to wait before start number `crashes` + 1 after `crashes` quick deaths."""
    return min(2.0 ** max(crashes - 1, 0), MAX_DELAY)


def read_state(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(path: str, **state: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump({**state, "updated": time.time()}, out)
    os.replace(tmp, path)


def run(argv: list[str], state_file: str | None = None) -> int:
    """Run `argv` with its output stamped; signals are passed on to it. Its tree is
    guarded (opus_runtime.guard): nothing of it outlives it, this wrapper or supervisor."""
    stopping = False
    escalated = False
    child: subprocess.Popen[bytes] | None = None
    parent = guard.adopt_orphans()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping, escalated
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        if guard.parent_died(parent) and not escalated:
            escalated = True
            guard.kill_all_after(guard.GRACE)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    crashes = 0
    if state_file:
        state = read_state(state_file)
        crashes = state.get("crashes", 0) if isinstance(state.get("crashes"), int) else 0
        wait = float(state.get("restart_at", 0) or 0) - time.time()
        if state.get("state") == "crashed" and wait > 0:
            relay([f"opus: restarting in {wait:.0f} s (crash {crashes})".encode()],
                  sys.stdout.buffer)
            time.sleep(min(wait, MAX_DELAY))
        if stopping:
            return 0
    started = time.monotonic()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             preexec_fn=guard.prepare_child)
    if state_file:
        write_state(state_file, state="running", pid=child.pid, crashes=crashes)
    code = relay_while_running(child, sys.stdout.buffer)
    if state_file and not stopping:
        record_crash(state_file, "", code, time.monotonic() - started, crashes)
    return code if code >= 0 else 128 - code


def record_crash(state_file: str, name: str, code: int, ran: float,
                 crashes: int) -> tuple[int, float]:
    """After a death on its own: the crashes in a row now, and the pause before the next
    start; both said in the log and written to the state file."""
    crashes = 1 if ran >= STABLE_SECONDS else crashes + 1
    delay = delay_for(crashes)
    who = f"{name} " if name else ""
    relay([f"opus: {who}exited with status {code} after {ran:.1f} s; restarting in "
           f"{delay:.0f} s (crash {crashes})".encode()], sys.stdout.buffer)
    write_state(state_file, state="crashed", crashes=crashes, exit_status=code,
                restart_at=time.time() + delay)
    return crashes, delay


def main(argv: list[str]) -> int:
    state_file = None
    if argv[:1] == ["--state"] and len(argv) >= 2:
        state_file, argv = argv[1], argv[2:]
    if not argv:
        print("usage: python stamp.py [--state FILE] COMMAND [ARGS…]", file=sys.stderr)
        return 2
    return run(argv, state_file)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
