"""An app's own record and what hangs off it: config, domains, formation, autosleep,
previews, memory samples."""

from __future__ import annotations

import dataclasses
import time

from opus_paas.errors import Conflict
from opus_paas.store.base import StoreBase
from opus_paas.store.records import (
    APP_QUERY,
    App,
    Autosleep,
    User,
    app_row,
)


class AppsStore(StoreBase):
    """Apps and their settings."""

    def create_app(self, name: str, owner: User, initial_config: dict[str, str]) -> App:
        with self._db() as db:
            if db.execute("SELECT 1 FROM apps WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"app {name} already exists")
            cur = db.execute(
                "INSERT INTO apps (name, owner_id, created) VALUES (?, ?, ?)",
                (name, owner.id, time.time()),
            )
            db.executemany(
                "INSERT INTO config (app_id, key, value) VALUES (?, ?, ?)",
                [(cur.lastrowid, k, v) for k, v in initial_config.items()],
            )
            assert cur.lastrowid is not None
            return App(cur.lastrowid, name, owner.name, None, None)

    def rename_app(self, app: App, new: str) -> App:
        """Give the app (its config, releases, collaborators, domains) a new name."""
        with self._db() as db:
            if db.execute("SELECT 1 FROM apps WHERE name = ?", (new,)).fetchone():
                raise Conflict(f"app {new} already exists; choose another name")
            db.execute("UPDATE apps SET name = ? WHERE id = ?", (new, app.id))
            db.execute("UPDATE backups SET app_name = ? WHERE app_id = ?", (new, app.id))
            db.execute("DELETE FROM tls_sites WHERE site = ?", (app.name,))
            db.execute("UPDATE builds SET log_path = replace(log_path, ?, ?) WHERE app_id = ?",
                       (f"/logs/{app.name}/", f"/logs/{new}/", app.id))
        return dataclasses.replace(app, name=new)

    def delete_app(self, app: App) -> None:
        """Forget the app and everything recorded about it (config, releases, builds)."""
        with self._db() as db:
            db.execute("DELETE FROM apps WHERE id = ?", (app.id,))
            db.execute("DELETE FROM tls_sites WHERE site = ?", (app.name,))

    def get_app(self, name: str) -> App | None:
        with self._db() as db:
            row = db.execute(
                f"{APP_QUERY} WHERE apps.name = ?", (name,)
            ).fetchone()
        return None if row is None else app_row(row)

    def list_apps(self) -> list[App]:
        with self._db() as db:
            rows = db.execute(
                f"{APP_QUERY} ORDER BY apps.name"
            ).fetchall()
        return [app_row(r) for r in rows]

    def set_deploy_branch(self, app: App, branch: str) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET deploy_branch = ? WHERE id = ?", (branch, app.id))

    def clear_live(self, app: App) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET live_version = NULL, live_port = NULL,"
                       " live_slug = NULL WHERE id = ?", (app.id,))

    def set_live(self, app: App, version: int, port: int, slug: int | None = None) -> None:
        """Record which release serves the app, from which build, on which port (a
        deploy runs the app, stopped or not)."""
        with self._db() as db:
            db.execute("UPDATE apps SET live_version = ?, live_port = ?, live_slug = ?,"
                       " stopped = 0 WHERE id = ?",
                       (version, port, version if slug is None else slug, app.id))

    def set_scale(self, app: App, web_processes: int) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET web_processes = ? WHERE id = ?",
                       (web_processes, app.id))

    def set_web_threads(self, app: App, threads: int) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET web_threads = ? WHERE id = ?", (threads, app.id))

    def set_health_check(self, app: App, check_json: str) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET health_check = ? WHERE id = ?", (check_json, app.id))

    def set_stopped(self, app: App, stopped: bool) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET stopped = ? WHERE id = ?", (int(stopped), app.id))

    def formation(self, app: App) -> dict[str, tuple[int, bool]]:
        """Process types other than web: {type: (count, stopped)}; a type not here runs 0."""
        with self._db() as db:
            rows = db.execute("SELECT type, count, stopped FROM formation WHERE app_id = ?",
                              (app.id,)).fetchall()
        return {row["type"]: (row["count"], bool(row["stopped"])) for row in rows}

    def set_formation(self, app: App, counts: dict[str, int]) -> None:
        """Set the counts of these types in one transaction (a stopped type stays so)."""
        with self._db() as db:
            for kind, count in counts.items():
                db.execute("INSERT INTO formation (app_id, type, count) VALUES (?, ?, ?)"
                           " ON CONFLICT (app_id, type) DO UPDATE SET count = excluded.count",
                           (app.id, kind, count))

    def set_type_stopped(self, app: App, kind: str, stopped: bool) -> None:
        with self._db() as db:
            db.execute("INSERT INTO formation (app_id, type, count, stopped) VALUES (?, ?, 0, ?)"
                       " ON CONFLICT (app_id, type) DO UPDATE SET stopped = excluded.stopped",
                       (app.id, kind, int(stopped)))

    def config(self, app: App) -> dict[str, str]:
        with self._db() as db:
            rows = db.execute(
                "SELECT key, value FROM config WHERE app_id = ? ORDER BY key", (app.id,)
            ).fetchall()
        return {r["key"]: r["value"] for r in rows}

    def change_config(self, app: App, updates: dict[str, str],
                      removals: list[str]) -> dict[str, str]:
        """Apply `updates` and `removals` in one transaction; return the new config."""
        with self._db() as db:
            for key in removals:
                db.execute("DELETE FROM config WHERE app_id = ? AND key = ?", (app.id, key))
            db.executemany(
                "INSERT INTO config (app_id, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (app_id, key) DO UPDATE SET value = excluded.value",
                [(app.id, k, v) for k, v in updates.items()])
            rows = db.execute("SELECT key, value FROM config WHERE app_id = ? ORDER BY key",
                              (app.id,)).fetchall()
        return {r["key"]: r["value"] for r in rows}

    def replace_config(self, app: App, config: dict[str, str]) -> None:
        with self._db() as db:
            db.execute("DELETE FROM config WHERE app_id = ?", (app.id,))
            db.executemany("INSERT INTO config (app_id, key, value) VALUES (?, ?, ?)",
                           [(app.id, k, v) for k, v in config.items()])

    def domains(self, app: App) -> list[str]:
        with self._db() as db:
            rows = db.execute("SELECT domain FROM domains WHERE app_id = ? ORDER BY domain",
                              (app.id,)).fetchall()
        return [r[0] for r in rows]

    def list_domains(self) -> dict[int, list[str]]:
        """Custom domains by app id."""
        found: dict[int, list[str]] = {}
        with self._db() as db:
            for row in db.execute("SELECT app_id, domain FROM domains ORDER BY domain"):
                found.setdefault(row[0], []).append(row[1])
        return found

    def add_domain(self, app: App, domain: str) -> None:
        with self._db() as db:
            row = db.execute("SELECT apps.name FROM domains JOIN apps ON apps.id ="
                             " domains.app_id WHERE domain = ?", (domain,)).fetchone()
            if row is not None:
                raise Conflict(f"{domain} is already in use"
                               + (f" by {app.name}" if row[0] == app.name else "")
                               + "; remove it there first")
            db.execute("INSERT INTO domains (domain, app_id) VALUES (?, ?)", (domain, app.id))

    def remove_domain(self, app: App, domain: str) -> bool:
        with self._db() as db:
            cur = db.execute("DELETE FROM domains WHERE domain = ? AND app_id = ?",
                             (domain, app.id))
        return cur.rowcount > 0

    def replace_domains(self, app: App, domains: tuple[str, ...]) -> None:
        """Make `domains` the app's custom domains (recovery puts back a release's)."""
        with self._db() as db:
            db.execute("DELETE FROM domains WHERE app_id = ?", (app.id,))
            for domain in domains:
                taken = db.execute("SELECT 1 FROM domains WHERE domain = ?",
                                   (domain,)).fetchone()
                if taken is None:
                    db.execute("INSERT INTO domains (domain, app_id) VALUES (?, ?)",
                               (domain, app.id))

    def autosleep(self, app: App) -> Autosleep | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM autosleep WHERE app_id = ?", (app.id,)).fetchone()
        return None if row is None else Autosleep(app.name, row["period"],
                                                  bool(row["asleep"]), row["changed"])

    def list_sleepers(self) -> dict[int, Autosleep]:
        """Every app that may sleep, by app id."""
        with self._db() as db:
            rows = db.execute("SELECT autosleep.*, apps.name FROM autosleep JOIN apps ON"
                              " apps.id = autosleep.app_id").fetchall()
        return {r["app_id"]: Autosleep(r["name"], r["period"], bool(r["asleep"]), r["changed"])
                for r in rows}

    def set_autosleep(self, app: App, period: int | None) -> None:
        """Sleep after `period` idle seconds; None: never (the row goes)."""
        with self._db() as db:
            if period is None:
                db.execute("DELETE FROM autosleep WHERE app_id = ?", (app.id,))
            else:
                db.execute("INSERT INTO autosleep (app_id, period, changed) VALUES (?, ?, ?)"
                           " ON CONFLICT (app_id) DO UPDATE SET period = excluded.period",
                           (app.id, period, time.time()))

    def set_asleep(self, app: App, asleep: bool) -> None:
        with self._db() as db:
            db.execute("UPDATE autosleep SET asleep = ?, changed = ? WHERE app_id = ?",
                       (int(asleep), time.time(), app.id))

    def is_asleep(self, app: App) -> bool:
        found = self.autosleep(app)
        return found is not None and found.asleep

    def preview_limit(self, app: App) -> int | None:
        """How many previews `app` may have at once; None: previews are off."""
        with self._db() as db:
            row = db.execute("SELECT max_previews FROM preview_policies WHERE app_id = ?",
                             (app.id,)).fetchone()
        return None if row is None else int(row[0])

    def set_preview_limit(self, app: App, limit: int | None) -> None:
        with self._db() as db:
            if limit is None:
                db.execute("DELETE FROM preview_policies WHERE app_id = ?", (app.id,))
            else:
                db.execute("INSERT INTO preview_policies (app_id, max_previews) VALUES (?, ?)"
                           " ON CONFLICT (app_id) DO UPDATE SET max_previews = excluded"
                           ".max_previews", (app.id, limit))

    def add_preview(self, parent: App, branch: str, app: App) -> None:
        with self._db() as db:
            db.execute("INSERT INTO previews (app_id, parent_id, branch, created)"
                       " VALUES (?, ?, ?, ?)", (app.id, parent.id, branch, time.time()))

    def previews(self, parent: App) -> list[tuple[str, App]]:
        """(branch, preview app) of each of `parent`'s previews, by branch."""
        with self._db() as db:
            rows = db.execute("SELECT apps.*, users.name AS owner, previews.branch AS branch"
                              " FROM apps JOIN users ON users.id = apps.owner_id"
                              " JOIN previews ON previews.app_id = apps.id"
                              " WHERE previews.parent_id = ? ORDER BY previews.branch",
                              (parent.id,)).fetchall()
        return [(r["branch"], app_row(r)) for r in rows]

    def preview_of(self, app: App) -> tuple[str, str] | None:
        """(parent's name, branch) if `app` is a preview app."""
        with self._db() as db:
            row = db.execute("SELECT apps.name, previews.branch FROM previews JOIN apps ON"
                             " apps.id = previews.parent_id WHERE previews.app_id = ?",
                             (app.id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def list_preview_parents(self) -> dict[int, str]:
        """Every preview app's id → its parent's name."""
        with self._db() as db:
            rows = db.execute("SELECT previews.app_id, apps.name FROM previews JOIN apps ON"
                              " apps.id = previews.parent_id").fetchall()
        return {r[0]: r[1] for r in rows}

    def add_memory_samples(self, samples: dict[int, int], at: float, keep_since: float) -> None:
        """Record each app's memory (app id → bytes) at `at`; forget samples before
        `keep_since`."""
        with self._db() as db:
            db.executemany("INSERT INTO memory_samples (app_id, at, rss) VALUES (?, ?, ?)",
                           [(app_id, at, rss) for app_id, rss in samples.items()])
            db.execute("DELETE FROM memory_samples WHERE at < ?", (keep_since,))

    def memory_samples(self, app: App, since: float) -> list[tuple[float, int]]:
        with self._db() as db:
            rows = db.execute("SELECT at, rss FROM memory_samples WHERE app_id = ? AND at >= ? "
                              "ORDER BY at", (app.id, since)).fetchall()
        return [(row[0], row[1]) for row in rows]
