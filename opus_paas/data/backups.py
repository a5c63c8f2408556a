"""Backups of every app's database (its Postgres database, else its SQLite file):
capture, list, restore, retention, the pre-release backup, the last backup a destroyed
app keeps, and the scheduled ones.

Each backup is a row in opus.db (its kind, what took it, its size and sha256) and a file
in OPUS_HOME/backups. A restore checks the file against its checksum, takes a backup of
the data it replaces, and then puts the backup back; it never takes a backup of one app
into another while both exist.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from opus_paas import access, locks, names, output
from opus_paas.access import Actor
from opus_paas.data import dumps, postgres, schedule, server
from opus_paas.errors import BuildFailed, Conflict, NotFound, OpusError, UsageError
from opus_paas.output import Emit
from opus_paas.settings import Settings
from opus_paas.store import App, Backup, Store
from opus_paas.swarm import volumes

log = logging.getLogger("opus.backups")
DEFAULT_KEEP = 10          # captured and scheduled backups an app keeps
KEEP_RESTORE = 3           # backups of the data a restore replaced
STALE_RUNNING = 86400.0    # a backup still "running" after a day was cut off


def kind_of(store: Store, app: App) -> str | None:
    """What the app's database is: `postgres` (Opus's), `sqlite` (the default file), or
    None when DATABASE_URL points at a database Opus does not manage."""
    if store.app_database(app) is not None:
        return "postgres"
    if store.config(app).get("DATABASE_URL"):
        return None
    return "sqlite"


def capture(settings: Settings, store: Store, app: App, trigger: str = "manual",
            release_version: int | None = None) -> Backup | None:
    """Back the app's database up now; None when it has no SQLite database yet."""
    kind = kind_of(store, app)
    if kind is None:
        raise UsageError(f"{app.name}'s DATABASE_URL points at a database Opus does not "
                         "manage; back it up where it lives")
    node = volumes.data_node(store, app) if kind == "sqlite" else None
    if node is not None:
        raise UsageError(f"{app.name}'s SQLite database is on node {node} (pinned there), "
                         "and Opus does not back up data on nodes yet: attach Postgres "
                         f"(`opus pg:create {app.name}`), or move it back here (`opus "
                         f"scheduler:set {app.name} local`)")
    backup_id = store.start_backup(app, kind, trigger, release_version)
    final = dumps.path(settings, backup_id, kind)
    partial = final.with_name(f".{final.name}.partial")
    try:
        if kind == "postgres":
            database = postgres.database_of(store, app)
            dumps.dump_postgres(server.current(settings, store), database.name, partial)
        elif not dumps.dump_sqlite(settings, app.name, partial):
            partial.unlink(missing_ok=True)
            store.delete_backup(backup_id)
            return None
        size, digest = dumps.checksum(partial)
        os.replace(partial, final)
        store.finish_backup(backup_id, size, digest)
    except BaseException:
        partial.unlink(missing_ok=True)
        store.delete_backup(backup_id)
        raise
    prune(settings, store, app)
    found = store.get_backup(backup_id)
    assert found is not None
    return found


def capture_now(settings: Settings, store: Store, actor: Actor, name: str) -> Backup:
    """`backups:capture`: the app's database, now."""
    app = access.app_for(store, actor, name)
    found = capture(settings, store, app, "manual")
    if found is None:
        raise NotFound(f"{app.name} has no database yet (its SQLite file is made by its "
                       "first release command); push first, or `opus pg:create "
                       f"{app.name}`")
    return found


def before_release(settings: Settings, store: Store, app: App, version: int,
                   emit: Emit) -> None:
    """The backup taken just before a release command (migrations) runs, kept with the
    release it precedes; one that fails stops the push."""
    if kind_of(store, app) is None:
        emit(output.detail("DATABASE_URL points at a database Opus does not manage: no backup "
                           "before the release command"))
        return
    node = volumes.data_node(store, app) if kind_of(store, app) == "sqlite" else None
    if node is not None:
        emit(output.detail(f"The database is on node {node}: no backup before the release "
                           "command (Opus does not back up data on nodes yet)"))
        return
    try:
        found = capture(settings, store, app, "release", version)
    except OpusError as exc:
        raise BuildFailed(f"the backup before the release command failed ({exc.message}); "
                          "nothing was deployed") from None
    if found is not None:
        emit(output.step(f"Backed up the database before the release command: backup "
                         f"{found.id} ({size_text(found.size)})"))


