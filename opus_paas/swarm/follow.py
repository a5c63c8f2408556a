"""opus-swarm-follow: the front follows the swarm (docs/scale-out.md, Follow).

Swarm reschedules the tasks of a lost node by itself; the front must learn of it. This
program reads the manager's `docker events` (node and service changes) and, on each of
them and at least every second, re-reads the live releases' web tasks, probes each
task's `node:port` from the Opus host, and sets the members:

- a member on a node that is not Ready is disabled at once (through the
  balancer-manager: no reload), even if its container still answers (a node whose
  dockerd died keeps serving, and Swarm starts its replacement elsewhere);
- a rescheduled task becomes its slot's member once it answers its check (a member at
  a new address needs the front's config rendered again: a graceful reload);
- a slot with no task left (scaled down) loses its member.

The rule is `decide(…)`: pure, with the tasks, nodes and probe results as data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

from opus_paas import locks
from opus_paas import settings as settings_module
from opus_paas.errors import OpusError, ServiceError
from opus_paas.run import checks
from opus_paas.settings import Settings
from opus_paas.store import App, Store, SwarmMember
from opus_paas.swarm import nodes, services

log = logging.getLogger("opus.swarm.follow")

TICK = 1.0            # seconds between looks when no event comes
PROBE_TIMEOUT = 2.0
# A task Swarm reports starting may already serve (its container runs; Docker's own
# health check has not passed yet): Opus's probe decides.
ALIVE = ("starting", "running")
FAILED = ("failed", "rejected", "orphaned")
ENDED = ("complete", "shutdown", "remove", *FAILED)     # a task that runs no more


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One task as the manager reports it."""

    service: str
    slot: int
    node_id: str
    state: str          # running, starting, shutdown, …
    desired: str        # running, shutdown, …
    error: str = ""


def parse_tasks(raw: object, service_names: Mapping[str, str]) -> list[TaskInfo]:
    """Tasks from `docker inspect` of task ids (a JSON list), services by id -> name."""
    found = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        raw_status = item.get("Status")
        status: dict[str, object] = raw_status if isinstance(raw_status, dict) else {}
        slot = item.get("Slot")
        name = service_names.get(str(item.get("ServiceID", "")))
        if name is None or not isinstance(slot, int) or isinstance(slot, bool):
            continue
        found.append(TaskInfo(name, slot, str(item.get("NodeID", "")),
                              str(status.get("State", "")), str(item.get("DesiredState", "")),
                              str(status.get("Err", ""))[:300]))
    return found


def read_tasks(mgr: nodes.Manager, service_names: Iterable[str]) -> list[TaskInfo]:
    """The tasks of these services (any state) as the manager reports them."""
    wanted = sorted(set(service_names))
    if not wanted:
        return []
    listed = mgr.run("service", "inspect", "--format", "{{.ID}}\t{{.Spec.Name}}", *wanted)
    by_id = dict(line.split("\t", 1) for line in listed.stdout.splitlines() if "\t" in line)
    if not by_id:
        return []
    ids = mgr("service", "ps", "-q", "--no-trunc", *sorted(by_id.values())).split()
    if not ids:
        return []
    return parse_tasks(inspect_tasks(mgr, ids), by_id)


def inspect_tasks(mgr: nodes.Manager, ids: Sequence[str]) -> list[object]:
    """`docker inspect` of these tasks, less those removed since they were listed (a
    scale-down or a service removed meanwhile)."""
    result = mgr.run("inspect", "--type", "task", *ids)
    if result.returncode != 0 and "No such task" not in result.stderr:
        raise ServiceError(f"the swarm manager ({mgr.host}): docker inspect failed: "
                           f"{result.stderr.strip()[-800:]}")
    found = json.loads(result.stdout or "[]")
    return found if isinstance(found, list) else []


def node_map(mgr: nodes.Manager) -> dict[str, nodes.NodeState]:
    return {n.id: n for n in nodes.swarm_nodes_raw(mgr)}


