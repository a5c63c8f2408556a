"""Apps as a whole: create (by command or first push), describe, rename, destroy.

The core operations the CLI, SSH (commands and git) and the dashboard all call: each
takes the actor and decides, through access.py, whether they may; callers only parse
and print. Each change takes the app's deploy lock, so it never interleaves with a push.
The record, directories and user underneath are run/appdirs.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from typing import Any

from dulwich.repo import Repo

from opus_paas import access, locks, names, repos
from opus_paas.access import Actor
from opus_paas.data import backups, redis
from opus_paas.errors import Conflict, OpusError, UsageError
from opus_paas.front import sites
from opus_paas.git import gitserver
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.run import appdirs, checks, health, previews, programs, push
from opus_paas.settings import Settings
from opus_paas.store import App, Backup, Build, Release, Store, User
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import deploy as swarm_deploy
from opus_paas.swarm import volumes


def create(settings: Settings, store: Store, actor: Actor, name: str) -> App:
    """A new app with its repository, owned by `actor` (the operator's apps belong to the
    first admin)."""
    names.check_app_name(name)
    if not access.may_create(settings, actor):
        access.require_admin(actor, "create apps here")
    owner = owner_for(store, actor)
    with locks.app_lock(settings, name):
        if store.get_app(name) is not None:
            raise Conflict(f"app {name} already exists; choose another name")
        app = appdirs.create_app(settings, store, name, owner)
        gitserver.init_repo(settings, name, app.deploy_branch)
    return app


def owner_for(store: Store, actor: Actor) -> User:
    """Who owns an app `actor` creates: themselves, or for the operator the first admin."""
    if actor.user is not None:
        return actor.user
    admins = [u for u in store.list_users() if u.is_admin]
    if not admins:
        raise UsageError("there is no user yet to own the app; add one with "
                         "`opus keys:add USER FILE` first")
    return admins[0]


def open_for_push(settings: Settings, store: Store, user: User,
                  app_name: str) -> tuple[App, bool]:
    """Under the app's deploy lock: the app, created with its repository on first push,
    and whether it was created now."""
    app = access.app_or_creatable(settings, store, Actor(user), app_name)
    created = app is None
    if app is None:
        app = appdirs.create_app(settings, store, app_name, user)
    gitserver.init_repo(settings, app.name, app.deploy_branch)
    return app, created


def forget_if_unused(settings: Settings, store: Store, app: App) -> None:
    """A push that created an app but stored nothing and built nothing (a dry run, a
    refused or broken push) leaves no app behind: names cannot be squatted that way."""
    repo = repos.existing_repo(settings.repos_dir, app.name)
    stored = any(p.is_file() for p in (repo / "refs").rglob("*")) or \
        (repo / "packed-refs").exists()
    if stored or store.has_builds(app):
        return
    appdirs.remove_files(settings, app.name)
    store.delete_app(app)


def info(settings: Settings, store: Store, app: App) -> dict[str, Any]:
    """What `apps:info` shows (and `--json` prints)."""
    parent = store.preview_of(app)
    return {
        "name": app.name,
        "preview_of": {"app": parent[0], "branch": parent[1]} if parent else None,
        "owner": app.owner,
        "collaborators": store.collaborators(app),
        "release": f"v{app.live_version}" if app.live_version else None,
        "deploy_branch": app.deploy_branch,
        "url": f"http://{settings.app_domain(app.name)}:{settings.http_port}/",
        "git_url": f"ssh://git@{settings.ssh_host}:{settings.ssh_port}/{app.name}.git",
    }


def visible(store: Store, actor: Actor) -> list[App]:
    """The apps `actor` may use, by name."""
    return access.visible_apps(store, actor)


def describe(settings: Settings, store: Store, actor: Actor, name: str) -> dict[str, Any]:
    """`info` of the app `name`, for one who may use it."""
    return info(settings, store, access.app_for(store, actor, name))


def config(store: Store, actor: Actor, name: str) -> tuple[App, dict[str, str]]:
    """The app and its config vars, for one who may use it."""
    app = access.app_for(store, actor, name)
    return app, store.config(app)


def releases(store: Store, actor: Actor, name: str) -> tuple[App, list[Release]]:
    """The app and its releases, newest first, for one who may use it."""
    app = access.app_for(store, actor, name)
    return app, store.list_releases(app)


def builds(store: Store, actor: Actor, name: str) -> tuple[App, list[Build]]:
    """The app and its builds, newest first, for one who may use it."""
    app = access.app_for(store, actor, name)
    return app, store.list_builds(app)


def people(store: Store, actor: Actor, name: str) -> tuple[App, list[str]]:
    """The app and its collaborators (its owner is `app.owner`), for one who may use it."""
    app = access.app_for(store, actor, name)
    return app, store.collaborators(app)


def domains(settings: Settings, store: Store, actor: Actor, name: str) -> list[str]:
    """Every name the app is served on, for one who may use it."""
    return sites.app_domains(settings, store, access.app_for(store, actor, name))


def set_deploy_branch(settings: Settings, store: Store, actor: Actor, name: str,
                      branch: str) -> App:
    """Make `branch` the one whose pushes deploy the app (its owner or an admin)."""
    access.app_for(store, actor, name, manage=True)
    return gitserver.set_deploy_branch(settings, store, name, branch)


def health_check(settings: Settings, store: Store, actor: Actor, name: str) -> checks.Check:
    return checks.from_json(access.app_for(store, actor, name).health_check)


def set_health_check(settings: Settings, store: Store, actor: Actor, name: str,
                     pairs: list[str] | None) -> checks.Check:
    """Change the app's check (`pairs` as `checks:set` takes them), or disable it
    (`pairs` None); it applies from the next deploy, restart or rollback."""
    app = access.app_for(store, actor, name)
    with locks.app_lock(settings, app.name):
        app = access.fresh(store, app)
        current = checks.from_json(app.health_check)
        changed = dataclasses.replace(current, disabled=True) if pairs is None \
            else checks.parse(current, pairs)
        store.set_health_check(app, changed.to_json())
    return changed


def destroy(settings: Settings, store: Store, actor: Actor, name: str,
            confirm: str) -> Backup | None:
    """Stop the app, take it off the front, and delete its code, releases, data, logs and
    record. `confirm` must repeat the name. A last backup of its database is kept for a
    while (returned), and its Postgres database dropped. Its preview apps are destroyed
    first (without a last backup: their data is a copy)."""
    app = access.app_for(store, actor, name, manage=True)
    if confirm != app.name:
        raise UsageError(f"destroying {name} deletes its code, releases and data for good; "
                         f"to go ahead, repeat its name: --confirm {name}")
    with locks.app_lock(settings, app.name):
        app = access.fresh(store, app)
        held = volumes.data_node(store, app)
        if held is not None:
            # Its data comes home first: the last backup is of it, then it all goes.
            try:
                swarm_deploy.bring_data_back(settings, store, app, lambda _line: None)
            except OpusError as exc:
                raise Conflict(f"{app.name}'s data could not be brought back from node "
                               f"{held} for its last backup ({exc.message}); nothing was "
                               "destroyed. If the node is lost for good: `opus nodes:remove "
                               f"{held} --gone`, then destroy again") from None
        previews.destroy_all(settings, store, app)   # a parent's previews go with it
        supervisor = Supervisor(settings)
        redis.stop_for_destroy(settings, store, app)   # stopped with the app's programs
        if supervisor.is_running():
            programs.set_programs(settings, supervisor, app.name, [])
        with contextlib.suppress(OpusError):   # its services on the swarm (swarm/deploy.py)
            swarm_deploy.retire(settings, store, app, lambda _line: None)
        if held is not None:       # (its tasks are gone or going: a few tries)
            with contextlib.suppress(OpusError):
                volumes.remove_volume(settings, store, app, held)
        kept = backups.keep_on_destroy(settings, store, app)   # with nothing running
        # The files go before the record: a name is never reused onto old code or data.
        appdirs.remove_files(settings, app.name)
        store.delete_app(app)
        sites.refresh_front(settings, store, supervisor)
    return kept


def rename(settings: Settings, store: Store, actor: Actor, old: str, new: str,
           emit: Emit) -> App:
    """Rename an app: its repository, record, config, releases and domain follow.

    A release's build holds its own paths, so a deployed app is rebuilt from its live
    commit under the new name (it is down while that builds); if the rebuild fails,
    everything is put back under the old name and restarted.
    """
    app = access.app_for(store, actor, old, manage=True)
    names.check_app_name(new)
    if settings.system:
        raise UsageError("apps:rename is not available in system mode yet (each app has a "
                         f"Unix user of its own); create {new}, push to it, then destroy "
                         f"{old}")
    if store.app_redis(app) is not None:
        raise UsageError(f"apps:rename does not move an app's Redis yet; `opus redis:destroy "
                         f"{app.name} --confirm {app.name}` first (its data goes), or keep "
                         "the name")
    held = volumes.data_node(store, app)
    if held is not None:
        raise UsageError(f"apps:rename does not move {app.name}'s data on node {held} yet: "
                         f"bring it back first (`opus scheduler:set {app.name} local`, then "
                         f"`opus ps:restart {app.name}`), or keep the name")
    first, second = sorted([app.name, new])
    with locks.app_lock(settings, first), locks.app_lock(settings, second):
        app = access.fresh(store, app)
        if store.get_app(new) is not None:
            raise Conflict(f"app {new} already exists; choose another name")
        live = None if app.live_version is None else store.get_release(app, app.live_version)
        supervisor = Supervisor(settings)
        if live is not None and supervisor.is_running():
            programs.set_programs(settings, supervisor, app.name, [])
        store.set_asleep(app, False)       # (its rebuild, or the undo, starts it)
        renamed = store.rename_app(app, new)
        _move(settings, app.name, new)
        if live is None:
            if AppPaths.of(settings, app.name).dir.exists():
                AppPaths.of(settings, app.name).dir.rename(AppPaths.of(settings, new).dir)
            return renamed
        store.clear_live(renamed)
        _move_kept(settings, app.name, new)
        try:
            repo = Repo(str(AppPaths.of(settings, new).repo))
            try:
                push.deploy_commit(settings, store, store.get_app(new) or renamed, repo,
                                   live.sha.encode(), emit).finish(emit)
            finally:
                repo.close()
        except BaseException:
            _undo_rename(settings, store, app, new, supervisor)
            raise
        shutil.rmtree(AppPaths.of(settings, app.name).dir, ignore_errors=True)
        shutil.rmtree(AppPaths.of(settings, app.name).static, ignore_errors=True)
        sites.refresh_front(settings, store, supervisor)
        return store.get_app(new) or renamed


def _move(settings: Settings, old: str, new: str) -> None:
    before, after = AppPaths.of(settings, old), AppPaths.of(settings, new)
    for source, target in ((before.repo, after.repo), (before.logs, after.logs),
                           (before.build_logs, after.build_logs)):
        if source.exists():
            source.rename(target)


KEPT = ("data", "home")   # what a rename carries over; releases are rebuilt


def _move_kept(settings: Settings, old: str, new: str) -> None:
    before, after = AppPaths.of(settings, old).dir, AppPaths.of(settings, new).dir
    after.mkdir(mode=0o755, exist_ok=True)
    for name in KEPT:
        source = before / name
        if source.is_dir() and not source.is_symlink():
            source.rename(after / name)


def _undo_rename(settings: Settings, store: Store, app: App, new: str,
                 supervisor: Supervisor) -> None:
    """Put the app back as it was before a rename whose rebuild failed."""
    current = store.get_app(new)
    if current is not None:
        store.rename_app(current, app.name)
    _move(settings, new, app.name)
    renamed, original = AppPaths.of(settings, new).dir, AppPaths.of(settings, app.name).dir
    for name in KEPT:
        moved = renamed / name
        if moved.is_dir() and not (original / name).exists():
            moved.rename(original / name)
    shutil.rmtree(renamed, ignore_errors=True)
    restored = store.get_app(app.name)
    if restored is not None and app.live_version is not None and app.live_port is not None:
        store.set_live(restored, app.live_version, app.live_port, app.live_slug)
        restored = store.get_app(app.name) or restored
        program = programs.live_program(settings, restored)
        if supervisor.is_running() and program is not None:
            programs.set_programs(settings, supervisor, app.name, [program])
            with contextlib.suppress(OpusError):   # the rename's own error is what to report
                health.check_health(settings, settings.app_domain(app.name), app.live_port,
                                    program.name, supervisor)
        sites.refresh_front(settings, store, supervisor)
