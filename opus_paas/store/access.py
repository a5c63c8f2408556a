"""Who is who: users, their SSH keys and passwords, collaborators, the dashboard's
sessions and sign-in throttle."""

from __future__ import annotations

import sqlite3
import time

from opus_paas.errors import Conflict, NotFound
from opus_paas.store.base import StoreBase
from opus_paas.store.records import (
    App,
    Key,
    User,
)


class AccessStore(StoreBase):
    """Users, keys, collaborators, dashboard sessions."""

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

    def is_dashboard_session_open(self, id_hash: str, user: User, since: float) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM dashboard_sessions WHERE id_hash = ? AND "
                              "user_id = ? AND created >= ?",
                              (id_hash, user.id, since)).fetchone() is not None

    def close_dashboard_session(self, id_hash: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM dashboard_sessions WHERE id_hash = ?", (id_hash,))


def _keep_an_admin(db: sqlite3.Connection, user: User) -> None:
    others = db.execute("SELECT COUNT(*) FROM users WHERE role = 'admin' AND id != ?",
                        (user.id,)).fetchone()[0]
    if not others:
        raise Conflict(f"{user.name} is the last admin; make another user admin first")
