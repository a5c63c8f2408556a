"""Databases end to end, on the session's Opus with its own Postgres cluster (Debian's
postgresql, started by Opus's supervisor): real Django apps pushed over SSH, migrated on
Postgres, written to through the front; backups captured, downloaded over SSH, restored;
the SQLite default backed up while a writer runs; a failed migration's pre-release
backup; isolation between two apps' databases; hostile names, ids and files."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from opus_paas import settings as settings_module
from opus_paas import users
from opus_paas.access import OPERATOR
from opus_paas.control import commands
from opus_paas.control.context import Context
from opus_paas.data import backups, dumps, server
from opus_paas.errors import OpusError
from opus_paas.store import Store
from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    git,
    make_django_project,
    make_key,
    push_main,
    require_tool,
)
from tests.test_sshd import ssh_t, until_asked

PASSWORD = "a long enough password"


@dataclasses.dataclass
class Project:
    name: str
    path: Path


def ssh(opus: Opus, key: SshKey, command: str, stdout: object = subprocess.PIPE
        ) -> subprocess.CompletedProcess[bytes]:
    done: subprocess.CompletedProcess[bytes] = subprocess.run(
        ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
         "git@127.0.0.1", command], stdout=stdout, stderr=subprocess.PIPE, timeout=120,
        check=False, stdin=subprocess.DEVNULL)  # type: ignore[call-overload]
    return done


def visits(opus: Opus, app: str) -> int:
    status, _headers, body = opus.get(opus.app_host(app))
    assert status == 200, body
    found = re.search(r"visits: (\d+)", body)
    assert found, body
    return int(found.group(1))


def sql(opus: Opus, app: str, statement: str) -> str:
    return opus.cli("pg:psql", app, "-c", statement).stdout


def listed(opus: Opus, app: str) -> list[dict[str, object]]:
    found: list[dict[str, object]] = json.loads(opus.cli("backups", app, "--json").stdout)
    return found


def store_of(opus: Opus) -> Store:
    return Store(opus.home / "opus.db")


@pytest.fixture(scope="module")
def pg(opus: Opus) -> Opus:
    """The session's Opus with its Postgres cluster enabled (and running)."""
    for tool in ("initdb", "postgres", "pg_dump", "pg_restore", "psql"):
        require_tool(str(Path("/usr/lib/postgresql/15/bin") / tool))
    done = opus.cli("addons:enable", "postgres")
    assert "Postgres is running" in done.stdout, done.stdout
    assert re.search(r"opus-postgres\s+RUNNING", opus.cli("status").stdout)
    return opus


