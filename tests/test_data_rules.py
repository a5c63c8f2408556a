"""The databases' pure rules: names derived from app names, SCRAM verifiers, URLs the
settings overlay reads, admin URLs, schedules, ids and what a destroy says."""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys

import pytest

from opus_paas.data import backups, credentials, schedule, server
from opus_paas.errors import InvalidName, UsageError
from opus_paas.store import Backup
from tests.conftest import CHECKOUT

sys.path.insert(0, str(CHECKOUT / "buildpacks" / "python" / "lib" / "runtime"))
from opus_runtime.overlay import parse_database_url


@pytest.mark.parametrize("app, name", [("shop", "app_shop"), ("my-shop", "app_my_shop"),
                                       ("a", "app_a"), ("x" * 30, "app_" + "x" * 30)])
def test_database_names_come_from_the_app_name_alone(app: str, name: str) -> None:
    assert credentials.database_name(app) == name


@pytest.mark.parametrize("app", ["", "Shop", "a;drop", "a b", "../x", "x" * 31, "opus",
                                 "a\"b", "a_b", "-a", "a-"])
def test_a_hostile_app_name_makes_no_database_name(app: str) -> None:
    with pytest.raises(InvalidName):
        credentials.database_name(app)


def test_two_apps_never_share_a_database_name() -> None:
    names = ["a-b", "ab", "a-bc", "ab-c", "a-b-c", "abc"]
    assert len({credentials.database_name(n) for n in names}) == len(names)


def test_passwords_are_long_random_and_need_no_quoting() -> None:
    found = {credentials.new_password() for _ in range(50)}
    assert len(found) == 50
    assert all(len(p) >= 32 and p.replace("-", "").replace("_", "").isalnum() for p in found)


def test_a_scram_verifier_is_what_rfc_7677_derives() -> None:
    salt = b"0123456789abcdef"
    verifier = credentials.scram_verifier("pencil", salt, 4096)
    head, keys = verifier.rsplit("$", 1)
    assert head == "SCRAM-SHA-256$4096:" + base64.b64encode(salt).decode()
    stored, server_key = (base64.b64decode(k) for k in keys.split(":"))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert stored == hashlib.sha256(client_key).digest()
    assert server_key == hmac.new(salted, b"Server Key", "sha256").digest()
    assert "pencil" not in verifier
    assert credentials.scram_verifier("pencil") != credentials.scram_verifier("pencil")


def test_the_url_reaches_the_overlay_as_a_unix_socket() -> None:
    url = credentials.database_url("/var/lib/opus/postgres/run", 5432, "app_shop", "s3cr-t_")
    entry = parse_database_url(url)
    assert entry["HOST"] == "/var/lib/opus/postgres/run" and entry["PORT"] == "5432"
    assert entry["NAME"] == entry["USER"] == "app_shop" and entry["PASSWORD"] == "s3cr-t_"
    assert credentials.password_of(url) == "s3cr-t_"
    with pytest.raises(InvalidName):
        credentials.database_url("/run", 5432, "app_x; DROP", "p")


@pytest.mark.parametrize("url, host, port, user, password, database", [
    ("postgres://admin:pw@db.example:6543/maint", "db.example", 6543, "admin", "pw", "maint"),
    ("postgresql://admin:p%40ss@db.example/", "db.example", 5432, "admin", "p@ss", "postgres"),
    ("postgres://admin:pw@%2Fvar%2Frun%2Fpostgresql/postgres", "/var/run/postgresql", 5432,
     "admin", "pw", "postgres"),
])
def test_an_admin_url_is_read(url: str, host: str, port: int, user: str, password: str,
                              database: str) -> None:
    found = server.parse_admin_url(url)
    assert (found.host, found.port, found.admin_user, found.admin_password,
            found.admin_database) == (host, port, user, password, database)


@pytest.mark.parametrize("url", ["http://a:b@host/db", "postgres://host/db", "postgres://",
                                 "postgres://a:b@host:99999/db", "postgres://a:b@host:x/db",
                                 "postgres://a:b@/db", "postgres://a:b@ho\nst/db"])
def test_a_bad_admin_url_is_refused(url: str) -> None:
    with pytest.raises(UsageError):
        server.parse_admin_url(url)


@pytest.mark.parametrize("text, minute", [("00:00", 0), ("03:00", 180), ("23:59", 1439)])
def test_times_of_day(text: str, minute: int) -> None:
    assert schedule.parse_time(text) == minute
    assert schedule.describe(minute) == f"daily at {text} UTC"


@pytest.mark.parametrize("text", ["24:00", "3:00", "03:60", "03:00 ", "0300", "",
                                  "\u0660\u0663:\u0660\u0660", "03:00\n", "-1:00"])
def test_other_times_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="HH:MM"):
        schedule.parse_time(text)


DAY = 86400.0


@pytest.mark.parametrize("since, last, now, due", [
    (0.0, None, 3 * 3600 + 1, True),                 # set long ago, never run, past 03:00
    (-DAY, None, 3 * 3600 - 1, True),                # yesterday's 03:00 is owed
    (3 * 3600 + 10, None, 3 * 3600 + 20, False),     # set after today's 03:00
    (0.0, 3 * 3600 + 5, 3 * 3600 + 60, False),       # today's ran already
    (0.0, 3 * 3600 + 5, DAY + 3 * 3600, True),       # tomorrow's is due at 03:00 sharp
    (0.0, 3 * 3600 + 5, DAY + 3 * 3600 - 1, False),
])
def test_a_schedule_is_due_once_per_day(since: float, last: float | None, now: float,
                                        due: bool) -> None:
    base = 100 * DAY
    assert schedule.is_due(180, base + since, None if last is None else base + last,
                           base + now) is due


def test_the_next_time_follows_the_last() -> None:
    now = 100 * DAY + 5
    assert schedule.next_occurrence(0, now) - schedule.last_occurrence(0, now) == DAY


def _backup(expires: float | None) -> Backup:
    return Backup(7, "shop", None, "dev", "sqlite", "destroy", None, "done", 0.0, 2048,
                  "x", expires)


def test_a_destroy_says_where_the_data_went() -> None:
    said = backups.destroyed_message("shop", _backup(8 * DAY))
    assert "kept as backup 7 (sqlite, 2.0 KiB) until 1970-01-09" in said
    assert "backups:restore NEWAPP 7" in said
    assert "no database to keep" in backups.destroyed_message("shop", None)


@pytest.mark.parametrize("size, text", [(0, "0 bytes"), (1023, "1023 bytes"),
                                        (1536, "1.5 KiB"), (100 * 1024 * 1024, "100.0 MiB"),
                                        (5 * 1024 ** 4, "5120.0 GiB")])
def test_sizes(size: int, text: str) -> None:
    assert backups.size_text(size) == text


@pytest.mark.parametrize("text", ["1 OR 1=1", "-1", "", "1.0", "\uff11", "9999999", "0x1"])
def test_backup_ids_are_plain_numbers(text: str) -> None:
    with pytest.raises(UsageError, match="not a backup id"):
        backups.parse_id(text)
