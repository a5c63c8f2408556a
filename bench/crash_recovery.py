"""Benchmark: when a push returns, and how fast Opus comes back after a crash, as ratios
to baselines measured in the same run.

    .venv/bin/python bench/crash_recovery.py [--runs 5] [--apps 10]

- push: a code-only push of the tests' Django app, from `git push` starting to (a) its
  return, (b) the new content being served, (c) the deploy being complete (the old
  instance drained and stopped: the app's lock free again), which is when a push
  returned before the drain moved after it; baseline: a plain `git push` of the same
  commit to a bare repository over file://. Medians of --runs.
- up: --apps tiny apps (a wsgi.py each) deployed; supervisord killed with SIGKILL; then
  the seconds from `opus up` starting until every app serves again; baseline: the same
  from a clean `opus down` (nothing to recover).

Prints Markdown tables; docs/performance.md keeps the latest ones.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    git,
    make_django_project,
    make_key,
    set_greeting,
    start_opus,
    stop_opus,
    wait_for_deploy,
)

WSGI = '''\
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%s"]
'''


def serves(opus: Opus, app: str, body: str) -> bool:
    try:
        status, _headers, text = opus.get(opus.app_host(app))
    except (OSError, urllib.error.URLError):
        return False
    return status == 200 and body in text


def wait_until(condition: object, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.02)


def push_times(opus: Opus, key: SshKey, project: Path, runs: int,
               work: Path) -> tuple[list[float], list[float], list[float], list[float]]:
    env = key.git_env(opus)
    returned, served, complete, baseline = [], [], [], []
    for run in range(runs):
        greeting = f"bench run {run}"
        set_greeting(project, greeting)
        start = time.perf_counter()
        git(project, "push", "opus", "main", env=env)
        returned.append(time.perf_counter() - start)
        wait_until(lambda g=greeting: serves(opus, "bench", g))
        served.append(time.perf_counter() - start)
        wait_for_deploy(opus.home, "bench")
        complete.append(time.perf_counter() - start)
        bare = work / f"plain-{run}.git"
        subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
        start = time.perf_counter()
        git(project, "push", "-q", f"file://{bare}", "main", env=env)
        baseline.append(time.perf_counter() - start)
    return returned, served, complete, baseline


def deploy_apps(opus: Opus, key: SshKey, count: int, work: Path) -> list[str]:
    names = [f"crash{i}" for i in range(count)]
    for name in names:
        project = work / name
        (project / "hello").mkdir(parents=True)
        (project / "hello" / "wsgi.py").write_text(WSGI % name.encode())
        (project / "requirements.txt").write_text("six==1.16.0\n")
        git(project, "init", "-q", "-b", "main")
        commit_all(project, name)
        git(project, "push", f"ssh://git@127.0.0.1:{opus.ssh_port}/{name}.git", "main",
            env=key.git_env(opus))
    return names


def up_until_all_serve(opus: Opus, names: list[str]) -> float:
    start = time.perf_counter()
    opus.cli("up")
    wait_until(lambda: all(serves(opus, n, n) for n in names))
    return time.perf_counter() - start


def kill_supervisord(opus: Opus) -> None:
    pid = int((opus.home / "supervisor" / "supervisord.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        while True:
            os.kill(pid, 0)
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--apps", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opus-bench-"))
    opus = start_opus()
    try:
        key = make_key(work, "bench")
        opus.cli("keys:add", "bench", str(key.public))
        project = make_django_project(work / "app")
        git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/bench.git")
        git(project, "push", "opus", "main", env=key.git_env(opus))
        wait_for_deploy(opus.home, "bench")
        returned, served, complete, baseline = push_times(opus, key, project, args.runs, work)
        opus.cli("apps:destroy", "bench", "--confirm", "bench")
        names = deploy_apps(opus, key, args.apps, work)
        opus.cli("down")
        clean = up_until_all_serve(opus, names)
        kill_supervisord(opus)
        crashed = up_until_all_serve(opus, names)
    finally:
        stop_opus(opus)
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(baseline)
    print(f"| code-only push (median of {args.runs}) | seconds | ratio to baseline |")
    print("|---|---|---|")
    print(f"| plain `git push` over file:// (baseline) | {base:.2f} | 1x |")
    for name, values in (("`git push` returns", returned),
                         ("the new content is served", served),
                         ("the deploy is complete (old instance stopped; a push returned "
                          "here before)", complete)):
        seconds = statistics.median(values)
        print(f"| {name} | {seconds:.2f} | {seconds / base:.0f}x |")
    print()
    print(f"| `opus up` until all {args.apps} apps serve | seconds | ratio to baseline |")
    print("|---|---|---|")
    print(f"| after `opus down` (baseline) | {clean:.2f} | 1.00 |")
    print(f"| after SIGKILL of supervisord | {crashed:.2f} | {crashed / clean:.2f} |")


if __name__ == "__main__":
    main()
