"""SQLite access: the only package that writes opus.db.

`Store` is the one front object; its methods come from one class per aggregate, all
going through the same connection (`base.StoreBase._db`: a short connection holding one
transaction, opened by every public method, so the store is safe to share between the
SSH server's threads):

- `access`: users, SSH keys, passwords, collaborators, dashboard sessions and sign-ins;
- `apps`: an app's record, config, domains, formation, autosleep, previews, memory;
- `releases`: builds and releases;
- `tls`: each site's HTTPS state;
- `data`: add-ons, app databases and Redis servers, backups and their schedules;
- `nodes`: the swarm's machines;
- `swarm`: each app's scheduler, limits, releases and members on the swarm.

`records` holds the dataclasses handed out, `schema` the tables and the file's checks.

Naming rule, for every method:

- `get_<thing>(key)`: the one record with that key, or None (`get_app(name)`);
- `<thing>(owner)`: what one app, user or site has (`config(app)`, `domains(app)`,
  `app_database(app)` — None when it has none);
- `list_<things>(…)`: several records, ordered: a list, or a dict by app id
  (`list_apps()`, `list_releases(app)`, `list_sleepers()`);
- `is_`/`has_`: a yes-or-no question (`is_asleep(app)`, `has_builds(app)`);
- writes are verbs: `create_`/`delete_` an app or user, `add_`/`remove_` a member of a
  set (keys, domains, previews), `set_` a value, `start_`/`finish_` a build or backup,
  `begin_`/`end_` a release.
"""

from __future__ import annotations

from opus_paas.store.access import AccessStore
from opus_paas.store.apps import AppsStore
from opus_paas.store.data import DataStore
from opus_paas.store.nodes import NodesStore
from opus_paas.store.records import (
    RELEASE_STATES,
    TLS_COLUMNS,
    App,
    AppDatabase,
    AppRedis,
    Autosleep,
    Backup,
    BackupPolicy,
    Build,
    Key,
    Limits,
    Release,
    SwarmMember,
    SwarmNode,
    SwarmRelease,
    TlsSite,
    User,
)
from opus_paas.store.releases import ReleasesStore
from opus_paas.store.schema import SCHEMA, database_problem, restore_if_damaged
from opus_paas.store.swarm import SCHEDULERS, SwarmStore
from opus_paas.store.tls import TlsStore

__all__ = [
    "RELEASE_STATES", "SCHEDULERS", "SCHEMA", "TLS_COLUMNS", "App", "AppDatabase", "AppRedis",
    "Autosleep", "Backup", "BackupPolicy", "Build", "Key", "Limits", "Release", "Store",
    "SwarmMember", "SwarmNode", "SwarmRelease", "TlsSite", "User",
    "database_problem", "restore_if_damaged",
]


class Store(AccessStore, AppsStore, ReleasesStore, TlsStore, DataStore, NodesStore,
            SwarmStore):
    """Typed access to opus.db."""
