"""Apps on the swarm (docs/scale-out.md): scheduler, limits, releases and members."""

from __future__ import annotations

import json
import time

from opus_paas.store.base import StoreBase
from opus_paas.store.records import App, Limits, SwarmMember, SwarmRelease

SCHEDULERS = ("local", "swarm")


class SwarmStore(StoreBase):
    """Where each app runs and what the swarm runs of it."""

    def scheduler(self, app: App) -> str:
        """"local" (the default: supervisord on this host) or "swarm"."""
        with self._db() as db:
            row = db.execute("SELECT scheduler FROM schedulers WHERE app_id = ?",
                             (app.id,)).fetchone()
        return str(row["scheduler"]) if row else "local"

    def set_scheduler(self, app: App, scheduler: str) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}")
        with self._db() as db:
            db.execute("INSERT INTO schedulers (app_id, scheduler) VALUES (?, ?) ON CONFLICT "
                       "(app_id) DO UPDATE SET scheduler = excluded.scheduler",
                       (app.id, scheduler))

    def list_schedulers(self) -> dict[int, str]:
        """Every app that has chosen a scheduler, by app id (others are local)."""
        with self._db() as db:
            rows = db.execute("SELECT app_id, scheduler FROM schedulers").fetchall()
        return {r["app_id"]: r["scheduler"] for r in rows}

    def limits(self, app: App) -> dict[str, Limits]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM limits WHERE app_id = ? ORDER BY ptype",
                              (app.id,)).fetchall()
        return {r["ptype"]: Limits(r["memory_bytes"], r["cpus"]) for r in rows}

    def set_limits(self, app: App, ptype: str, limits: Limits) -> None:
        with self._db() as db:
            if limits.memory_bytes is None and limits.cpus is None:
                db.execute("DELETE FROM limits WHERE app_id = ? AND ptype = ?", (app.id, ptype))
                return
            db.execute("INSERT INTO limits (app_id, ptype, memory_bytes, cpus) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT (app_id, ptype) DO UPDATE SET "
                       "memory_bytes = excluded.memory_bytes, cpus = excluded.cpus",
                       (app.id, ptype, limits.memory_bytes, limits.cpus))

    def swarm_releases(self, app: App) -> list[SwarmRelease]:
        """The app's releases on the swarm, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM swarm_releases WHERE app_id = ? "
                              "ORDER BY version DESC", (app.id,)).fetchall()
        return [SwarmRelease(app.name, r["version"], r["image"], r["block"],
                             tuple(json.loads(r["services"])), r["created"]) for r in rows]

    def get_swarm_release(self, app: App, version: int) -> SwarmRelease | None:
        return next((r for r in self.swarm_releases(app) if r.version == version), None)

    def add_swarm_release(self, app: App, release: SwarmRelease) -> None:
        """Record `release` (a version deployed again replaces its record)."""
        with self._db() as db:
            db.execute("INSERT INTO swarm_releases (app_id, version, image, block, services, "
                       "created) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (app_id, version) DO "
                       "UPDATE SET image = excluded.image, block = excluded.block, "
                       "services = excluded.services, created = excluded.created",
                       (app.id, release.version, release.image, release.block,
                        json.dumps(list(release.services)), release.created))

    def remove_swarm_release(self, app: App, version: int) -> None:
        with self._db() as db:
            db.execute("DELETE FROM swarm_releases WHERE app_id = ? AND version = ?",
                       (app.id, version))

    def swarm_members(self, app: App) -> list[SwarmMember]:
        return self.list_swarm_members().get(app.id, [])

    def list_swarm_members(self) -> dict[int, list[SwarmMember]]:
        """Every swarm app's members, by app id, ordered by release, type and slot."""
        with self._db() as db:
            rows = db.execute(
                "SELECT swarm_members.*, apps.name FROM swarm_members JOIN apps ON "
                "apps.id = swarm_members.app_id ORDER BY app_id, version, ptype, slot"
            ).fetchall()
        members: dict[int, list[SwarmMember]] = {}
        for r in rows:
            members.setdefault(r["app_id"], []).append(SwarmMember(
                r["name"], r["version"], r["ptype"], r["slot"], r["node"], r["host"],
                r["port"], bool(r["enabled"])))
        return members

    def set_swarm_members(self, app: App, version: int, ptype: str,
                          members: list[SwarmMember]) -> None:
        """Replace the members of release `version`'s `ptype` with `members`."""
        with self._db() as db:
            db.execute("DELETE FROM swarm_members WHERE app_id = ? AND version = ? AND "
                       "ptype = ?", (app.id, version, ptype))
            db.executemany(
                "INSERT INTO swarm_members (app_id, version, ptype, slot, node, host, port, "
                "enabled) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(app.id, version, ptype, m.slot, m.node, m.host, m.port, int(m.enabled))
                 for m in members])

    def remove_swarm_members(self, app: App, version: int) -> None:
        with self._db() as db:
            db.execute("DELETE FROM swarm_members WHERE app_id = ? AND version = ?",
                       (app.id, version))

    def swarm_data_node(self, app: App) -> str | None:
        """The node holding the app's data/ (a pinned app moved to the swarm), or None:
        its data/ is on this host."""
        with self._db() as db:
            row = db.execute("SELECT node FROM swarm_data WHERE app_id = ?",
                             (app.id,)).fetchone()
        return str(row["node"]) if row else None

    def set_swarm_data_node(self, app: App, node: str | None) -> None:
        with self._db() as db:
            if node is None:
                db.execute("DELETE FROM swarm_data WHERE app_id = ?", (app.id,))
                return
            db.execute("INSERT INTO swarm_data (app_id, node, moved_at) VALUES (?, ?, ?) ON "
                       "CONFLICT (app_id) DO UPDATE SET node = excluded.node, "
                       "moved_at = excluded.moved_at", (app.id, node, time.time()))

    def apps_with_data_on(self, node: str) -> list[str]:
        """The apps whose data/ is on `node`, by name."""
        with self._db() as db:
            rows = db.execute("SELECT apps.name FROM swarm_data JOIN apps ON apps.id = "
                              "swarm_data.app_id WHERE node = ? ORDER BY apps.name",
                              (node,)).fetchall()
        return [str(r["name"]) for r in rows]
