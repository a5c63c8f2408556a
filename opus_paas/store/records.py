"""The records the store hands out (frozen dataclasses) and the rows they are read from."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

# A release's record moves pending → released (switched between, for a push, until its
# branch has moved); recovery ends a pending one as abandoned.
RELEASE_STATES = ("pending", "switched", "released", "abandoned")


APP_QUERY = "SELECT apps.*, users.name AS owner FROM apps JOIN users ON users.id = apps.owner_id"


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclasses.dataclass(frozen=True)
class Key:
    id: int
    user: str
    fingerprint: str
    public_key: str
    comment: str


@dataclasses.dataclass(frozen=True)
class App:
    id: int
    name: str
    owner: str
    live_version: int | None   # the release serving traffic
    live_port: int | None      # the loopback port its web instance listens on
    deploy_branch: str = "main"   # the branch whose pushes build and deploy
    live_slug: int | None = None  # the build the live release runs (None: its own)
    web_processes: int = 1        # mod_wsgi daemon processes of the web instance
    stopped: bool = False         # stopped by `opus ps:stop`: no process runs
    health_check: str = "{}"      # checks.Check as JSON
    web_threads: int = 5          # threads per mod_wsgi daemon process


@dataclasses.dataclass(frozen=True)
class Autosleep:
    """An app that sleeps when idle: after `period` seconds without a request its web
    instance stops (`asleep`) until a request or a deploy wakes it."""

    app: str
    period: int
    asleep: bool
    changed: float      # when it was set, or last fell asleep or woke


@dataclasses.dataclass(frozen=True)
class TlsSite:
    """A site's HTTPS state: an app (by name) or the dashboard ("opus")."""

    site: str
    auto: bool = True
    redirect: bool = False
    source: str | None = None          # "acme" or "operator"; None: no certificate
    domains: tuple[str, ...] = ()      # what the installed certificate covers
    not_before: float | None = None
    not_after: float | None = None
    serial: str | None = None
    issuer: str | None = None
    installed_at: float | None = None
    failures: int = 0
    last_error: str | None = None
    failed_at: float | None = None
    retry_at: float | None = None


TLS_COLUMNS = {f.name for f in dataclasses.fields(TlsSite)} - {"site"}


@dataclasses.dataclass(frozen=True)
class Release:
    app: str
    version: int
    sha: str
    description: str
    created: float
    slug_version: int = 0              # the release whose build (slug) this one runs
    config: dict[str, str] = dataclasses.field(default_factory=dict)   # its config vars
    state: str = "released"            # RELEASE_STATES
    ref: str | None = None             # the branch a push release moves
    previous_sha: str | None = None    # that branch's commit before the push
    domains: tuple[str, ...] | None = None   # the app's custom domains (None: not recorded)
    note: str = ""                     # what recovery did with it, for `opus releases`

    @property
    def released(self) -> bool:
        return self.state == "released"


@dataclasses.dataclass(frozen=True)
class Build:
    id: int
    app: str
    sha: str
    status: str           # running, succeeded or failed
    started: float
    finished: float | None
    log_path: Path


@dataclasses.dataclass(frozen=True)
class AppDatabase:
    """An app's Postgres database on the server Opus runs (or was given)."""

    app: str
    name: str             # the database's and its role's name
    url: str              # DATABASE_URL
    created: float


@dataclasses.dataclass(frozen=True)
class AppRedis:
    """An app's own Redis server."""

    app: str
    port: int
    password_sha256: str  # what the server's config holds (never the password)
    url: str              # REDIS_URL, with the password
    created: float


@dataclasses.dataclass(frozen=True)
class Backup:
    id: int
    app: str
    app_id: int | None     # None: the app was destroyed (kept until `expires`)
    owner: str
    kind: str              # postgres or sqlite
    trigger: str           # manual, scheduled, release, restore, destroy
    release_version: int | None
    status: str            # running or done
    created: float
    size: int
    sha256: str
    expires: float | None


@dataclasses.dataclass(frozen=True)
class SwarmNode:
    name: str
    address: str
    port: int
    docker_id: str
    added_at: float


@dataclasses.dataclass(frozen=True)
class Limits:
    """A process type's resource limits under swarm (`ps:resize`); None: no limit."""
    memory_bytes: int | None
    cpus: float | None


@dataclasses.dataclass(frozen=True)
class SwarmRelease:
    """A release deployed on the swarm: its image pinned by digest
    (`REGISTRY/opus/APP@sha256:…`, kept for rollback), the port block its services
    listen on, and the services made for it."""
    app: str
    version: int
    image: str
    block: int
    services: tuple[str, ...]
    created: float


@dataclasses.dataclass(frozen=True)
class SwarmMember:
    """One task of a swarm release as the front sees it: `host:port` on `node`."""
    app: str
    version: int
    ptype: str
    slot: int
    node: str
    host: str
    port: int
    enabled: bool


@dataclasses.dataclass(frozen=True)
class BackupPolicy:
    app: str
    minute_of_day: int | None   # a daily backup at this UTC minute; None: none
    keep: int
    since: float


def app_row(row: sqlite3.Row) -> App:
    return App(row["id"], row["name"], row["owner"], row["live_version"], row["live_port"],
               row["deploy_branch"], row["live_slug"], row["web_processes"],
               bool(row["stopped"]), row["health_check"], row["web_threads"])


def release_row(app: App, row: sqlite3.Row) -> Release:
    domains = None if row["domains"] is None else tuple(json.loads(row["domains"]))
    return Release(app.name, row["version"], row["sha"], row["description"], row["created"],
                   row["slug_version"] or row["version"], json.loads(row["config"] or "{}"),
                   row["state"], row["ref"], row["previous_sha"], domains, row["note"])


def tls_site_row(row: sqlite3.Row) -> TlsSite:
    values = {name: row[name] for name in TLS_COLUMNS}
    values.update(auto=bool(row["auto"]), redirect=bool(row["redirect"]),
                  domains=tuple(json.loads(row["domains"] or "[]")))
    return TlsSite(site=row["site"], **values)


def backup_row(row: sqlite3.Row) -> Backup:
    return Backup(row["id"], row["app_name"], row["app_id"], row["owner"], row["kind"],
                  row["trigger"], row["release_version"], row["status"], row["created"],
                  row["size"], row["sha256"], row["expires"])
