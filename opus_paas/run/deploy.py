"""Start a release's web instance, check its health, switch the front to it, stop the old one.

Each app owns two loopback ports; a deploy starts the new release on the one
that is not live, so old and new run side by side until the switch.
Reconcile makes supervisor and the front match the database (after `opus up`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from opus_paas import failpoints, locks, output
from opus_paas.build import release
from opus_paas.errors import OpusError, ServiceError
from opus_paas.front import balancer, httpd, sites
from opus_paas.output import Emit
from opus_paas.run import checks, health, programs
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.supervisor import Program, Supervisor
from opus_paas.swarm import deploy as swarm_deploy

log = logging.getLogger("opus.deploy")

DRAIN_SECONDS = 1.0    # after a graceful reload of the front
DRAIN_TIMEOUT = 30.0   # for the requests on an old instance after a balancer switch


@dataclasses.dataclass
class Switched:
    """A deploy whose traffic has switched and whose new release is recorded live: what
    is left is to let the old instance's requests finish, stop it, and run the other
    process types with the new release. A push does this after it returns, still
    holding the app's lock; whatever stops it half-way, recovery ends it (reconcile)."""

    settings: Settings
    store: Store
    supervisor: Supervisor
    app: App
    version: int
    slug_version: int
    new: Program
    manager: balancer.BalancerManager | None
    old_port: int | None

    def finish(self, emit: Emit) -> None:
        """Drain and stop the old instance, start the other process types anew, and
        keep a copy of the database as it is after this deploy."""
        failpoints.reached(self.settings, "deploy.draining")
        if self.manager is not None and self.old_port is not None:
            # Requests already on the old instance finish there before it stops.
            if not _drained(self.manager, self.old_port):
                emit(output.detail("The old instance still had requests after "
                                   f"{DRAIN_TIMEOUT:.0f} s; stopping it anyway"))
        elif self.old_port is not None:
            # A graceful reload lets each front child finish its request on the old
            # config; give them a moment before the old instance goes away. (A first
            # deploy has no old instance: no request can be on one.)
            time.sleep(DRAIN_SECONDS)
        # The other process types follow the release (a new one starts their backoff
        # afresh).
        others = programs.type_programs(self.settings, self.store, self.app, self.version,
                                        self.slug_version)
        programs.set_programs(self.settings, self.supervisor, self.app.name,
                              [self.new, *others])
        # Back on this host from the swarm: its services there go (swarm/deploy.py).
        swarm_deploy.retire(self.settings, self.store, self.app, emit)
        self.store.backup(self.settings.db_backup_path)


def deploy(settings: Settings, store: Store, supervisor: Supervisor, app: App,
           version: int, emit: Emit, *, record: Callable[[int], None],
           slug_version: int | None = None, running: App | None = None,
           data_back: swarm_deploy.DataBack | None = None) -> Switched:
    """Bring release `version` live; on any failure before the switch is recorded, the
    old release keeps serving and the new instance goes.

    `record(port)` writes that the release serves on `port`, in the same host-lock
    section as the front's switch (docs/design-notes.md: a deploy's order of record).
    `running` is the app as its live instance was started, when `app` already carries
    new settings for the new one (a rescale): the old instance's program must stay
    exactly as it is, or supervisor would restart it in the middle of the switch.
    `data_back`: a pinned app's data, brought back from its node already (a push does
    it before its release command); otherwise it is brought back here.
    Returns what is left to do once traffic has switched (Switched.finish)."""
    port = programs.next_port(settings, app)
    slug_version = version if slug_version is None else slug_version
    new = programs.web_program(settings, app.name, version, port, slug_version,
                               app.web_processes, app.web_threads)
    # A sleeping app's instance is not running: the new one is its wake.
    # Back from the swarm, the live release has no program here (swarm/deploy.py).
    on_swarm = swarm_deploy.serves(store, app)
    old = None if app.stopped or store.is_asleep(app) or on_swarm else \
        programs.live_program(settings, running or app)
    workers = [] if app.stopped or app.live_version is None or on_swarm else \
        programs.type_programs(settings, store, app, app.live_version, app.live_slug)
    # A new instance starts with no crash behind it (an earlier one of the same name
    # may have left its state).
    programs.web_state_file(settings, app.name, version, port).unlink(missing_ok=True)
    # A pinned app's data comes back from its node first (its tasks stop).
    back = data_back or (swarm_deploy.bring_data_back(settings, store, app, emit)
                         if on_swarm else None)
    emit(output.step(f"Starting v{version} on its own port"))
    try:
        programs.set_programs(settings, supervisor, app.name,
                              [p for p in (old, new) if p] + workers)
    except BaseException:
        if back is not None:
            with contextlib.suppress(OpusError):
                back.undo(emit)
        raise
    switched = False
    manager = _manager(settings, app)
    pending = dataclasses.replace(app, live_version=version, live_port=port)
    try:
        failpoints.reached(settings, "deploy.started")
        check = checks.from_json(app.health_check)
        health.check_health(settings, settings.app_domain(app.name), port, new.name,
                            supervisor, check,
                            programs.web_state_file(settings, app.name, version, port))
        health.check_listener(settings, app.name, port)
        failpoints.reached(settings, "deploy.healthy")
        emit(output.detail("Health check passed; switching traffic") if not check.disabled else
             output.detail("Accepting connections (health check disabled); switching traffic"))
        # One lock from the front's render to the database row: another app's deploy
        # rendering in between would otherwise put this app's old port back.
        with locks.host_lock(settings):
            # The front is switched first: if that fails, nothing else has changed and
            # the old release keeps serving.
            if manager is not None and _switch_members(settings, store, manager, pending,
                                                       app.live_port):
                emit(output.detail("Switched through the front's balancer"))
            else:
                manager = None
                sites.refresh_front_held(settings, store, supervisor, pending=pending)
            switched = True
            failpoints.reached(settings, "deploy.switched")
            record(port)
            store.set_asleep(app, False)    # (if it may sleep: awake, idle from now)
    except BaseException:
        # Whatever stopped the deploy (a failed check, the client gone, a bug), the new
        # instance goes and the old one keeps serving.
        if switched:
            _switch_back(settings, store, supervisor, manager, app, port)
        programs.set_programs(settings, supervisor, app.name, ([old] if old else []) + workers)
        if back is not None:
            with contextlib.suppress(OpusError):
                back.undo(emit)
        raise
    if back is not None:
        back.done()
    try:
        release.point_current(settings, app.name, slug_version)
    except (OSError, ServiceError) as exc:   # the record says what is live; recovery
        # points it again
        log.warning("%s: current not pointed at v%d (%s)", app.name, slug_version, exc)
    failpoints.reached(settings, "deploy.recorded")
    return Switched(settings, store, supervisor, store.get_app(app.name) or pending, version,
                    slug_version, new, manager, app.live_port)


