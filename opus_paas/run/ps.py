"""An app's processes: list, restart, stop, start and scale.

A restart or a rescale runs the live release again the way a deploy does (a new
instance on the idle port, health check, switch, drain), so it drops no request.
Other Procfile types (workers) run under supervisor at their scale, each process wrapped
in `opus_runtime.supervise`, which restarts it with backoff when it dies.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from typing import Any

from opus_paas import access, locks, names, privileged, redact
from opus_paas.access import Actor
from opus_paas.build import release
from opus_paas.errors import NotFound, OpusError, UsageError
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.run import deploy, health, programs, recovery
from opus_paas.run import restart as restart_module
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import appview, volumes
from opus_paas.swarm import deploy as swarm_deploy

MAX_WEB_PROCESSES = 16
MAX_TYPE_PROCESSES = 16


def processes(settings: Settings, store: Store, actor: Actor, name: str) -> list[dict[str, Any]]:
    """The app's processes as supervisor sees them, web first; a process that keeps
    dying says so (its crashes and when it starts again)."""
    app = access.app_for(store, actor, name)
    found = _supervised(settings, store, actor, [app]).get(app.name, [])
    # A swarm app's tasks, with their nodes (swarm/appview.py; a manager that does not
    # answer is an error here).
    return found + appview.processes(settings, store, [app]).get(app.name, [])


def visible_processes(settings: Settings, store: Store, actor: Actor,
                      apps: list[App]) -> dict[str, list[dict[str, Any]]]:
    """`processes` for each of `apps` the actor may use, asking supervisor once (and the
    swarm's manager once, if it answers)."""
    found = _supervised(settings, store, actor, apps)
    try:
        swarm = appview.processes(settings, store, [
            a for a in apps if access.may_use(actor, a, store.collaborators(a))])
    except OpusError:
        swarm = {}
    for name, entries in swarm.items():
        found.setdefault(name, []).extend(entries)
    return found


def _supervised(settings: Settings, store: Store, actor: Actor,
                apps: list[App]) -> dict[str, list[dict[str, Any]]]:
    """The processes supervisor runs on this host for each of `apps` the actor may use."""
    wanted = {a.name: a for a in apps if access.may_use(actor, a, store.collaborators(a))}
    supervisor = Supervisor(settings)
    if not wanted or not supervisor.is_running():
        return {}
    now = time.time()
    found: dict[str, list[dict[str, Any]]] = {}
    for p in supervisor.processes():
        group = str(p["group"])
        owner = programs.program_owner(group)
        if owner is None or owner[0] not in wanted:
            continue
        app, kind = wanted[owner[0]], owner[1]
        if kind == "web":
            number, count = 1, app.web_processes
        else:
            number = int(str(p["name"]).rpartition(".")[2] or 0)
            count = 1
        entry = {"type": kind, "number": number, "name": p["name"], "state": p["statename"],
                 "pid": p["pid"],
                 "uptime": int(now - p["start"]) if p["statename"] == "RUNNING" else 0,
                 "processes": count}
        entry.update(_backoff_state(settings, app,
                                    group if kind == "web" else f"{kind}.{number}", now))
        found.setdefault(app.name, []).append(entry)
    for entries in found.values():
        entries.sort(key=lambda e: (e["type"] != "web", e["type"], e["number"]))
    return found


def _backoff_state(settings: Settings, app: App, name: str, now: float) -> dict[str, Any]:
    """What the process's wrapper last wrote: crashes, and a restart pending."""
    state = health.read_process_state(AppPaths.of(settings, app.name).run /
                                      f"{name}.json")
    crashes = state.get("crashes") if isinstance(state.get("crashes"), int) else 0
    found: dict[str, Any] = {"crashes": crashes}
    restart_at = state.get("restart_at")
    if state.get("state") == "crashed" and isinstance(restart_at, (int, float)):
        found["state"] = "CRASHED"
        found["restart_in"] = max(0, round(restart_at - now))
    return found


def _runs_own_web_command(settings: Settings, app: App) -> bool:
    return bool(release.live_build_info(settings, app).get("web_command"))


def _live(store: Store, app: App) -> App:
    fresh = access.fresh(store, app)
    if fresh.live_version is None:
        raise NotFound(f"{app.name} has no release yet; push to deploy one")
    return fresh


def _run_live(settings: Settings, store: Store, app: App, emit: Emit,
              running: App | None = None) -> None:
    """A new instance of the live release (no new release), switched like a deploy."""
    version = app.live_version or 0
    if store.scheduler(app) == "swarm":      # on the swarm: a release of the live build
        live = store.get_release(app, version)
        if live is not None:
            restart_module.release_build(settings, store, app, slug_version=live.slug_version,
                                         sha=live.sha, config=live.config,
                                         description="Restart", emit=emit)
            return
    deploy.deploy(settings, store, Supervisor(settings), app, version, emit,
                  slug_version=app.live_slug, running=running,
                  record=lambda port: store.set_live(app, version, port, app.live_slug),
                  ).finish(emit)


def restart(settings: Settings, store: Store, actor: Actor, name: str, emit: Emit,
            kind: str | None = None) -> None:
    """A fresh instance of the live release (a stopped app starts); with `kind`, only
    that process type's processes."""
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        recovery.settle(settings, store, app, emit)
        app = _live(store, app)
        if kind is None or kind == "web":
            _run_live(settings, store, app, emit)
            return
        _known_type(settings, app, kind)
        supervisor = Supervisor(settings)
        group = programs.type_program_name(app.name, kind)
        if supervisor.is_running() and supervisor.process_state(f"{group}:{group}.1") != \
                "ABSENT":
            supervisor.restart_group(group)
        else:
            raise UsageError(f"{kind} is not running; `opus ps:scale {app.name} {kind}=1` "
                             "runs it")


def stop(settings: Settings, store: Store, actor: Actor, name: str,
         kind: str | None = None) -> None:
    """Stop every process of the app (or of one type); it stays stopped (across `opus up`
    too) until `ps:start`, `ps:restart` or a deploy (for a type: until `ps:start`)."""
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        app = _live(store, app)
        if kind is None:
            store.set_stopped(app, True)
            if store.is_asleep(app):      # stopped: not asleep (a start deploys it)
                store.set_asleep(app, False)
            swarm_deploy.stop_app(settings, store, app)   # its services, if on the swarm
        elif kind == "web":
            raise UsageError("web is the app: `opus ps:stop APP` stops it all")
        else:
            _known_type(settings, app, kind)
            store.set_type_stopped(app, kind, True)
        _apply_types(settings, store, access.fresh(store, app))


def start(settings: Settings, store: Store, actor: Actor, name: str, emit: Emit,
          kind: str | None = None) -> bool:
    """Start a stopped app (or process type); False if it was running already."""
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        recovery.settle(settings, store, app, emit)
        app = _live(store, app)
        if kind is not None and kind != "web":
            _known_type(settings, app, kind)
            if not store.formation(app).get(kind, (0, False))[1]:
                return False
            store.set_type_stopped(app, kind, False)
            _apply_types(settings, store, access.fresh(store, app))
            return True
        if not app.stopped and not store.is_asleep(app):
            return False
        _run_live(settings, store, app, emit)
        return True


def _known_type(settings: Settings, app: App, kind: str) -> None:
    types = release.process_types(release.live_build_info(settings, app))
    if kind not in types or kind == "release":
        known = ", ".join(sorted(set(types) - {"release"} | {"web"}))
        raise NotFound(f"{app.name} has no process type {kind!r}; its Procfile has: {known}")


def _apply_types(settings: Settings, store: Store, app: App) -> None:
    """Supervisor runs the live web instance and the other types at their scale."""
    supervisor = Supervisor(settings)
    if not supervisor.is_running():
        return
    programs.set_programs(settings, supervisor, app.name,
                        programs.expected_programs(settings, store, app))


def parse_scale(pairs: list[str]) -> dict[str, int]:
    """`web=3` … → {"web": 3}."""
    found: dict[str, int] = {}
    for pair in pairs:
        kind, sep, count = pair.partition("=")
        if not sep or not re.fullmatch(r"[0-9]{1,6}", count):
            raise UsageError(f"{pair!r} is not TYPE=COUNT, such as web=2")
        found[kind] = int(count)
    return found


def scale(settings: Settings, store: Store, actor: Actor, name: str, counts: dict[str, int],
          emit: Emit) -> App:
    """Run `web` with that many mod_wsgi processes (switched without a failed request) and
    each other Procfile type with that many processes. The counts stay across deploys."""
    for kind, count in counts.items():
        names.check_process_type(kind)
        limit = MAX_WEB_PROCESSES if kind == "web" else MAX_TYPE_PROCESSES
        low = 1 if kind == "web" else 0
        if not low <= count <= limit:
            hint = "; stop an app with `opus ps:stop`" if kind == "web" else ""
            raise UsageError(f"{kind} takes {low} to {limit} processes{hint}")
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        app = recovery.settle(settings, store, app, emit)
        if store.scheduler(app) == "swarm" and app.live_version is not None \
                and not app.stopped:         # services on the swarm (swarm/deploy.py)
            swarm_deploy.scale_app(settings, store, app, counts, emit)
            return access.fresh(store, app)
        web = counts.get("web")
        others = {k: v for k, v in counts.items() if k != "web"}
        if others:
            if app.live_version is None:
                raise NotFound(f"{app.name} has no release yet; push to deploy one")
            for kind in others:
                _known_type(settings, app, kind)
        if web is not None and web != 1 and _runs_own_web_command(settings, app):
            raise UsageError(f"{app.name}'s web runs its Procfile command as written; scale it "
                             "with that server's own option (e.g. --workers) and push again")
        before, formation = app.web_processes, store.formation(app)
        store.set_formation(app, others)
        try:
            if web is not None and web != app.web_processes:
                running = app
                store.set_scale(app, web)
                app = access.fresh(store, app)
                if app.live_version is not None and not app.stopped:
                    _run_live(settings, store, app, emit, running)
            elif others and not app.stopped:
                _apply_types(settings, store, app)
        except BaseException:
            store.set_scale(app, before)
            store.set_formation(app, {k: formation.get(k, (0, False))[0] for k in others})
            raise
        return access.fresh(store, app)


def parse_threads(pair: str) -> int | None:
    """T of `threads=T`, from 1 to programs.MAX_THREADS; None for anything else."""
    if not re.fullmatch(r"threads=[0-9]{1,3}", pair):
        return None
    threads = int(pair.partition("=")[2])
    return threads if 1 <= threads <= programs.MAX_THREADS else None


def set_web(settings: Settings, store: Store, actor: Actor, name: str, threads: int,
            emit: Emit) -> App:
    """Threads per mod_wsgi daemon process of web, applied like a rescale."""
    if not 1 <= threads <= programs.MAX_THREADS:
        raise UsageError(f"an app's web runs 1 to {programs.MAX_THREADS} threads a process")
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        app = recovery.settle(settings, store, app, emit)
        if _runs_own_web_command(settings, app):
            raise UsageError(f"{app.name}'s web runs its Procfile command as written; set its "
                             "threads with that server's own option")
        running, before = app, app.web_threads
        store.set_web_threads(app, threads)
        app = access.fresh(store, app)
        if app.live_version is not None and not app.stopped and before != threads:
            try:
                _run_live(settings, store, app, emit, running)
            except BaseException:
                store.set_web_threads(app, before)
                raise
        return app


def run_one_off(settings: Settings, store: Store, actor: Actor, name: str, argv: list[str],
                emit: Emit, cancelled: threading.Event,
                terminal: privileged.Terminal | None = None) -> int:
    """Run `argv` once as the app's user, in its live release with its config, streaming
    its output; return its exit status. It is stopped when the client goes away, or
    after the build time limit."""
    if not argv:
        raise UsageError("give the command to run after --")
    app = _live(store, access.app_for(store, actor, name))
    assert app.live_version is not None
    node = volumes.data_node(store, app)
    if node is not None:
        raise UsageError(f"{app.name}'s data is on node {node} (pinned there), and `opus run` "
                         "runs on this host, where it would not see it: change the data "
                         "through the app, or move it back first (`opus scheduler:set "
                         f"{app.name} local`, then `opus ps:restart {app.name}`)")
    slug = AppPaths.of(settings, app.name).slug(app.live_slug or app.live_version)
    env = json.loads(AppPaths.of(settings, app.name).env_file(app.live_version).read_text())
    command = privileged.command_argv(settings, argv, env["PATH"])
    if "/" not in command[0]:
        raise NotFound(f"{argv[0]}: no such command in {app.name}'s release")
    if terminal is not None:
        return privileged.run_in_terminal(settings, app.name, command, cwd=slug, env=env,
                                          terminal=terminal, timeout=settings.build_timeout,
                                          cancelled=cancelled)
    pairs = redact.replacements(settings, slug)
    try:
        for line in privileged.stream(settings, app.name, command, cwd=slug, env=env,
                                      timeout=settings.build_timeout, cancelled=cancelled):
            emit(redact.redact(line, pairs))
    except subprocess.CalledProcessError as exc:
        return exc.returncode if exc.returncode > 0 else 128 - exc.returncode
    return 0
