"""Builds and releases: a deploy's order of record (docs/design-notes.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from opus_paas.errors import Conflict
from opus_paas.store.base import StoreBase
from opus_paas.store.records import (
    App,
    Build,
    Release,
    release_row,
)


class ReleasesStore(StoreBase):
    """Builds and releases."""

    def start_build(self, app: App, sha: str, log_path: Path) -> int:
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO builds (app_id, sha, status, started, log_path)"
                " VALUES (?, ?, 'running', ?, ?)", (app.id, sha, time.time(), str(log_path))
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def finish_build(self, build_id: int, succeeded: bool) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE builds SET status = ?, finished = ? WHERE id = ?",
                ("succeeded" if succeeded else "failed", time.time(), build_id),
            )

    def list_builds(self, app: App) -> list[Build]:
        """Newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM builds WHERE app_id = ? ORDER BY id DESC",
                              (app.id,)).fetchall()
        return [Build(r["id"], app.name, r["sha"], r["status"], r["started"], r["finished"],
                      Path(r["log_path"])) for r in rows]

    def unfinished_builds(self, app: App) -> list[Build]:
        """Builds still marked running (left so by a stop, when nobody holds the lock)."""
        return [b for b in self.list_builds(app) if b.status == "running"]

    def has_builds(self, app: App) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM builds WHERE app_id = ?",
                              (app.id,)).fetchone() is not None

    def next_release_version(self, app: App) -> int:
        """One past every recorded release and the live one (never a live slug's number)."""
        with self._db() as db:
            row = db.execute(
                "SELECT MAX(COALESCE((SELECT MAX(version) FROM releases WHERE app_id = ?), 0),"
                " COALESCE(live_version, 0)) FROM apps WHERE id = ?", (app.id, app.id)
            ).fetchone()
        return int(row[0]) + 1

    def begin_release(self, app: App, version: int, sha: str, description: str, *,
                      slug_version: int | None = None, config: dict[str, str] | None = None,
                      ref: str | None = None, previous_sha: str | None = None) -> Release:
        """Record release `version` as pending, before anything of it is switched: a
        deploy that stops half-way is found (and ended) from this row."""
        now = time.time()
        slug = version if slug_version is None else slug_version
        snapshot = dict(config or {})
        with self._db() as db:
            domains = tuple(r[0] for r in db.execute(
                "SELECT domain FROM domains WHERE app_id = ? ORDER BY domain", (app.id,)))
            db.execute(
                "INSERT INTO releases (app_id, version, sha, description, created,"
                " slug_version, config, state, ref, previous_sha, domains)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (app.id, version, sha, description, now, slug, json.dumps(snapshot), ref,
                 previous_sha, json.dumps(list(domains))))
        return Release(app.name, version, sha, description, now, slug, snapshot, "pending",
                       ref, previous_sha, domains)

    def release_went_live(self, app: App, version: int, port: int) -> None:
        """One transaction once traffic has switched to release `version`: the app serves
        it (on `port`, from its build), its config becomes the app's, and its record is
        released, or switched while a push's branch has still to move."""
        with self._db() as db:
            row = db.execute("SELECT * FROM releases WHERE app_id = ? AND version = ?",
                             (app.id, version)).fetchone()
            if row is None or row["state"] != "pending":
                raise Conflict(f"release v{version} of {app.name} is not being deployed")
            db.execute("UPDATE apps SET live_version = ?, live_port = ?, live_slug = ?,"
                       " stopped = 0 WHERE id = ?",
                       (version, port, row["slug_version"] or version, app.id))
            db.execute("UPDATE releases SET state = ? WHERE app_id = ? AND version = ?",
                       ("switched" if row["ref"] else "released", app.id, version))
            db.execute("DELETE FROM config WHERE app_id = ?", (app.id,))
            db.executemany("INSERT INTO config (app_id, key, value) VALUES (?, ?, ?)",
                           [(app.id, k, v) for k, v in json.loads(row["config"]).items()])

    def end_release(self, app: App, version: int, state: str, note: str = "") -> None:
        """A release's last state: released (its branch moved) or abandoned (recovery
        rolled it back), with what happened, for `opus releases`."""
        assert state in ("released", "abandoned")
        with self._db() as db:
            db.execute("UPDATE releases SET state = ?, note = ? WHERE app_id = ? AND"
                       " version = ?", (state, note, app.id, version))

    def forget_release(self, app: App, version: int) -> None:
        """Drop the record of a pending release whose deploy failed (and said why)."""
        with self._db() as db:
            db.execute("DELETE FROM releases WHERE app_id = ? AND version = ? AND"
                       " state = 'pending'", (app.id, version))

    def unfinished_releases(self, app: App) -> list[Release]:
        """Pending and switched releases, oldest first: deploys that stopped half-way
        (or one under way, for whoever does not hold the app's lock)."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM releases WHERE app_id = ? AND state IN"
                              " ('pending', 'switched') ORDER BY version", (app.id,)).fetchall()
        return [release_row(app, r) for r in rows]

    def get_release(self, app: App, version: int) -> Release | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM releases WHERE app_id = ? AND version = ?",
                             (app.id, version)).fetchone()
        return None if row is None else release_row(app, row)

    def list_releases(self, app: App) -> list[Release]:
        """Newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM releases WHERE app_id = ? ORDER BY version DESC",
                              (app.id,)).fetchall()
        return [release_row(app, r) for r in rows]
