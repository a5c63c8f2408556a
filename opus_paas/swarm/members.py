"""The front as swarm deploys and opus-swarm-follow drive it (docs/scale-out.md, Deploy
and follow): the store holds an app's members on nodes; new ones join the running front
through the balancer-manager (no graceful reload: it would close clients' kept-alive
connections), members are switched on and off there, and a render (a graceful reload)
is the fallback. Old members drain by Apache's count or, for node members, by the
connections this host holds to them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from opus_paas import locks
from opus_paas.errors import ServiceError
from opus_paas.front import balancer, httpd, sites
from opus_paas.settings import Settings
from opus_paas.store import App, Store, SwarmMember
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import follow

log = logging.getLogger("opus.swarm.members")


class ApacheFront:
    """The front as a swarm deploy and opus-swarm-follow drive it: the store holds the
    members; `render` puts them in the front's config (a graceful reload when it
    changed); the balancer-manager switches members on and off without a reload."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self.supervisor = Supervisor(settings)

    def manager(self, app: App) -> balancer.BalancerManager:
        return balancer.BalancerManager(httpd.manager_ports(self.settings)[0],
                                        self.settings.app_domain(app.name), app.name,
                                        httpd.manager_token(self.settings),
                                        tls=httpd.tls_vhost(self.settings, app.name))

    def render(self, pending: App | None = None) -> None:
        """The front's config from the store (`pending` in place of its app's row),
        reloaded gracefully if it changed."""
        sites.refresh_front(self.settings, self.store, self.supervisor, pending=pending)

    def write(self) -> None:
        """The front's config written to match the store, without a reload (the
        balancer-manager has made the running front match already)."""
        with locks.host_lock(self.settings):
            httpd.write(self.settings, sites.live_sites(self.settings, self.store,
                                                        self.store.list_apps()))

    def wait_members(self, app: App, members: Sequence[SwarmMember],
                     timeout: float = 15.0) -> None:
        """Until the running front's balancer has these members (after a reload)."""
        wanted = {member_url(m) for m in members}
        deadline = time.monotonic() + timeout
        manager = self.manager(app)
        while True:
            with contextlib.suppress(ServiceError):
                if wanted <= set(manager.members()[1]):
                    return
            if time.monotonic() > deadline:
                raise ServiceError(f"the front's balancer for {app.name} still lacks "
                                   f"{len(wanted)} new members after {timeout:.0f} s; see the "
                                   "front's error log")
            time.sleep(0.2)

    def add_members(self, app: App, members: Sequence[SwarmMember]) -> bool:
        """New members into the running front's balancers (each vhost's), disabled, with
        no reload: a graceful reload closes the clients' kept-alive connections, which
        fails requests under load. False when a balancer has no room left (its `growth`
        slots are used up until the next reload): then render."""
        try:
            for view in self.manager(app)._views():
                nonce, present = view._members()
                for member in members:
                    if member_url(member) not in present:
                        view._request("POST", urllib.parse.urlencode({
                            "b": view.balancer, "b_wyes": "1",
                            "b_nwrkr": member_url(member), "nonce": nonce}))
                present = view._members()[1]
                if any(member_url(m) not in present for m in members):
                    return False
        except ServiceError:
            return False
        return True

    def set_enabled(self, app: App, members: Sequence[SwarmMember], enabled: bool) -> None:
        """Members on or off in the running front (one not in it is off already)."""
        manager = self.manager(app)
        present = set(manager.members()[1]) if not enabled else set()
        for member in members:
            if enabled or member_url(member) in present:
                manager.set_enabled(member_url(member), enabled)

    def drain(self, app: App, members: Sequence[SwarmMember], timeout: float) -> list[str]:
        """Waits until no request is in flight on any of these members (all at once: one
        look at the balancer-manager's page, then one settling look); those that still
        had some at the timeout, as `URL (N busy)`."""
        urls = {member_url(m) for m in members}
        deadline = time.monotonic() + timeout
        try:
            for view in self.manager(app)._views():
                while True:
                    busy = self._busy(view, urls)
                    if not busy:
                        # A front child that picked a member just before the switch counts
                        # its request a moment later: look once more.
                        time.sleep(balancer.SETTLE_SECONDS)
                        busy = self._busy(view, urls)
                        if not busy:
                            break
                    if time.monotonic() >= deadline:
                        return [f"{url} ({count} busy)" for url, count in sorted(busy.items())]
                    time.sleep(0.1)
        except ServiceError as exc:
            return [exc.message]
        return []

    @staticmethod
    def _busy(view: balancer.BalancerManager, urls: set[str]) -> dict[str, int]:
        """Members with requests in flight. Apache's own count can stay above 0 when a
        request was cut short (seen twice: a drain that waited its whole timeout), so a
        member on a node is also drained when this host holds no connection to it: the
        front opens one per request to node members (`disablereuse=on`)."""
        busy = {url: m.busy for url, m in view._members()[1].items()
                if url in urls and m.busy}
        if not busy:
            return busy
        open_to = connections()
        return {url: n for url, n in busy.items() if _address(url) in open_to}

    def apply(self, change: follow.Change) -> None:
        """What opus-swarm-follow found: the store first, then the running front:
        members off at once, new ones added, members on. Whatever the balancer-manager
        does not take, a render (a graceful reload) puts as the store says."""
        app = change.app
        self.store.set_swarm_members(app, app.live_version or 0, "web",
                                     [m for m in change.members if m.ptype == "web"])
        log.info("%s: %d members (%d on, %d off)%s", app.name, len(change.members),
                 len(change.enable), len(change.disable),
                 "; new addresses" if change.render else "")
        try:
            if change.disable:
                self.set_enabled(app, change.disable, False)
            if change.render and not self.add_members(app, change.members):
                raise ServiceError("the front's balancer has no room for new members")
            if change.enable:
                self.set_enabled(app, change.enable, True)
        except ServiceError as exc:
            log.warning("%s: %s; rendering the front", app.name, exc.message)
            self.render()
            return
        self.write()


