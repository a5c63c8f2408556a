"""Where an app runs and with how much: `opus scheduler APP`, `scheduler:set APP
swarm|local` (Dokku's word) and `ps:resize APP [TYPE KEY=VALUE…]` (docs/scale-out.md).

A move between this host and the swarm takes effect at the app's next deploy (a push or
`opus ps:restart`); limits apply to swarm services, and are kept for an app on one host.
Authorization is inside the core operations, as for every command.
"""

from __future__ import annotations

from opus_paas import access, locks, names
from opus_paas.access import Actor
from opus_paas.build import release
from opus_paas.control.context import Command, Context, arity
from opus_paas.errors import NotFound, UsageError
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.settings import Settings
from opus_paas.store import App, Limits, Store
from opus_paas.store.swarm import SCHEDULERS
from opus_paas.swarm import limits, nodes, pinning, volumes

SET_USAGE = "opus scheduler:set APP swarm|local"
RESIZE_USAGE = "opus ps:resize APP [TYPE memory=SIZE cpus=N]"


# ---- core operations ---------------------------------------------------------------------

def scheduler(store: Store, actor: Actor, name: str) -> tuple[App, str]:
    """The app and where it runs: "local" (this host) or "swarm"."""
    app = access.app_for(store, actor, name)
    return app, store.scheduler(app)


def pin(settings: Settings, store: Store, app: App) -> pinning.Pin | None:
    """Why the app's live release must stay on one node (pinning.reason), or None."""
    info = release.live_build_info(settings, app)
    try:
        entries = [p.name for p in AppPaths.of(settings, app.name).data.iterdir()]
    except OSError:
        entries = []    # no data/ yet (or not readable here): nothing kept in it
    facts = pinning.ReleaseFacts.of(info, release.process_types(info), entries)
    return pinning.reason(store.config(app), facts)


def set_scheduler(settings: Settings, store: Store, actor: Actor, name: str, wanted: str,
                  emit: Emit) -> bool:
    """Move the app to `wanted` ("swarm" or "local") from its next deploy; False if it
    was there already. Owner or admins only: it changes which machines run its code."""
    if wanted not in SCHEDULERS:
        raise UsageError(f"the scheduler is swarm or local, not {wanted[:24]!r}; usage: "
                         f"{SET_USAGE}")
    app = access.app_for(store, actor, name, manage=True)
    def waiting() -> None:
        emit(f"waiting for the deploy of {app.name} to finish…")
    with locks.app_lock(settings, app.name, on_wait=waiting):
        app = access.fresh(store, app)
        if wanted == "swarm":
            _check_swarm(settings, store)
        if store.scheduler(app) == wanted:
            return False
        if wanted == "swarm":
            found = pin(settings, store, app)
            node = pinning.pinned_node_of(store, app)
            if app.live_version is None:
                emit(f"{app.name} has no release yet: whether it must stay on one node is "
                     "decided at its first deploy (SQLite or files in data/ pin it)")
            elif found is not None and node is not None:
                emit(pinning.message(app.name, found, node))
        store.set_scheduler(app, wanted)
    return True


def _check_swarm(settings: Settings, store: Store) -> None:
    if not settings.swarm_manager:
        raise UsageError(nodes.NOT_CONFIGURED)
    if not store.list_nodes():
        raise UsageError("the swarm has no nodes yet: add one with `opus nodes:add HOST` "
                         "(`opus nodes:key` prints the key it needs), then run "
                         "scheduler:set again")


def resize(settings: Settings, store: Store, actor: Actor, name: str, ptype: str,
           pairs: list[str]) -> tuple[App, Limits]:
    """Set the memory and CPU limits of the app's `ptype` (a key not given keeps its
    value, KEY=none removes it); they apply from the next deploy under swarm."""
    names.check_process_type(ptype)
    app = access.app_for(store, actor, name)
    _known_type(settings, app, ptype)
    new = limits.parse(pairs, store.limits(app).get(ptype))
    store.set_limits(app, ptype, new)
    return app, new


def _known_type(settings: Settings, app: App, ptype: str) -> None:
    """web always; another type once the live release's Procfile has it."""
    if ptype == "web" or app.live_version is None:
        return
    types = set(release.process_types(release.live_build_info(settings, app))) - {"release"}
    if ptype not in types:
        known = ", ".join(sorted(types | {"web"}))
        raise NotFound(f"{app.name} has no process type {ptype!r}; its Procfile has: {known}")


def shown_limits(store: Store, actor: Actor, name: str) -> tuple[App, dict[str, Limits]]:
    app = access.app_for(store, actor, name)
    return app, store.limits(app)


# ---- commands ----------------------------------------------------------------------------

def _applies(app: App, where: str) -> str:
    if where == "swarm":
        return (f"it applies from {app.name}'s next deploy (`opus ps:restart {app.name}` or "
                "a push)")
    return (f"{app.name} runs on this host, where limits are recorded only: they apply "
            f"once it runs on the swarm (`opus scheduler:set {app.name} swarm`)")


def cmd_scheduler(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app, where = scheduler(ctx.store, ctx.actor, args[0])
    held = volumes.data_node(ctx.store, app)
    if ctx.json:
        ctx.emit_json({"app": app.name, "scheduler": where, "data_node": held})
        return
    ctx.out(where if held is None else f"{where} (its data on node {held})")


def cmd_scheduler_set(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 2)
    name, wanted = args
    moved = set_scheduler(ctx.settings, ctx.store, ctx.actor, name, wanted, ctx.out)
    where = "the swarm" if wanted == "swarm" else "this host"
    if not moved:
        ctx.out(f"{name} runs on {where} already.")
        return
    ctx.out(f"{name} moves to {where} at its next deploy: `opus ps:restart {name}` (or a "
            "push) moves it now.")


def cmd_ps_resize(ctx: Context, args: list[str]) -> None:
    if len(args) == 1:
        app, found = shown_limits(ctx.store, ctx.actor, args[0])
        if ctx.json:
            ctx.emit_json({kind: {"memory_bytes": value.memory_bytes, "cpus": value.cpus}
                           for kind, value in found.items()})
            return
        for kind in sorted({"web", *found}, key=lambda k: (k != "web", k)):
            ctx.out(f"{kind:<12} {limits.describe(found.get(kind))}")
        where = ctx.store.scheduler(app)
        if where != "swarm" and found:
            ctx.out(f"({_applies(app, where)})")
        return
    if len(args) < 3:
        raise UsageError(f"usage: {ctx.usage}")
    app, new = resize(ctx.settings, ctx.store, ctx.actor, args[0], args[1], args[2:])
    ctx.out(f"{app.name} {args[1]}: {limits.describe(new)}; "
            f"{_applies(app, ctx.store.scheduler(app))}.")


COMMANDS: list[Command] = [
    Command("scheduler", "opus scheduler APP",
            "show where an app runs: local (this host) or swarm", cmd_scheduler,
            takes_app=True),
    Command("scheduler:set", SET_USAGE,
            "run an app on this host or across the swarm's nodes (from its next deploy)",
            cmd_scheduler_set, takes_app=True),
    Command("ps:resize", RESIZE_USAGE,
            "show or set a process type's memory and CPU limits (applied under swarm)",
            cmd_ps_resize, takes_app=True,
            note="(SIZE such as 512M or 2G, N such as 1 or 0.5; none removes a limit)"),
]
