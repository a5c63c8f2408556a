"""Backup files: how each kind of database is copied out and put back.

- Postgres: `pg_dump -Fc` by Opus as the server's admin; a restore goes into a fresh
  database first (`pg_restore --single-transaction --exit-on-error`, objects owned by the
  app's role) and only a complete one takes the live database's place, so a restore
  that fails changes nothing.
- SQLite: the file is the app's (its user's, in system mode), so a small stdlib script
  runs as the app's user: SQLite's online backup API copies a consistent snapshot while
  the app writes, out through standard output; a restore reads the backup from the app's
  env/ directory (Opus's, readable by the app) and copies it into the live file with the
  same API, under SQLite's own lock.

Files live in OPUS_HOME/backups (0700, Opus's alone), named by backup id only.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
from pathlib import Path

from opus_paas import privileged
from opus_paas.data import server
from opus_paas.data.postgres import admin, make_database, sql_module
from opus_paas.errors import Conflict, NotFound, ServiceError
from opus_paas.layout import AppPaths
from opus_paas.settings import Settings

HOST_PYTHON = "/usr/bin/python3"      # Debian's: every app's user may run it
SUFFIX = {"postgres": "pgdump", "sqlite": "sqlite3"}
NO_DATABASE, DAMAGED = 3, 4
CHUNK = 1 << 20

SQLITE_BACKUP = """\
import os, sqlite3, sys
path = sys.argv[1]
if not os.path.isfile(path):
    sys.exit(3)
source = sqlite3.connect(path, timeout=60)
copy = sqlite3.connect(":memory:")
source.backup(copy)
source.close()
sys.stdout.buffer.write(copy.serialize())
"""

SQLITE_RESTORE = """\
import sqlite3, sys
from urllib.parse import quote
source, target = sys.argv[1], sys.argv[2]
try:
    backup = sqlite3.connect("file:" + quote(source) + "?mode=ro", uri=True)
    if backup.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
        sys.exit(4)
except sqlite3.DatabaseError:
    sys.exit(4)
live = sqlite3.connect(target, timeout=60)
backup.backup(live)
live.close()
"""


def backups_dir(settings: Settings) -> Path:
    path = settings.home / "backups"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def path(settings: Settings, backup_id: int, kind: str) -> Path:
    return backups_dir(settings) / f"{backup_id}.{SUFFIX[kind]}"


def sqlite_path(settings: Settings, app: str) -> Path:
    """The default database the settings overlay gives an app without DATABASE_URL."""
    return AppPaths.of(settings, app).data / "db.sqlite3"


def checksum(file: Path) -> tuple[int, str]:
    """(size, sha256) of a file."""
    digest, size = hashlib.sha256(), 0
    with file.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _tail(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[-3:])[-400:] or "no message"


# ---- Postgres ---------------------------------------------------------------------------

def dump_postgres(srv: server.Server, database: str, dest: Path) -> None:
    done = subprocess.run([server.tool("pg_dump"), "--format=custom", "--no-password",
                           f"--file={dest}", database], env=srv.environment(database),
                          capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ServiceError(f"pg_dump failed: {_tail(done.stderr)}")


def check_postgres_dump(srv: server.Server, file: Path) -> None:
    """pg_restore reads the dump's table of contents: a file that is no dump is refused."""
    done = subprocess.run([server.tool("pg_restore"), "--list", str(file)],
                          env=srv.environment(), capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise Conflict(f"the backup is not a Postgres dump Opus can read "
                       f"({_tail(done.stderr)}); nothing was changed")


def restore_postgres(srv: server.Server, name: str, file: Path) -> None:
    """Restore `file` into a fresh database, then put it in the place of database
    `name` (its connections are ended). A failed restore leaves `name` as it was."""
    sql = sql_module()
    check_postgres_dump(srv, file)
    fresh, old = f"{name}_restoring", f"{name}_replaced"
    with admin(srv) as conn:
        for leftover in (fresh, old):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(leftover)))
        make_database(conn, name, fresh)
    done = subprocess.run(
        [server.tool("pg_restore"), "--single-transaction", "--exit-on-error", "--no-owner",
         "--no-acl", f"--role={name}", "--no-password", f"--dbname={fresh}", str(file)],
        env=srv.environment(fresh), capture_output=True, text=True, check=False,
        stdin=subprocess.DEVNULL)
    with admin(srv) as conn:
        if done.returncode != 0:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(fresh)))
            raise Conflict(f"the backup could not be restored ({_tail(done.stderr)}); "
                           "nothing was changed")
        live = sql.Identifier(name)
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(live))
        try:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                live, sql.Identifier(old)))
        except BaseException:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live))
            raise
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(fresh), live))
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(old)))


