"""A release of a swarm app goes live on the nodes, blue/green (docs/scale-out.md, Deploy).

1. Its config vars become a Docker secret of the release's own; each process type a
   service (`<app>-<type>-v<N>`, services.py) on a fresh port block: the blocks of every
   release whose services exist are taken, so the live and the new one never meet.
2. Opus waits until every web slot has a running task on a Ready node that answers the
   app's check at `node:port` (probed from the Opus host), and every other type runs.
3. The new members go into the front's config, disabled (one render, a graceful reload);
   the balancer-manager enables them and disables the old ones; the release is recorded
   live. What is left (`Switched.finish`): the old members drain, the old services and
   secret go. The old release's record stays, with its image digest: a rollback
   deploys that digest again (`rollback`).

A deploy that fails before the switch (a task never healthy, the timeout, Docker
refusing the spec) removes what it made and the live release keeps serving.
Swarm's own rolling update is not used (it dropped requests: docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from opus_paas import failpoints, locks, output
from opus_paas.build import release as build_release
from opus_paas.data import nodes as data_nodes
from opus_paas.errors import BuildFailed, OpusError, ServiceError, UsageError
from opus_paas.front import sites
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.run import checks, programs
from opus_paas.settings import Settings
from opus_paas.store import App, Store, SwarmMember, SwarmRelease
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import follow, images, nodes, oneoff, pinning, services, volumes
from opus_paas.swarm.members import ApacheFront
from opus_paas.tls import private_ca

log = logging.getLogger("opus.swarm.deploy")

DRAIN_TIMEOUT = 30.0
MAX_TASK_FAILURES = 3        # per slot, before the deploy gives up on it
POLL = 0.3


# ---- Docker ---------------------------------------------------------------------------

def _docker_input(mgr: nodes.Manager, args: Sequence[str], data: bytes) -> None:
    """A docker command that reads `data` on stdin (a secret's content: never argv)."""
    try:
        result = subprocess.run([nodes.DOCKER, "-H", mgr.host, *args], input=data,
                                capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise ServiceError(f"the swarm manager did not answer `docker {args[0]}` within "
                           "60 s") from None
    if result.returncode != 0:
        raise ServiceError(f"the swarm manager: docker {' '.join(args[:2])} failed: "
                           f"{result.stderr.decode(errors='replace').strip()[-400:]}")


def create_secret(mgr: nodes.Manager, app: str, name: str, config: Mapping[str, str]) -> None:
    """The release's config vars as a secret (a JSON object), made anew if one is left
    over from a deploy cut short."""
    if mgr.run("secret", "inspect", name).returncode == 0:
        mgr("secret", "rm", name)
    _docker_input(mgr, ["secret", "create", "--label", f"{services.LABEL_APP}={app}", name,
                        "-"], json.dumps(dict(config), sort_keys=True).encode())


def ensure_ca_config(settings: Settings, mgr: nodes.Manager) -> str:
    """Opus's CA certificate (the public part) as a Docker config, for the tasks of apps
    with a database on Opus's Postgres to verify it; named after its content, so it is
    made once per CA and reused. Its name."""
    path = private_ca.ca_cert_path(settings)
    try:
        pem = path.read_bytes()
    except OSError:
        raise UsageError(f"Opus's CA certificate ({path}) is missing, so tasks cannot "
                         "verify Postgres: `opus nodes:add HOST` makes it") from None
    name = services.ca_config_name(pem)
    if mgr.run("config", "inspect", name).returncode != 0:
        try:
            _docker_input(mgr, ["config", "create", "--label", "opus.ca=1", name, "-"], pem)
        except ServiceError:
            if mgr.run("config", "inspect", name).returncode != 0:   # not made meanwhile
                raise
    return name


def remove_services(mgr: nodes.Manager, names: Sequence[str], secret: str | None) -> None:
    """Removes services and their secret; gone already is fine."""
    present = [n for n in names if mgr.run("service", "inspect", n).returncode == 0]
    if present:
        mgr("service", "rm", *present)
    if secret is not None:
        # A secret is in use until the services' tasks are gone: a few tries.
        for _ in range(50):
            result = mgr.run("secret", "rm", secret)
            if result.returncode == 0 or "No such secret" in result.stderr or \
                    "not found" in result.stderr:
                return
            time.sleep(0.2)
        log.warning("secret %s is still in use; remove it later (docker secret rm)", secret)


# ---- readiness ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Readiness:
    """Where a new web service stands (pure: from its tasks, the nodes, the probes)."""

    members: list[SwarmMember]       # a healthy task for every slot, or fewer
    waiting: list[str]               # what the slots still wait for, in words
    failed: str | None               # why the deploy must give up, if it must


def readiness(app: str, version: int, replicas: int, port_base: int,
              tasks: Sequence[follow.TaskInfo], node_states: Mapping[str, nodes.NodeState],
              probes: Mapping[tuple[str, int], bool]) -> Readiness:
    """Ready when `replicas` slots each have a healthy task. Which slots: 1..N after a
    create, but whichever Swarm keeps after a scale-down (it does not remove the highest
    slots first)."""
    members = follow.decide(app, version, "web", port_base, tasks, node_states, probes, [])
    healthy = [m for m in members if m.enabled]
    service = services.service_name(app, "web", version)
    mine = [t for t in tasks if t.service == service]
    slots = sorted({t.slot for t in mine if t.desired == "running"} |
                   set(range(1, replicas + 1)) if len(healthy) < replicas else set())
    waiting, failed = [], None
    scheduled = {t.slot for t in mine if t.desired == "running"}
    for slot in slots:
        if slot in {m.slot for m in healthy}:
            continue
        errors = [t for t in mine if t.slot == slot and t.state in follow.FAILED]
        if len(errors) >= MAX_TASK_FAILURES and failed is None:
            failed = (f"slot {slot} failed {len(errors)} times"
                      f"{': ' + errors[-1].error if errors[-1].error else ''}")
        live = [t for t in mine if t.slot == slot and t.desired == "running"]
        if not live and len(scheduled) >= replicas:
            continue          # a slot Swarm does not use (after a scale-down)
        node = node_states.get(live[-1].node_id) if live else None
        where = f" on {node.name}" if node else ""
        state = live[-1].state if live else "not scheduled"
        if state == "running":
            state = "running, not answering its check yet"
        waiting.append(f"slot {slot}{where}: {state}")
    return Readiness(healthy[:replicas] if len(healthy) >= replicas else healthy, waiting,
                     failed)


def wait_ready(settings: Settings, mgr: nodes.Manager, app: App, version: int, replicas: int,
               port_base: int, others: Mapping[str, int], timeout: float,
               emit: Emit) -> list[SwarmMember]:
    """Until every web slot answers and every other type runs; its web members."""
    check = checks.from_json(app.health_check)
    domain = settings.app_domain(app.name)
    web = services.service_name(app.name, "web", version)
    other_names = {services.service_name(app.name, t, version): n for t, n in others.items()}
    deadline = time.monotonic() + timeout
    shown = ""
    while True:
        node_states = follow.node_map(mgr)
        tasks = follow.read_tasks(mgr, [web, *other_names])
        probes = {addr: follow.probe(addr[0], addr[1], check, domain) for addr in
                  follow.candidates(version, web, port_base, tasks, node_states)}
        ready = readiness(app.name, version, replicas, port_base, tasks, node_states, probes)
        running = {name: sum(1 for t in tasks if t.service == name and t.state == "running"
                             and t.desired == "running") for name in other_names}
        lagging = [f"{name}: {running[name]}/{count} running"
                   for name, count in other_names.items() if running[name] < count]
        if ready.failed:
            raise BuildFailed(f"v{version} did not start on the swarm ({ready.failed}); the "
                              "live release keeps serving. See `opus logs "
                              f"{app.name}` for the tasks' output")
        if not ready.waiting and not lagging:
            return ready.members
        now = "; ".join([*ready.waiting, *lagging])
        if time.monotonic() > deadline:
            raise BuildFailed(f"v{version} was not healthy on the swarm within "
                              f"{timeout:.0f} s ({now}); the live release keeps serving. See "
                              f"`opus logs {app.name}`, or give the app longer with `opus "
                              f"checks:set {app.name} timeout=SECONDS`")
        if now != shown:
            emit(output.detail(f"Waiting: {now}"))
            shown = now
        time.sleep(POLL)


# ---- deploy -----------------------------------------------------------------------------

def used_blocks(store: Store) -> set[int]:
    """The port blocks of every release whose services exist (any app)."""
    return {r.block for a in store.list_apps() for r in store.swarm_releases(a) if r.services}


@dataclasses.dataclass
class Switched:
    """A swarm release that serves; left: drain the old members, remove the old
    services and secret (Switched.finish)."""

    settings: Settings
    store: Store
    front: ApacheFront
    app: App
    release: SwarmRelease
    members: list[SwarmMember]
    old: SwarmRelease | None
    old_members: list[SwarmMember]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def finish(self, emit: Emit) -> None:
        started = time.monotonic()
        if self.old is None:
            # The app served from this host before (or not at all): its programs here go.
            stop_local(self.settings, self.store, self.app)
            return
        stuck = self.front.drain(self.app, self.old_members, DRAIN_TIMEOUT)
        if stuck:
            emit(output.detail(f"v{self.old.version} still had requests after "
                               f"{DRAIN_TIMEOUT:.0f} s ({', '.join(stuck)}); stopping it "
                               "anyway"))
        mgr = nodes.manager(self.settings)
        emit(output.detail(f"Removing v{self.old.version}'s services "
                           f"({', '.join(self.old.services)}); its image stays for rollback"))
        remove_services(mgr, self.old.services,
                        services.secret_name(self.app.name, self.old.version))
        self.store.remove_swarm_members(self.app, self.old.version)
        self.store.add_swarm_release(self.app, dataclasses.replace(self.old, services=()))
        with contextlib.suppress(OpusError):
            self.front.write()
        self.timings["finish"] = time.monotonic() - started


Record = Callable[[int], None]


def deploy(settings: Settings, store: Store, app: App, version: int, image: str,
           config: Mapping[str, str], emit: Emit, *, record: Record,
           types: Sequence[str] = ("web",), front: ApacheFront | None = None,
           pin: str | None = None, args: Sequence[str] = (),
           health: services.Health | bool | None = True, volume: str | None = None,
           release_command: str | None = None) -> Switched:
    """Release `version` of `app`, its image `image` (pinned by digest), live on the
    swarm; `record(port_base)` writes it live, with the front's switch. `types`: the
    release's process types (web first; `release` is not one). `pin`: the node a
    pinned app stays on; `volume`: its data volume, mounted at /data; with
    `release_command`, that runs first, once, on the swarm (oneoff.py). `args`,
    `health`: the tasks' command (default: the image's entrypoint) and Docker health
    check (True: from the app's check). Returns what is left once traffic has
    switched (Switched.finish)."""
    started = time.monotonic()
    mgr = nodes.manager(settings)
    front = front or ApacheFront(settings, store)
    timings: dict[str, float] = {}
    formation = store.formation(app)
    counts = {"web": max(1, app.web_processes)}
    for kind in types:
        if kind not in ("web", "release"):
            count, stopped = formation.get(kind, (0, False))
            if count > 0 and not stopped:
                counts[kind] = count
    if counts["web"] > services.SLOTS:
        raise UsageError(f"web runs at most {services.SLOTS} tasks on the swarm")
    live = store.get_swarm_release(app, app.live_version) if app.live_version else None
    old_members = [m for m in store.swarm_members(app) if live and m.version == live.version]
    limits = store.limits(app)
    check = checks.from_json(app.health_check)
    probe = services.Health.of(check, settings.app_domain(app.name)) if health is True \
        else health if isinstance(health, services.Health) else None
    secret = services.secret_name(app.name, version)
    # The CA its DATABASE_URL's sslrootcert names (node_config), before any change.
    ca_config = ensure_ca_config(settings, mgr) if store.app_database(app) is not None \
        else None
    constraints = (pinning.placement(pin),) if pin else ()
    with locks.host_lock(settings):      # another app's deploy picks its block meanwhile
        block = services.free_block(settings, used_blocks(store))
        names = tuple(services.service_name(app.name, kind, version) for kind in counts)
        release = SwarmRelease(app.name, version, image, block, names, time.time())
        store.add_swarm_release(app, release)
    port_base = services.block_base(settings, block)
    specs = [services.ServiceSpec(
        name=services.service_name(app.name, kind, version), image=image, app=app.name,
        ptype=kind, version=version, uid=services.task_uid(settings, app), replicas=count,
        port_base=port_base, secret=secret, ca_config=ca_config, limits=limits.get(kind),
        health=probe if kind == "web" else None, constraints=constraints,
        env=(("OPUS_WEB_THREADS", str(app.web_threads)),) if kind == "web" else (),
        # The image's entrypoint runs the Procfile's process of the type it is given.
        args=tuple(args) or (kind,), volume=volume) for kind, count in counts.items()]
    argvs = [services.create_argv(spec) for spec in specs]      # checked before any change
    switched = False
    new_members: list[SwarmMember] = []
    try:
        emit(output.step(f"Starting v{version} on the swarm: "
                         + ", ".join(f"{k}={n}" for k, n in counts.items())
                         + f", ports {port_base}-{port_base + services.SLOTS - 1}"))
        create_secret(mgr, app.name, secret, config)
        if release_command:
            oneoff.run(mgr, specs[0], release_command, settings.build_timeout, emit)
        for argv in argvs:
            mgr(*argv)
        failpoints.reached(settings, "swarm.created")
        timings["created"] = time.monotonic() - started
        members = wait_ready(settings, mgr, app, version, counts["web"], port_base,
                             {k: n for k, n in counts.items() if k != "web"},
                             check.timeout or settings.swarm_deploy_timeout, emit)
        timings["healthy"] = time.monotonic() - started
        emit(output.detail("Healthy: " + ", ".join(f"{m.node}:{m.port}" for m in members)))
        pending = dataclasses.replace(app, live_version=version, live_port=port_base)
        if live is None or not old_members:
            # Nothing serves the app on the swarm yet: the members go in enabled.
            new_members = members
            store.set_swarm_members(app, version, "web", members)
            with locks.host_lock(settings):
                sites.refresh_front_held(settings, store, front.supervisor, pending=pending)
                switched = True
                record(port_base)
        else:
            new_members = [dataclasses.replace(m, enabled=False) for m in members]
            store.set_swarm_members(app, version, "web", new_members)
            if not front.add_members(app, new_members):   # in, disabled, no reload
                front.render()             # no room: a graceful reload
                front.wait_members(app, members)
            timings["rendered"] = time.monotonic() - started
            with locks.host_lock(settings):
                front.set_enabled(app, members, True)
                switched = True
                front.set_enabled(app, old_members, False)
                store.set_swarm_members(app, version, "web", members)
                store.set_swarm_members(app, live.version, "web",
                                        [dataclasses.replace(m, enabled=False)
                                         for m in old_members])
                failpoints.reached(settings, "swarm.switched")
                record(port_base)
            with contextlib.suppress(OpusError):
                front.write()
            new_members = members
        emit(output.detail("Switched through the front's balancer"))
        timings["switched"] = time.monotonic() - started
    except BaseException:
        _undo(settings, store, front, app, mgr, release, secret, new_members, old_members,
              switched)
        raise
    return Switched(settings, store, front, store.get_app(app.name) or app, release,
                    new_members, live, old_members, timings)


def _undo(settings: Settings, store: Store, front: ApacheFront, app: App, mgr: nodes.Manager,
          release: SwarmRelease, secret: str, new_members: list[SwarmMember],
          old_members: list[SwarmMember], switched: bool) -> None:
    """A deploy that stopped half way: the old members serve again, the new release's
    services, secret and records go."""
    with contextlib.suppress(OpusError):
        if switched and old_members:
            front.set_enabled(app, old_members, True)
        if new_members:
            front.set_enabled(app, new_members, False)
    if old_members:
        with contextlib.suppress(Exception):
            store.set_swarm_members(app, old_members[0].version, "web", old_members)
    store.remove_swarm_members(app, release.version)
    store.remove_swarm_release(app, release.version)
    with contextlib.suppress(Exception):
        remove_services(mgr, release.services, secret)
    if new_members:
        with contextlib.suppress(Exception):
            front.write()


# ---- rollback and scale -------------------------------------------------------------

def rollback_image(store: Store, app: App, version: int) -> str:
    """The kept image digest of release `version` (a rollback deploys it again)."""
    kept = store.get_swarm_release(app, version)
    if kept is None:
        known = ", ".join(f"v{r.version}" for r in store.swarm_releases(app)) or "none"
        raise UsageError(f"{app.name} has no swarm release v{version} (kept: {known})")
    return kept.image


def scale(settings: Settings, store: Store, app: App, counts: Mapping[str, int], emit: Emit,
          *, front: ApacheFront | None = None, timeout: float | None = None) -> None:
    """`ps:scale` on the swarm: `docker service scale` of the live release's services;
    web's new slots join the front once they answer, removed slots drain first."""
    mgr = nodes.manager(settings)
    front = front or ApacheFront(settings, store)
    live = store.get_swarm_release(app, app.live_version) if app.live_version else None
    if live is None or not live.services:
        raise UsageError(f"{app.name} has no release on the swarm yet; push to deploy one")
    for kind, count in counts.items():
        if not 0 <= count <= services.SLOTS or (kind == "web" and count < 1):
            raise UsageError(f"{kind} takes {int(kind == 'web')} to {services.SLOTS} tasks on "
                             "the swarm")
        if services.service_name(app.name, kind, live.version) not in live.services:
            raise UsageError(f"v{live.version} has no {kind} service; it runs from the next "
                             "deploy")
    base = services.block_base(settings, live.block)
    members = [m for m in store.swarm_members(app) if m.version == live.version]
    mgr("service", "scale", "--detach",
        *[f"{services.service_name(app.name, k, live.version)}={n}" for k, n in counts.items()])
    emit(output.step("Scaling on the swarm: " + ", ".join(f"{k}={n}" for k, n in counts.items())))
    if counts.get("web") is None:
        return
    # Swarm chooses the tasks a scale-down stops (SIGTERM: each finishes its requests):
    # their members go off as soon as they are known; new slots join once they answer.
    ready = wait_ready(settings, mgr, app, live.version, counts["web"], base, {},
                       timeout or settings.swarm_deploy_timeout, emit)
    kept = {(m.host, m.port) for m in ready}
    before = {(m.host, m.port) for m in members}
    gone = [m for m in members if (m.host, m.port) not in kept]
    new = [m for m in ready if (m.host, m.port) not in before]
    if gone:
        with contextlib.suppress(ServiceError):
            front.set_enabled(app, gone, False)
    store.set_swarm_members(app, live.version, "web", ready)
    if new and front.add_members(app, new):
        front.set_enabled(app, new, True)
        front.write()
    elif new:
        front.render()
    else:
        front.write()
    emit(output.detail("Serving from " + ", ".join(f"{m.node}:{m.port}" for m in ready)))


# ---- the hooks: a push, a release of a kept build, ps:restart -----------------------------

def image_for(settings: Settings, store: Store, app: App, version: int, slug_version: int,
              emit: Emit, *, fresh: bool = False) -> str:
    """The image of release `version`: the kept digest of the build it reuses (a
    rollback, a config change), or its slug published now (a push, or `fresh`: an
    image as this Opus makes it, e.g. with /data the app's own)."""
    if slug_version != version and not fresh:
        for kept in store.swarm_releases(app):        # newest first
            made = store.get_release(app, kept.version)
            if kept.version == slug_version or (made and made.slug_version == slug_version):
                emit(output.detail(f"The image of v{slug_version}'s build: {kept.image}"))
                return kept.image
    record = store.get_release(app, version)
    if record is None:
        raise ServiceError(f"release v{version} of {app.name} is not recorded; push again")
    started = time.monotonic()
    emit(output.step(f"Publishing v{version}'s image"))
    timings: dict[str, float] = {}
    image = images.publish(settings, app, record, timings)
    emit(output.detail(f"{image} ({time.monotonic() - started:.1f} s, "
                       f"{timings.get('sent_bytes', 0) / 1e6:.1f} MB sent)"))
    return image


def node_config(settings: Settings, store: Store, app: App,
                config: Mapping[str, str]) -> dict[str, str]:
    """The config vars the tasks get: the release's, with DATABASE_URL as nodes reach the
    app's database on Opus's Postgres (TLS, data/nodes.py) when it has one there."""
    found = dict(config)
    if store.app_database(app) is not None:
        try:
            found["DATABASE_URL"] = data_nodes.database_url_for_nodes(settings, store, app)
        except OpusError as error:
            # The host's own URL (a local socket) cannot work on a node: no deploy.
            raise UsageError(f"{app.name} has a database on Opus's Postgres, and its tasks "
                             f"on the swarm could not be given a way to reach it ({error}). "
                             "Add the nodes with `opus nodes:add HOST` (Postgres then "
                             "listens for them over TLS), then deploy again.") from error
    return found


def pin_reason(settings: Settings, store: Store, app: App, slug_version: int,
               config: Mapping[str, str]) -> pinning.Pin | None:
    """Why the build of `slug_version` with `config` stays on one node, or None. Data
    moved to a node keeps the app there until it moves back (`scheduler:set APP
    local`): this host's data/ is then only the copy of the move."""
    slug = AppPaths.of(settings, app.name).slug(slug_version)
    info = build_release.read_build_info(slug) or {}
    data = AppPaths.of(settings, app.name).data
    entries = sorted(p.name for p in data.iterdir()) if data.is_dir() else []
    procfile = {k: str(v) for k, v in build_release.process_types(info).items()}
    why = pinning.reason(config, pinning.ReleaseFacts.of(info, procfile, entries))
    held = volumes.data_node(store, app)
    if why is None and held is not None:
        why = pinning.Pin("data", f"data/ on node {held} (moved there from this host)")
    return why


def release_on_node(settings: Settings, store: Store, app: App, slug_version: int,
                    config: Mapping[str, str]) -> bool:
    """Does this release's release command run on the swarm (next to a pinned app's
    data on its node) rather than on this host?"""
    return store.scheduler(app) == "swarm" and \
        pin_reason(settings, store, app, slug_version, config) is not None


def release_live(settings: Settings, store: Store, app: App, version: int, emit: Emit, *,
                 slug_version: int, config: Mapping[str, str], record: Record,
                 release_command: str | None = None) -> Switched:
    """A release of a swarm app goes live (from a push, a rollback, a config or domain
    change, ps:restart): its image, then `deploy`. A pinned app (SQLite, data/) stays on
    one node with its data volume, and the output says why; its data/ moves there from
    this host at its first deploy on the swarm (volumes.py), and `release_command` (a
    push's) runs there."""
    slug = AppPaths.of(settings, app.name).slug(slug_version)
    info = build_release.read_build_info(slug) or {}
    types = ["web", *sorted(k for k in build_release.process_types(info)
                            if k not in ("web", "release"))]
    pin = None
    why = pin_reason(settings, store, app, slug_version, config)
    if why is not None:
        pin = pinning.pinned_node_of(store, app)
        if pin is None:
            raise UsageError(f"{app.name} must stay on one node ({why.what}), and the swarm "
                             "has none: add one with `opus nodes:add HOST`")
        emit(output.alert(pinning.message(app.name, why, pin)))
    moving = pin is not None and volumes.data_node(store, app) is None
    if moving:
        volumes.check_size(settings, app)        # before anything stops
    # A data move needs an image whose /data is the app's (one this Opus made).
    image = image_for(settings, store, app, version, slug_version, emit, fresh=moving)
    # The tasks get what a process on this host gets (the release's env file: config
    # vars and Opus's own; the image's entrypoint puts its own paths over those).
    env_file = AppPaths.of(settings, app.name).env_file(version)
    env = json.loads(env_file.read_text()) if env_file.exists() else dict(config)
    task_config = node_config(settings, store, app, env)
    here = False
    if moving and pin is not None:
        here = move_data_in(settings, store, app, pin, image, emit)
    try:
        switched = deploy(settings, store, app, version, image, task_config, emit,
                          record=record, types=types, pin=pin,
                          volume=services.volume_name(app.name) if pin else None,
                          release_command=release_command if pin else None)
    except BaseException:
        if moving:       # the data/ here stays the app's (the volume is a copy)
            store.set_swarm_data_node(app, None)
            if here:
                restart_local(settings, store, app)
                emit(output.alert(f"{app.name} serves from this host again, with its "
                                  "data/ here"))
        raise
    # `current` names the live build, as on this host (the front's static files, recovery).
    with contextlib.suppress(OSError, OpusError):
        build_release.point_current(settings, app.name, slug_version)
    return switched


def move_data_in(settings: Settings, store: Store, app: App, node: str, image: str,
                 emit: Emit) -> bool:
    """A pinned app's first deploy on the swarm: it stops here, its data/ goes into its
    volume on `node`, and the store records it there. True when it was serving here
    (the caller starts it again if the deploy fails)."""
    here = not serves(store, app) and app.live_version is not None and not app.stopped
    if here:
        emit(output.alert(f"{app.name} stops on this host while its data/ moves to {node} "
                          "(requests meanwhile get 503)"))
        stop_local(settings, store, app)
    try:
        volumes.to_node(settings, store, app, node, image, services.task_uid(settings, app),
                        emit)
    except BaseException:
        if here:
            restart_local(settings, store, app)
            emit(output.alert(f"{app.name} serves from this host again, with its data/ here"))
        raise
    store.set_swarm_data_node(app, node)
    return here


def restart_local(settings: Settings, store: Store, app: App) -> None:
    """The app's programs on this host run again, as the database says."""
    supervisor = Supervisor(settings)
    if supervisor.is_running():
        fresh = store.get_app(app.name) or app
        programs.set_programs(settings, supervisor, app.name,
                              programs.expected_programs(settings, store, fresh))


@dataclasses.dataclass
class DataBack:
    """A pinned app moving back to this host: its tasks stopped, its volume copied into
    data/ here and the data recorded as here (`bring_data_back`); `undo` serves it from
    the swarm again, its data there again (the volume is as it was). `done`: it serves
    here; undo no more."""

    settings: Settings
    store: Store
    app: App
    live: SwarmRelease
    node: str
    ended: bool = False

    def undo(self, emit: Emit) -> None:
        if self.ended:
            return
        self.ended = True
        self.store.set_swarm_data_node(self.app, self.node)
        if self.app.stopped:
            return                      # it was stopped: it stays so
        counts = {"web": max(1, self.app.web_processes)}
        for kind, (count, stopped) in self.store.formation(self.app).items():
            if services.service_name(self.app.name, kind, self.live.version) in \
                    self.live.services and count > 0 and not stopped:
                counts[kind] = count
        try:
            scale(self.settings, self.store, self.app, counts, emit)
            front = ApacheFront(self.settings, self.store)
            members = [m for m in self.store.swarm_members(self.app)
                       if m.version == self.live.version]
            front.set_enabled(self.app, members, True)
        except OpusError as exc:
            emit(output.alert(f"{self.app.name} could not be started on the swarm again "
                              f"({exc.message}); its data is still on its node: `opus "
                              f"ps:start {self.app.name}` once the swarm answers"))
            raise
        emit(output.alert(f"{self.app.name} serves from the swarm again (its data there is "
                          "as it was)"))

    def done(self) -> None:
        self.ended = True


def bring_data_back(settings: Settings, store: Store, app: App, emit: Emit) -> DataBack | None:
    """Before a swarm app with data on a node is deployed on this host: its tasks stop
    and its volume becomes data/ here. None when its data is here already."""
    node = volumes.data_node(store, app)
    live = store.get_swarm_release(app, app.live_version) if app.live_version else None
    if node is None or live is None:
        return None
    emit(output.alert(f"{app.name} stops on the swarm while its data/ moves back from "
                      f"{node} (requests meanwhile get 503)"))
    mgr = nodes.manager(settings)
    back = DataBack(settings, store, app, live, node)
    try:
        stop_app(settings, store, app)
        _wait_stopped(mgr, live.services, settings.swarm_deploy_timeout)
        volumes.to_host(settings, store, app, node, live.image,
                        services.task_uid(settings, app), emit)
        store.set_swarm_data_node(app, None)     # data/ here is the app's data now
    except BaseException:
        with contextlib.suppress(OpusError):
            back.undo(emit)
        raise
    return back


def _wait_stopped(mgr: nodes.Manager, names: Sequence[str], timeout: float) -> None:
    """Until no task of these services runs (their data is no longer written)."""
    deadline = time.monotonic() + timeout
    while any(t.state not in follow.ENDED for t in follow.read_tasks(mgr, names)):
        if time.monotonic() > deadline:
            raise ServiceError(f"the app's tasks did not stop within {timeout:.0f} s; "
                               "nothing was moved")
        time.sleep(POLL)


def serves(store: Store, app: App) -> bool:
    """Does the app's live release run on the swarm (its services exist)?"""
    live = store.get_swarm_release(app, app.live_version) if app.live_version else None
    return bool(live and live.services)


def stop_app(settings: Settings, store: Store, app: App) -> None:
    """`ps:stop` of a swarm app: its members off, its services at 0 tasks (`ps:start`
    deploys the live build anew)."""
    live = store.get_swarm_release(app, app.live_version) if app.live_version else None
    if live is None or not live.services:
        return
    front = ApacheFront(settings, store)
    members = [m for m in store.swarm_members(app) if m.version == live.version]
    with contextlib.suppress(ServiceError):
        front.set_enabled(app, members, False)
    store.set_swarm_members(app, live.version, "web",
                            [dataclasses.replace(m, enabled=False) for m in members])
    nodes.manager(settings)("service", "scale", "--detach",
                            *[f"{name}=0" for name in live.services])
    with contextlib.suppress(OpusError):
        front.write()


def stop_local(settings: Settings, store: Store, app: App) -> None:
    """The app's supervisor programs on this host stop (it has moved to the swarm)."""
    supervisor = Supervisor(settings)
    if supervisor.is_running():
        programs.set_programs(settings, supervisor, app.name, [])


def retire(settings: Settings, store: Store, app: App, emit: Emit) -> None:
    """The app's services on the swarm go (it has moved back to this host, or is being
    destroyed); the records of its releases stay for rollback, without services."""
    running = [r for r in store.swarm_releases(app) if r.services]
    if not running or not settings.swarm_manager:
        return
    mgr = nodes.manager(settings)
    for kept in running:
        emit(output.detail(f"Removing v{kept.version}'s services from the swarm"))
        remove_services(mgr, kept.services, services.secret_name(app.name, kept.version))
        store.remove_swarm_members(app, kept.version)
        store.add_swarm_release(app, dataclasses.replace(kept, services=()))


def scale_app(settings: Settings, store: Store, app: App, counts: Mapping[str, int],
              emit: Emit) -> None:
    """`ps:scale` of a swarm app: the counts are kept (web's as the app's scale, the
    others' in its formation) and the live release's services follow; a failure puts
    the counts back."""
    before_web, formation = app.web_processes, store.formation(app)
    others = {k: v for k, v in counts.items() if k != "web"}
    if "web" in counts:
        store.set_scale(app, counts["web"])
    store.set_formation(app, others)
    try:
        scale(settings, store, store.get_app(app.name) or app, counts, emit)
    except BaseException:
        store.set_scale(app, before_web)
        store.set_formation(app, {k: formation.get(k, (0, False))[0] for k in others})
        raise
