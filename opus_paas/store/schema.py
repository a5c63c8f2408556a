"""opus.db's tables, their migration from older databases, and the checks and repair
of the file itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from pathlib import Path

from opus_paas.errors import ServiceError

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
-- Swarm (docs/scale-out.md): where an app runs (no row: local), the limits of its
-- process types, its releases on the swarm and the members the front serves them by.
CREATE TABLE IF NOT EXISTS schedulers (
    app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    scheduler TEXT NOT NULL CHECK (scheduler IN ('local', 'swarm'))
);
CREATE TABLE IF NOT EXISTS limits (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    ptype TEXT NOT NULL,
    memory_bytes INTEGER,
    cpus REAL,
    PRIMARY KEY (app_id, ptype)
);
CREATE TABLE IF NOT EXISTS swarm_releases (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    image TEXT NOT NULL,
    block INTEGER NOT NULL,
    services TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (app_id, version)
);
CREATE TABLE IF NOT EXISTS swarm_members (
    app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    ptype TEXT NOT NULL,
    slot INTEGER NOT NULL,
    node TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    enabled INTEGER NOT NULL,
    PRIMARY KEY (app_id, version, ptype, slot)
);
-- A pinned app's data/ on the swarm (docs/scale-out.md, Pinned data): the node whose
-- Docker volume holds it since it moved there from this host (no row: data/ is here).
CREATE TABLE IF NOT EXISTS swarm_data (
    app_id INTEGER PRIMARY KEY REFERENCES apps(id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    moved_at REAL NOT NULL
);
"""


def migrate(conn: sqlite3.Connection) -> None:
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
