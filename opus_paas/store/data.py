"""Databases, Redis servers and backups (issue 16)."""

from __future__ import annotations

import json
import time
from typing import Any

from opus_paas.errors import Conflict
from opus_paas.store.base import StoreBase
from opus_paas.store.records import (
    App,
    AppDatabase,
    AppRedis,
    Backup,
    BackupPolicy,
    app_row,
    backup_row,
)


class DataStore(StoreBase):
    """Add-ons, app databases and Redis servers, backups and their schedules."""

    def addon(self, name: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT config FROM addons WHERE name = ?", (name,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def set_addon(self, name: str, config: dict[str, Any]) -> None:
        with self._db() as db:
            db.execute("INSERT INTO addons (name, config) VALUES (?, ?) ON CONFLICT (name)"
                       " DO UPDATE SET config = excluded.config", (name, json.dumps(config)))

    def app_database(self, app: App) -> AppDatabase | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM app_databases WHERE app_id = ?",
                             (app.id,)).fetchone()
        return None if row is None else AppDatabase(app.name, row["name"], row["url"],
                                                    row["created"])

    def has_database_named(self, name: str) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM app_databases WHERE name = ?",
                              (name,)).fetchone() is not None

    def set_app_database(self, app: App, name: str, url: str) -> None:
        with self._db() as db:
            db.execute("INSERT INTO app_databases (app_id, name, url, created) VALUES"
                       " (?, ?, ?, ?) ON CONFLICT (app_id) DO UPDATE SET url = excluded.url",
                       (app.id, name, url, time.time()))

    def remove_app_database(self, app: App) -> None:
        with self._db() as db:
            db.execute("DELETE FROM app_databases WHERE app_id = ?", (app.id,))

    def app_redis(self, app: App) -> AppRedis | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM app_redis WHERE app_id = ?", (app.id,)).fetchone()
        return None if row is None else AppRedis(app.name, row["port"], row["password_sha256"],
                                                 row["url"], row["created"])

    def list_redis_servers(self) -> list[AppRedis]:
        """Every app's Redis, by app name."""
        with self._db() as db:
            rows = db.execute("SELECT app_redis.*, apps.name FROM app_redis JOIN apps ON "
                              "apps.id = app_redis.app_id ORDER BY apps.name").fetchall()
        return [AppRedis(row["name"], row["port"], row["password_sha256"], row["url"],
                         row["created"]) for row in rows]

    def add_app_redis(self, app: App, port: int, password_sha256: str, url: str) -> None:
        with self._db() as db:
            if db.execute("SELECT 1 FROM app_redis WHERE app_id = ?", (app.id,)).fetchone():
                raise Conflict(f"{app.name} has a Redis server already; `opus redis:info "
                               f"{app.name}` shows it")
            if db.execute("SELECT 1 FROM app_redis WHERE port = ?", (port,)).fetchone():
                raise Conflict(f"port {port} is another app's Redis port already")
            db.execute("INSERT INTO app_redis (app_id, port, password_sha256, url, created)"
                       " VALUES (?, ?, ?, ?, ?)",
                       (app.id, port, password_sha256, url, time.time()))

    def remove_app_redis(self, app: App) -> None:
        with self._db() as db:
            db.execute("DELETE FROM app_redis WHERE app_id = ?", (app.id,))

    def start_backup(self, app: App, kind: str, trigger: str,
                     release_version: int | None) -> int:
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO backups (app_name, app_id, owner, kind, trigger, release_version,"
                " status, created) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                (app.name, app.id, app.owner, kind, trigger, release_version, time.time()))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def finish_backup(self, backup_id: int, size: int, sha256: str) -> None:
        with self._db() as db:
            db.execute("UPDATE backups SET status = 'done', size = ?, sha256 = ? WHERE id = ?",
                       (size, sha256, backup_id))

    def delete_backup(self, backup_id: int) -> None:
        with self._db() as db:
            db.execute("DELETE FROM backups WHERE id = ?", (backup_id,))

    def list_backups(self, app: App) -> list[Backup]:
        """The app's backups, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM backups WHERE app_id = ? AND app_name = ?"
                              " ORDER BY id DESC", (app.id, app.name)).fetchall()
        return [backup_row(r) for r in rows]

    def get_backup(self, backup_id: int) -> Backup | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM backups WHERE id = ?", (backup_id,)).fetchone()
        return None if row is None else backup_row(row)

    def list_kept_backups(self) -> list[Backup]:
        """Destroyed apps' last backups, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM backups WHERE app_id IS NULL ORDER BY id DESC"
                              ).fetchall()
        return [backup_row(r) for r in rows]

    def detach_backups(self, app: App, keep_id: int | None, expires: float) -> list[Backup]:
        """The app is being destroyed: its backup `keep_id` outlives it until `expires`;
        the others are forgotten (returned, for their files to go)."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM backups WHERE app_id = ? AND app_name = ? AND"
                              " id IS NOT ?", (app.id, app.name, keep_id)).fetchall()
            db.execute("DELETE FROM backups WHERE app_id = ? AND app_name = ? AND id IS NOT ?",
                       (app.id, app.name, keep_id))
            db.execute("UPDATE backups SET app_id = NULL, expires = ? WHERE id IS ?",
                       (expires, keep_id))
        return [backup_row(r) for r in rows]

    def backup_policy(self, app: App) -> BackupPolicy | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM backup_policies WHERE app_id = ?",
                             (app.id,)).fetchone()
        return None if row is None else BackupPolicy(app.name, row["minute_of_day"],
                                                     row["keep"], row["since"])

    def set_backup_policy(self, app: App, minute_of_day: int | None, keep: int) -> None:
        with self._db() as db:
            db.execute("INSERT INTO backup_policies (app_id, minute_of_day, keep, since)"
                       " VALUES (?, ?, ?, ?) ON CONFLICT (app_id) DO UPDATE SET"
                       " minute_of_day = excluded.minute_of_day, keep = excluded.keep,"
                       " since = excluded.since", (app.id, minute_of_day, keep, time.time()))

    def list_scheduled_apps(self) -> list[tuple[App, BackupPolicy]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT apps.*, users.name AS owner, backup_policies.minute_of_day,"
                " backup_policies.keep, backup_policies.since FROM apps JOIN users ON"
                " users.id = apps.owner_id JOIN backup_policies ON backup_policies.app_id ="
                " apps.id WHERE minute_of_day IS NOT NULL ORDER BY apps.name").fetchall()
        return [(app_row(r), BackupPolicy(r["name"], r["minute_of_day"], r["keep"], r["since"]))
                for r in rows]
