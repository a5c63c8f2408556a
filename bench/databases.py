"""Benchmark: backups and restores of a 100 MB Postgres database, and request latency
while a backup runs, as ratios to baselines measured in the same run.

    .venv/bin/python bench/databases.py [--runs N] [--megabytes M]

- backup: `opus backups:capture` against a plain `pg_dump -Fc` of the same database;
- restore: `opus backups:restore` (a backup of the data it replaces, a restore into a
  fresh database, the swap) against a plain `pg_restore` into an empty database;
- size: the backup's file against the plain dump's;
- latency: GET / of the fixture app (one insert and one count on Postgres per request)
  through the front while `backups:capture` runs, against the same requests idle.

Prints Markdown tables; docs/performance.md keeps the latest ones.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from opus_paas import settings as settings_module
from opus_paas.data import server
from opus_paas.store import Store
from tests.conftest import (
    Opus,
    commit_all,
    git,
    make_django_project,
    make_key,
    start_opus,
    stop_opus,
)

APP = "benchdb"


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def fill(admin: server.Server, database: str, megabytes: int) -> int:
    """A table of about `megabytes` MB, owned by the app's role; the database's size."""
    rows = megabytes * 1024 * 1024 // 250
    with psycopg.connect(**admin.connect_args(database), autocommit=True) as conn:
        # Random hex: it compresses about as much as real rows do (2x), unlike a
        # repeated character.
        conn.execute("CREATE TABLE filler AS SELECT g AS id, md5(random()::text) || "
                     "md5(random()::text) || md5(random()::text) || md5(random()::text) || "
                     "md5(random()::text) || md5(random()::text) AS body "
                     "FROM generate_series(1, %s) AS g", (rows,))
        conn.execute(f"ALTER TABLE filler OWNER TO {database}")
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def latencies(opus: Opus, count: int, until: threading.Event | None = None) -> list[float]:
    """Milliseconds of sequential GET / through the front (`count`, or while `until` is
    not set)."""
    found: list[float] = []
    request = urllib.request.Request(f"http://127.0.0.1:{opus.http_port}/",
                                     headers={"Host": f"{APP}.localhost"})
    while (until is None and len(found) < count) or (until is not None and not until.is_set()):
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        found.append((time.perf_counter() - start) * 1000)
    return found


def p95(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.95) - 1] if len(values) >= 20 else max(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opus-bench-db-"))
    opus = start_opus()
    try:
        key = make_key(work, "bench")
        opus.cli("keys:add", "bench", str(key.public))
        opus.cli("addons:enable", "postgres")
        project = make_django_project(work / "app")
        (project / "requirements.txt").write_text("django>=5.2,<5.3\npsycopg[binary]>=3.2\n")
        commit_all(project, "psycopg")
        git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
        opus.cli("apps:create", APP)
        opus.cli("pg:create", APP)
        git(project, "push", "opus", "main", env=key.git_env(opus))
        settings = settings_module.load(opus.env)
        admin = server.current(settings, Store(settings.db_path))
        database = f"app_{APP}"
        size = fill(admin, database, args.megabytes)
        pg_env = {**admin.environment(database)}
        dump = str(server.bin_dir() / "pg_dump")
        restore = str(server.bin_dir() / "pg_restore")
        opus_cli = [sys.executable, "-m", "opus_paas"]
        plain_backup, opus_backup, plain_restore, opus_restore = [], [], [], []
        plain_size = opus_size = 0
        for run in range(args.runs):
            target = work / f"plain-{run}.dump"
            plain_backup.append(timed([dump, "--format=custom", f"--file={target}",
                                       database], pg_env))
            plain_size = target.stat().st_size
            opus_backup.append(timed([*opus_cli, "backups:capture", APP], opus.env))
            store = Store(settings.db_path)
            app = store.get_app(APP)
            assert app is not None
            newest = store.list_backups(app)[0]
            opus_size = newest.size
            scratch = f"plain_restore_{run}"
            with psycopg.connect(**admin.connect_args(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {scratch}")
            plain_restore.append(timed([restore, "--no-owner", f"--dbname={scratch}",
                                        str(target)], {**pg_env, "PGDATABASE": scratch}))
            with psycopg.connect(**admin.connect_args(), autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {scratch}")
            opus_restore.append(timed([*opus_cli, "backups:restore", APP, str(newest.id)],
                                      opus.env))
        latencies(opus, 20)                      # warm up
        idle = latencies(opus, 200)
        running = threading.Event()
        during: list[float] = []
        measuring = threading.Thread(target=lambda: during.extend(latencies(opus, 0, running)))
        measuring.start()
        backup_seconds = timed([*opus_cli, "backups:capture", APP], opus.env)
        running.set()
        measuring.join()
    finally:
        stop_opus(opus)
        shutil.rmtree(work, ignore_errors=True)
    median = statistics.median
    print(f"Database: {size / 1e6:.0f} MB (pg_database_size), {args.runs} runs, medians.")
    print()
    print("| what | seconds | ratio to baseline |")
    print("|---|---|---|")
    print(f"| plain `pg_dump -Fc` (baseline) | {median(plain_backup):.2f} | 1.00 |")
    print(f"| `opus backups:capture` | {median(opus_backup):.2f} | "
          f"{median(opus_backup) / median(plain_backup):.2f} |")
    print(f"| plain `pg_restore` into an empty database (baseline) | "
          f"{median(plain_restore):.2f} | 1.00 |")
    print(f"| `opus backups:restore` (backs up the data it replaces first) | "
          f"{median(opus_restore):.2f} | {median(opus_restore) / median(plain_restore):.2f} |")
    print()
    print("| file | MB | ratio to baseline |")
    print("|---|---|---|")
    print(f"| plain `pg_dump -Fc` (baseline) | {plain_size / 1e6:.1f} | 1.00 |")
    print(f"| Opus's backup | {opus_size / 1e6:.1f} | {opus_size / plain_size:.2f} |")
    print()
    print("| GET / through the front (ms) | median | p95 | requests | ratio (median) |")
    print("|---|---|---|---|---|")
    print(f"| idle (baseline) | {median(idle):.1f} | {p95(idle):.1f} | {len(idle)} | 1.00 |")
    print(f"| during `backups:capture` ({backup_seconds:.1f} s) | {median(during):.1f} | "
          f"{p95(during):.1f} | {len(during)} | {median(during) / median(idle):.2f} |")


if __name__ == "__main__":
    main()