def _manager(settings: Settings, app: App) -> balancer.BalancerManager | None:
    """The app's balancer-manager, when the front already serves the app (a first deploy
    adds its vhost with a graceful reload instead)."""
    if app.live_port is None:
        return None
    return balancer.BalancerManager(httpd.manager_ports(settings)[0],
                                    settings.app_domain(app.name),
                                    app.name, httpd.manager_token(settings),
                                    tls=httpd.tls_vhost(settings, app.name))


def _switch_members(settings: Settings, store: Store, manager: balancer.BalancerManager,
                    pending: App, old_port: int | None) -> bool:
    """Flip the app's balancer to `pending`'s port, and write the front's config to match
    (without a reload, so the next one keeps this state). False when a switch is not
    enough (the front's config has other changes to load, or no balancer for the app
    yet): the caller reloads the front instead."""
    assert pending.live_port is not None
    if not httpd.is_current(settings, sites.live_sites(settings, store, store.list_apps())):
        return False     # something else changed too (a domain, say): that needs a reload
    try:
        manager.members()
    except ServiceError:
        return False
    apps = [pending if a.id == pending.id else a for a in store.list_apps()]
    httpd.write(settings, sites.live_sites(settings, store, apps))
    try:
        manager.switch(pending.live_port, old_port)
    except ServiceError:
        # Half a switch (the new member enabled, the old one not yet disabled) must not
        # stay: the new instance is about to be stopped.
        if old_port is not None:
            with contextlib.suppress(ServiceError):
                manager.switch(old_port, pending.live_port)
        httpd.write(settings, sites.live_sites(settings, store, store.list_apps()))
        raise
    return True


def _switch_back(settings: Settings, store: Store, supervisor: Supervisor,
                 manager: balancer.BalancerManager | None, app: App, new_port: int) -> None:
    """Undo a switch: the old member serves again, the front's config as the database
    says."""
    if manager is not None and app.live_port is not None:
        try:
            with locks.host_lock(settings):
                manager.switch(app.live_port, new_port)
                httpd.write(settings, sites.live_sites(settings, store, store.list_apps()))
            return
        except ServiceError:
            pass
    sites.refresh_front(settings, store, supervisor)


def _drained(manager: balancer.BalancerManager, port: int) -> bool:
    try:
        return manager.wait_drained(port, DRAIN_TIMEOUT)
    except ServiceError:
        time.sleep(DRAIN_SECONDS)
        return False


def reconcile(settings: Settings, store: Store, supervisor: Supervisor,
              only: str | None = None) -> None:
    """Make supervisor's app programs (every app's, or `only` this one's) and the front
    match the database; the front is reloaded if its config changed."""
    with locks.host_lock(settings):
        for app in store.list_apps():
            if only is None or app.name == only:
                programs.install_programs(settings, app.name,
                                          programs.expected_programs(settings, store, app))
        supervisor.apply()
        sites.refresh_front_held(settings, store, supervisor)
