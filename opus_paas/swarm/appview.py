"""A swarm app as `opus ps`, `opus logs` and the dashboard show it: its tasks (which node
each instance runs on, its state, its slot) and its services' logs merged in time order,
each line from `TYPE.SLOT@NODE`.

An app's services are the ones labelled `opus.app=APP` (swarm/services.py names and
labels them); the manager is reached as `opus nodes` reaches it (swarm/nodes.py). The
parsers are pure; the functions that ask the manager are at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Collection, Generator, Iterable, Mapping, Sequence
from typing import Any

from opus_paas import names, redact
from opus_paas.settings import Settings
from opus_paas.store import App, Store, SwarmMember
from opus_paas.swarm import nodes
from opus_paas.swarm.services import LABEL_APP as APP_LABEL
from opus_paas.swarm.services import LABEL_PTYPE as TYPE_LABEL
from opus_paas.swarm.services import LABEL_RELEASE as RELEASE_LABEL

MAX_LINES = 10_000
RELIST_SECONDS = 2.0      # how often a follower looks for services of a new release
POLL_SECONDS = 0.3


@dataclasses.dataclass(frozen=True)
class Service:
    id: str
    name: str
    app: str
    ptype: str
    release: int


@dataclasses.dataclass(frozen=True)
class TaskView:
    """One task of an app's service: an instance, on a node."""

    ptype: str
    slot: int
    release: int
    service: str
    node: str            # the node's name (its opus.node label, or its host name)
    address: str         # node address:port ("" when not known)
    state: str           # Swarm's task state, upper case: RUNNING, STARTING, FAILED…
    since: float | None  # when it entered that state (epoch seconds)
    error: str


@dataclasses.dataclass(frozen=True, order=True)
class LogLine:
    at: str          # ISO 8601 UTC with microseconds, as Opus's own logs stamp lines
    source: str      # web.2@node3
    text: str


# ---- pure: the manager's answers --------------------------------------------------------

# What a node may be shown as: a node's host name is its own root's choice.
SHOWN_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# Ids the manager hands out, passed back to it as arguments (never as options).
DOCKER_ID = re.compile(r"[a-z0-9]{1,64}")


def node_shown(name: str) -> str:
    return name if SHOWN_NODE.fullmatch(name) else "unknown-node"


def docker_ids(out: str) -> list[str]:
    """The ids of a `-q` listing (anything that is not one is left out)."""
    return [word for word in out.split() if DOCKER_ID.fullmatch(word)]


def services_of(raw: Sequence[Mapping[str, object]], apps: Collection[str]) -> list[Service]:
    """The services of `docker service inspect` output labelled for one of `apps` (a
    service whose labels are not Opus's own is left out), by type and release."""
    found = []
    for item in raw:
        spec = item.get("Spec") if isinstance(item.get("Spec"), dict) else {}
        assert isinstance(spec, dict)
        labels = spec.get("Labels") or {}
        if not isinstance(labels, dict) or labels.get(APP_LABEL) not in apps:
            continue
        ptype, release = str(labels.get(TYPE_LABEL, "")), str(labels.get(RELEASE_LABEL, ""))
        if not names.PROCESS_TYPE.fullmatch(ptype) or not re.fullmatch(r"[0-9]{1,9}", release):
            continue
        ident, name = str(item.get("ID", "")), str(spec.get("Name", ""))
        if not DOCKER_ID.fullmatch(ident) or not SHOWN_NODE.fullmatch(name):
            continue
        found.append(Service(ident, name, str(labels[APP_LABEL]), ptype, int(release)))
    return sorted(found, key=lambda s: (s.ptype != "web", s.ptype, -s.release))


def timestamp(value: str) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, `Z` or an offset) as epoch seconds."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)",
                         value.strip())
    if not match:
        return None
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    try:
        moment = datetime.datetime.fromisoformat(f"{match.group(1)}.{fraction}{zone}")
    except ValueError:
        return None
    return moment.timestamp()


