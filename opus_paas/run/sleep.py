"""Sleeping apps: stop an idle app's web instance, start it again when it is wanted.

An app with `opus ps:autosleep APP PERIOD` goes to sleep after PERIOD without a
request through the front: it is recorded asleep, its balancer member is disabled (new
requests go to its hot standby, the waker), the requests in flight finish, and its web
program leaves supervisor (the release stays; workers keep running). Waking is the
reverse: the live release's program is installed and started as a deploy starts one,
its health check must pass, then its member is enabled and it is recorded awake.

Both run under the app's deploy lock (the caller holds it), so a sleep, a wake and a
deploy never overlap. A deploy of a sleeping app (push, restart, scale, config…) starts
its new instance as its wake.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging

from opus_paas import output
from opus_paas.errors import OpusError, ServiceError
from opus_paas.front import httpd
from opus_paas.output import Emit
from opus_paas.run import checks, deploy, health, programs
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.supervisor import Supervisor

log = logging.getLogger("opus.sleep")

WAKE_HEADER = "X-Opus-Wake"


def wake_proof(token: str, app: str) -> str:
    """The proof a sleeping app's vhost sends the waker (secureops/front.py renders it
    the same way): an HMAC of the app's name under the front's token (pure)."""
    return hmac.new(token.encode(), b"opus-waker\0" + app.encode(), hashlib.sha256).hexdigest()


def proof_matches(settings: Settings, app: str, given: str | None) -> bool:
    """True if `given` is the front's proof for `app` (the token as it is now)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode(), wake_proof(httpd.manager_token(settings),
                                                          app).encode())


def put_to_sleep(settings: Settings, store: Store, supervisor: Supervisor, app: App) -> bool:
    """Stop the app's web instance, keeping its release; False if it has none running
    to stop (not deployed, stopped, asleep already). The caller holds the app's lock."""
    fresh = store.get_app(app.name)
    if fresh is None or fresh.live_port is None or fresh.stopped or store.is_asleep(fresh) \
            or store.autosleep(fresh) is None:
        return False
    store.set_asleep(fresh, True)
    manager = deploy._manager(settings, fresh)
    try:
        if manager is not None:
            # New requests go to the waker at once (no refused connection first), and
            # those already on the instance finish there.
            try:
                manager.set_enabled(fresh.live_port, False)
                manager.wait_drained(fresh.live_port, deploy.DRAIN_TIMEOUT)
            except ServiceError as exc:
                log.warning("%s: the front's balancer did not take the sleep (%s); its "
                            "retries lead to the waker", fresh.name, exc)
        programs.set_programs(settings, supervisor, fresh.name,
                            programs.expected_programs(settings, store, fresh))
    except BaseException:
        store.set_asleep(fresh, False)
        if manager is not None:
            with contextlib.suppress(ServiceError):
                manager.set_enabled(fresh.live_port, True)
        raise
    return True


def wake(settings: Settings, store: Store, supervisor: Supervisor, app: App,
         say: Emit | None = None) -> bool:
    """Start a sleeping app's web instance and wait until it passes its health check;
    False if it was not asleep. The caller holds the app's lock."""
    fresh = store.get_app(app.name)
    if fresh is None or not store.is_asleep(fresh):
        return False
    live = programs.live_program(settings, fresh)
    if live is None or fresh.live_port is None or fresh.stopped:
        store.set_asleep(fresh, False)
        return False
    if say is not None:
        say(output.step(f"Waking {fresh.name} (it was asleep)"))
    others = programs.type_programs(settings, store, fresh, fresh.live_version or 0,
                                  fresh.live_slug)
    state = programs.web_state_file(settings, fresh.name, fresh.live_version or 0,
                                  fresh.live_port)
    state.unlink(missing_ok=True)
    programs.set_programs(settings, supervisor, fresh.name, [live, *others])
    try:
        health.check_health(settings, settings.app_domain(fresh.name), fresh.live_port,
                            live.name, supervisor, checks.from_json(fresh.health_check), state)
        health.check_listener(settings, fresh.name, fresh.live_port)
    except BaseException:
        programs.set_programs(settings, supervisor, fresh.name, others)
        raise
    manager = deploy._manager(settings, fresh)
    if manager is not None:
        try:
            manager.set_enabled(fresh.live_port, True)
        except ServiceError as exc:
            log.warning("%s: the front's balancer did not enable the woken instance (%s)",
                        fresh.name, exc)
    store.set_asleep(fresh, False)
    return True


def wake_quietly(settings: Settings, store: Store, app: App,
                 say: Emit | None = None) -> None:
    """`wake`, for a change to the app (a push) that wants it running first: a wake
    that fails is reported and the change goes on (its deploy starts a new instance)."""
    try:
        wake(settings, store, Supervisor(settings), app, say)
    except OpusError as exc:
        if say is not None:
            say(output.alert(f"{app.name} did not wake ({exc.message}); the deploy starts it"))
