"""The front's view of the apps: each app's host names and balancer members, the sites
the front serves, and its refresh (render, test, install, graceful reload).

Each app owns two loopback ports, the members of its balancer: a deploy starts the new
release on the one that is not live (run/programs.py: next_port). An app on the swarm
(scheduler "swarm") has one member per web task instead, `node:port`, from the store's
swarm members: enabled ones serve, disabled ones wait in the config so that a switch is
a balancer-manager call, never a re-render.
"""

from __future__ import annotations

from typing import Protocol

from opus_paas import locks
from opus_paas.front import balancer, httpd
from opus_paas.settings import Settings
from opus_paas.store import App, Store, SwarmMember

MAX_MEMBERS = 256      # secureops's bound on a balancer's members


class FrontSignal(Protocol):
    """What a refresh needs of supervisor (supervisor.py): the front's state, and a
    signal to it."""

    def process_state(self, name: str) -> str: ...

    def signal(self, name: str, sig: str) -> None: ...


def ports(settings: Settings, app: App) -> tuple[int, int]:
    """The app's two loopback ports (blue and green)."""
    base = settings.app_port_base + 2 * app.id
    return base, base + 1


def app_domains(settings: Settings, store: Store, app: App) -> list[str]:
    """The host names an app answers to: <app>.<domain>, then its custom domains."""
    return [settings.app_domain(app.name), *store.domains(app)]


def site_for(settings: Settings, app: App, custom: list[str],
             sleeps: bool = False) -> httpd.Site | None:
    if app.live_port is None:
        return None
    return httpd.Site(
        app=app.name,
        domains=(settings.app_domain(app.name), *custom),
        port=app.live_port,
        members=ports(settings, app),
        sleeps=sleeps,
    )


def swarm_site(settings: Settings, app: App, custom: list[str],
               members: list[SwarmMember]) -> httpd.Site | None:
    """A swarm app's site (pure): its web tasks as members, each address once (enabled
    if any record of it is), newest release first, at most MAX_MEMBERS (enabled ones
    kept first); None without any web task."""
    found: dict[tuple[str, int], httpd.Member] = {}
    for m in sorted((m for m in members if m.ptype == "web"),
                    key=lambda m: (-m.version, m.slot)):
        key = (m.host, m.port)
        if key not in found or (m.enabled and not found[key].enabled):
            found[key] = httpd.Member(m.host, m.port, m.enabled)
    if not found:
        return None
    kept = sorted(found.values(), key=lambda m: not m.enabled)[:MAX_MEMBERS]
    order = list(found.values())
    return httpd.Site(app=app.name, domains=(settings.app_domain(app.name), *custom),
                      port=0, nodes=tuple(sorted(kept, key=order.index)))


def manager(settings: Settings, app: str) -> balancer.BalancerManager:
    """The front's balancer-manager for `app`'s vhosts (http, and https when the
    installed config has it): how a swarm deploy switches its members by URL
    (`httpd.Member.url`) without a re-render."""
    return balancer.BalancerManager(httpd.manager_ports(settings)[0],
                                    settings.app_domain(app), app,
                                    httpd.manager_token(settings),
                                    tls=httpd.tls_vhost(settings, app))


def live_sites(settings: Settings, store: Store, apps: list[App]) -> list[httpd.Site]:
    """The front's sites: every app that has a live release (on this host, or tasks on
    the swarm), with its domains (and the waker as the hot standby of those on this host
    that may sleep)."""
    custom = store.list_domains()
    sleepers = store.list_sleepers()
    schedulers = store.list_schedulers()
    on_swarm = store.list_swarm_members() if "swarm" in schedulers.values() else {}
    found = [swarm_site(settings, a, custom.get(a.id, []), on_swarm.get(a.id, []))
             if schedulers.get(a.id) == "swarm" else
             site_for(settings, a, custom.get(a.id, []), a.id in sleepers)
             for a in apps]
    return [s for s in found if s is not None]


def refresh_front(settings: Settings, store: Store, supervisor: FrontSignal,
                  pending: App | None = None) -> None:
    """Render the front from the database (with `pending` in place of its stored row),
    test it, and reload gracefully if it changed. Raises before anything goes live if
    Apache rejects the config."""
    with locks.host_lock(settings):
        refresh_front_held(settings, store, supervisor, pending)


def refresh_front_held(settings: Settings, store: Store, supervisor: FrontSignal,
                       pending: App | None = None) -> None:
    """refresh_front, for a caller that holds the host lock already."""
    apps = [pending if pending and a.id == pending.id else a for a in store.list_apps()]
    changed = httpd.write(settings, live_sites(settings, store, apps))
    if changed and supervisor.process_state("opus-front") == "RUNNING":
        supervisor.signal("opus-front", "USR1")
