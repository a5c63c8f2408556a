"""Preview apps: a push of a branch other than the deploy branch of an app with previews
on deploys that branch as an app of its own, `APP-BRANCH`, and deleting the branch
destroys it. See docs/previews.md.

A preview is an ordinary app (its own user, processes, data, release history) with a
`previews` row naming its parent and branch. Its repository borrows the parent's objects
(objects/info/alternates), so its deploy branch can point at the pushed commit.
The caller holds the parent's deploy lock; the preview's own lock is taken inside
(always parent, then preview: the same order as destroying the parent).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dulwich.repo import Repo

from opus_paas import locks, names, output
from opus_paas.access import Actor, app_for
from opus_paas.data import dumps, postgres, redis, server
from opus_paas.errors import Conflict, NotFound, UsageError
from opus_paas.front import sites
from opus_paas.git import hooks
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.repos import ZERO_SHA, branch_ref, existing_repo, move_branch
from opus_paas.run import appdirs, programs, push, recovery
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.supervisor import Supervisor

log = logging.getLogger("opus.previews")

MAX_LIMIT = 20
PREVIEW_BRANCH = "main"        # the preview's own deploy branch, in its own repository
NOT_COPIED = frozenset({"DATABASE_URL", "REDIS_URL", "SECRET_KEY"})


# ---- commands' cores ------------------------------------------------------------------

def enable(settings: Settings, store: Store, actor: Actor, name: str,
           limit: int | None) -> tuple[App, int]:
    """Turn previews on for `name` (or change its limit); returns the app and its limit."""
    app = app_for(store, actor, name, manage=True)
    if store.preview_of(app) is not None:
        raise UsageError(f"{app.name} is itself a preview app; enable previews on its "
                         "parent instead")
    chosen = min(settings.preview_limit, MAX_LIMIT) if limit is None else limit
    if not 1 <= chosen <= MAX_LIMIT:
        raise UsageError(f"--limit takes 1 to {MAX_LIMIT} previews, not {chosen}")
    names.preview_app_name(app.name, "x", _max_name(settings))   # room for previews?
    store.set_preview_limit(app, chosen)
    return app, chosen


def disable(settings: Settings, store: Store, actor: Actor, name: str) -> list[str]:
    """Turn previews off: pushes of other branches are only stored again. Existing
    previews stay until their branch is deleted (returned, to say so)."""
    app = app_for(store, actor, name, manage=True)
    store.set_preview_limit(app, None)
    return [p.name for _branch, p in store.previews(app)]


def listing(settings: Settings, store: Store, actor: Actor, name: str
            ) -> tuple[App, int | None, list[dict[str, object]]]:
    app = app_for(store, actor, name)
    rows: list[dict[str, object]] = [
        {"branch": branch, "app": p.name, "url": url(settings, p.name),
         "release": f"v{p.live_version}" if p.live_version else None}
        for branch, p in store.previews(app)]
    return app, store.preview_limit(app), rows


def url(settings: Settings, app: str) -> str:
    return f"http://{settings.app_domain(app)}:{settings.http_port}/"


def _max_name(settings: Settings) -> int:
    return appdirs.MAX_SYSTEM_APP_NAME if settings.system else 30


# ---- the push -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    """Where a branch's preview goes: its name, and the app if it exists already."""

    name: str
    app: App | None


def target(settings: Settings, store: Store, parent: App, branch: str) -> Target:
    """The preview app for `branch`: the one it has, or a free name for a new one.
    Raises Conflict (limit reached, name taken by another app) with what to do."""
    existing = dict(store.previews(parent))
    if branch in existing:
        return Target(existing[branch].name, existing[branch])
    limit = store.preview_limit(parent) or 0
    if len(existing) >= limit:
        raise Conflict(f"{parent.name} has {len(existing)} previews, its limit; delete a "
                       f"branch (git push opus :BRANCH) or raise the limit (opus "
                       f"previews:enable {parent.name} --limit N)")
    name = names.preview_app_name(parent.name, branch, _max_name(settings))
    taken = store.get_app(name)
    if taken is not None and store.preview_of(taken) is not None:
        name = names.preview_app_name(parent.name, branch, _max_name(settings), suffix=True)
        taken = store.get_app(name)
    if taken is not None:
        raise Conflict(f"the preview of {branch} would be named {name}, which is another "
                       f"app's name; rename the branch (or that app) to have a preview")
    return Target(name, None)


