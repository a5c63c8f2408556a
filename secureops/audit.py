"""Every request, allowed or denied, as one line appended to the log (0600)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def record(log: Path, caller: str, verb: str, app: str, outcome: str, reason: str = "") -> None:
    line = json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "caller": caller, "verb": verb[:64], "app": app[:64],
                       "outcome": outcome, "reason": reason[:300]}, ensure_ascii=True)
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return        # no log: the request's own outcome still stands
    with os.fdopen(fd, "a") as out:
        out.write(line + "\n")
