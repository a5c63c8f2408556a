"""An app's health check: what a new web instance must answer before it gets traffic.

`Check` is the app's setting (stored as JSON in its row); `parse` reads `checks:set`'s
`path=… timeout=… attempts=…` (pure). The check itself runs in `health.check_health`.
"""

from __future__ import annotations

import dataclasses
import json
import re

from opus_paas.errors import UsageError

# A request target: printable ASCII without spaces, starting with "/".
PATH = re.compile(r"/[!-~]{0,199}")
MAX_TIMEOUT = 600
MAX_ATTEMPTS = 100


@dataclasses.dataclass(frozen=True)
class Check:
    path: str = "/"
    timeout: float | None = None   # seconds the new instance has; None: Opus's default
    attempts: int = 0              # give up after this many answers >= 500; 0: no limit
    disabled: bool = False         # no HTTP check: the instance need only accept a connection

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def describe(self, default_timeout: float) -> str:
        timeout = self.timeout if self.timeout is not None else default_timeout
        if self.disabled:
            return (f"disabled: a new instance gets traffic once it accepts connections "
                    f"(within {timeout:.0f} s)")
        attempts = f"{self.attempts}" if self.attempts else "no limit"
        return f"GET {self.path} below 500 within {timeout:.0f} s; attempts: {attempts}"


def from_json(text: str | None) -> Check:
    """The stored check; anything unreadable is the default one."""
    try:
        data = json.loads(text or "{}")
        return Check(**{k: v for k, v in data.items()
                        if k in {f.name for f in dataclasses.fields(Check)}})
    except (ValueError, TypeError, AttributeError):
        return Check()


def parse(current: Check, pairs: list[str]) -> Check:
    """`path=/health timeout=10 attempts=3` over `current`; the check is enabled again."""
    if not pairs:
        raise UsageError("give at least one of path=/PATH timeout=SECONDS attempts=N")
    changed = dataclasses.replace(current, disabled=False)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"{pair!r} is not KEY=VALUE; keys: path, timeout, attempts")
        if key == "path":
            if not PATH.fullmatch(value):
                raise UsageError(f"path {value[:60]!r} must start with / and hold printable "
                                 "characters only, no spaces (e.g. /health)")
            changed = dataclasses.replace(changed, path=value)
        elif key == "timeout":
            if not re.fullmatch(r"[0-9]{1,3}", value) or not 1 <= int(value) <= MAX_TIMEOUT:
                raise UsageError(f"timeout takes whole seconds from 1 to {MAX_TIMEOUT}")
            changed = dataclasses.replace(changed, timeout=float(value))
        elif key == "attempts":
            if not re.fullmatch(r"[0-9]{1,3}", value) or int(value) > MAX_ATTEMPTS:
                raise UsageError(f"attempts takes 0 (no limit) to {MAX_ATTEMPTS}")
            changed = dataclasses.replace(changed, attempts=int(value))
        else:
            raise UsageError(f"unknown check setting {key!r}; keys: path, timeout, attempts")
    return changed