def iso(seconds: float) -> str:
    """Epoch seconds in the form Opus stamps its log lines with."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def tasks_of(raw: Sequence[Mapping[str, object]], services: Sequence[Service],
             node_names: Mapping[str, str], node_addresses: Mapping[str, str],
             members: Sequence[SwarmMember] = ()) -> list[TaskView]:
    """`docker inspect` of tasks as TaskViews: a task of a service not in `services` is
    left out; nodes by id (`node_names`, `node_addresses`); the port from the app's
    recorded members (same release, type and slot)."""
    by_id = {s.id: s for s in services}
    ports = {(m.version, m.ptype, m.slot): m.port for m in members}
    found = []
    for item in raw:
        service = by_id.get(str(item.get("ServiceID", "")))
        slot = item.get("Slot")
        if service is None or not isinstance(slot, int) or isinstance(slot, bool):
            continue
        status = item.get("Status") if isinstance(item.get("Status"), dict) else {}
        assert isinstance(status, dict)
        node_id = str(item.get("NodeID") or "")
        port = ports.get((service.release, service.ptype, slot))
        address = node_addresses.get(node_id, "")
        found.append(TaskView(
            ptype=service.ptype, slot=slot, release=service.release, service=service.name,
            node=node_shown(node_names.get(node_id, node_id[:12])),
            address=f"{address}:{port}" if address and port else "",
            state=str(status.get("State") or "unknown").upper(),
            since=timestamp(str(status.get("Timestamp") or "")),
            error=redact.printable(str(status.get("Err") or "")[:300])))
    return sorted(found, key=lambda t: (t.ptype != "web", t.ptype, -t.release, t.slot))


def log_line(line: str, service: Service, hostnames: Mapping[str, str]) -> LogLine | None:
    """One line of `docker service logs --timestamps --no-task-ids SERVICE`:
    `TIME SERVICE.SLOT@HOST    | text` (None for anything else)."""
    match = re.fullmatch(r"(\S+) " + re.escape(service.name) +
                         r"\.([0-9]{1,4})@(\S+?) *\|(?: |$)(.*)", line.rstrip("\r\n"),
                         re.S)
    if not match:
        return None
    seconds = timestamp(match.group(1))
    if seconds is None:
        return None
    node = node_shown(hostnames.get(match.group(3), match.group(3)))
    return LogLine(iso(seconds), f"{service.ptype}.{match.group(2)}@{node}", match.group(4))


UNAVAILABLE = re.compile(r"node ([a-z0-9]{25}) is not available")


def unavailable_nodes(stderr: str, node_names: Mapping[str, str]) -> list[str]:
    """The nodes whose logs the manager could not read (a Down node), by name, from the
    client's `incomplete log stream` error."""
    return sorted({node_names.get(found, found[:12]) for found in UNAVAILABLE.findall(stderr)})


def log_lines_of(outputs: Iterable[tuple[Service, str]], hostnames: Mapping[str, str],
                 count: int) -> list[LogLine]:
    """The last `count` lines over several services' logs, in time order (a stable
    sort: each task's own order stays)."""
    found = [line for service, text in outputs for raw in text.splitlines()
             if (line := log_line(raw, service, hostnames)) is not None]
    found.sort(key=lambda line: line.at)
    return found[-count:] if count else []


# ---- I/O: asking the manager ------------------------------------------------------------

def list_services(mgr: nodes.Manager, app: str | None = None,
                  ptype: str | None = None, apps: Collection[str] = ()) -> list[Service]:
    """The services of `app` (or of `apps`), by the label `opus.app=APP`; of one
    process type if given."""
    wanted = {app} if app is not None else set(apps)
    label = f"label={APP_LABEL}={app}" if app is not None else f"label={APP_LABEL}"
    ids = docker_ids(mgr("service", "ls", "--filter", label, "-q")) if wanted else []
    if not ids:
        return []
    found = services_of(json.loads(mgr("service", "inspect", *ids) or "[]"), wanted)
    return [s for s in found if ptype is None or s.ptype == ptype]


