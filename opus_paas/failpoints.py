"""Named points in a deploy where a test can stop Opus, to kill whatever it likes there.

Off unless Opus was started with OPUS_FAILPOINTS=1 (a test's Opus). Then a test arms one
point by writing its name to OPUS_HOME/failpoints/armed; the process that reaches it
disarms it (each arming fires once), writes its pid to failpoints/<name>.reached and
waits there while that file exists (at most PAUSE_SECONDS): the test kills whatever it
likes, then removes the file to let the deploy go on (if what waits is still alive).
This is how the fault-injection tests reach a phase of a deploy exactly, with nothing
else changed (as etcd's gofail and FreeBSD's fail points do).
"""

from __future__ import annotations

import contextlib
import os
import time

from opus_paas.settings import Settings

PAUSE_SECONDS = 300.0
# Every point, in the order a push passes them (docs/design-notes.md: a deploy's order
# of record).
POINTS = (
    "push.received",      # the pack is stored, nothing built
    "deploy.started",     # the release is recorded pending; its instance is starting
    "deploy.healthy",     # its health check passed; traffic still on the old instance
    "deploy.switched",    # the front sends traffic to it; the database does not say so yet
    "swarm.created",      # (a swarm app) its services and secret exist; no member yet
    "swarm.switched",     # (a swarm app) the front sends traffic to its members; the
                          # database does not say it is live yet
    "deploy.recorded",    # the database says it is live; a push's branch has not moved
    "push.ref_moved",     # the branch has moved; the release is not marked released yet
    "deploy.draining",    # the push has returned; the old instance is still running
)


def reached(settings: Settings, name: str) -> None:
    """Wait here if a test armed `name`; return at once otherwise."""
    if settings.failpoints != "1":
        return
    assert name in POINTS, name
    directory = settings.home / "failpoints"
    armed = directory / "armed"
    try:
        if armed.read_text().strip() != name:
            return
    except FileNotFoundError:
        return
    with contextlib.suppress(FileNotFoundError):
        armed.unlink()
    waiting = directory / f"{name}.reached"
    waiting.write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + PAUSE_SECONDS
    while waiting.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