def size_text(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} bytes"


# ---- finding and restoring --------------------------------------------------------------

def parse_id(text: str) -> int:
    if not names.NUMBER.fullmatch(text):
        shown = text if len(text) <= 20 and text.isprintable() else repr(text[:20])
        raise UsageError(f"{shown} is not a backup id; `opus backups APP` lists them")
    return int(text)


def of_app(store: Store, app: App, backup_id: int) -> Backup:
    """One of the app's own finished backups, or NotFound."""
    found = store.get_backup(backup_id)
    if found is None or found.app_id != app.id or found.app != app.name or \
            found.status != "done":
        raise NotFound(f"{app.name} has no backup {backup_id}; `opus backups {app.name}` "
                       "lists them")
    return found


def for_restore(store: Store, actor: Actor, app: App, backup_id: int | None) -> Backup:
    """The backup to restore into `app`: one of its own (default: the newest), or a
    destroyed app's last backup its owner (or an admin) brings into a new app. Another
    live app's backup is refused."""
    if backup_id is None:
        done = [b for b in store.list_backups(app) if b.status == "done"]
        if not done:
            raise NotFound(f"{app.name} has no backups yet; `opus backups:capture "
                           f"{app.name}` takes one")
        return done[0]
    found = store.get_backup(backup_id)
    if found is not None and found.app_id is None and found.status == "done" and \
            (actor.is_admin or actor.name == found.owner):
        return found
    if found is not None and found.app_id is not None and found.app_id != app.id:
        other = store.get_app(found.app)
        if other is not None and other.id == found.app_id and \
                access.may_use(actor, other, store.collaborators(other)):
            raise Conflict(f"backup {backup_id} was taken of {found.app}, not {app.name}: a "
                           "backup goes back into its own app (or, once that app is "
                           "destroyed, into a new one); nothing was changed")
    return of_app(store, app, backup_id)


def restore(settings: Settings, store: Store, actor: Actor, name: str,
            backup_id: int | None, emit: Emit) -> tuple[Backup, Backup | None]:
    """Put a backup back as the app's database; returns it and the backup taken of the
    data it replaced. Damaged, foreign or mismatched backups change nothing."""
    app = access.app_for(store, actor, name)
    chosen = for_restore(store, actor, app, backup_id)
    kind = kind_of(store, app)
    if chosen.kind == "postgres" and kind != "postgres":
        raise Conflict(f"backup {chosen.id} is of a Postgres database and {app.name} has "
                       f"none; `opus pg:create {app.name}` makes one, then restore")
    if chosen.kind == "sqlite" and kind != "sqlite":
        raise Conflict(f"backup {chosen.id} is of a SQLite database and {app.name} uses "
                       "Postgres now; nothing was changed")
    file = dumps.path(settings, chosen.id, chosen.kind)
    dumps.require_file(file, chosen.size, chosen.sha256, chosen.id)
    srv = server.current(settings, store) if chosen.kind == "postgres" else None
    with locks.app_lock(settings, app.name):
        if srv is not None:
            dumps.check_postgres_dump(srv, file)
        else:
            dumps.check_sqlite(file)
        replaced = capture(settings, store, app, "restore")
        if replaced is not None:
            emit(f"Backed up the data being replaced: backup {replaced.id}")
        if srv is not None:
            dumps.restore_postgres(srv, postgres.database_of(store, app).name, file)
        else:
            dumps.restore_sqlite(settings, app.name, file)
    return chosen, replaced


def download(settings: Settings, store: Store, actor: Actor, name: str,
             backup_id: int) -> tuple[Backup, Path]:
    """The backup's file, checked against its checksum, for streaming."""
    app = access.app_for(store, actor, name)
    found = of_app(store, app, backup_id)
    file = dumps.path(settings, found.id, found.kind)
    dumps.require_file(file, found.size, found.sha256, found.id)
    return found, file


def matching_data(store: Store, app: App, target: int, before: int) -> Backup | None:
    """The data release `target` ran with: the backup taken before the first release
    command after it (up to release `before`); of a version's tries (a failed push and
    the one that worked), the last."""
    taken = [b for b in store.list_backups(app) if b.trigger == "release" and b.status == "done"
             and b.release_version is not None and target < b.release_version <= before]
    return min(taken, key=lambda b: (b.release_version or 0, -b.id), default=None)


