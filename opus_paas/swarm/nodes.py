"""Swarm nodes: `opus nodes:add HOST`, `nodes`, `nodes:remove NAME` (docs/scale-out.md,
Nodes). Opus drives the manager through its Docker socket (settings.swarm_manager) and
each node over SSH (swarm/ssh.py). Every step is safe to run again: a node added half
way is finished by the next nodes:add, a removal cut short by the next nodes:remove."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from opus_paas import names
from opus_paas.data import nodes as databases
from opus_paas.errors import Conflict, NotFound, OpusError, ServiceError, UsageError
from opus_paas.settings import Settings
from opus_paas.store import Store, SwarmNode
from opus_paas.swarm import registry, ssh, volumes

DOCKER = "/usr/bin/docker"    # docker.io's client, by path (another may come first on PATH)
LABEL = "opus.node"
SWARM_PORT = 2377
NOT_CONFIGURED = ("no swarm is configured: set swarm_manager in $OPUS_HOME/opus.toml (or "
                  "OPUS_SWARM_MANAGER) to the manager's Docker socket, e.g. "
                  "/run/docker.sock, on a host where `docker swarm init` ran "
                  "(docs/scale-out.md)")
Emit = Callable[[str], None]


class Manager:
    """The swarm manager's Docker API through docker.io's client (argv only)."""

    def __init__(self, endpoint: str, config_dir: Path | None = None) -> None:
        self.host = endpoint if "://" in endpoint else f"unix://{endpoint}"
        # The client's config: the registry's credentials, which `--with-registry-auth`
        # hands to the nodes with a service.
        self.options = ["--config", str(config_dir)] if config_dir else []

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([DOCKER, *self.options, "-H", self.host, *args],
                                  capture_output=True,
                                  text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ServiceError(f"{DOCKER} is missing on the Opus host: install docker.io "
                               "(apt-get install docker.io)") from None
        except subprocess.TimeoutExpired:
            raise ServiceError(f"the swarm manager ({self.host}) did not answer `docker "
                               f"{args[0]}` within {timeout:.0f} s; check it runs") from None

    def __call__(self, *args: str, timeout: float = 60.0) -> str:
        result = self.run(*args, timeout=timeout)
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip())[-800:]
            raise ServiceError(f"the swarm manager ({self.host}): docker {args[0]} "
                               f"{args[1] if len(args) > 1 else ''} failed: {detail}")
        return result.stdout


def manager(settings: Settings) -> Manager:
    """The manager, or a UsageError saying how to configure one."""
    if not settings.swarm_manager:
        raise UsageError(NOT_CONFIGURED)
    return Manager(settings.swarm_manager, registry.docker_config_dir(settings))


def manager_address(mgr: Manager) -> str:
    """The address nodes join at (the manager's advertised address), checking that the
    socket is a swarm manager's."""
    raw = mgr("info", "--format", "{{json .Swarm}}")
    info = json.loads(raw or "{}")
    if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
        raise Conflict(f"{mgr.host} is not a swarm manager (state "
                       f"{info.get('LocalNodeState') or 'unknown'}): run `docker swarm init "
                       "--advertise-addr ADDRESS` there, or point swarm_manager at one")
    return str(info["NodeAddr"])


# ---- the swarm's view ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NodeState:
    id: str
    name: str          # the opus.node label, or the machine's hostname
    hostname: str
    address: str
    state: str         # ready, down, unknown…
    availability: str  # active, pause, drain
    manager: bool
    tasks: int = 0


@dataclasses.dataclass(frozen=True)
class Task:
    service: str
    slot: int | None
    node: str          # NodeState.name
    state: str


def swarm_nodes(mgr: Manager) -> list[NodeState]:
    """Every node of the swarm as the manager sees it, with its running tasks counted."""
    found = swarm_nodes_raw(mgr)
    if not found:
        return []
    counts: dict[str, int] = {}
    for task in _running_tasks(mgr, [n.id for n in found], found):
        counts[task.node] = counts.get(task.node, 0) + 1
    return sorted((dataclasses.replace(n, tasks=counts.get(n.name, 0)) for n in found),
                  key=lambda n: (not n.manager, n.name))


def _node_state(raw: dict) -> NodeState:  # type: ignore[type-arg]
    hostname = str(raw.get("Description", {}).get("Hostname", ""))
    label = (raw.get("Spec", {}).get("Labels") or {}).get(LABEL, "")
    return NodeState(id=str(raw["ID"]), name=str(label or hostname), hostname=hostname,
                     address=str(raw.get("Status", {}).get("Addr", "")),
                     state=str(raw.get("Status", {}).get("State", "unknown")),
                     availability=str(raw.get("Spec", {}).get("Availability", "")),
                     manager=raw.get("Spec", {}).get("Role") == "manager")


_TASK_NAME = re.compile(r"(.+)\.([0-9]+)")
# A Swarm node id as dockerd makes them (what a node says of itself is checked: it goes
# into the manager's docker command line, where a leading '-' would be an option).
NODE_ID = re.compile(r"[a-z0-9]{25}")


def checked_node_id(value: object, host: str) -> str:
    text = str(value or "")
    if not NODE_ID.fullmatch(text):
        raise ServiceError(f"{host} reports a swarm node id that is not one "
                           f"({text[:40]!r}); check the node's dockerd (docker info)")
    return text


def _running_tasks(mgr: Manager, node_ids: Sequence[str],
                   found: Sequence[NodeState]) -> Iterator[Task]:
    by_hostname = {n.hostname: n.name for n in found}
    out = mgr("node", "ps", *node_ids, "--filter", "desired-state=running",
              "--format", "{{.Name}}\t{{.Node}}\t{{.CurrentState}}")
    seen: set[tuple[str, str]] = set()
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or (parts[0], parts[1]) in seen:
            continue
        seen.add((parts[0], parts[1]))
        name = parts[0].lstrip("\\_ ").strip()
        match = _TASK_NAME.fullmatch(name)
        service, slot = (match.group(1), int(match.group(2))) if match else (name, None)
        yield Task(service, slot, by_hostname.get(parts[1], parts[1]), parts[2].split(" ")[0])


def tasks_by_node(mgr: Manager, services: Sequence[str] | None = None) -> dict[str, list[Task]]:
    """Node name -> the tasks meant to run there (of `services`, default all), for
    `opus ps` and the dashboard: which node each instance is on."""
    found = swarm_nodes_raw(mgr)
    if not found:
        return {}
    tasks: dict[str, list[Task]] = {}
    for task in _running_tasks(mgr, [n.id for n in found], found):
        if services is None or task.service in services:
            tasks.setdefault(task.node, []).append(task)
    return tasks


def swarm_nodes_raw(mgr: Manager) -> list[NodeState]:
    """Every node of the swarm as the manager sees it (tasks not counted)."""
    ids = mgr("node", "ls", "-q").split()
    return [_node_state(raw) for raw in json.loads(mgr("node", "inspect", *ids))] if ids else []


def listing(settings: Settings, store: Store) -> list[dict[str, object]]:
    """`opus nodes`: the manager and every node, with Opus's record of each."""
    recorded = {n.docker_id: n for n in store.list_nodes()}
    rows: list[dict[str, object]] = []
    for node in swarm_nodes(manager(settings)):
        record = recorded.pop(node.id, None)
        rows.append({"name": record.name if record else node.name,
                     "address": record.address if record else node.address,
                     "state": node.state, "availability": node.availability,
                     "role": "manager" if node.manager else "worker", "tasks": node.tasks,
                     "added_at": record.added_at if record else None})
    for record in recorded.values():   # recorded, but the swarm no longer knows it
        rows.append({"name": record.name, "address": record.address, "state": "missing",
                     "availability": "-", "role": "worker", "tasks": 0,
                     "added_at": record.added_at})
    return rows


# ---- nodes:add --------------------------------------------------------------------------

def add(settings: Settings, store: Store, host: str, emit: Emit, *, name: str | None = None,
        port: int = 22) -> SwarmNode:
    """Brings the machine at `host` into the swarm (see the module's docstring)."""
    host = names.check_node_host(host)
    if name is not None:
        names.check_node_name(name)
    mgr = manager(settings)
    join_at = f"{_bracketed(manager_address(mgr))}:{SWARM_PORT}"
    if name is None:    # added before (perhaps half way): under the name it was given
        name = next((n.name for n in store.list_nodes() if n.address == host), None)
    _check_unique(store, host, name)
    emit(f"-----> Connecting to root@{ssh.host_entry(host, port)}")
    with ssh.Node(settings, host, port, allow_new_host_key=True) as node:
        if node.new_host_key is not None:
            emit(f"       host key {ssh.fingerprint(node.host_key)} seen for the first "
                 "time: pinned")
        else:
            emit(f"       host key {ssh.fingerprint(node.host_key)} matches the pinned one")
        node.pin()
        hostname = node.check(["hostname"], "reading the host name").strip()
        if name is None:
            if not names.NODE_NAME.fullmatch(hostname):
                raise UsageError(f"the node's host name ({hostname[:64]!r}) is not a valid "
                                 "node name: give one with --name NAME")
            name = hostname
            _check_unique(store, host, name)
        _install_docker(node, emit)
        _start_docker(node, emit)
        node_id = _join(mgr, node, join_at, emit)
        _install_registry_ca(settings, node, emit)
    emit(f"-----> Labelling the node {LABEL}={name}")
    mgr("node", "update", "--label-add", f"{LABEL}={name}", node_id)
    _wait(lambda: _state(mgr, node_id) == "ready", 30,
          f"the manager still does not report {name} Ready after 30 s: see "
          "`docker node ls` on the manager, then run nodes:add again")
    record = SwarmNode(name, host, port, node_id, time.time())
    store.add_node(record)
    emit(f"       {name} ({host}) is Ready in the swarm")
    _follow_databases(settings, store, mgr, emit, f"opus nodes:add {host}")
    return record


def _follow_databases(settings: Settings, store: Store, mgr: Manager, emit: Emit,
                      again: str) -> None:
    """Opus's Postgres takes TLS connections from exactly the swarm's node addresses
    (data/nodes.py; nothing when the apps' databases are not on Opus's own cluster)."""
    addresses = sorted({n.address for n in swarm_nodes_raw(mgr) if n.address})
    try:
        change = databases.follow(settings, store, addresses)
    except OpusError as exc:
        raise ServiceError(f"{exc.message}; the swarm itself is done: once that is "
                           f"fixed, run `{again}` again") from None
    if change is not None:
        emit(f"       Postgres takes TLS connections from {len(change.nodes)} node "
             f"address{'es' if len(change.nodes) != 1 else ''}")
        if change.pending:
            emit(f"       {change.pending}")


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _check_unique(store: Store, host: str, name: str | None) -> None:
    for known in store.list_nodes():
        if name is not None and known.name == name and known.address != host:
            raise Conflict(f"a node named {name} exists already ({known.address}): choose "
                           "another --name, or remove it first (opus nodes:remove "
                           f"{name})")
        if known.address == host and name is not None and known.name != name:
            raise Conflict(f"{host} was added already, as {known.name}: run `opus "
                           f"nodes:add {host} --name {known.name}` to finish it, or "
                           f"nodes:remove {known.name} first")


def _install_docker(node: ssh.Node, emit: Emit) -> None:
    if node.run(["dpkg", "-s", "docker.io"]).status == 0:
        emit("-----> docker.io is installed")
        return
    emit("-----> Installing docker.io (apt-get)")
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    node.check([*env, "apt-get", "-o", "DPkg::Lock::Timeout=300", "update"],
               "apt-get update", timeout=600)
    node.check([*env, "apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y",
                "docker.io"], "installing docker.io", timeout=900)


def _docker_answers(node: ssh.Node) -> bool:
    return node.run([DOCKER, "version", "--format", "{{.Server.Version}}"],
                    timeout=30).status == 0


def _start_docker(node: ssh.Node, emit: Emit) -> None:
    if _docker_answers(node):
        emit("-----> dockerd is running")
        return
    emit("-----> Starting dockerd")
    if node.run(["test", "-x", "/bin/systemctl"]).status == 0:
        node.check(["systemctl", "enable", "--now", "docker.service"], "starting docker")
    else:
        node.check(["service", "docker", "start"], "starting docker")
    _wait(lambda: _docker_answers(node), 30,
          f"{node.host}: dockerd does not answer 30 s after it was started; see "
          "`journalctl -u docker` on the node")


def _join(mgr: Manager, node: ssh.Node, join_at: str, emit: Emit) -> str:
    """Joins the node as a worker unless it is in this swarm already; its node id."""
    info = json.loads(node.check([DOCKER, "info", "--format", "{{json .Swarm}}"],
                                 "reading the node's swarm state") or "{}")
    state = info.get("LocalNodeState")
    if state == "active":
        node_id = checked_node_id(info.get("NodeID"), node.host)
        if mgr.run("node", "inspect", node_id).returncode == 0:
            emit("-----> The node is in the swarm already")
            return node_id
        raise Conflict(f"{node.host} is in another swarm (node {node_id[:12]}): if that "
                       "swarm is not needed, run `docker swarm leave --force` on it, then "
                       "nodes:add again")
    if state not in ("inactive", None, ""):
        raise Conflict(f"{node.host}'s swarm state is {state}: run `docker swarm leave "
                       "--force` on it, then nodes:add again")
    emit(f"-----> Joining the swarm at {join_at} as a worker")
    token = mgr("swarm", "join-token", "-q", "worker").strip()
    result = node.run([DOCKER, "swarm", "join", "--token", token, "--advertise-addr",
                       node.peer_address, join_at], timeout=120)
    if result.status != 0:
        # Never the command line: it holds the join token.
        raise ServiceError(f"{node.host}: docker swarm join failed: "
                           f"{(result.err.strip() or result.out.strip())[-800:]}; check "
                           f"that the node reaches {join_at} (TCP 2377, 7946 and UDP "
                           "4789, 7946), then run nodes:add again")
    info = json.loads(node.check([DOCKER, "info", "--format", "{{json .Swarm}}"],
                                 "reading the node's swarm state") or "{}")
    return checked_node_id(info.get("NodeID"), node.host)


def _install_registry_ca(settings: Settings, node: ssh.Node, emit: Emit) -> None:
    """The CA the node verifies the registry with: Opus's for its own registry,
    `swarm_registry_ca` for an operator's."""
    path = registry.trusted_ca(settings) if settings.swarm_registry else None
    if path is None:
        return
    try:
        ca = path.read_bytes()
    except OSError as exc:
        raise ServiceError(f"the registry CA ({path}) cannot be read: {exc.strerror}; fix "
                           "swarm_registry_ca") from None
    directory = f"/etc/docker/certs.d/{settings.swarm_registry}"
    emit(f"-----> Trusting the registry's CA in {directory}/ca.crt")
    node.check(["mkdir", "-p", "-m", "0755", directory], "creating " + directory)
    node.check(["tee", f"{directory}/ca.crt"], "writing the registry CA", stdin=ca)


def _state(mgr: Manager, node_id: str) -> str:
    result = mgr.run("node", "inspect", "--format", "{{.Status.State}}", node_id)
    return result.stdout.strip() if result.returncode == 0 else "missing"


def _wait(probe: Callable[[], bool], timeout: float, message: str,
          interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise ServiceError(message)
        time.sleep(interval)


# ---- nodes:remove -----------------------------------------------------------------------

def remove(settings: Settings, store: Store, name: str, emit: Emit, *,
           gone: bool = False, before_drain: Callable[[str], list[str]] | None = None
           ) -> None:
    """Drains `name`, waits until its tasks run elsewhere, makes it leave the swarm,
    removes it on the manager and forgets it. `gone`: the machine is lost for good (no
    SSH; its tasks are rescheduled by the drain all the same)."""
    names.check_node_name(name)
    mgr = manager(settings)
    record = next((n for n in store.list_nodes() if n.name == name), None)
    if record is None:
        raise NotFound(f"no node named {name}; `opus nodes` lists them")
    held = volumes.apps_with_data_on(store, name)
    if held and not gone:
        raise Conflict(f"{name} holds the data of {', '.join(held)} (pinned to it): move "
                       f"{'them' if len(held) > 1 else 'it'} back to this host first "
                       f"(`opus scheduler:set {held[0]} local`, then `opus ps:restart "
                       f"{held[0]}`); nothing was changed")
    known = mgr.run("node", "inspect", record.docker_id).returncode == 0
    node = None
    if not gone:     # reach the node first: a wrong host key or no route changes nothing
        emit(f"-----> Connecting to root@{ssh.host_entry(record.address, record.port)}")
        try:
            node = ssh.Node(settings, record.address, record.port)
        except ServiceError as exc:
            raise ServiceError(f"{exc.message}. Nothing was changed; if the machine is "
                               f"gone for good: opus nodes:remove {name} --gone") from None
    try:
        if known:
            services = {t.service for t in tasks_by_node(mgr).get(name, [])}
            if before_drain is not None:       # the front stops sending it requests first
                taken = before_drain(name)
                if taken:
                    emit(f"-----> The front no longer sends {name} requests of "
                         f"{', '.join(taken)}")
            emit(f"-----> Draining {name}: its tasks move to other nodes")
            mgr("node", "update", "--availability", "drain", record.docker_id)
            _wait_drained(mgr, record.docker_id, services, settings.swarm_drain_timeout,
                          name)
            emit(f"       {name} runs no task; "
                 f"{', '.join(sorted(services)) or 'no service'} running elsewhere")
        if node is not None:
            emit(f"-----> Leaving the swarm on {name} ({record.address})")
            result = node.run([DOCKER, "swarm", "leave"], timeout=120)
            if result.status != 0 and "not part of a swarm" not in result.err:
                raise ServiceError(f"{name}: docker swarm leave failed: "
                                   f"{result.err.strip()[-800:]}; {name} is drained (it runs "
                                   f"nothing): run nodes:remove {name} again")
    finally:
        if node is not None:
            node.close()
    if known:
        emit(f"-----> Removing {name} from the manager's node list")
        mgr("node", "rm", "--force", record.docker_id)
    for app_name in held:        # (gone: the machine and the data on it are lost)
        app = store.get_app(app_name)
        if app is not None:
            store.set_swarm_data_node(app, None)
            emit(f"       {app_name}'s data on {name} is lost with it: its next deploy starts "
                 "from the copy in data/ on this host (as of its move to the swarm)")
    store.remove_node(name)
    _follow_databases(settings, store, mgr, emit, f"opus nodes:remove {name}")
    emit(f"       {name} removed; its host key stays pinned (nodes:add {record.address} "
         "adds it again)")


def _wait_drained(mgr: Manager, node_id: str, services: set[str], timeout: float,
                  name: str) -> None:
    def settled() -> bool:
        if mgr("node", "ps", node_id, "--filter", "desired-state=running", "-q").split():
            return False
        return all(_service_running(mgr, service) for service in services)
    try:
        _wait(settled, timeout, "")
    except ServiceError:
        raise ServiceError(f"{name} is drained, but its tasks did not all run elsewhere "
                           f"within {timeout:.0f} s ({', '.join(sorted(services))}): see "
                           "`docker service ps SERVICE` on the manager (no other node "
                           "with room?), then run nodes:remove again") from None


def _service_running(mgr: Manager, service: str) -> bool:
    """Every task of `service` meant to run is Running (as many as its replicas)."""
    result = mgr.run("service", "inspect", service, "--format",
                     "{{if .Spec.Mode.Replicated}}{{.Spec.Mode.Replicated.Replicas}}{{end}}")
    if result.returncode != 0:
        return True          # removed meanwhile: nothing to wait for
    states = mgr("service", "ps", service, "--filter", "desired-state=running",
                 "--format", "{{.CurrentState}}").splitlines()
    wanted = result.stdout.strip()
    return all(s.startswith("Running") for s in states) and \
        (not wanted.isdigit() or len(states) == int(wanted))


def public_key(settings: Settings) -> str:
    return ssh.public_key_line(ssh.load_or_create_key(settings))

