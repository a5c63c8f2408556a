"""An app's processes: list, restart, stop, start and scale.

A restart or a rescale runs the live release again the way a deploy does (a new
instance on the idle port, health check, switch, drain), so it drops no request.
Only `web` runs today; other Procfile types come with worker support.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from typing import Any

from opus_paas import access, deploy, locks, privileged, redact, release
from opus_paas.access import Actor
from opus_paas.build import Emit
from opus_paas.errors import NotFound, UsageError
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.supervisor import Supervisor

MAX_WEB_PROCESSES = 16


def processes(settings: Settings, store: Store, actor: Actor, name: str) -> list[dict[str, Any]]:
    """The app's processes as supervisor sees them."""
    app = access.app_for(store, actor, name)
    supervisor = Supervisor(settings)
    if not supervisor.is_running():
        return []
    now = time.time()
    prefix = f"{app.name}-web-"
    return [{"type": "web", "name": p["name"], "state": p["statename"], "pid": p["pid"],
             "uptime": int(now - p["start"]) if p["statename"] == "RUNNING" else 0,
             "processes": app.web_processes}
            for p in supervisor.processes() if str(p["group"]).startswith(prefix)]


def _runs_own_web_command(settings: Settings, app: App) -> bool:
    if app.live_version is None:
        return False
    slug = release.slug_dir(settings, app.name, app.live_slug or app.live_version)
    info = release.read_build_info(slug) or {}
    return bool(info.get("web_command"))


def _live(store: Store, app: App) -> App:
    fresh = access.fresh(store, app)
    if fresh.live_version is None:
        raise NotFound(f"{app.name} has no release yet; push to deploy one")
    return fresh


def _run_live(settings: Settings, store: Store, app: App, emit: Emit) -> None:
    deploy.deploy(settings, store, Supervisor(settings), app, app.live_version or 0, emit,
                  slug_version=app.live_slug)


def restart(settings: Settings, store: Store, actor: Actor, name: str, emit: Emit) -> None:
    """A fresh instance of the live release (a stopped app starts)."""
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        _run_live(settings, store, _live(store, app), emit)


def stop(settings: Settings, store: Store, actor: Actor, name: str) -> None:
    """Stop every process of the app; it stays stopped (across `opus up` too) until
    `ps:start`, `ps:restart` or a deploy."""
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        app = _live(store, app)
        store.set_stopped(app, True)
        supervisor = Supervisor(settings)
        if supervisor.is_running():
            deploy.set_programs(settings, supervisor, app.name, [])


def start(settings: Settings, store: Store, actor: Actor, name: str, emit: Emit) -> bool:
    """Start a stopped app; False if it was running already."""
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        app = _live(store, app)
        if not app.stopped:
            return False
        _run_live(settings, store, app, emit)
        return True


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
    """Run `web` with that many mod_wsgi processes, switched without a failed request."""
    unknown = sorted(set(counts) - {"web"})
    if unknown:
        raise UsageError(f"only web can be scaled so far ({', '.join(unknown)}: Procfile "
                         "types other than web and release are not run yet)")
    web = counts.get("web")
    if web is None or not 1 <= web <= MAX_WEB_PROCESSES:
        raise UsageError(f"web takes 1 to {MAX_WEB_PROCESSES} processes; stop an app with "
                         "`opus ps:stop`")
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        app = access.fresh(store, app)
        if web != 1 and _runs_own_web_command(settings, app):
            raise UsageError(f"{app.name}'s web runs its Procfile command as written; scale it "
                             "with that server's own option (e.g. --workers) and push again")
        before = app.web_processes
        store.set_scale(app, web)
        app = access.fresh(store, app)
        if app.live_version is not None and not app.stopped:
            try:
                _run_live(settings, store, app, emit)
            except BaseException:
                store.set_scale(app, before)
                raise
        return app


def run_one_off(settings: Settings, store: Store, actor: Actor, name: str, argv: list[str],
                emit: Emit, cancelled: threading.Event,
                terminal: privileged.Terminal | None = None) -> int:
    """Run `argv` once as the app's user, in its live release with its config, streaming
    its output; return its exit status. It is stopped when the client goes away, or
    after the build time limit."""
    if not argv:
        raise UsageError("usage: opus run APP -- COMMAND [ARGS…]")
    app = _live(store, access.app_for(store, actor, name))
    assert app.live_version is not None
    slug = release.slug_dir(settings, app.name, app.live_slug or app.live_version)
    env = json.loads(release.env_file(settings, app.name, app.live_version).read_text())
    program = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env["PATH"])
    if program is None:
        raise NotFound(f"{argv[0]}: no such command in {app.name}'s release")
    if terminal is not None:
        return privileged.run_in_terminal(settings, [program, *argv[1:]], cwd=slug, env=env,
                                          terminal=terminal, timeout=settings.build_timeout,
                                          cancelled=cancelled)
    pairs = redact.replacements(settings, slug)
    try:
        for line in privileged.stream(settings, [program, *argv[1:]], cwd=slug, env=env,
                                      timeout=settings.build_timeout, cancelled=cancelled):
            emit(redact.redact(line, pairs))
    except subprocess.CalledProcessError as exc:
        return exc.returncode if exc.returncode > 0 else 128 - exc.returncode
    return 0