def deploy_branch(settings: Settings, store: Store, parent: App, parent_repo: Repo,
                  branch: str, sha: bytes, emit: Emit, cancelled: threading.Event,
                  move_parent: Callable[[], bool]) -> push.Deployed:
    """Build `sha` of `branch` into its preview app (made now if it has none) and bring it
    live; `move_parent` moves the parent's branch once the preview's release is live. A
    failure raises, and a preview made by this push goes again."""
    where = target(settings, store, parent, branch)
    with locks.app_lock(settings, where.name, cancelled=cancelled):
        preview = store.get_app(where.name)
        if (preview.id if preview else None) != (where.app.id if where.app else None):
            # Destroyed, made or remade while this push waited for its lock: never
            # deploy a branch onto an app that is not its preview.
            raise Conflict(f"{where.name} changed while this push waited; push again")
        made = preview is None
        if preview is not None:         # a deploy of it cut off earlier is ended first
            recovery.recover_app(settings, store, preview.name)
        else:
            emit(output.step(f"Creating {where.name}, the preview of {parent.name}'s {branch}"))
            preview = create(settings, store, parent, branch, where.name, emit)
        try:
            preview_repo = Repo(str(existing_repo(settings.repos_dir, preview.name)))
            try:
                old = preview_repo.refs.as_dict().get(branch_ref(PREVIEW_BRANCH), ZERO_SHA)
            finally:
                preview_repo.close()
            move = push.BranchMove(
                branch_ref(PREVIEW_BRANCH).decode(), old.decode(),
                lambda: _move_own(settings, preview.name, old, sha) and move_parent())
            deployed = push.deploy_commit(settings, store, preview, parent_repo, sha, emit,
                                          cancelled=cancelled, branch=move)
        except BaseException:
            if made:
                emit(output.detail(f"{preview.name} is removed again: its first build failed"))
                destroy_app(settings, store, preview)
            raise
        # Live and recorded: what is left (the old instance, old releases) fails nothing.
        try:
            deployed.finish(emit)
            hooks.prune_releases(settings, store, preview.name)
        except Exception:
            log.exception("finishing the deploy of %s failed", preview.name)
    emit(output.step(f"Preview of {parent.name} ({branch}): {url(settings, preview.name)}"))
    return deployed


def _move_own(settings: Settings, app: str, old: bytes, new: bytes) -> bool:
    return move_branch(settings.repos_dir, app, branch_ref(PREVIEW_BRANCH).decode(),
                       old.decode(), new.decode())


