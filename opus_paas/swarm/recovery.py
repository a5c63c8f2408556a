"""What a swarm deploy cut short by a stop of Opus leaves behind, and its removal
(docs/scale-out.md, Deploy and follow: Recovery).

A swarm deploy records its release (with its services' names) before it creates its
secret and services, and its members once they answer; a stop of Opus anywhere after
that leaves them. Recovery (run/recovery.py, under the app's lock: no deploy is under
way) ends it: the services and secrets labelled `opus.app=APP` of any release but the
live one go, the members of any release but the live one leave the store and the
front, and the swarm records of releases that never went live go (those of released
ones stay, without services, for a rollback). The live release's services are never
touched, and neither is anything whose labels or name are not exactly what Opus gives
its own (another app's, a non-numeric release, no labels).

`decide` is the rule (pure); `listing` and `apply` are the Docker and store calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Mapping, Sequence

from opus_paas.errors import OpusError, ServiceError
from opus_paas.settings import Settings
from opus_paas.store import App, Store, SwarmMember, SwarmRelease
from opus_paas.swarm import nodes, services
from opus_paas.swarm.deploy import remove_services, scale
from opus_paas.swarm.members import ApacheFront

LIST_TIMEOUT = 15.0
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


@dataclasses.dataclass(frozen=True)
class Listed:
    """A service or secret as the manager lists it: its name and labels."""

    name: str
    labels: Mapping[str, str]
    replicas: int | None = None     # a replicated service's task count
    data_node: str | None = None    # the node whose data volume it mounts (pinned)


@dataclasses.dataclass(frozen=True)
class Cleanup:
    """What recovery removes of an app's swarm releases, and what it keeps."""

    services: tuple[str, ...] = ()        # docker service rm
    secrets: tuple[str, ...] = ()         # docker secret rm
    members: tuple[int, ...] = ()         # releases whose members leave the store
    forget: tuple[int, ...] = ()          # swarm records removed (never went live)
    strip: tuple[int, ...] = ()           # records kept for rollback, without services
    enable: tuple[SwarmMember, ...] = ()  # the live release's members on again
    rescale: bool = False                 # the live release's web at 0 tasks: scaled up
    data_node: str | None = None          # …with its data there again

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))

    def describe(self) -> str:
        versions = sorted({*self.members, *self.forget, *self.strip,
                           *(v for v in (_service_version(n) for n in self.services) if v)})
        parts = []
        if self.services:
            parts.append("services " + ", ".join(self.services))
        if self.secrets:
            parts.append("secrets " + ", ".join(self.secrets))
        if self.members:
            parts.append("members of " + ", ".join(f"v{v}" for v in sorted(self.members)))
        if self.forget or self.strip:
            parts.append("records of " + ", ".join(f"v{v}" for v in
                                                  sorted({*self.forget, *self.strip})))
        if self.enable:
            parts.append(f"{len(self.enable)} members of the live release off (turned on)")
        if self.rescale:
            parts.append("the live release's web at 0 tasks (scaled up again)")
        what = "; ".join(parts) or "nothing"
        return f"{', '.join(f'v{v}' for v in versions) or 'a deploy'} on the swarm: {what}"


def _service_version(name: str) -> int | None:
    match = re.search(r"-v([0-9]+)$", name)
    return int(match.group(1)) if match else None


def release_of_service(app: str, item: Listed) -> int | None:
    """The release of one of `app`'s services, when its labels and name are exactly
    what Opus gives them (services.labels, services.service_name); None otherwise."""
    labels = item.labels
    if labels.get(services.LABEL_APP) != app:
        return None
    raw, ptype = labels.get(services.LABEL_RELEASE), labels.get(services.LABEL_PTYPE)
    if not isinstance(raw, str) or not isinstance(ptype, str) or not _VERSION.fullmatch(raw):
        return None
    try:
        expected = services.service_name(app, ptype, int(raw))
    except OpusError:          # a name or type Opus refuses (InvalidName, UsageError)
        return None
    return int(raw) if item.name == expected else None


