"""Which apps stay on one node, and why (pure: no I/O).

An app whose data lives in files on a machine cannot spread across nodes: SQLite (the
default when no DATABASE_URL is set: `db.sqlite3` in the app's `data/`), a
`sqlite://` DATABASE_URL, files kept in `data/` (media uploads), or a process that
names the data directory. Such an app runs on one node only (a Swarm placement
constraint on the node's `opus.node` label) and the CLI says why and how to spread it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from opus_paas.errors import InvalidName
from opus_paas.swarm import volumes

if TYPE_CHECKING:
    from opus_paas.store import App, Store

DATA_DIR_VARIABLE = "OPUS_DATA_DIR"
NODE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?")
SHOWN_ENTRIES = 3


@dataclasses.dataclass(frozen=True)
class ReleaseFacts:
    """What a release tells about its data: its Procfile, the entries of the app's
    data/ directory (names, e.g. `db.sqlite3`, `media`), and whether the settings
    overlay runs (a Django app; `OPUS_DISABLE_OVERRIDES=DATABASES` turns its database
    part off)."""

    procfile: Mapping[str, str] = dataclasses.field(default_factory=dict)
    data_entries: tuple[str, ...] = ()
    overlay: bool = True

    @classmethod
    def of(cls, info: Mapping[str, object], procfile: Mapping[str, str],
           data_entries: list[str]) -> ReleaseFacts:
        """From a release's build info (release.json: `framework`), its Procfile and
        the names in the app's data/ directory."""
        return cls(dict(procfile), tuple(sorted(data_entries)),
                   overlay=info.get("framework") == "django")


@dataclasses.dataclass(frozen=True)
class Pin:
    """Why an app stays on one node: `what` it uses, said in words."""

    kind: str        # sqlite, data or process
    what: str        # "SQLite (db.sqlite3 in data/)", "files in data/ (media)", …


def _disabled(config: Mapping[str, str]) -> set[str]:
    return {item.strip().upper() for item in
            config.get("OPUS_DISABLE_OVERRIDES", "").split(",") if item.strip()}


def reason(config: Mapping[str, str], facts: ReleaseFacts) -> Pin | None:
    """Why this release of the app must stay on one node, or None (it may spread)."""
    url = config.get("DATABASE_URL", "").strip()
    if url.lower().startswith("sqlite:"):
        return Pin("sqlite", "SQLite (DATABASE_URL is a sqlite:// file)")
    if not url and facts.overlay and "DATABASES" not in _disabled(config):
        return Pin("sqlite", "SQLite (db.sqlite3 in data/)")
    kept = sorted(entry for entry in facts.data_entries if entry and not
                  entry.startswith(".") and entry not in ("db.sqlite3", "db.sqlite3-journal",
                                                          "db.sqlite3-wal", "db.sqlite3-shm"))
    if kept:
        shown = ", ".join(kept[:SHOWN_ENTRIES]) + (", …" if len(kept) > SHOWN_ENTRIES else "")
        return Pin("data", f"files in data/ ({shown})")
    for kind, command in sorted(facts.procfile.items()):
        if DATA_DIR_VARIABLE in command:
            return Pin("process", f"its {kind} process's data directory (${DATA_DIR_VARIABLE})")
    return None


def check_node(node: str) -> str:
    """A node's name as Opus labels it (`opus.node=NAME`)."""
    if not isinstance(node, str) or not NODE_NAME.fullmatch(node):
        raise InvalidName(f"invalid node name {node!r}: lower-case letters, digits, '.' "
                          "and '-'")
    return node


def pinned_node(running_on: Iterable[str], nodes: Iterable[str]) -> str | None:
    """The node a pinned app stays on: the one its instances run on now (`running_on`:
    its members' nodes), else the first of the swarm's `nodes` by name (None: none)."""
    on = sorted(set(running_on))
    if len(on) == 1:
        return on[0]
    return min(nodes, default=None)


def pinned_node_of(store: Store, app: App) -> str | None:
    """The node holding the app's data (volumes.py) if it has moved there, else
    `pinned_node` from what the store knows (where a deploy put the app)."""
    held = volumes.data_node(store, app)
    if held is not None:
        return held
    return pinned_node((m.node for m in store.swarm_members(app)),
                       (n.name for n in store.list_nodes()))


def placement(node: str) -> str:
    """The Swarm placement constraint that keeps a service on `node`."""
    return f"node.labels.opus.node=={check_node(node)}"


def message(app: str, pin: Pin, node: str) -> str:
    """What the CLI prints when a pinned app is deployed or scaled."""
    check_node(node)
    if pin.kind == "sqlite":
        fix = f"attach Postgres with `opus pg:create {app}` to spread it"
    elif pin.kind == "data":
        fix = "keep those files in object storage (or Postgres) and empty data/ to spread it"
    else:
        fix = f"stop using ${DATA_DIR_VARIABLE} in the Procfile to spread it"
    return f"{app} uses {pin.what}: it stays on node {node}; {fix}"
