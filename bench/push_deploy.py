"""Benchmark: push-to-live latency and serving throughput, as ratios to a baseline
measured in the same run.

    .venv/bin/python bench/push_deploy.py [--runs N]

- push: `git push` to Opus (build + release + health check + switch) against a plain
  `git push` of the same commit to a bare repository over file:// (no build at all);
- serve: wrk through the front Apache against wrk straight at the app's mod_wsgi-express.

Prints a Markdown table; docs/performance.md keeps the latest one.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opus_paas.store import Store
from tests.conftest import (
    git,
    make_django_project,
    make_key,
    set_greeting,
    start_opus,
    stop_opus,
)


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def wrk(url: str, host: str, seconds: int = 5) -> float:
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", "-H", f"Host: {host}", url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opus-bench-"))
    opus = start_opus()
    try:
        key = make_key(work, "bench")
        opus.cli("keys:add", "bench", str(key.public))
        env = key.git_env(opus)
        project = make_django_project(work / "app")
        git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/bench.git")
        first = timed(lambda: git(project, "push", "opus", "main", env=env))
        code_only, baseline = [], []
        for run in range(args.runs):
            set_greeting(project, f"run {run}")
            code_only.append(timed(lambda: git(project, "push", "opus", "main", env=env)))
            bare = work / f"plain-{run}.git"
            subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
            baseline.append(timed(lambda b=bare: git(project, "push", "-q", f"file://{b}",
                                                     "main", env=env)))
        host = "bench.localhost"
        app = Store(opus.home / "opus.db").get_app("bench")
        assert app is not None and app.live_port is not None
        live_port = app.live_port
        front_rps = wrk(f"http://127.0.0.1:{opus.http_port}/", host)
        direct_rps = wrk(f"http://127.0.0.1:{live_port}/", host)
    finally:
        stop_opus(opus)
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(baseline)
    rows = [
        ("plain `git push` over file:// (baseline)", base, 1.0),
        ("first push to Opus (build, migrate, start, switch)", first, first / base),
        ("code-only push to Opus (median)", statistics.median(code_only),
         statistics.median(code_only) / base),
    ]
    print("| push | seconds | ratio to baseline |")
    print("|---|---|---|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.2f} | {ratio:.0f}x |")
    print()
    print("| serving (wrk -t2 -c8, 5 s) | requests/s | ratio to baseline |")
    print("|---|---|---|")
    print(f"| straight to the app's mod_wsgi-express (baseline) | {direct_rps:.0f} | 1.00 |")
    print(f"| through the front Apache | {front_rps:.0f} | {front_rps / direct_rps:.2f} |")


if __name__ == "__main__":
    main()
