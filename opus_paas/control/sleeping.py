"""`opus ps:autosleep APP [PERIOD|off]`: let an idle app sleep (scale to zero).

The waker (run/waker.py) stops the app's web instance after PERIOD without a request
through the front, and starts it at the next one, which waits meanwhile.
"""

from __future__ import annotations

import re

from opus_paas import access, locks
from opus_paas.control.context import Command, Context
from opus_paas.errors import UsageError
from opus_paas.front import sites
from opus_paas.run import sleep
from opus_paas.settings import Settings
from opus_paas.store import App, Autosleep, Store
from opus_paas.supervisor import Supervisor

USAGE = "opus ps:autosleep APP [PERIOD|off]"
PERIOD = re.compile(r"([0-9]{1,7})([smhd]?)")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SECONDS = 365 * 86400


def parse_period(text: str, minimum: int) -> int:
    """`30m`, `2h`, `90s`, `1d` (or bare seconds) → seconds, between `minimum` and a
    year (pure)."""
    match = PERIOD.fullmatch(text)
    if not match:
        shown = text if text.isprintable() and len(text) <= 20 else repr(text[:20])
        raise UsageError(f"{shown} is not a period; give one such as 90s, 30m, 2h or 1d, "
                         "or off")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if not minimum <= seconds <= MAX_SECONDS:
        raise UsageError(f"{text} is outside what an app may sleep after: from "
                         f"{describe(minimum)} to {describe(MAX_SECONDS)}")
    return seconds


def describe(seconds: int) -> str:
    """Seconds as the shortest exact period: 90 → 90s, 1800 → 30m (pure)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def set_autosleep(settings: Settings, store: Store, actor: access.Actor, name: str,
                  period: int | None) -> App:
    """Sleep after `period` idle seconds (None: never; a sleeping app wakes). The front
    gets (or loses) the waker as the app's hot standby."""
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        supervisor = Supervisor(settings)
        if period is None and store.is_asleep(app):
            sleep.wake(settings, store, supervisor, app)
        before = store.autosleep(app)
        store.set_autosleep(app, period)
        try:
            sites.refresh_front(settings, store, supervisor)
        except BaseException:
            store.set_autosleep(app, before.period if before else None)
            raise
    return access.fresh(store, app)


def status_line(app: App, found: Autosleep | None) -> str:
    if found is None:
        return f"{app.name} never sleeps (`opus ps:autosleep {app.name} 30m` lets it)."
    state = "asleep; its next request wakes it" if found.asleep else "awake"
    return (f"{app.name} sleeps after {describe(found.period)} without a request; "
            f"it is {state}.")


def cmd_ps_autosleep(ctx: Context, args: list[str]) -> None:
    if len(args) not in (1, 2):
        raise UsageError(f"usage: {USAGE}")
    if len(args) == 2:
        period = None if args[1] == "off" else \
            parse_period(args[1], ctx.settings.autosleep_min_seconds)
        set_autosleep(ctx.settings, ctx.store, ctx.actor, args[0], period)
    app = access.app_for(ctx.store, ctx.actor, args[0])
    found = ctx.store.autosleep(app)
    if ctx.json:
        ctx.emit_json({"app": app.name, "period": found.period if found else None,
                       "asleep": bool(found and found.asleep)})
        return
    ctx.out(status_line(app, found))


COMMANDS = [
    Command("ps:autosleep", USAGE, "let an idle app sleep until its next request (off: "
            "never)", cmd_ps_autosleep, takes_app=True),
]
