"""Apps as a whole: create, describe, destroy. Shared by the CLI, SSH and the dashboard.

Each change takes the app's deploy lock, so it never interleaves with a push.
"""

from __future__ import annotations

import shutil
from typing import Any

from opus_paas import access, deploy, gitserver, locks, names, push
from opus_paas.access import Actor
from opus_paas.errors import Conflict, UsageError
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.supervisor import Supervisor


def create(settings: Settings, store: Store, actor: Actor, name: str) -> App:
    """A new app with its repository, owned by `actor` (the operator's apps belong to the
    first admin)."""
    names.check_app_name(name)
    if not access.may_create(settings, actor):
        access.require_admin(actor, "create apps here")
    owner = actor.user or _first_admin(store)
    with locks.app_lock(settings, name):
        if store.get_app(name) is not None:
            raise Conflict(f"app {name} already exists; choose another name")
        app = push.create_app(settings, store, name, owner)
        gitserver.init_repo(settings, name, app.deploy_branch)
    return app


def _first_admin(store: Store) -> Any:
    admins = [u for u in store.list_users() if u.is_admin]
    if not admins:
        raise UsageError("there is no user yet to own the app; add one with "
                         "`opus keys:add USER FILE` first")
    return admins[0]


def info(settings: Settings, store: Store, app: App) -> dict[str, Any]:
    """What `apps:info` shows (and `--json` prints)."""
    return {
        "name": app.name,
        "owner": app.owner,
        "collaborators": store.collaborators(app),
        "release": f"v{app.live_version}" if app.live_version else None,
        "deploy_branch": app.deploy_branch,
        "url": f"http://{settings.app_domain(app.name)}:{settings.http_port}/",
        "git_url": f"ssh://git@{settings.ssh_host}:{settings.ssh_port}/{app.name}.git",
    }


def destroy(settings: Settings, store: Store, actor: Actor, name: str, confirm: str) -> None:
    """Stop the app, take it off the front, and delete its code, releases, data, logs and
    record. `confirm` must repeat the name: nothing is kept."""
    app = access.app_for(store, actor, name, manage=True)
    if confirm != app.name:
        raise UsageError(f"destroying {name} deletes its code, releases and data for good; "
                         f"to go ahead, repeat its name: --confirm {name}")
    with locks.app_lock(settings, app.name):
        supervisor = Supervisor(settings)
        if supervisor.is_running():
            deploy.set_programs(settings, supervisor, app.name, [])
        else:
            (supervisor.conf_d / deploy.program_file(app.name)).unlink(missing_ok=True)
        store.delete_app(app)
        deploy.refresh_front(settings, store, supervisor)
        for path in (settings.repos_dir / f"{app.name}.git", settings.apps_dir / app.name,
                     settings.logs_dir / app.name):
            shutil.rmtree(path, ignore_errors=True)
