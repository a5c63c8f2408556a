"""SQLite access: the only module that writes opus.db.

Every public method opens its own short connection, so the store is safe to
share between the SSH server's threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opus_paas.errors import Conflict, NotFound, ServiceError

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'developer')),
    created REAL NOT NULL,
    password_hash TEXT
);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS apps (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner_id INTEGER NOT NULL REFERENCES users(id),
    created REAL NOT NULL,
    live_version INTEGER,
    live_port INTEGER,
    deploy_branch TEXT NOT NULL DEFAULT 'main',
    live_slug INTEGER,
    web_processes INTEGER NOT NULL DEFAULT 1,
    stopped INTEGER NOT NULL DEFAULT 0,
    health_check TEXT NOT NULL DEFAULT '{}',
    web_threads INTEGER NOT NULL DEFAULT 5
);
CREATE TABLE IF NOT EXISTS access (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (app_id, user_id)
);
CREATE TABLE IF NOT EXISTS domains (
    domain TEXT PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS config (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (app_id, key)
);
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    sha TEXT NOT NULL,
    description TEXT NOT NULL,
    created REAL NOT NULL,
    slug_version INTEGER,
    config TEXT NOT NULL DEFAULT '{}',
    -- pending → (switched →) released, or abandoned; see docs/design-notes.md
    state TEXT NOT NULL DEFAULT 'released',
    ref TEXT,                   -- the branch a push release moves (NULL: none)
    previous_sha TEXT,          -- that branch's commit before the push
    domains TEXT,               -- the app's custom domains, JSON (NULL: not recorded)
    note TEXT NOT NULL DEFAULT '',
    UNIQUE (app_id, version)
);
CREATE TABLE IF NOT EXISTS formation (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    count INTEGER NOT NULL,
    stopped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, type)
);
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY,
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    sha TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started REAL NOT NULL,
    finished REAL,
    log_path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS signin_failures (
    key TEXT NOT NULL,          -- "pair:ADDRESS|NAME" or "ip:ADDRESS"
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS signin_failures_key ON signin_failures (key, at);
-- The dashboard's signed-in sessions: a cookie names one (by the sha256 of its id);
-- signing out deletes it, so a copied cookie stops working too.
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS memory_samples (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    at REAL NOT NULL,
    rss INTEGER NOT NULL        -- bytes, every process of the app together
);
CREATE INDEX IF NOT EXISTS memory_samples_app ON memory_samples (app_id, at);
-- Databases and backups (issue 16).
CREATE TABLE IF NOT EXISTS addons (
    name TEXT PRIMARY KEY,      -- 'postgres'
    config TEXT NOT NULL        -- JSON: {"kind": "embedded"} or {"kind": "external", "url": …}
);
CREATE TABLE IF NOT EXISTS app_databases (
    app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    name TEXT NOT NULL UNIQUE,  -- the database's and its role's name
    url TEXT NOT NULL,          -- DATABASE_URL, with the role's password
    created REAL NOT NULL
);
-- Each app's own Redis server (redis:create): its port, its password's sha256 (what its
-- config holds) and REDIS_URL (with the password, as config vars hold it).
CREATE TABLE IF NOT EXISTS app_redis (
    app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    port INTEGER NOT NULL UNIQUE,
    password_sha256 TEXT NOT NULL,
    url TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS backups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never given out twice
    app_name TEXT NOT NULL,
    app_id INTEGER,             -- NULL once the app is destroyed (ids can be reused)
    owner TEXT NOT NULL,        -- who may restore it once the app is gone
    kind TEXT NOT NULL CHECK (kind IN ('postgres', 'sqlite')),
    trigger TEXT NOT NULL,      -- manual, scheduled, release, restore, destroy
    release_version INTEGER,    -- the release whose release command ran after it
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    created REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT NOT NULL DEFAULT '',
    expires REAL                -- a destroyed app's last backup goes then
);
CREATE INDEX IF NOT EXISTS backups_app ON backups (app_id, id);
CREATE TABLE IF NOT EXISTS backup_policies (
    app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    minute_of_day INTEGER,      -- daily at this UTC minute; NULL: no schedule
    keep INTEGER NOT NULL,      -- captured and scheduled backups kept
    since REAL NOT NULL         -- when the schedule was set
);
-- Sleeping apps (`opus ps:autosleep`): idle this long, the web instance stops until a
-- request wakes it.
CREATE TABLE IF NOT EXISTS autosleep (
    app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    period INTEGER NOT NULL,    -- seconds without a request
    asleep INTEGER NOT NULL DEFAULT 0,
    changed REAL NOT NULL       -- when it was set, or last went to sleep or woke
);
-- HTTPS: one row per site (an app's name, or "opus" for the dashboard): its switches,
-- the certificate the front has for it, and the last order's outcome.
CREATE TABLE IF NOT EXISTS tls_sites (
    site TEXT PRIMARY KEY,
    auto INTEGER NOT NULL DEFAULT 1,         -- certificates ordered from the ACME server
    redirect INTEGER NOT NULL DEFAULT 0,     -- http -> https, and HSTS
    source TEXT,                             -- 'acme' or 'operator'; NULL: none installed
    domains TEXT NOT NULL DEFAULT '[]',      -- the names the installed certificate covers
    not_before REAL,
    not_after REAL,
    serial TEXT,
    issuer TEXT,
    installed_at REAL,
    failures INTEGER NOT NULL DEFAULT 0,     -- orders failed in a row
    last_error TEXT,
    failed_at REAL,
    retry_at REAL
);
-- Preview apps (docs/previews.md): which apps have them (and how many at most), and
-- each preview's parent and branch. A preview is an app of its own besides.
CREATE TABLE IF NOT EXISTS preview_policies (
    app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    max_previews INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS previews (
    app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    parent_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    branch TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (parent_id, branch)
);
-- Swarm nodes Opus added (docs/scale-out.md, Nodes): each machine's name (its
-- opus.node label), the address Opus reaches it at over SSH, its Swarm node id.
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    port INTEGER NOT NULL DEFAULT 22,
    docker_id TEXT NOT NULL,
    added_at REAL NOT NULL
);
"""


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
class BackupPolicy:
    app: str
    minute_of_day: int | None   # a daily backup at this UTC minute; None: none
    keep: int
    since: float


