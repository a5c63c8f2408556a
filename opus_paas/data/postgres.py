"""Each app's Postgres database: a role and a database owned by it, made, described,
given a new password and dropped through Opus's admin connection. Every identifier and
literal is composed by psycopg (`sql.Identifier`, `sql.Literal`), never by formatting.

Isolation, in layers: pg_hba (Opus's own cluster) lets a role reach only the database of
its own name; CONNECT and TEMP on each database are revoked from PUBLIC (any server);
the role may not create roles or databases; the server only ever sees a SCRAM verifier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opus_paas.data import credentials, nodes, server
from opus_paas.errors import Conflict, NotFound, ServiceError
from opus_paas.settings import Settings
from opus_paas.store import App, AppDatabase, Store

if TYPE_CHECKING:
    import psycopg

CONNECTION_LIMIT = 64


def sql_module() -> Any:
    """psycopg's sql module. psycopg takes about 0.1 s to import, so it is imported where
    Postgres is talked to, not by every `opus` command."""
    from psycopg import sql

    return sql


def admin(srv: server.Server, database: str | None = None) -> psycopg.Connection[Any]:
    """Opus's admin connection (autocommit: CREATE DATABASE cannot run in a transaction)."""
    import psycopg

    try:
        return psycopg.connect(**srv.connect_args(database), autocommit=True)
    except psycopg.OperationalError as exc:
        raise ServiceError(f"cannot reach the Postgres server: {_say(exc)}; is it running? "
                           "(`opus status`)") from None


def _say(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def database_of(store: Store, app: App) -> AppDatabase:
    found = store.app_database(app)
    if found is None:
        raise NotFound(f"{app.name} has no Postgres database; `opus pg:create {app.name}` "
                       "makes one")
    return found


def create(settings: Settings, store: Store, app: App) -> AppDatabase:
    """A role and a database for `app`, owned by it; returns the record with its URL."""
    sql = sql_module()
    if store.app_database(app) is not None:
        raise Conflict(f"{app.name} has a Postgres database already; `opus pg:info "
                       f"{app.name}` shows it")
    srv = server.current(settings, store)
    name = credentials.database_name(app.name)
    if store.has_database_named(name):
        raise Conflict(f"the database {name} belongs to another app (renamed from "
                       f"{app.name}); Opus cannot make a second one of that name")
    password = credentials.new_password()
    role, database = sql.Identifier(name), sql.Identifier(name)
    with admin(srv) as conn:
        taken = conn.execute("SELECT (SELECT count(*) FROM pg_roles WHERE rolname = %s) + "
                             "(SELECT count(*) FROM pg_database WHERE datname = %s)",
                             (name, name)).fetchone()
        if taken and taken[0]:
            raise Conflict(f"the server has a role or database named {name} already (left "
                           f"by an earlier {app.name}?); drop it there, or ask the operator")
        conn.execute(sql.SQL(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
            "NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {}").format(
                role, sql.Literal(CONNECTION_LIMIT),
                sql.Literal(credentials.scram_verifier(password))))
        try:
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
            make_database(conn, name)
        except BaseException:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
            raise
    url = credentials.database_url(srv.host, srv.port, name, password)
    store.set_app_database(app, name, url)
    nodes.refresh(settings, store)      # Swarm nodes may reach it too (if there are any)
    found = store.app_database(app)
    assert found is not None
    return found


def make_database(conn: psycopg.Connection[Any], name: str, database: str | None = None
                  ) -> None:
    """Database `database` (default: `name`) owned by role `name`, which alone may
    connect to it (PUBLIC loses CONNECT and TEMP)."""
    sql = sql_module()
    target = sql.Identifier(database or name)
    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0")
                 .format(target, sql.Identifier(name)))
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
    conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
        target, sql.Identifier(name)))


def drop(settings: Settings, store: Store, app: App) -> None:
    """Drop the app's database and role (its connections are ended first)."""
    sql = sql_module()
    found = database_of(store, app)
    with admin(server.current(settings, store)) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(found.name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(found.name)))
    store.remove_app_database(app)
    nodes.refresh(settings, store)


def rotate(settings: Settings, store: Store, app: App) -> AppDatabase:
    """A new password for the app's role (the old one stops working at once)."""
    sql = sql_module()
    found = database_of(store, app)
    srv = server.current(settings, store)
    password = credentials.new_password()
    with admin(srv) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(found.name), sql.Literal(credentials.scram_verifier(password))))
    store.set_app_database(app, found.name, credentials.database_url(
        srv.host, srv.port, found.name, password))
    return database_of(store, app)


def info(settings: Settings, store: Store, app: App) -> dict[str, Any]:
    """What `pg:info` shows: never the password."""
    found = database_of(store, app)
    srv = server.current(settings, store)
    details: dict[str, Any] = {"database": found.name, "role": found.name,
                               "server": f"{srv.kind} ({srv.host}:{srv.port})",
                               "created": found.created}
    with admin(srv) as conn:
        row = conn.execute(
            "SELECT pg_database_size(%s), (SELECT count(*) FROM pg_stat_activity WHERE "
            "datname = %s), current_setting('server_version')", (found.name, found.name)
        ).fetchone()
    assert row is not None
    details.update(size=int(row[0]), connections=int(row[1]), version=str(row[2]))
    return details


def carry_over(store: Store, app: App, config: dict[str, str]) -> dict[str, str]:
    """`config` (an older release's, being rolled back to) with the app's current
    DATABASE_URL: a rollback must not bring back a rotated password or lose the
    database pg:create made since."""
    found = store.app_database(app)
    if found is None:
        return config
    return {**config, "DATABASE_URL": found.url}
