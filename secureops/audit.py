"""Every request, allowed or denied, as one line appended to the log (0600). A request
whose "allow" line cannot be written is not carried out."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path


class Unlogged(Exception):
    """The log could not take the line."""


def record(log: Path, caller: str, verb: str, app: str, outcome: str, reason: str = "") -> None:
    line = json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "caller": caller, "verb": verb[:64], "app": app[:64],
                       "outcome": outcome, "reason": reason[:300]}, ensure_ascii=True)
    try:
        # O_NONBLOCK: a FIFO planted in its place cannot hang the helper.
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW |
                     os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise Unlogged(f"cannot open the log {log}: {exc.strerror}") from None
    with os.fdopen(fd, "a") as out:
        info = os.fstat(out.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise Unlogged(f"the log {log} is not a regular file of secureops's own")
        out.write(line + "\n")
