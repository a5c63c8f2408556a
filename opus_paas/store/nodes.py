"""Swarm nodes Opus added (docs/scale-out.md, Nodes)."""

from __future__ import annotations

from opus_paas.store.base import StoreBase
from opus_paas.store.records import SwarmNode


class NodesStore(StoreBase):
    """The machines of the swarm, by name."""

    def list_nodes(self) -> list[SwarmNode]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM nodes ORDER BY name").fetchall()
        return [SwarmNode(r["name"], r["address"], r["port"], r["docker_id"], r["added_at"])
                for r in rows]

    def add_node(self, node: SwarmNode) -> None:
        """Record `node` (a node added again keeps its name and gets its new id)."""
        with self._db() as db:
            db.execute("INSERT INTO nodes (name, address, port, docker_id, added_at) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                       "address = excluded.address, port = excluded.port, "
                       "docker_id = excluded.docker_id",
                       (node.name, node.address, node.port, node.docker_id, node.added_at))

    def remove_node(self, name: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM nodes WHERE name = ?", (name,))