def release_of_secret(app: str, item: Listed) -> int | None:
    """The release of one of `app`'s secrets (labelled `opus.app=APP`, named
    services.secret_name); None for anything else."""
    if item.labels.get(services.LABEL_APP) != app:
        return None
    prefix = services.secret_name(app, 1)[:-1]          # "<app>-env-v"
    if not item.name.startswith(prefix):
        return None
    raw = item.name[len(prefix):]
    return int(raw) if _VERSION.fullmatch(raw) else None


def decide(app: App, records: Sequence[SwarmRelease], released: set[int],
           members: Sequence[SwarmMember], listed_services: Sequence[Listed],
           listed_secrets: Sequence[Listed]) -> Cleanup:
    """What goes (pure). `records`: the app's swarm releases; `released`: the versions
    whose release went live once (their records are kept for rollback); `members`: the
    store's; the listed services and secrets: the manager's, filtered on the app's label
    (checked again here). The live release is the app's live version when it has a
    swarm record with services; else (a local release serves) nothing on the swarm is
    live."""
    live_record = next((r for r in records if r.version == app.live_version), None)
    live = live_record.version if live_record is not None and live_record.services else None
    gone_services = tuple(sorted(item.name for item in listed_services
                                 if (v := release_of_service(app.name, item)) is not None
                                 and v != live))
    gone_secrets = tuple(sorted(item.name for item in listed_secrets
                                if (v := release_of_secret(app.name, item)) is not None
                                and v != live))
    gone_members = tuple(sorted({m.version for m in members if m.version != live}))
    stale = [r for r in records if r.version != live and r.services]
    forget = tuple(sorted(r.version for r in stale if r.version not in released))
    strip = tuple(sorted(r.version for r in stale if r.version in released))
    # A stop between the front's switch and its record can leave the live release's
    # members recorded off; while a cut-short release's members exist, that is the
    # only way they got so (a stopped app's stay off).
    live_members = [m for m in members if m.version == live and m.ptype == "web"]
    enable: tuple[SwarmMember, ...] = ()
    if gone_members and live_members and not app.stopped and \
            not any(m.enabled for m in live_members):
        enable = tuple(dataclasses.replace(m, enabled=True) for m in live_members)
    # A stop while a pinned app's data moved back (its tasks stopped, the app not) leaves
    # the live web at 0 tasks: nothing else does (ps:stop marks the app stopped first).
    stopped_web = [item for item in listed_services
                   if item.replicas == 0 and release_of_service(app.name, item) == live
                   and item.labels.get(services.LABEL_PTYPE) == "web"]
    rescale = live is not None and not app.stopped and bool(stopped_web)
    held = next((item.data_node for item in stopped_web if item.data_node), None)
    return Cleanup(gone_services, gone_secrets, gone_members, forget, strip, enable,
                   rescale, held if rescale else None)


# ---- Docker and the store ---------------------------------------------------------------

def _inspect(mgr: nodes.Manager, kind: str, app: str) -> list[Listed]:
    """The app's services or secrets (by its label), with their names and labels."""
    ids = mgr(kind, "ls", "--quiet", "--filter",
              f"label={services.LABEL_APP}={app}", timeout=LIST_TIMEOUT).split()
    if not ids:
        return []
    result = mgr.run(kind, "inspect", *ids, timeout=LIST_TIMEOUT)
    try:
        raw = json.loads(result.stdout or "[]")
    except ValueError:
        raise ServiceError(f"the swarm manager listed {app}'s {kind}s unreadably") from None
    found = []
    for entry in raw if isinstance(raw, list) else []:
        spec = entry.get("Spec") if isinstance(entry, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("Name"), str):
            continue
        labels = spec.get("Labels")
        labels = labels if isinstance(labels, dict) else {}
        mode = spec.get("Mode")
        replicated = mode.get("Replicated") if isinstance(mode, dict) else None
        count = replicated.get("Replicas") if isinstance(replicated, dict) else None
        found.append(Listed(spec["Name"], {str(k): str(v) for k, v in labels.items()
                                           if isinstance(v, str)},
                            count if isinstance(count, int) else None,
                            pinned_data_node(app, spec)))
    return found