class Store:
    """Typed access to opus.db."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def init(self) -> None:
        """Create the database and its tables if they are missing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(SCHEMA)
            _migrate(conn)
        finally:
            conn.close()
        self.path.chmod(0o600)

    def backup(self, dest: Path) -> bool:
        """A consistent copy of the database at `dest` (0600), made with SQLite's online
        backup while others read and write, checked, and renamed into place whole. A
        damaged database is never copied over the last good copy: False then."""
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        try:
            source = sqlite3.connect(self.path, timeout=30)
            target = sqlite3.connect(tmp)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode = DELETE")   # one file, no -wal beside it
            finally:
                target.close()
                source.close()
        except sqlite3.DatabaseError:
            tmp.unlink(missing_ok=True)
            return False
        if database_problem(tmp) is not None:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, dest)
        return True

    # ---- users and keys --------------------------------------------------
    def add_key(self, user: str, fingerprint: str, public_key: str, comment: str,
                max_keys: int | None = None) -> User:
        """Register a key for `user`, creating the user; the first user is admin. A user
        who holds `max_keys` keys already is refused."""
        with self._db() as db:
            if db.execute("SELECT 1 FROM keys WHERE fingerprint = ?", (fingerprint,)).fetchone():
                raise Conflict(
                    f"key {fingerprint} is already registered; remove it first "
                    f"with `opus keys:remove {fingerprint}`"
                )
            row = db.execute("SELECT * FROM users WHERE name = ?", (user,)).fetchone()
            held = 0 if row is None else db.execute(
                "SELECT COUNT(*) FROM keys WHERE user_id = ?", (row["id"],)).fetchone()[0]
            if max_keys is not None and held >= max_keys:
                raise Conflict(
                    f"{user} has {held} SSH keys, the most one user may have "
                    f"(ssh_keys_per_user = {max_keys}); remove one first: `opus keys` "
                    "lists them, `opus keys:remove FINGERPRINT|NAME` removes one"
                )
            if row is None:
                first = db.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0
                role = "admin" if first else "developer"
                cur = db.execute(
                    "INSERT INTO users (name, role, created) VALUES (?, ?, ?)",
                    (user, role, time.time()),
                )
                row = db.execute("SELECT * FROM users WHERE id = ?", (cur.lastrowid,)).fetchone()
            db.execute(
                "INSERT INTO keys (user_id, fingerprint, public_key, comment, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (row["id"], fingerprint, public_key, comment, time.time()),
            )
            return User(row["id"], row["name"], row["role"])

    def list_keys(self) -> list[Key]:
        with self._db() as db:
            rows = db.execute(
                "SELECT keys.*, users.name AS user FROM keys JOIN users ON users.id = keys.user_id"
                " ORDER BY users.name, keys.id"
            ).fetchall()
        return [Key(r["id"], r["user"], r["fingerprint"], r["public_key"], r["comment"])
                for r in rows]

    def remove_key(self, fingerprint: str) -> Key:
        with self._db() as db:
            row = db.execute(
                "SELECT keys.*, users.name AS user FROM keys JOIN users ON users.id = keys.user_id"
                " WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no key {fingerprint}; `opus keys:list` shows the registered ones")
            db.execute("DELETE FROM keys WHERE id = ?", (row["id"],))
        return Key(row["id"], row["user"], row["fingerprint"], row["public_key"], row["comment"])

    def user_for_key(self, fingerprint: str) -> User | None:
        with self._db() as db:
            row = db.execute(
                "SELECT users.* FROM users JOIN keys ON keys.user_id = users.id"
                " WHERE keys.fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else User(row["id"], row["name"], row["role"])

    def list_users(self) -> list[User]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM users ORDER BY name").fetchall()
        return [User(r["id"], r["name"], r["role"]) for r in rows]

    def get_user(self, name: str) -> User | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None else User(row["id"], row["name"], row["role"])

    def create_user(self, name: str, role: str) -> User:
        with self._db() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"user {name} already exists; see `opus users`")
            cur = db.execute("INSERT INTO users (name, role, created) VALUES (?, ?, ?)",
                             (name, role, time.time()))
            assert cur.lastrowid is not None
            return User(cur.lastrowid, name, role)

    def set_role(self, user: User, role: str) -> User:
        with self._db() as db:
            if user.is_admin and role != "admin":
                _keep_an_admin(db, user)
            db.execute("UPDATE users SET role = ? WHERE id = ?", (role, user.id))
        return User(user.id, user.name, role)

    def remove_user(self, user: User) -> None:
        """Remove a user and their keys; refused while they own apps or are the last
        admin."""
        with self._db() as db:
            owned = [r[0] for r in db.execute(
                "SELECT name FROM apps WHERE owner_id = ? ORDER BY name", (user.id,))]
            if owned:
                raise Conflict(f"{user.name} owns {', '.join(owned)}; destroy those apps "
                               "first")
            if user.is_admin:
                _keep_an_admin(db, user)
            db.execute("DELETE FROM users WHERE id = ?", (user.id,))

    def set_password_hash(self, user: User, password_hash: str) -> None:
        with self._db() as db:
            db.execute("UPDATE users SET password_hash = ? WHERE id = ?",
                       (password_hash, user.id))

    def password_hash(self, user: User) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT password_hash FROM users WHERE id = ?",
                             (user.id,)).fetchone()
        return None if row is None else row[0]

    # ---- access ------------------------------------------------------------
    def collaborators(self, app: App) -> list[str]:
        """Who collaborates on `app`; a preview app's are its parent's, as they are now."""
        with self._db() as db:
            rows = db.execute("SELECT users.name FROM access JOIN users ON users.id ="
                              " access.user_id WHERE app_id = COALESCE((SELECT parent_id"
                              " FROM previews WHERE app_id = ?), ?) ORDER BY users.name",
                              (app.id, app.id)).fetchall()
        return [r[0] for r in rows]

    def grant(self, app: App, user: User) -> None:
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO access (app_id, user_id) VALUES (?, ?)",
                       (app.id, user.id))

    def revoke(self, app: App, user: User) -> bool:
        with self._db() as db:
            cur = db.execute("DELETE FROM access WHERE app_id = ? AND user_id = ?",
                             (app.id, user.id))
        return cur.rowcount > 0

    # ---- domains -----------------------------------------------------------
    def domains(self, app: App) -> list[str]:
        with self._db() as db:
            rows = db.execute("SELECT domain FROM domains WHERE app_id = ? ORDER BY domain",
                              (app.id,)).fetchall()
        return [r[0] for r in rows]

    def all_domains(self) -> dict[int, list[str]]:
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

    # ---- apps --------------------------------------------------------------
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

    def clear_live(self, app: App) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET live_version = NULL, live_port = NULL,"
                       " live_slug = NULL WHERE id = ?", (app.id,))

    def set_scale(self, app: App, web_processes: int) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET web_processes = ? WHERE id = ?",
                       (web_processes, app.id))

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

    def set_web_threads(self, app: App, threads: int) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET web_threads = ? WHERE id = ?", (threads, app.id))

    def set_health_check(self, app: App, check_json: str) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET health_check = ? WHERE id = ?", (check_json, app.id))

    def set_stopped(self, app: App, stopped: bool) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET stopped = ? WHERE id = ?", (int(stopped), app.id))

    def delete_app(self, app: App) -> None:
        """Forget the app and everything recorded about it (config, releases, builds)."""
        with self._db() as db:
            db.execute("DELETE FROM apps WHERE id = ?", (app.id,))
            db.execute("DELETE FROM tls_sites WHERE site = ?", (app.name,))

    def has_builds(self, app: App) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM builds WHERE app_id = ?",
                              (app.id,)).fetchone() is not None

    def set_deploy_branch(self, app: App, branch: str) -> None:
        with self._db() as db:
            db.execute("UPDATE apps SET deploy_branch = ? WHERE id = ?", (branch, app.id))

    def get_app(self, name: str) -> App | None:
        with self._db() as db:
            row = db.execute(
                f"{APP_QUERY} WHERE apps.name = ?", (name,)
            ).fetchone()
        return None if row is None else _app(row)

    def list_apps(self) -> list[App]:
        with self._db() as db:
            rows = db.execute(
                f"{APP_QUERY} ORDER BY apps.name"
            ).fetchall()
        return [_app(r) for r in rows]

    def set_live(self, app: App, version: int, port: int, slug: int | None = None) -> None:
        """Record which release serves the app, from which build, on which port (a
        deploy runs the app, stopped or not)."""
        with self._db() as db:
            db.execute("UPDATE apps SET live_version = ?, live_port = ?, live_slug = ?,"
                       " stopped = 0 WHERE id = ?",
                       (version, port, version if slug is None else slug, app.id))

    def config(self, app: App) -> dict[str, str]:
        with self._db() as db:
            rows = db.execute(
                "SELECT key, value FROM config WHERE app_id = ? ORDER BY key", (app.id,)
            ).fetchall()
        return {r["key"]: r["value"] for r in rows}

    # ---- builds and releases ---------------------------------------------
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

    def list_releases(self, app: App) -> list[Release]:
        """Newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM releases WHERE app_id = ? ORDER BY version DESC",
                              (app.id,)).fetchall()
        return [_release(app, r) for r in rows]

    def list_builds(self, app: App) -> list[Build]:
        """Newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM builds WHERE app_id = ? ORDER BY id DESC",
                              (app.id,)).fetchall()
        return [Build(r["id"], app.name, r["sha"], r["status"], r["started"], r["finished"],
                      Path(r["log_path"])) for r in rows]

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
        return [_release(app, r) for r in rows]

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

    def unfinished_builds(self, app: App) -> list[Build]:
        """Builds still marked running (left so by a stop, when nobody holds the lock)."""
        return [b for b in self.list_builds(app) if b.status == "running"]

    def get_release(self, app: App, version: int) -> Release | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM releases WHERE app_id = ? AND version = ?",
                             (app.id, version)).fetchone()
        return None if row is None else _release(app, row)

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


    # ---- the dashboard's sign-in throttle and memory samples ---------------------------
    def record_signin_attempt(self, keys: list[str], at: float,
                              since: float) -> dict[str, list[float]]:
        """Count a sign-in attempt against each of `keys` (a success is taken back with
        `forget_signin_attempt`) and return, per key, when its attempts since `since` were
        made, oldest first, this one included. One transaction: attempts sent at once
        are all counted. Older attempts are forgotten."""
        with self._db() as db:
            db.execute("DELETE FROM signin_failures WHERE at < ?", (since,))
            db.executemany("INSERT INTO signin_failures (key, at) VALUES (?, ?)",
                           [(key, at) for key in keys])
            return {key: [row[0] for row in db.execute(
                "SELECT at FROM signin_failures WHERE key = ? ORDER BY at", (key,))]
                for key in keys}

    def forget_signin_attempt(self, key: str, at: float) -> None:
        with self._db() as db:
            db.execute("DELETE FROM signin_failures WHERE rowid IN (SELECT rowid FROM "
                       "signin_failures WHERE key = ? AND at = ? LIMIT 1)", (key, at))

    def clear_signin_failures(self, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM signin_failures WHERE key = ?", (key,))

    def open_dashboard_session(self, id_hash: str, user: User, at: float,
                               expired_before: float) -> None:
        with self._db() as db:
            db.execute("DELETE FROM dashboard_sessions WHERE created < ?", (expired_before,))
            db.execute("INSERT INTO dashboard_sessions (id_hash, user_id, created) "
                       "VALUES (?, ?, ?)", (id_hash, user.id, at))

    def dashboard_session_open(self, id_hash: str, user: User, since: float) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM dashboard_sessions WHERE id_hash = ? AND "
                              "user_id = ? AND created >= ?",
                              (id_hash, user.id, since)).fetchone() is not None

    def close_dashboard_session(self, id_hash: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", (id_hash,))

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

    # ---- HTTPS: certificates and their switches ------------------------------------------
    def tls_site(self, site: str) -> TlsSite:
        """The site's HTTPS state (the defaults when nothing was recorded yet)."""
        with self._db() as db:
            row = db.execute("SELECT * FROM tls_sites WHERE site = ?", (site,)).fetchone()
        return _tls_site(row) if row else TlsSite(site)

    def tls_sites(self) -> dict[str, TlsSite]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM tls_sites").fetchall()
        return {row["site"]: _tls_site(row) for row in rows}

    def update_tls_site(self, site: str, **values: object) -> None:
        """Set some of a site's HTTPS columns (TLS_COLUMNS), making its row if missing."""
        unknown = set(values) - TLS_COLUMNS
        if unknown:
            raise ValueError(f"not HTTPS columns: {sorted(unknown)}")
        if "domains" in values:
            values["domains"] = json.dumps(values["domains"])
        names = sorted(values)
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO tls_sites (site) VALUES (?)", (site,))
            if names:
                db.execute(f"UPDATE tls_sites SET {', '.join(f'{n} = ?' for n in names)} "  # noqa: S608
                           "WHERE site = ?", (*[values[n] for n in names], site))


    # ---- databases and backups (issue 16) ---------------------------------------------
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

    def database_named(self, name: str) -> bool:
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

    def redis_servers(self) -> list[AppRedis]:
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

    def backups(self, app: App) -> list[Backup]:
        """The app's backups, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM backups WHERE app_id = ? AND app_name = ?"
                              " ORDER BY id DESC", (app.id, app.name)).fetchall()
        return [_backup(r) for r in rows]

    def get_backup(self, backup_id: int) -> Backup | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM backups WHERE id = ?", (backup_id,)).fetchone()
        return None if row is None else _backup(row)

    def kept_backups(self) -> list[Backup]:
        """Destroyed apps' last backups, newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM backups WHERE app_id IS NULL ORDER BY id DESC"
                              ).fetchall()
        return [_backup(r) for r in rows]

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
        return [_backup(r) for r in rows]

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

    def autosleep(self, app: App) -> Autosleep | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM autosleep WHERE app_id = ?", (app.id,)).fetchone()
        return None if row is None else Autosleep(app.name, row["period"],
                                                  bool(row["asleep"]), row["changed"])

    def sleepers(self) -> dict[int, Autosleep]:
        """Every app that may sleep, by app id."""
        with self._db() as db:
            rows = db.execute("SELECT autosleep.*, apps.name FROM autosleep JOIN apps ON"
                              " apps.id = autosleep.app_id").fetchall()
        return {r["app_id"]: Autosleep(r["name"], r["period"], bool(r["asleep"]), r["changed"])
                for r in rows}

    # ---- swarm nodes -----------------------------------------------------
    def nodes(self) -> list[SwarmNode]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM nodes ORDER BY name").fetchall()
        return [SwarmNode(r["name"], r["address"], r["port"], r["docker_id"], r["added_at"])
                for r in rows]

    def save_node(self, node: SwarmNode) -> None:
        """Record `node` (a node added again keeps its name and gets its new id)."""
        with self._db() as db:
            db.execute("INSERT INTO nodes (name, address, port, docker_id, added_at) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                       "address = excluded.address, port = excluded.port, "
                       "docker_id = excluded.docker_id",
                       (node.name, node.address, node.port, node.docker_id, node.added_at))

    def forget_node(self, name: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM nodes WHERE name = ?", (name,))

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

    def scheduled_apps(self) -> list[tuple[App, BackupPolicy]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT apps.*, users.name AS owner, backup_policies.minute_of_day,"
                " backup_policies.keep, backup_policies.since FROM apps JOIN users ON"
                " users.id = apps.owner_id JOIN backup_policies ON backup_policies.app_id ="
                " apps.id WHERE minute_of_day IS NOT NULL ORDER BY apps.name").fetchall()
        return [(_app(r), BackupPolicy(r["name"], r["minute_of_day"], r["keep"], r["since"]))
                for r in rows]


    # ---- preview apps ----------------------------------------------------------
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
        return [(r["branch"], _app(r)) for r in rows]

    def preview_of(self, app: App) -> tuple[str, str] | None:
        """(parent's name, branch) if `app` is a preview app."""
        with self._db() as db:
            row = db.execute("SELECT apps.name, previews.branch FROM previews JOIN apps ON"
                             " apps.id = previews.parent_id WHERE previews.app_id = ?",
                             (app.id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def preview_parents(self) -> dict[int, str]:
        """Every preview app's id → its parent's name."""
        with self._db() as db:
            rows = db.execute("SELECT previews.app_id, apps.name FROM previews JOIN apps ON"
                              " apps.id = previews.parent_id").fetchall()
        return {r[0]: r[1] for r in rows}


def _backup(row: sqlite3.Row) -> Backup:
    return Backup(row["id"], row["app_name"], row["app_id"], row["owner"], row["kind"],
                  row["trigger"], row["release_version"], row["status"], row["created"],
                  row["size"], row["sha256"], row["expires"])


def database_problem(path: Path) -> str | None:
    """What is wrong with the database file at `path` (None: a sound Opus database)."""
    if not path.exists():
        return "it is missing"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"it is damaged ({exc})"
    if check != ("ok",):
        return f"it is damaged ({check[0] if check else 'no answer'})"
    if not {"apps", "users", "releases"} <= tables:
        return "it is empty"
    return None


def restore_if_damaged(path: Path, backup: Path) -> str | None:
    """Put the last good copy in place of a damaged, empty or missing database (the
    damaged file is kept beside it); say what was done (None: nothing was wrong)."""
    problem = database_problem(path)
    if problem is None or (problem in ("it is missing", "it is empty") and
                           not backup.exists()):
        return None        # sound, or a new home (never copied yet)
    if not backup.exists() or database_problem(backup) is not None:
        raise ServiceError(f"{path} {problem.removeprefix('it ')}, and there is no good "
                           f"copy of it at {backup}; restore one from your own backups")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):   # a stale -wal must never meet the copy
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{kept}{suffix}")
    tmp = path.with_name(f".{path.name}.restoring")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, backup.open("rb") as source:
        shutil.copyfileobj(source, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(backup.stat().st_mtime))
    where = f"; the damaged file is kept as {kept.name}" if problem != "it is missing" else ""
    return (f"opus.db {problem.removeprefix('it ')}: restored from its copy of {taken} "
            f"(what changed after that copy is lost){where}")


def _release(app: App, row: sqlite3.Row) -> Release:
    domains = None if row["domains"] is None else tuple(json.loads(row["domains"]))
    return Release(app.name, row["version"], row["sha"], row["description"], row["created"],
                   row["slug_version"] or row["version"], json.loads(row["config"] or "{}"),
                   row["state"], row["ref"], row["previous_sha"], domains, row["note"])


def _keep_an_admin(db: sqlite3.Connection, user: User) -> None:
    others = db.execute("SELECT COUNT(*) FROM users WHERE role = 'admin' AND id != ?",
                        (user.id,)).fetchone()[0]
    if not others:
        raise Conflict(f"{user.name} is the last admin; make another user admin first")


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older Opus up to SCHEMA (columns added since)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(apps)")}
    if "deploy_branch" not in columns:
        conn.execute("ALTER TABLE apps ADD COLUMN deploy_branch TEXT NOT NULL DEFAULT 'main'")
    if "live_slug" not in columns:
        conn.execute("ALTER TABLE apps ADD COLUMN live_slug INTEGER")
    if "web_processes" not in columns:
        conn.execute("ALTER TABLE apps ADD COLUMN web_processes INTEGER NOT NULL DEFAULT 1")
        conn.execute("ALTER TABLE apps ADD COLUMN stopped INTEGER NOT NULL DEFAULT 0")
    if "web_threads" not in columns:
        conn.execute("ALTER TABLE apps ADD COLUMN web_threads INTEGER NOT NULL DEFAULT 5")
    if "health_check" not in columns:
        conn.execute("ALTER TABLE apps ADD COLUMN health_check TEXT NOT NULL DEFAULT '{}'")
    release_columns = {row[1] for row in conn.execute("PRAGMA table_info(releases)")}
    if "slug_version" not in release_columns:
        conn.execute("ALTER TABLE releases ADD COLUMN slug_version INTEGER")
        conn.execute("ALTER TABLE releases ADD COLUMN config TEXT NOT NULL DEFAULT '{}'")
    if "state" not in release_columns:
        conn.execute("ALTER TABLE releases ADD COLUMN state TEXT NOT NULL DEFAULT 'released'")
        conn.execute("ALTER TABLE releases ADD COLUMN ref TEXT")
        conn.execute("ALTER TABLE releases ADD COLUMN previous_sha TEXT")
        conn.execute("ALTER TABLE releases ADD COLUMN domains TEXT")
        conn.execute("ALTER TABLE releases ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    user_columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
    if "password_hash" not in user_columns:
        conn.execute("ALTER TABLE users ADD COLUMN password_hash TEXT")


def _tls_site(row: sqlite3.Row) -> TlsSite:
    values = {name: row[name] for name in TLS_COLUMNS}
    values.update(auto=bool(row["auto"]), redirect=bool(row["redirect"]),
                  domains=tuple(json.loads(row["domains"] or "[]")))
    return TlsSite(site=row["site"], **values)


def _app(row: sqlite3.Row) -> App:
    return App(row["id"], row["name"], row["owner"], row["live_version"], row["live_port"],
               row["deploy_branch"], row["live_slug"], row["web_processes"],
               bool(row["stopped"]), row["health_check"], row["web_threads"])