def _node_maps(mgr: nodes.Manager) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Node id → name, node id → address, host name → name."""
    found = nodes.swarm_nodes_raw(mgr)
    return ({n.id: n.name for n in found}, {n.id: n.address for n in found},
            {n.hostname: n.name for n in found})


def tasks(settings: Settings, members: Mapping[str, Sequence[SwarmMember]]
          ) -> dict[str, list[TaskView]]:
    """By app: the tasks meant to run of every service of each app in `members` (app
    name → its recorded members, for the ports), with their nodes."""
    mgr = nodes.manager(settings)
    services = list_services(mgr, apps=members) if len(members) != 1 else \
        list_services(mgr, next(iter(members)))
    if not services:
        return {}
    ids = docker_ids(mgr("service", "ps", "-q", "--no-trunc", "--filter",
                         "desired-state=running", *[s.id for s in services]))
    if not ids:
        return {}
    raw = json.loads(mgr("inspect", "--type", "task", *ids) or "[]")
    names_by_id, addresses, _ = _node_maps(mgr)
    found: dict[str, list[TaskView]] = {}
    for app, its_members in members.items():
        mine = [s for s in services if s.app == app]
        if mine:
            found[app] = tasks_of(raw, mine, names_by_id, addresses, its_members)
    return found


def on_swarm(store: Store, app: App) -> bool:
    """Whether the app runs (or is to run) on the swarm: its scheduler, or a release
    deployed there before a move back (it runs there until its next deploy)."""
    return store.scheduler(app) == "swarm" or bool(store.swarm_releases(app))


def processes(settings: Settings, store: Store,
              apps: Sequence[App]) -> dict[str, list[dict[str, Any]]]:
    """`opus ps`'s entries (as run/ps.py's, with node, address and release) of the
    swarm apps among `apps`."""
    wanted = {a.name: store.swarm_members(a) for a in apps if on_swarm(store, a)}
    if not wanted:
        return {}
    now = time.time()
    return {app: [as_process(t, now) for t in found]
            for app, found in tasks(settings, wanted).items()}


def as_process(task: TaskView, now: float) -> dict[str, Any]:
    """A task as one of `opus ps`'s entries (pure)."""
    running = task.state == "RUNNING" and task.since is not None
    return {"type": task.ptype, "number": task.slot, "name": f"{task.service}.{task.slot}",
            "state": task.state, "pid": None,
            "uptime": max(0, int(now - task.since)) if running and task.since else 0,
            "processes": 1, "crashes": 0, "node": task.node, "address": task.address,
            "release": task.release, "error": task.error}


def log_lines(settings: Settings, app: str, ptype: str | None, count: int) -> list[LogLine]:
    """The last `count` lines of the app's services (of one type), merged in time order."""
    count = max(0, min(count, MAX_LINES))
    mgr = nodes.manager(settings)
    services = list_services(mgr, app, ptype)
    if not services or not count:
        return []
    names_by_id, _, hostnames = _node_maps(mgr)
    outputs, missing = [], set()
    for service in services:
        # A task's stderr comes on the client's stderr: both are its lines. A service
        # removed meanwhile (a deploy ended) has none; a Down node's tasks cannot be read.
        result = mgr.run("service", "logs", "--timestamps", "--no-task-ids", "--tail",
                         str(count), service.id)
        outputs += [(service, result.stdout), (service, result.stderr)]
        missing.update(unavailable_nodes(result.stderr, names_by_id))
    found = log_lines_of(outputs, hostnames, count)
    if missing:
        found.append(LogLine(iso(time.time()), "swarm", "some lines could not be read: "
                             f"node {', '.join(sorted(missing))} is not available (see "
                             "`opus nodes`)"))
    return found


def follow(settings: Settings, app: str, ptype: str | None,
           stop: threading.Event) -> Generator[list[LogLine], None, None]:
    """Lines from now on, a round at a time (each round in time order), until `stop` is
    set; services of a new release are followed as they appear."""
    mgr = nodes.manager(settings)
    lines: queue.Queue[LogLine] = queue.Queue()
    followed: dict[str, subprocess.Popen[str]] = {}
    hostnames: dict[str, str] = {}
    listed = 0.0
    try:
        while not stop.is_set():
            if time.monotonic() - listed >= RELIST_SECONDS:
                listed = time.monotonic()
                services = [s for s in list_services(mgr, app, ptype) if s.id not in followed]
                if services:
                    hostnames.update(_node_maps(mgr)[2])
                for service in services:
                    followed[service.id] = _follow_service(mgr, service, hostnames, lines)
            stop.wait(POLL_SECONDS)
            batch = []
            while not lines.empty():
                batch.append(lines.get_nowait())
            yield sorted(batch, key=lambda line: line.at)
    finally:
        _end_all(list(followed.values()))


def _end_all(processes: list[subprocess.Popen[str]], grace: float = 2.0) -> None:
    """Terminate `processes`, give them `grace` seconds in all (not each), then kill
    those left: a follower that goes waits for its docker clients at most that long."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _follow_service(mgr: nodes.Manager, service: Service, hostnames: Mapping[str, str],
                    lines: queue.Queue[LogLine]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [nodes.DOCKER, "-H", mgr.host, "service", "logs", "--follow", "--timestamps",
         "--no-task-ids", "--tail", "0", service.id],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, errors="replace")

    def read(stream: Iterable[str]) -> None:
        for raw in stream:
            line = log_line(raw, service, hostnames)
            if line is not None:
                lines.put(line)

    for stream in (process.stdout, process.stderr):
        assert stream is not None
        threading.Thread(target=read, args=(stream,), daemon=True).start()
    return process