def pinned_data_node(app: str, spec: Mapping[str, object]) -> str | None:
    """The node a service's spec pins it to, when it mounts the app's data volume (pure:
    from `docker service inspect`'s Spec)."""
    template = spec.get("TaskTemplate")
    template = template if isinstance(template, dict) else {}
    container = template.get("ContainerSpec")
    mounts = container.get("Mounts") if isinstance(container, dict) else None
    if not any(isinstance(m, dict) and m.get("Source") == services.volume_name(app)
               for m in mounts or []):
        return None
    placement = template.get("Placement")
    constraints = placement.get("Constraints") if isinstance(placement, dict) else None
    prefix = "node.labels.opus.node=="
    for constraint in constraints or []:
        if isinstance(constraint, str) and constraint.startswith(prefix):
            return constraint[len(prefix):]
    return None


def listing(settings: Settings, app: App) -> tuple[list[Listed], list[Listed]]:
    """The app's services and secrets on the swarm (ServiceError when the manager does
    not answer)."""
    mgr = nodes.manager(settings)
    return _inspect(mgr, "service", app.name), _inspect(mgr, "secret", app.name)


def involved(settings: Settings, store: Store, app: App) -> bool:
    """Could the app have anything on the swarm (it is on it, or has been)?"""
    return bool(settings.swarm_manager) and (store.scheduler(app) == "swarm" or
                                             bool(store.swarm_releases(app)))


def plan(settings: Settings, store: Store, app: App) -> Cleanup:
    """What recovery would remove of the app's swarm releases now."""
    records = store.swarm_releases(app)
    released = {r.version for r in records
                if (made := store.get_release(app, r.version)) is not None and made.released}
    found_services, found_secrets = listing(settings, app)
    return decide(app, records, released, store.swarm_members(app), found_services,
                  found_secrets)


def apply(settings: Settings, store: Store, app: App, cleanup: Cleanup) -> None:
    """Carry out `cleanup`: the store's members first and the running front after them
    (no traffic reaches what goes), then the services and secrets, then the records.
    The front's config follows the store in the caller (recover_app's reconcile, or
    `opus up`'s render)."""
    dropped = [m for m in store.swarm_members(app) if m.version in cleanup.members]
    if cleanup.enable:
        store.set_swarm_members(app, cleanup.enable[0].version, "web", list(cleanup.enable))
    for version in cleanup.members:
        store.remove_swarm_members(app, version)
    front = ApacheFront(settings, store)
    with contextlib.suppress(OpusError, OSError):     # the front may not run (opus up)
        if cleanup.enable:
            front.set_enabled(app, cleanup.enable, True)
        if dropped:
            front.set_enabled(app, dropped, False)
    mgr = nodes.manager(settings)
    if cleanup.services:
        remove_services(mgr, cleanup.services, None)
    for secret in cleanup.secrets:
        remove_services(mgr, (), secret)
    if cleanup.rescale:
        if cleanup.data_node is not None:     # its data is there, whatever a copy here
            store.set_swarm_data_node(app, cleanup.data_node)
        web = {"web": max(1, app.web_processes)}
        scale(settings, store, app, web, lambda _line: None)
        live = [m for m in store.swarm_members(app) if m.version == app.live_version]
        with contextlib.suppress(OpusError, OSError):
            front.set_enabled(app, live, True)
    records = {r.version: r for r in store.swarm_releases(app)}
    for version in cleanup.forget:
        store.remove_swarm_release(app, version)
    for version in cleanup.strip:
        if version in records:
            store.add_swarm_release(app, dataclasses.replace(records[version], services=()))
