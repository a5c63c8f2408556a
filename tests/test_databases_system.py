"""Databases in system mode, for real as the apps' own Unix users: Opus's cluster runs
as the opus user; app A's user can reach A's database and nothing of B's (not its
database, not its password in Opus's files, the server's log, `ps` or any process's
environment); a SQLite backup and restore cross users through secureops. Installs its
own system-mode Opus (no pushes: apps are created, not built), so it runs under the
machine-wide system-mode lock like tests/test_system_mode.py."""

from __future__ import annotations

import pwd
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opus_paas.store import Store
from tests import system_opus as system_opus_module
from tests.conftest import make_key, require_root, require_tool
from tests.system_opus import SystemOpus
from tests.test_databases import _cmdlines, on_a_sized_terminal
from tests.test_sshd import ssh_t
from tests.test_system_mode import as_user

PSQL = "/usr/lib/postgresql/15/bin/psql"


@pytest.fixture(scope="module")
def system_opus() -> Iterator[SystemOpus]:
    require_root("system mode installs as root")
    for tool in ("sudo", "visudo", "setpriv", "runuser", PSQL):
        require_tool(tool)
    present = system_opus_module.already_installed()
    if present is not None:
        pytest.fail(f"Opus is installed on this machine already ({present})")
    opus = system_opus_module.install()
    try:
        yield opus
    finally:
        opus.remove()


@pytest.fixture(scope="module")
def apps(system_opus: SystemOpus) -> dict[str, str]:
    """Apps A and B with a database each (name → DATABASE_URL), and C on SQLite."""
    system_opus.cli("keys:add", "dev", "-", input=_public_key())
    enabled = system_opus.cli("addons:enable", "postgres").stdout
    assert "opus up --system" in enabled, enabled
    system_opus.cli("up", "--system")
    deadline = time.monotonic() + 30
    while "opus-postgres                    RUNNING" not in system_opus.cli("status").stdout:
        assert time.monotonic() < deadline, system_opus.cli("status").stdout
        time.sleep(0.3)
    found = {}
    suffix = secrets.token_hex(2)
    for name in (f"pa{suffix}", f"pb{suffix}"):
        system_opus.cli("apps:create", name)
        system_opus.cli("pg:create", name)
        found[name] = system_opus.cli("config:get", name, "DATABASE_URL").stdout.strip()
    system_opus.cli("apps:create", f"pc{suffix}")
    return found


def _public_key() -> str:
    return ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0ysJ8S2lK0tEdtF9yXmW7N1h2r8M5sQyGdY1qk"
            "uJ1v dev@test\n")


def _parts(url: str) -> dict[str, str]:
    match = re.fullmatch(r"postgres://(app_\w+):([^@]+)@([^:]+):(\d+)/(app_\w+)", url)
    assert match, url
    role, password, host, port, database = match.groups()
    return {"PGUSER": role, "PGPASSWORD": password, "PGHOST": host.replace("%2F", "/"),
            "PGPORT": port, "PGDATABASE": database}


def psql_as(user: str, url: str, **override: str) -> subprocess.CompletedProcess[str]:
    """psql as the Unix user `user`, with the credentials of `url` (some overridden)."""
    env = {**_parts(url), **override}
    assigns = [f"{k}={v}" for k, v in env.items() if v is not None]
    return as_user(user, "/usr/bin/env", *assigns, PSQL, "--no-psqlrc", "-tAc",
                   "SELECT current_user, current_database()")