# ---- retention, destroy, schedules ------------------------------------------------------

def _remove(settings: Settings, store: Store, backup: Backup) -> None:
    dumps.path(settings, backup.id, backup.kind).unlink(missing_ok=True)
    store.delete_backup(backup.id)


def prune(settings: Settings, store: Store, app: App, now: float | None = None) -> None:
    """Keep the newest captured and scheduled backups (the app's retention count), the
    pre-release backups of the last releases Opus keeps, and a few restore ones."""
    now = time.time() if now is None else now
    policy = store.backup_policy(app)
    keep = {"manual": policy.keep if policy else DEFAULT_KEEP,
            "release": settings.keep_releases, "restore": KEEP_RESTORE}
    keep["scheduled"] = keep["manual"]
    seen: dict[str, int] = {}
    for backup in store.list_backups(app):           # newest first
        if backup.status == "running":
            if now - backup.created > STALE_RUNNING:
                _remove(settings, store, backup)
            continue
        group = "manual" if backup.trigger == "scheduled" else backup.trigger
        seen[group] = seen.get(group, 0) + 1
        if group in keep and seen[group] > keep[group]:
            _remove(settings, store, backup)


def keep_on_destroy(settings: Settings, store: Store, app: App) -> Backup | None:
    """The app is being destroyed: a last backup of its database outlives it for
    `destroyed_backup_days`; its other backups and its Postgres database go. A backup
    that fails stops the destroy (nothing is lost)."""
    kind = kind_of(store, app)
    last = None
    if kind is not None:
        try:
            last = capture(settings, store, app, "destroy")
        except OpusError as exc:
            raise Conflict(f"{app.name} keeps a last backup of its data when destroyed, and "
                           f"that backup failed ({exc.message}); nothing was destroyed") \
                from None
    expires = time.time() + settings.destroyed_backup_days * schedule.DAY
    for gone in store.detach_backups(app, last.id if last else None, expires):
        dumps.path(settings, gone.id, gone.kind).unlink(missing_ok=True)
    if kind == "postgres":
        postgres.drop(settings, store, app)
    return store.get_backup(last.id) if last else None


def set_schedule(settings: Settings, store: Store, actor: Actor, name: str,
                 minute: int | None, keep: int | None) -> tuple[int | None, int]:
    app = access.app_for(store, actor, name)
    current = store.backup_policy(app)
    chosen_keep = keep if keep is not None else (current.keep if current else DEFAULT_KEEP)
    store.set_backup_policy(app, minute, chosen_keep)
    prune(settings, store, app)
    return minute, chosen_keep


def run_schedules(settings: Settings, store: Store, now: float | None = None) -> list[str]:
    """The scheduler's job: take the backups that are due; forget destroyed apps' last
    backups once they expire. Returns the apps backed up now."""
    now = time.time() if now is None else now
    with locks.schedules_lock_if_free(settings) as free:
        return _run_schedules(settings, store, now) if free else []


def _run_schedules(settings: Settings, store: Store, now: float) -> list[str]:
    taken = []
    for app, policy in store.list_scheduled_apps():
        assert policy.minute_of_day is not None
        last = max((b.created for b in store.list_backups(app) if b.trigger == "scheduled"),
                   default=None)
        if not schedule.is_due(policy.minute_of_day, policy.since, last, now):
            continue
        try:
            if capture(settings, store, app, "scheduled") is not None:
                taken.append(app.name)
        except OpusError as exc:
            log.warning("the scheduled backup of %s failed: %s", app.name, exc.message)
    for backup in store.list_kept_backups():
        if backup.expires is not None and backup.expires <= now:
            _remove(settings, store, backup)
    return taken


def destroyed_message(name: str, kept: Backup | None) -> str:
    """What `apps:destroy` (and the dashboard) says: where the last backup is."""
    done = f"Destroyed {name}: its code, releases and logs are gone"
    if kept is None:
        return done + "; it had no database to keep."
    until = time.strftime("%Y-%m-%d", time.gmtime(kept.expires or time.time()))
    return (f"{done}. Its data is kept as backup {kept.id} ({kept.kind}, "
            f"{size_text(kept.size)}) until {until}: `opus backups:restore NEWAPP "
            f"{kept.id}` brings it into a new app.")