@pytest.fixture(scope="module")
def developer(opus: Opus, tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    """A developer who owns no app here."""
    key = make_key(tmp_path_factory.mktemp("db-keys"), "dbdev")
    opus.cli("keys:add", "dbdev", str(key.public))
    return key


def _new_project(opus: Opus, key: SshKey, base: Path, name: str, postgres: bool) -> Project:
    path = make_django_project(base / name, greeting=f"Hello from {name}")
    if postgres:
        (path / "requirements.txt").write_text("django>=5.2,<5.3\npsycopg[binary]>=3.2\n")
        commit_all(path, "psycopg")
    git(path, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{name}.git")
    return Project(name, path)


@pytest.fixture(scope="module")
def shop(pg: Opus, admin_key: SshKey, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A Django app on Postgres: created, given a database, then pushed (so its first
    release command migrates Postgres)."""
    project = _new_project(pg, admin_key, tmp_path_factory.mktemp("db-src"), "pgshop", True)
    pg.cli("apps:create", project.name)
    created = pg.cli("pg:create", project.name).stdout
    assert "Created the database app_pgshop" in created, created
    output = push_main(project.path, pg, admin_key)
    assert "Backed up the database before the release command" in output, output
    assert "Running release command" in output and "Released v1" in output, output
    return project


@pytest.fixture(scope="module")
def notes(pg: Opus, admin_key: SshKey, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A Django app on its default SQLite database."""
    project = _new_project(pg, admin_key, tmp_path_factory.mktemp("db-src"), "sqlnotes",
                           False)
    output = push_main(project.path, pg, admin_key)
    assert "Released v1" in output, output
    return project


# ---- Postgres, end to end ---------------------------------------------------------------

def test_a_postgres_app_is_migrated_written_backed_up_and_restored(pg: Opus,
                                                                   shop: Project) -> None:
    for _ in range(3):
        written = visits(pg, shop.name)      # (the deploy's health check wrote one too)
    # The rows are in Postgres, not in a SQLite file.
    assert re.search(rf"^\s+{written}$", sql(pg, shop.name, "SELECT count(*) FROM pages_visit"),
                     re.M)
    assert not (pg.home / "apps" / shop.name / "data" / "db.sqlite3").exists()
    config = pg.cli("config:get", shop.name, "DATABASE_URL").stdout.strip()
    assert config.startswith("postgres://app_pgshop:") and "%2F" in config

    captured = pg.cli("backups:capture", shop.name).stdout
    backup_id = re.search(r"backup (\d+) \(postgres", captured)
    assert backup_id, captured
    assert f"DELETE {written}" in sql(pg, shop.name, "DELETE FROM pages_visit")
    sql(pg, shop.name, "CREATE TABLE made_after (x int)")     # a table the backup lacks
    assert visits(pg, shop.name) == 1

    restored = pg.cli("backups:restore", shop.name, backup_id.group(1)).stdout
    assert f"Restored backup {backup_id.group(1)}" in restored, restored
    assert "The data it replaced is backup" in restored
    assert visits(pg, shop.name) == written + 1     # the rows are back, and this one
    tables = sql(pg, shop.name, "SELECT count(*) FROM pg_tables WHERE tablename = "
                                "'made_after'")
    assert re.search(r"^\s+0$", tables, re.M), tables    # the database is as it was
    owner = sql(pg, shop.name, "SELECT tableowner FROM pg_tables WHERE tablename = "
                               "'pages_visit'")
    assert "app_pgshop" in owner                # still the app's own, not the admin's
    kinds = [(b["trigger"], b["kind"]) for b in listed(pg, shop.name)]
    assert ("restore", "postgres") in kinds and ("manual", "postgres") in kinds
    assert ("release", "postgres") in kinds    # the first push's, before migrate


def test_a_backup_downloads_over_ssh_byte_for_byte(pg: Opus, shop: Project,
                                                   admin_key: SshKey,
                                                   tmp_path: Path) -> None:
    newest = listed(pg, shop.name)[0]
    target = tmp_path / "backup.dump"
    with target.open("wb") as out:
        done = ssh(pg, admin_key, f"backups:download {shop.name} {newest['id']}",
                   stdout=out)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == newest["sha256"]
    toc = subprocess.run(["/usr/lib/postgresql/15/bin/pg_restore", "--list", str(target)],
                         capture_output=True, text=True, check=True).stdout
    assert "pages_visit" in toc
    # On the host it refuses a terminal and needs the backup to be the app's own.
    assert pg.cli("backups:download", shop.name, "999999", check=False).returncode == 3


def test_a_failed_migration_keeps_its_backup_and_changes_nothing(pg: Opus, shop: Project,
                                                                 admin_key: SshKey) -> None:
    before = visits(pg, shop.name)
    migrations = shop.path / "pages" / "migrations"
    (migrations / "0002_broken.py").write_text(textwrap.dedent('''\
        from django.db import migrations


        def fail(apps, schema_editor):
            Visit = apps.get_model("pages", "Visit")
            Visit.objects.all().delete()      # it deletes, then fails: rolled back
            raise RuntimeError("this migration is broken")


        class Migration(migrations.Migration):
            dependencies = [("pages", "0001_initial")]
            operations = [migrations.RunPython(fail)]
        '''))
    commit_all(shop.path, "a broken migration")
    result = git(shop.path, "push", "opus", "main", env=admin_key.git_env(pg), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "remote rejected" in output, output
    taken = re.search(r"Backed up the database before the release command: backup (\d+)",
                      output)
    assert taken, output
    listed_now = {b["id"]: b for b in listed(pg, shop.name)}
    backup = listed_now[int(taken.group(1))]
    assert backup["trigger"] == "release" and backup["release"] is not None
    assert visits(pg, shop.name) == before + 1   # nothing was deleted, v1 still serves

    # Fixed: the migration runs (a column the old code can live with), and a rollback
    # says which backup holds the data the release before it ran with.
    (migrations / "0002_broken.py").unlink()
    (migrations / "0002_tag.py").write_text(textwrap.dedent('''\
        from django.db import migrations, models


        class Migration(migrations.Migration):
            dependencies = [("pages", "0001_initial")]
            operations = [migrations.AddField("visit", "tag", models.CharField(
                max_length=20, null=True))]
        '''))
    models = shop.path / "pages" / "models.py"
    models.write_text(models.read_text() + '    tag = models.CharField(max_length=20, '
                                            'null=True)\n')
    commit_all(shop.path, "a working migration")
    output = push_main(shop.path, pg, admin_key)
    good = re.search(r"before the release command: backup (\d+)", output)
    assert good, output
    rolled = pg.cli("rollback", shop.name).stdout
    assert f"backup {good.group(1)}" in rolled and "backups:restore" in rolled, rolled
    assert pg.cli("config:get", shop.name, "DATABASE_URL").stdout.startswith("postgres://")
    pg.cli("backups:restore", shop.name, good.group(1))
    assert visits(pg, shop.name) == before + 2
    columns = sql(pg, shop.name, "SELECT column_name FROM information_schema.columns "
                                 "WHERE table_name = 'pages_visit'")
    assert "path" in columns and "tag" not in columns      # v1's data, as v1 left it


def test_rotated_credentials_work_and_the_old_ones_do_not(pg: Opus, shop: Project) -> None:
    old = pg.cli("config:get", shop.name, "DATABASE_URL").stdout.strip()
    done = pg.cli("pg:credentials:rotate", shop.name).stdout
    assert "has a new password" in done and "is live with it" in done, done
    new = pg.cli("config:get", shop.name, "DATABASE_URL").stdout.strip()
    assert new != old
    visits(pg, shop.name)                      # the new release connects
    with pytest.raises(psycopg.OperationalError, match=r"password authentication failed"):
        psycopg.connect(old.replace("postgres://", "postgresql://"), connect_timeout=5)
    with psycopg.connect(new.replace("postgres://", "postgresql://"), connect_timeout=5):
        pass


def test_two_apps_databases_are_isolated(pg: Opus, shop: Project) -> None:
    pg.cli("apps:create", "pgother")
    pg.cli("pg:create", "pgother")
    other = pg.cli("config:get", "pgother", "DATABASE_URL").stdout.strip()
    mine = pg.cli("config:get", shop.name, "DATABASE_URL").stdout.strip()
    as_other = other.replace("postgres://", "postgresql://")
    # pgother's role, with its own password, into pgshop's database (and the admin's).
    for database in ("app_pgshop", "postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
            psycopg.connect(as_other.rsplit("/", 1)[0] + "/" + database, connect_timeout=5)
    # pgshop's role may not read the passwords the server keeps, nor become another.
    with psycopg.connect(mine.replace("postgres://", "postgresql://")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT rolpassword FROM pg_authid")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET ROLE app_pgother")
        conn.rollback()
        rights = conn.execute("SELECT has_database_privilege('app_pgother', 'app_pgshop', "
                              "'CONNECT')").fetchone()
        assert rights == (False,)
    # The server never saw a password: it logs none, and keeps only a SCRAM verifier.
    password = other.split(":")[2].split("@")[0]
    log = (pg.home / "logs" / "opus-postgres.log").read_text(errors="replace")
    assert password not in log
    admin = server.current(settings_module.load(pg.env), store_of(pg))
    with psycopg.connect(**admin.connect_args()) as conn:
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = "
                              "'app_pgother'").fetchone()
    assert stored and str(stored[0]).startswith("SCRAM-SHA-256$4096:")


def test_a_backup_of_another_app_or_a_damaged_file_is_refused(pg: Opus, shop: Project
                                                               ) -> None:
    sql(pg, "pgother", "CREATE TABLE secret (x text); INSERT INTO secret VALUES ('b')")
    theirs = re.search(r"backup (\d+)", pg.cli("backups:capture", "pgother").stdout)
    assert theirs
    before = visits(pg, shop.name)
    refused = pg.cli("backups:restore", shop.name, theirs.group(1), check=False)
    assert refused.returncode == 5 and "was taken of pgother, not pgshop" in refused.stderr

    mine = listed(pg, shop.name)[0]
    file = dumps.path(settings_module.load(pg.env), int(str(mine["id"])), "postgres")
    original = file.read_bytes()
    try:
        file.write_bytes(original[:100] + b"\xff" * 64 + original[164:])
        damaged = pg.cli("backups:restore", shop.name, str(mine["id"]), check=False)
        assert damaged.returncode == 5 and "is damaged" in damaged.stderr, damaged.stderr
        # Garbage that matches its record (as if stored so) is no dump: refused too.
        garbage = b"PGDMP" + b"\x00garbage" * 100
        file.write_bytes(garbage)
        with sqlite3.connect(pg.home / "opus.db") as db:
            db.execute("UPDATE backups SET size = ?, sha256 = ? WHERE id = ?",
                       (len(garbage), hashlib.sha256(garbage).hexdigest(), mine["id"]))
        bad = pg.cli("backups:restore", shop.name, str(mine["id"]), check=False)
        assert bad.returncode == 5 and "nothing was changed" in bad.stderr, bad.stderr
    finally:
        file.write_bytes(original)
        with sqlite3.connect(pg.home / "opus.db") as db:
            db.execute("UPDATE backups SET size = ?, sha256 = ? WHERE id = ?",
                       (len(original), hashlib.sha256(original).hexdigest(), mine["id"]))
    assert visits(pg, shop.name) == before + 1
    assert "secret" not in sql(pg, shop.name, "SELECT tablename FROM pg_tables")


@pytest.mark.parametrize("argv, message", [
    (["pg:create", "a;drop"], "invalid app name"),
    (["pg:create", "../etc"], "invalid app name"),
    (["pg:create", "Shop"], "invalid app name"),
    (["pg:info", "x" * 31], "invalid app name"),
    (["backups:restore", "pgshop", "1 OR 1=1"], "is not a backup id"),
    (["backups:restore", "pgshop", "-1"], "is not a backup id"),
    (["backups:restore", "pgshop", "\uff11"], "is not a backup id"),
    (["backups:download", "pgshop", "../1"], "is not a backup id"),
    (["backups:schedule", "pgshop", "daily", "25:00"], "is not a time of day"),
    (["backups:schedule", "pgshop", "daily", "3:00"], "is not a time of day"),
    (["backups:schedule", "pgshop", "daily", "03:00;id"], "is not a time of day"),
    (["backups:schedule", "pgshop", "weekly", "03:00"], "usage"),
    (["backups:schedule", "pgshop", "off", "--keep", "0"], "--keep takes a count"),
    (["pg:psql", "pgshop", "-c"], "usage"),
    (["pg:destroy", "pgshop", "--confirm", "pgother"], "repeat its name"),
    (["addons:enable", "postgres", "--url", "http://evil/x"], "not a Postgres admin URL"),
    (["addons:enable", "mysql"], "usage"),
])
def test_hostile_arguments_are_refused_with_a_message(pg: Opus, shop: Project,
                                                      argv: list[str], message: str) -> None:
    said: list[str] = []
    refused = in_process(pg, argv, said)
    assert refused is not None and message in refused.message
    assert refused.exit_code in (2, 3, 5) and not said


def in_process(opus: Opus, argv: list[str], said: list[str] | None = None) -> OpusError | None:
    """An `opus` command through the command table in this process, as the host's
    operator (the CLI's edge only turns an OpusError into its message and exit code;
    most tests here go through the CLI itself): the error it raised, if any."""
    ctx = Context(settings_module.load(opus.env), OPERATOR,
                  (said if said is not None else []).append, lambda _n: "",
                  write_bytes=lambda _b: None)
    try:
        commands.run(ctx, argv)
    except OpusError as exc:
        return exc
    return None


def test_strangers_see_nothing_of_an_apps_data(pg: Opus, shop: Project,
                                               developer: SshKey) -> None:
    for command in (f"pg:info {shop.name}", f"pg:psql {shop.name} -c 'SELECT 1'",
                    f"backups {shop.name}", f"backups:capture {shop.name}",
                    f"backups:restore {shop.name} 1", f"backups:download {shop.name} 1",
                    f"pg:credentials:rotate {shop.name}", "pg:create pgshop",
                    f"backups:schedule {shop.name} off"):
        done = ssh(pg, developer, command)
        assert done.returncode == 3 and b"not found, or you may not use it" in done.stderr, \
            (command, done.stderr)
    assert b"No destroyed app" in ssh(pg, developer, "backups:kept").stdout
    refused = ssh(pg, developer, "addons:enable postgres")
    assert refused.returncode != 0 and b"runs on the Opus host only" in refused.stderr


def on_a_sized_terminal(argv: list[str], keystrokes: bytes,
                        env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """on_a_terminal, on a terminal of 24 rows and 80 columns (psql pages its output
    on one too small for it)."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal,
                            start_new_session=True, env=env)
    os.close(terminal)
    output = until_asked(controller, (b"=> ", b"=# "))    # let psql start and ask
    os.write(controller, keystrokes)
    deadline = time.monotonic() + 30
    with contextlib.suppress(OSError):   # EIO once ssh has exited and closed the terminal
        while time.monotonic() < deadline and (chunk := os.read(controller, 4096)):
            output += chunk
    os.close(controller)
    return proc.wait(30), [ln.strip() for ln in output.decode().splitlines() if ln.strip()]


def test_psql_over_ssh_gets_a_terminal(pg: Opus, shop: Project, admin_key: SshKey) -> None:
    status, lines = on_a_sized_terminal(ssh_t(pg, admin_key, f"pg:psql {shop.name}"),
                                        b"SELECT 40 + 2 AS answer;\n\\q\n")
    assert status == 0, lines
    assert any(line.strip() == "42" for line in lines), lines
    assert any("app_pgshop=>" in line for line in lines), lines    # its own role, no admin
    # On the host, `opus pg:psql` takes the operator's own terminal.
    status, lines = on_a_sized_terminal([sys.executable, "-m", "opus_paas", "pg:psql",
                                         shop.name], b"SELECT 6 * 7;\n\\q\n", pg.env)
    assert status == 0 and any(line.strip() == "42" for line in lines), lines


def test_a_hand_set_database_url_is_left_alone(pg: Opus) -> None:
    assert in_process(pg, ["apps:create", "pgelse"]) is None
    assert in_process(pg, ["config:set", "pgelse",
                           "DATABASE_URL=postgres://u:p@db.example/x"]) is None
    refused = in_process(pg, ["pg:create", "pgelse"])
    assert refused and refused.exit_code == 5 and "config:unset pgelse DATABASE_URL" in \
        refused.message
    capture = in_process(pg, ["backups:capture", "pgelse"])
    assert capture and capture.exit_code == 2 and "does not manage" in capture.message


# ---- schedules and retention ------------------------------------------------------------

def test_schedules_run_when_due_and_retention_keeps_the_newest(pg: Opus, shop: Project
                                                                ) -> None:
    done = pg.cli("backups:schedule", shop.name, "daily", "03:00", "--keep", "2").stdout
    assert "daily at 03:00 UTC" in done and "newest 2" in done, done
    settings, store = settings_module.load(pg.env), store_of(pg)
    # Not due until its next 03:00 (it was set just now); set two days ago, it is due,
    # once.
    assert backups.run_schedules(settings, store) == []
    with sqlite3.connect(pg.home / "opus.db") as db:
        db.execute("UPDATE backup_policies SET since = ?", (time.time() - 2 * 86400,))
    taken = backups.run_schedules(settings, store)
    assert taken in ([shop.name], [])      # ([]: opus-scheduler, every minute, was first)
    assert backups.run_schedules(settings, store) == []
    assert [b["trigger"] for b in listed(pg, shop.name)].count("scheduled") == 1
    for _ in range(2):
        pg.cli("backups:capture", shop.name)
    captured = [b for b in listed(pg, shop.name) if b["trigger"] in ("manual", "scheduled")]
    assert len(captured) == 2 and all(b["trigger"] == "manual" for b in captured), captured
    files = {p.name for p in (pg.home / "backups").iterdir()}
    assert all(f"{b['id']}.pgdump" in files for b in listed(pg, shop.name))
    assert "daily at 03:00 UTC" in pg.cli("pg:info", shop.name).stdout
    pg.cli("backups:schedule", shop.name, "off")


# ---- SQLite, with a writer running ------------------------------------------------------

@pytest.fixture()
def writer(pg: Opus, notes: Project) -> Iterator[list[int]]:
    """Requests that each write a row, one after another, until the test ends; the
    statuses they got."""
    statuses: list[int] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            statuses.append(pg.get(pg.app_host(notes.name))[0])

    thread = threading.Thread(target=write)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(30)


def _rows(file: Path) -> int:
    with sqlite3.connect(file) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return int(db.execute("SELECT count(*) FROM pages_visit").fetchone()[0])


def test_sqlite_is_backed_up_and_restored_while_the_app_writes(
        pg: Opus, notes: Project, writer: list[int], tmp_path: Path) -> None:
    while len(writer) < 20:
        time.sleep(0.05)
    captured = pg.cli("backups:capture", notes.name).stdout
    found = re.search(r"backup (\d+) \(sqlite", captured)
    assert found, captured
    backup_file = dumps.path(settings_module.load(pg.env), int(found.group(1)), "sqlite")
    in_backup = _rows(backup_file)
    assert in_backup >= 20
    live = pg.home / "apps" / notes.name / "data" / "db.sqlite3"
    with sqlite3.connect(live, timeout=30) as db:
        db.execute("DELETE FROM pages_visit")
    written_before_restore = len(writer)
    restored = pg.cli("backups:restore", notes.name, found.group(1)).stdout
    assert "Restored backup" in restored, restored
    after = _rows(live)
    assert in_backup <= after <= in_backup + len(writer) - written_before_restore + 1
    time.sleep(0.5)
    assert writer and all(status == 200 for status in writer), set(writer)


def test_destroy_keeps_a_last_backup_that_a_new_app_can_take(pg: Opus, notes: Project
                                                             ) -> None:
    rows_before = _rows(pg.home / "apps" / notes.name / "data" / "db.sqlite3")
    done = pg.cli("apps:destroy", notes.name, "--confirm", notes.name).stdout
    kept = re.search(r"kept as backup (\d+) \(sqlite.*until \d{4}-\d\d-\d\d", done)
    assert kept, done
    assert f"{kept.group(1)} " in pg.cli("backups:kept").stdout
    pg.cli("apps:create", "sqlnotes2")
    restored = pg.cli("backups:restore", "sqlnotes2", kept.group(1)).stdout
    assert "of sqlnotes" in restored, restored
    assert _rows(pg.home / "apps" / "sqlnotes2" / "data" / "db.sqlite3") == rows_before

    # A Postgres app's database is dropped with it, its last backup kept the same way.
    destroyed = pg.cli("apps:destroy", "pgother", "--confirm", "pgother").stdout
    last = re.search(r"kept as backup (\d+) \(postgres", destroyed)
    assert last, destroyed
    admin = server.current(settings_module.load(pg.env), store_of(pg))
    with psycopg.connect(**admin.connect_args()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'app_pgother'"
                            ).fetchone() == (0,)
    pg.cli("apps:create", "pgother2")
    pg.cli("pg:create", "pgother2")
    pg.cli("backups:restore", "pgother2", last.group(1))
    assert "b" in sql(pg, "pgother2", "SELECT x FROM secret")
    for name in ("sqlnotes2", "pgother2", "pgelse"):
        pg.cli("apps:destroy", name, "--confirm", name)


# ---- the dashboard ----------------------------------------------------------------------

def test_the_dashboard_shows_backups_captures_and_restores_with_the_name_typed(
        pg: Opus, shop: Project) -> None:
    from tests.test_web import csrf, send
    from web import create_app

    settings = settings_module.load(pg.env)
    users.set_password(store_of(pg), OPERATOR, "admin", PASSWORD)
    app = create_app(settings, {"TESTING": True})
    client = app.test_client()
    reply = client.post("/signin", data={"user": "admin", "password": PASSWORD,
                                         "csrf_token": csrf(client)})
    assert reply.status_code == 303
    page = client.get(f"/apps/{shop.name}/data")
    assert page.status_code == 200 and "app_pgshop" in page.text
    here = f"/apps/{shop.name}/data"
    captured = send(client, f"{here}/capture", {}, page=here)
    found = re.search(r"Backed up pgshop: backup (\d+)", captured.text)
    assert found, captured.text
    assert f'data-backup="{found.group(1)}"' in captured.text
    download = client.get(f"{here}/download?backup={found.group(1)}")
    assert download.status_code == 200 and download.data.startswith(b"PGDMP")
    download.close()
    wrong = send(client, f"{here}/restore", {"backup": found.group(1), "confirm": "pgshopx"},
                 page=here)
    assert "type the app&#39;s name in the box" in wrong.text, wrong.text
    done = send(client, f"{here}/restore", {"backup": found.group(1), "confirm": shop.name},
                page=here)
    assert f"Restored backup {found.group(1)} into pgshop" in done.text, done.text
    hostile = send(client, f"{here}/restore", {"backup": "1; DROP", "confirm": shop.name},
                   page=here)
    assert "is not a backup id" in hostile.text


def _cmdlines(skip: int) -> Iterator[bytes]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != skip:
            with contextlib.suppress(OSError):
                yield (entry / "cmdline").read_bytes()


def test_psql_c_keeps_the_sql_out_of_every_processs_arguments(pg: Opus,
                                                               admin_key: SshKey) -> None:
    """/proc/PID/cmdline is every local user's to read: the SQL of `pg:psql -c` goes to
    psql on its standard input. (The ssh client's own arguments are the client's.)"""
    pg.cli("apps:create", "psqlargv")
    pg.cli("pg:create", "psqlargv")
    marker = f"argv-marker-{os.getpid()}"
    seen: list[bytes] = []
    psql_ran = threading.Event()
    stop = threading.Event()
    client = subprocess.Popen(
        ["ssh", "-i", str(admin_key.private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(pg.ssh_port),
         "git@127.0.0.1", f"pg:psql psqlargv -c \"SELECT pg_sleep(2), '{marker}' AS m\""],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

    def watch() -> None:
        while not stop.is_set():
            for cmdline in _cmdlines(client.pid):
                if marker.encode() in cmdline:
                    seen.append(cmdline)
                if b"--no-psqlrc" in cmdline:
                    psql_ran.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out, err = client.communicate(timeout=60)
    finally:
        stop.set()
        watcher.join()
    assert client.returncode == 0, err
    assert psql_ran.is_set() and not seen, seen
    assert re.search(rf"\|\s*{marker}", out) and "(1 row)" in out, out
    failed = pg.cli("pg:psql", "psqlargv", "-c", "SELECT 1/0", check=False)
    assert failed.returncode != 0 and "division by zero" in failed.stdout + failed.stderr