def test_an_apps_user_reaches_its_own_database_and_nothing_of_anothers(
        system_opus: SystemOpus, apps: dict[str, str]) -> None:
    (a, url_a), (b, url_b) = apps.items()
    user_a = f"opus-{a}"
    own = psql_as(user_a, url_a)
    assert own.returncode == 0 and own.stdout.strip() == f"app_{a}|app_{a}", own.stderr
    # A's role into B's database; B's role without (or with a wrong) password.
    into_b = psql_as(user_a, url_a, PGDATABASE=f"app_{b}")
    assert into_b.returncode != 0 and "no pg_hba.conf entry" in into_b.stderr
    as_b = psql_as(user_a, url_b, PGPASSWORD="")
    assert as_b.returncode != 0 and "password" in as_b.stderr
    guessed = psql_as(user_a, url_b, PGPASSWORD=_parts(url_a)["PGPASSWORD"])
    assert guessed.returncode != 0 and "password authentication failed" in guessed.stderr
    admin = psql_as(user_a, url_a, PGUSER="opus_admin", PGDATABASE="postgres")
    assert admin.returncode != 0
    # Nowhere A's user can look holds B's password.
    password_b = _parts(url_b)["PGPASSWORD"]
    home = system_opus.home
    for path in (home / "opus.db", home / "postgres" / "admin.password",
                 home / "postgres" / "data" / "global" / "pg_filenode.map",
                 Path("/var/log/opus/opus-postgres.log"), home / "backups",
                 home / "apps" / b / "env", home / "apps" / b / "data"):
        looked = as_user(user_a, "/usr/bin/cat", str(path))
        assert looked.returncode != 0 and password_b not in looked.stdout, path
    grep = as_user(user_a, "/usr/bin/grep", "-rl", "--", password_b, str(home), "/var/log/opus",
                   "/tmp")
    assert grep.stdout.strip() == "", grep.stdout