# ---- SQLite -----------------------------------------------------------------------------

def _sqlite_step(settings: Settings, app: str, argv: list[str],
                 stdout: int | None) -> subprocess.CompletedProcess[bytes]:
    """A SQLite script run as the app's user (its files are its own)."""
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
           "HOME": str(AppPaths.of(settings, app).home)}
    how = privileged.step(settings, app, [HOST_PYTHON, "-I", "-c", *argv],
                          AppPaths.of(settings, app).home, env)
    return subprocess.run(how.argv, cwd=how.cwd, env=how.env,
                          input=(how.spec or "").encode(), stdout=stdout,
                          stderr=subprocess.PIPE, check=False,
                          timeout=settings.build_timeout, **how.identity)


def dump_sqlite(settings: Settings, app: str, dest: Path) -> bool:
    """A consistent copy of the app's SQLite database at `dest`; False if it has none."""
    if not all(p.is_dir() for p in (AppPaths.of(settings, app).data,
                                     AppPaths.of(settings, app).home)):
        return False        # (what is inside data/ only the app's user may see)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        done = _sqlite_step(settings, app, [SQLITE_BACKUP, str(sqlite_path(settings, app))],
                            fd)
    finally:
        os.close(fd)
    if done.returncode == NO_DATABASE:
        return False
    if done.returncode != 0:
        raise ServiceError(f"the SQLite backup failed: {_tail(done.stderr)}")
    check_sqlite(dest)
    return True


def check_sqlite(file: Path) -> None:
    """A SQLite database whose integrity check passes, or Conflict."""
    try:
        with open(file, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\0":
                raise sqlite3.DatabaseError("not a SQLite database")
        conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise Conflict(f"the backup is not a sound SQLite database ({exc}); nothing was "
                       "changed") from None
    if result != "ok":
        raise Conflict(f"the backup fails SQLite's integrity check ({result}); nothing was "
                       "changed")


def restore_sqlite(settings: Settings, app: str, file: Path) -> None:
    """Copy the backup into the app's live SQLite file, as the app's user."""
    check_sqlite(file)
    staged = AppPaths.of(settings, app).env / f".restore-{os.getpid()}.sqlite3"
    staged.unlink(missing_ok=True)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, file.open("rb") as source:
            while chunk := source.read(CHUNK):
                out.write(chunk)
        privileged.hand_over(settings, app)      # the app's group may read it
        done = _sqlite_step(settings, app, [SQLITE_RESTORE, str(staged),
                                            str(sqlite_path(settings, app))],
                            subprocess.DEVNULL)
    finally:
        staged.unlink(missing_ok=True)
    if done.returncode == DAMAGED:
        raise Conflict("the backup fails SQLite's integrity check; nothing was changed")
    if done.returncode != 0:
        raise ServiceError(f"the SQLite restore failed: {_tail(done.stderr)}")


def require_file(file: Path, size: int, sha256: str, backup_id: int) -> None:
    """The backup's file, whole and as it was written, or Conflict (nothing changes)."""
    if not file.is_file():
        raise NotFound(f"backup {backup_id}'s file is gone; choose another (`opus backups`)")
    if checksum(file) != (size, sha256):
        raise Conflict(f"backup {backup_id} is damaged (its checksum no longer matches); "
                       "nothing was changed; choose another backup")