def probe(host: str, port: int, check: checks.Check, domain: str,
          timeout: float = PROBE_TIMEOUT) -> bool:
    """Does the task at host:port pass the app's check (an answer below 500; with the
    check disabled, a connection)?"""
    try:
        if check.disabled:
            socket.create_connection((host, port), timeout=timeout).close()
            return True
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", check.path, headers={"Host": domain})
            return conn.getresponse().status < 500
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


def candidates(version: int, service: str, port_base: int, tasks: Sequence[TaskInfo],
               node_states: Mapping[str, nodes.NodeState]) -> list[tuple[str, int]]:
    """The addresses worth probing: running tasks of `service` on Ready nodes."""
    found = []
    for task in tasks:
        node = node_states.get(task.node_id)
        if task.service == service and task.desired == "running" and \
                task.state in ALIVE and node is not None and node.state == "ready" \
                and 1 <= task.slot <= services.SLOTS:
            found.append((node.address, services.slot_port(port_base, task.slot)))
    return found


def decide(app: str, version: int, ptype: str, port_base: int, tasks: Sequence[TaskInfo],
           node_states: Mapping[str, nodes.NodeState],
           probes: Mapping[tuple[str, int], bool],
           previous: Sequence[SwarmMember]) -> list[SwarmMember]:
    """The members of release `version`'s `ptype` (one per slot), from its tasks, the
    nodes' states, the probes' results and the members the front has now (pure).

    A slot's member is a running task on a Ready node not being drained that passes its
    probe (enabled;
    the one already its member if several do). Failing that, the slot keeps its member,
    disabled, while the slot has a task at all (one starting elsewhere, or one on a lost
    node); a slot with no task left has no member."""
    service = services.service_name(app, ptype, version)
    before = {m.slot: m for m in previous if m.version == version and m.ptype == ptype}
    by_slot: dict[int, list[TaskInfo]] = {}
    for task in tasks:
        if task.service == service and task.desired == "running" and \
                1 <= task.slot <= services.SLOTS:
            by_slot.setdefault(task.slot, []).append(task)
    members = []
    for slot in sorted(set(by_slot) | set(before)):
        port = services.slot_port(port_base, slot)
        healthy = []
        for task in by_slot.get(slot, []):
            node = node_states.get(task.node_id)
            if node is not None and node.state == "ready" and node.availability != "drain" \
                    and task.state in ALIVE and probes.get((node.address, port)) is True:
                healthy.append(SwarmMember(app, version, ptype, slot, node.name, node.address,
                                           port, True))
        old = before.get(slot)
        if healthy:
            same = [m for m in healthy if old is not None and m.host == old.host]
            members.append((same or healthy)[0])
        elif old is not None and slot in by_slot:
            members.append(dataclasses.replace(old, enabled=False))
    return members


# ---- the program -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Change:
    """What a look changed for one app: members switched on or off (the balancer-manager
    does it), or a new member set (the front's config is rendered again)."""

    app: App
    members: list[SwarmMember]
    enable: list[SwarmMember]
    disable: list[SwarmMember]
    render: bool


def diff(app: App, before: Sequence[SwarmMember], after: Sequence[SwarmMember]) -> Change | None:
    """How `after` differs from `before` (pure); None when it does not."""
    old = {(m.host, m.port): m for m in before}
    new = {(m.host, m.port): m for m in after}
    if old == new:
        return None
    render = set(old) != set(new)
    enable = [m for key, m in new.items() if m.enabled and (key not in old or
                                                            not old[key].enabled)]
    # Off in the running front: members turned off, and members gone from the set (a
    # slot whose task moved in one look: its old address may still answer).
    disable = [*(m for key, m in new.items() if not m.enabled and key in old and
                 old[key].enabled),
               *(dataclasses.replace(m, enabled=False) for key, m in old.items()
                 if key not in new and m.enabled)]
    return Change(app, list(after), enable, disable, render)


Apply = Callable[[Change], None]