NODE_DRAIN_TIMEOUT = 30.0


def take_node_out(settings: Settings, store: Store, node: str,
                  timeout: float = NODE_DRAIN_TIMEOUT) -> list[str]:
    """Before `node` is drained: each app's live members on it go off in the front when
    others of its members serve, and their requests finish, so the drain stops no task
    that still has traffic (an app served from that node alone keeps it until its tasks
    run elsewhere: follow.py moves it then). The apps taken off it."""
    front = ApacheFront(settings, store)
    moved = []
    for app in store.list_apps():
        members = [m for m in store.swarm_members(app)
                   if m.version == app.live_version and m.ptype == "web"]
        leaving = [m for m in members if m.node == node and m.enabled]
        staying = [m for m in members if m.node != node and m.enabled]
        if not leaving or not staying:
            continue
        try:
            front.set_enabled(app, leaving, False)
        except ServiceError as exc:
            log.warning("%s: its members on %s stay on: %s", app.name, node, exc.message)
            continue
        store.set_swarm_members(app, members[0].version, "web",
                                [dataclasses.replace(m, enabled=False) if m in leaving
                                 else m for m in members])
        front.drain(app, leaving, timeout)
        moved.append(app.name)
    return moved


def member_url(member: SwarmMember) -> str:
    return f"http://{member.host}:{member.port}"


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


# TCP states in /proc/net/tcp: a request on its way (connecting) or in flight.
_OPEN_STATES = {"01", "02"}     # ESTABLISHED, SYN_SENT


def parse_proc_tcp(text: str) -> set[tuple[str, int]]:
    """The remote IPv4 addresses this host has open connections to (pure: the text of
    /proc/net/tcp)."""
    found = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] not in _OPEN_STATES:
            continue
        address, _, port = fields[2].partition(":")
        try:
            raw = bytes.fromhex(address)[::-1]
            found.add((".".join(str(b) for b in raw), int(port, 16)))
        except ValueError:
            continue
    return found


def connections() -> set[tuple[str, int]]:
    try:
        return parse_proc_tcp(Path("/proc/net/tcp").read_text())
    except OSError:
        return set()