def create(settings: Settings, store: Store, parent: App, branch: str, name: str,
           emit: Emit) -> App:
    """The preview app `name` of `branch`, not deployed yet: the parent's owner, a copy
    of its config (but its database URL and SECRET_KEY), its own database when the
    parent has Postgres. The caller holds the parent's lock and the preview's."""
    owner = store.get_user(parent.owner)
    if owner is None:
        raise NotFound(f"{parent.name}'s owner {parent.owner} is gone; an admin must give "
                       "the app an owner first")
    app = appdirs.create_app(settings, store, name, owner)
    try:
        store.add_preview(parent, branch, app)
        repo = _init_repo(settings, name)
        parent_objects = (existing_repo(settings.repos_dir, parent.name) / "objects").absolute()
        (repo / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (repo / "objects" / "info" / "alternates").write_text(f"{parent_objects}\n")
        config = copied_config(store, parent)
        store.change_config(app, config, [])
        emit(output.detail(f"Copied {len(config)} config vars from {parent.name}"))
        if store.app_database(parent) is not None:
            _database(settings, store, parent, app, emit)
    except BaseException:
        destroy_app(settings, store, app)
        raise
    return app


def _init_repo(settings: Settings, name: str) -> Path:
    """The preview's bare repository (made beside its place and renamed in, as the git
    server does); the caller then points its objects at the parent's."""
    paths = AppPaths.of(settings, name)
    path = paths.repo
    if not path.is_dir():
        partial = paths.partial_repo
        shutil.rmtree(partial, ignore_errors=True)
        Repo.init_bare(str(partial), mkdir=True,
                       default_branch=PREVIEW_BRANCH.encode()).close()
        partial.rename(path)
    hooks.install(path)
    return existing_repo(settings.repos_dir, name)


def copied_config(store: Store, parent: App) -> dict[str, str]:
    """The parent's config a preview starts with: not DATABASE_URL or REDIS_URL, not any
    variable holding one of the parent's add-on URLs, not its SECRET_KEY."""
    addon_urls = {found.url for found in (store.app_database(parent), store.app_redis(parent))
                  if found is not None}
    return {k: v for k, v in store.config(parent).items()
            if k not in NOT_COPIED and v not in addon_urls}


def _database(settings: Settings, store: Store, parent: App, app: App, emit: Emit) -> None:
    """A Postgres database of the preview's own, with the parent's newest backup in it
    (empty without one); the release command migrates it on the first deploy."""
    database = postgres.create(settings, store, app)
    store.change_config(app, {"DATABASE_URL": database.url}, [])
    newest = next((b for b in store.list_backups(parent)
                   if b.status == "done" and b.kind == "postgres"), None)
    if newest is None:
        emit(output.detail(f"An empty database: {parent.name} has no backup yet"))
        return
    file = dumps.path(settings, newest.id, newest.kind)
    dumps.require_file(file, newest.size, newest.sha256, newest.id)
    dumps.restore_postgres(server.current(settings, store), database.name, file)
    emit(output.detail(f"Database restored from {parent.name}'s backup {newest.id}"))


# ---- going away -----------------------------------------------------------------------

def destroy_branch(settings: Settings, store: Store, parent: App, branch: str,
                   emit: Emit) -> None:
    """The branch was deleted: its preview app (if any) goes."""
    preview = dict(store.previews(parent)).get(branch)
    if preview is None:
        return
    with locks.app_lock(settings, preview.name):
        now = store.get_app(preview.name)
        if now is None or now.id != preview.id:
            return
        destroy_app(settings, store, now)
    emit(output.step(f"Destroyed {preview.name}, the preview of {branch} (its processes, "
                     "database and data)"))


def destroy_all(settings: Settings, store: Store, parent: App) -> list[str]:
    """The parent is being destroyed (its lock held): its previews go first."""
    gone = []
    for _branch, preview in store.previews(parent):
        with locks.app_lock(settings, preview.name):
            now = store.get_app(preview.name)
            if now is not None and now.id == preview.id:
                destroy_app(settings, store, now)
                gone.append(preview.name)
    return gone


def destroy_app(settings: Settings, store: Store, app: App) -> None:
    """Stop a preview, drop its database and backups, delete its files and record, take
    it off the front. No last backup is kept: a preview's data is a copy. The caller
    holds its lock."""
    supervisor = Supervisor(settings)
    redis.stop_for_destroy(settings, store, app)    # (app.json may have given it one)
    if supervisor.is_running():
        programs.set_programs(settings, supervisor, app.name, [])
    for gone in store.detach_backups(app, None, time.time()):
        dumps.path(settings, gone.id, gone.kind).unlink(missing_ok=True)
    if store.app_database(app) is not None:
        postgres.drop(settings, store, app)
    appdirs.remove_files(settings, app.name)
    store.delete_app(app)
    if supervisor.is_running():
        sites.refresh_front(settings, store, supervisor)
