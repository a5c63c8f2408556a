"""The connection every part of the store shares."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from opus_paas.store.schema import SCHEMA, database_problem, migrate


class StoreBase:
    """The database file and its one way in: `_db`, a short connection holding one
    transaction. Every aggregate's methods go through it."""

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
            migrate(conn)
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
