"""Runs one Procfile process (a worker, say) for supervisor and restarts it with
exponential backoff when it dies, however long after its start: 1 s, 2 s, 4 s … up to
60 s; a run that lasted 30 s or more starts the count again. Supervisor's own backoff
covers start-up only, so an app crashing a second after starting would loop forever.

Usage: ``python -m opus_runtime.supervise STATE_FILE NAME COMMAND``

The release's ``OPUS_ENV_FILE`` is applied, ``DYNO`` is NAME (e.g. ``worker.1``), and
bash runs COMMAND as Heroku does; each line it writes gets a timestamp. STATE_FILE (JSON)
tells ``opus ps`` what is going on: running, or crashed and when the next start is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from opus_runtime import guard
from opus_runtime.bootstrap import process_environment
from opus_runtime.stamp import record_crash, relay, write_state


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m opus_runtime.supervise STATE_FILE NAME COMMAND",
              file=sys.stderr)
        return 2
    state_file, name, command = argv
    env = process_environment(os.environ, DYNO=name)
    if env.get("OPUS_APP_ROOT"):
        os.chdir(env["OPUS_APP_ROOT"])
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None
    parent = guard.adopt_orphans()

    def stop(signum: int, _frame: object) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        if guard.parent_died(parent):
            guard.kill_all_after(guard.GRACE)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    crashes = 0
    while not stopping.is_set():
        started = time.monotonic()
        child = subprocess.Popen(["/bin/bash", "-c", command], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 preexec_fn=guard.prepare_child)
        write_state(state_file, state="running", pid=child.pid, crashes=crashes)
        assert child.stdout is not None
        relay(child.stdout, sys.stdout.buffer)
        code = child.wait()
        guard.end_descendants()   # what the process left (a daemonized helper)
        if stopping.is_set():
            break
        crashes, delay = record_crash(state_file, name, code, time.monotonic() - started,
                                      crashes)
        stopping.wait(delay)
    write_state(state_file, state="stopped", crashes=crashes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
