"""Benchmark: sleeping apps (`opus ps:autosleep`): how long the first request to a
sleeping Django app takes (the wake), against a request to the same app awake, and
the memory that N sleeping apps give back, against the same N apps awake.

    .venv/bin/python bench/autosleep.py [--runs N] [--apps N]

- wake: the median over `--runs` of the first request after the app fell asleep (the
  front holds it, the waker starts mod_wsgi-express, health check, answer), as a ratio
  to the median of requests to the app awake;
- memory: the resident memory of the apps' processes (supervisor's, with all their
  children: mod_wsgi-express's Apache and its daemon processes), all `--apps` apps
  awake, then all asleep; plus the waker's own.

Prints a Markdown table; docs/performance.md keeps the latest one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opus_paas.run import metrics
from opus_paas.settings import load
from opus_paas.supervisor import Supervisor
from tests.conftest import Opus, git, make_django_project, make_key, start_opus, stop_opus


def request(opus: Opus, app: str) -> float:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", opus.http_port, timeout=60)
    conn.request("GET", "/", headers={"Host": f"{app}.localhost"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 200, response.status
    return time.perf_counter() - start


def asleep(opus: Opus, app: str) -> bool:
    return bool(json.loads(opus.cli("ps:autosleep", app, "--json").stdout)["asleep"])


def wait(predicate: object, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def app_memory(opus: Opus, apps: list[str]) -> int:
    settings = load(opus.env)
    roots = metrics.app_roots(Supervisor(settings).processes())
    table = metrics.process_table()
    return sum(metrics.tree_rss(roots.get(app, []), table) for app in apps)


def waker_memory(opus: Opus) -> int:
    processes = Supervisor(load(opus.env)).processes()
    pids = [p["pid"] for p in processes if p["name"] == "opus-waker"]
    return metrics.tree_rss(pids, metrics.process_table())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--apps", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opus-bench-"))
    opus = start_opus()
    try:
        key = make_key(work, "bench")
        opus.cli("keys:add", "bench", str(key.public))
        project = make_django_project(work / "site")
        apps = [f"nap{i}" for i in range(args.apps)]
        started = time.monotonic()
        for app in apps:
            git(project, "push", "-q", f"ssh://git@127.0.0.1:{opus.ssh_port}/{app}.git",
                "main", env=key.git_env(opus))
        print(f"pushed {len(apps)} apps in {time.monotonic() - started:.0f} s",
              file=sys.stderr)
        for app in apps:
            request(opus, app)
        time.sleep(2)
        awake_rss = app_memory(opus, apps)

        first = apps[0]
        warm = statistics.median(request(opus, first) for _ in range(20))
        wakes = []
        for _ in range(args.runs):
            opus.cli("ps:autosleep", first, "2s")
            wait(lambda: asleep(opus, first))
            opus.cli("ps:autosleep", first, "1h")
            wakes.append(request(opus, first))
        opus.cli("ps:autosleep", first, "off")

        for app in apps:
            opus.cli("ps:autosleep", app, "2s")
        wait(lambda: all(asleep(opus, app) for app in apps), 300)
        time.sleep(2)
        asleep_rss = app_memory(opus, apps)
        waker_rss = waker_memory(opus)
    finally:
        stop_opus(opus)

    wake = statistics.median(wakes)
    mib = 1 << 20
    print(f"| measure ({args.apps} Django apps, {args.runs} wakes) | value |")
    print("|---|---|")
    print(f"| first request to a sleeping app (median; min to max) | {wake * 1000:.0f} ms "
          f"({min(wakes) * 1000:.0f} to {max(wakes) * 1000:.0f} ms) |")
    print(f"| a request to the app awake (median of 20) | {warm * 1000:.1f} ms |")
    print(f"| wake / awake request | {wake / warm:.0f}x |")
    print(f"| memory of the {args.apps} apps awake (RSS sum) | {awake_rss / mib:.0f} MiB "
          f"({awake_rss / mib / args.apps:.1f} MiB each) |")
    print(f"| memory of the {args.apps} apps asleep | {asleep_rss / mib:.0f} MiB |")
    print(f"| memory reclaimed | {(awake_rss - asleep_rss) / mib:.0f} MiB "
          f"({100 * (awake_rss - asleep_rss) / awake_rss:.0f} %) |")
    print(f"| the waker's own memory | {waker_rss / mib:.0f} MiB |")


if __name__ == "__main__":
    main()