def swarm_apps(store: Store) -> list[App]:
    """The apps served from the swarm now."""
    schedulers = store.list_schedulers()
    return [a for a in store.list_apps() if schedulers.get(a.id) == "swarm" and
            a.live_version is not None and not a.stopped]


def look(settings: Settings, store: Store, mgr: nodes.Manager, app: App,
         node_states: Mapping[str, nodes.NodeState]) -> Change | None:
    """One look at the app's live web release: the change to make, if any."""
    release = store.get_swarm_release(app, app.live_version or 0)
    if release is None or not release.services:
        return None
    service = services.service_name(app.name, "web", release.version)
    if service not in release.services:
        return None
    base = services.block_base(settings, release.block)
    tasks = read_tasks(mgr, [service])
    check = checks.from_json(app.health_check)
    domain = settings.app_domain(app.name)
    probes = {addr: probe(addr[0], addr[1], check, domain)
              for addr in candidates(release.version, service, base, tasks, node_states)}
    previous = [m for m in store.swarm_members(app) if m.version == release.version
                and m.ptype == "web"]
    members = decide(app.name, release.version, "web", base, tasks, node_states, probes,
                     previous)
    return diff(app, previous, members)


def look_all(settings: Settings, store: Store, mgr: nodes.Manager, apply: Apply) -> None:
    """A look at every swarm app, each under its lock (an app being deployed is left to
    its deploy), applying what changed."""
    apps = swarm_apps(store)
    if not apps:
        return
    node_states = node_map(mgr)
    for app in apps:
        with locks.app_lock_if_free(settings, app.name) as free:
            if not free:
                continue
            fresh = store.get_app(app.name)
            if fresh is None or fresh.live_version != app.live_version:
                continue
            change = look(settings, store, mgr, fresh, node_states)
            if change is not None:
                apply(change)


def run(settings: Settings, store: Store, apply: Apply, stop: threading.Event,
        tick: float = TICK) -> None:
    """Look on every event from the manager and at least every `tick` seconds, applying
    each change, until `stop` is set."""
    mgr = nodes.manager(settings)
    events = Events(mgr)
    events.start()
    try:
        while not stop.is_set():
            try:
                look_all(settings, store, mgr, apply)
            except OpusError as exc:
                log.warning("swarm follow: %s", exc.message)
            except Exception:   # keep following: one bad look must not end the program
                log.exception("swarm follow: a look failed")
            events.wake.wait(tick)
            events.wake.clear()
    finally:
        events.stop()


class Events:
    """`docker events` of the manager (node and service changes) in a thread: each one
    sets `wake`. Started again if it ends; `stop` ends it and its process."""

    def __init__(self, mgr: nodes.Manager) -> None:
        self.mgr = mgr
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.proc: subprocess.Popen[str] | None = None
        self.thread = threading.Thread(target=self._follow, daemon=True,
                                       name="docker-events")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
        self.thread.join(timeout=10)

    def _follow(self) -> None:
        while not self.stopping.is_set():
            try:
                with subprocess.Popen(
                        [nodes.DOCKER, "-H", self.mgr.host, "events", "--filter", "type=node",
                         "--filter", "type=service", "--format", "{{.Type}} {{.Action}}"],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                        stdin=subprocess.DEVNULL, text=True) as proc:
                    self.proc = proc
                    if self.stopping.is_set():
                        proc.kill()
                    assert proc.stdout is not None
                    for _line in proc.stdout:
                        self.wake.set()
                    proc.kill()
            except OSError as exc:
                log.warning("docker events: %s", exc)
            self.proc = None
            self.stopping.wait(1.0)


def main() -> None:
    from opus_paas.swarm.members import ApacheFront
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = settings_module.load()
    store = Store(settings.db_path)
    stop = threading.Event()
    front = ApacheFront(settings, store)
    log.info("following the swarm at %s", settings.swarm_manager)
    run(settings, store, front.apply, stop)


if __name__ == "__main__":
    main()