def test_psql_and_backups_of_b_show_a_nothing_in_ps(system_opus: SystemOpus,
                                                     apps: dict[str, str]) -> None:
    (a, _url_a), (b, url_b) = apps.items()
    password_b = _parts(url_b)["PGPASSWORD"]
    slow = subprocess.Popen(
        [sys.executable, "-m", "opus_paas", "pg:psql", b, "-c", "SELECT pg_sleep(6)"],
        env=system_opus.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            seen = as_user(f"opus-{a}", "/usr/bin/sh", "-c", "cat /proc/[0-9]*/cmdline "
                           "/proc/[0-9]*/environ 2>/dev/null | tr '\\0' ' '")
            assert password_b not in seen.stdout      # never B's password…
            # …nor B's SQL, but in the operator's own command line (psql reads it on
            # stdin; cmdline is everyone's to read, so root's look is A's)…
            others = b" ".join(_cmdlines(slow.pid))
            assert b"pg_sleep" not in others
            if b"--no-psqlrc" in others or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert b"--no-psqlrc" in others      # …while B's psql runs and A sees its argv
    finally:
        out, err = slow.communicate(timeout=60)
    assert slow.returncode == 0, out + err
    captured = system_opus.cli("backups:capture", b).stdout
    assert "(postgres" in captured, captured


def test_sqlite_backup_and_restore_cross_users_through_secureops(
        system_opus: SystemOpus, apps: dict[str, str]) -> None:
    c = next(name for name in (p.name for p in (system_opus.home / "apps").iterdir())
             if name.startswith("pc"))
    database = system_opus.home / "apps" / c / "data" / "db.sqlite3"
    connect = f"import sqlite3; db = sqlite3.connect({str(database)!r}); "
    make = connect + ("db.execute('CREATE TABLE t (x)'); db.executemany('INSERT INTO t "
                      "VALUES (?)', [(i,) for i in range(50)]); db.commit()")
    assert as_user(f"opus-{c}", "/usr/bin/python3", "-c", make).returncode == 0
    captured = system_opus.cli("backups:capture", c).stdout
    found = re.search(r"backup (\d+) \(sqlite", captured)
    assert found, captured
    wipe = connect + "db.execute('DELETE FROM t'); db.commit()"
    assert as_user(f"opus-{c}", "/usr/bin/python3", "-c", wipe).returncode == 0
    system_opus.cli("backups:restore", c, found.group(1))
    count = as_user(f"opus-{c}", "/usr/bin/python3", "-c",
                    connect + "print(db.execute('SELECT count(*) FROM t').fetchone()[0])")
    assert count.stdout.strip() == "50", count
    # The restored file is still the app's own; Opus's backup is Opus's alone.
    assert database.stat().st_uid == pwd.getpwnam(f"opus-{c}").pw_uid
    backups_dir = system_opus.home / "backups"
    assert backups_dir.stat().st_mode & 0o077 == 0
    assert not list((system_opus.home / "apps" / c / "env").glob(".restore-*"))


def test_pg_psql_on_a_terminal_through_secureops(system_opus: SystemOpus, apps: dict[str, str],
                                                 tmp_path: Path) -> None:
    """`ssh -t HOST pg:psql APP`: psql, as the app's user, on a terminal secureops opens."""
    a = next(iter(apps))
    key = make_key(tmp_path, "dev")
    system_opus.cli("keys:add", "dev", "-", input=key.public.read_text())
    status, lines = on_a_sized_terminal(
        ssh_t(system_opus, key, f"pg:psql {a}"),  # type: ignore[arg-type]
        b"SELECT 'connected' || ' as ' || current_user;\n\\q\n")
    assert status == 0, lines
    assert any(line.strip() == f"connected as app_{a}" for line in lines), lines


def test_an_apps_user_reaches_its_own_redis_and_not_anothers(system_opus: SystemOpus,
                                                             apps: dict[str, str]) -> None:
    """Each app's Redis runs as its own user; nftables keeps its port to that user (and
    Opus): B's user, even with A's password, is refused at A's port."""
    require_tool("/usr/bin/redis-server")
    a, b = list(apps)
    assert "Redis enabled" in system_opus.cli("addons:enable", "redis").stdout
    found = {}
    store = Store(system_opus.home / "opus.db")      # (root reads Opus's database)
    for name in (a, b):
        assert "Started" in system_opus.cli("redis:create", name).stdout
        app = store.get_app(name)
        assert app is not None and store.config(app)["REDIS_URL"] == \
            (store.app_redis(app) or pytest.fail("no record")).url
        match = re.fullmatch(r"redis://:([A-Za-z0-9_-]+)@127\.0\.0\.1:(\d+)/0",
                             store.config(app)["REDIS_URL"])
        assert match, store.config(app)
        found[name] = match.groups()
    (password_a, port_a), (password_b, port_b) = found[a], found[b]

    def ping(user: str, password: str, port: str) -> subprocess.CompletedProcess[str]:
        return as_user(user, "/usr/bin/env", f"REDISCLI_AUTH={password}",
                       "/usr/bin/redis-cli", "--no-raw", "-h", "127.0.0.1", "-p", port,
                       "PING")

    own = ping(f"opus-{a}", password_a, port_a)
    assert own.returncode == 0 and own.stdout.strip() == "PONG", own
    theirs = ping(f"opus-{b}", password_a, port_a)
    assert "PONG" not in theirs.stdout and "Connection refused" in theirs.stdout + \
        theirs.stderr, theirs
    # The server runs as A's user, from A's own directory, which B cannot read.
    server = subprocess.run(["pgrep", "-u", f"opus-{a}", "-f", "redis-server"],
                            capture_output=True, text=True, check=False)
    assert server.returncode == 0, server
    conf = system_opus.home / "apps" / a / "run" / "redis" / "redis.conf"
    assert conf.stat().st_uid == pwd.getpwnam(f"opus-{a}").pw_uid
    assert password_a not in conf.read_text()
    looked = as_user(f"opus-{b}", "/usr/bin/cat", str(conf))
    assert looked.returncode != 0
    # redis:cli goes through secureops as A's user; nobody sees a password in `ps`.
    said = system_opus.cli("redis:cli", a, "-c", "SET k from-a")
    assert said.stdout.strip() == "OK", said
    seen = as_user(f"opus-{b}", "/usr/bin/sh", "-c", "cat /proc/[0-9]*/cmdline 2>/dev/null")
    assert password_a not in seen.stdout and password_b not in seen.stdout
    logged = subprocess.run(["grep", "-rlF", "--", password_a, "/var/log/opus"],
                            capture_output=True, text=True, check=False)
    assert logged.stdout == "", logged.stdout       # not in secureops's log, nor Redis's
    # apps:destroy takes its Redis, its data and its port rule.
    system_opus.cli("apps:destroy", b, "--confirm", b)
    rules = subprocess.run(["nft", "list", "table", "inet", "opus"], capture_output=True,
                           text=True, check=False).stdout
    assert f"tcp sport {port_a} meta skuid != {pwd.getpwnam(f'opus-{a}').pw_uid} drop" \
        in rules and f" {port_b} " not in rules, rules
