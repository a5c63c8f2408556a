"""Benchmark: what per-app users cost. The same pushes to a system-mode Opus (each app its
own Unix user, every cross-user step through sudo and secureops) and to an embedded
Opus (one run user, secureops in-process), in the same run; the embedded figures are
the baselines.

    .venv/bin/python bench/system_mode.py [--runs N]     (as root)

It installs a system-mode Opus (unique users, loopback ports) and removes it after, so
it refuses to run where Opus is installed already.

- first push of a new app on a fresh installation: system mode builds in the app's own,
  cold package cache and builds mod_wsgi's wheel into the (empty) wheelhouse; embedded
  mode shares the warm package cache and wheelhouse;
- first push of another new app: system mode installs mod_wsgi from the wheelhouse now
  (the app's packages still come into its own cold cache);
- code-only push (median of N);
- one secureops request (hand-over of an app whose trees are handed over already):
  the opus user through sudo, against the same request in-process.

Prints a Markdown table; docs/performance.md keeps the latest one.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opus_paas import privileged
from opus_paas import settings as settings_module
from tests import system_opus
from tests.conftest import git, make_django_project, make_key, set_greeting, start_opus, stop_opus


def push(project: Path, remote: str) -> float:
    started = time.perf_counter()
    result = git(project, "push", remote, "main", check=False,
                 env={**os.environ, "GIT_SSH_COMMAND": os.environ["BENCH_SSH"]})
    assert result.returncode == 0, result.stdout + result.stderr
    return time.perf_counter() - started


def pushes(project: Path, remote: str, runs: int) -> tuple[float, float]:
    """(first push, median code-only push)."""
    first = push(project, remote)
    again = []
    for number in range(runs):
        set_greeting(project, f"{remote} {number}")
        again.append(push(project, remote))
    return first, statistics.median(again)


def secureops_request(user: str, app: str, runs: int) -> float:
    """Median seconds of `sudo -n opus-secureops hand-over APP` run as the opus user."""
    entry = pwd.getpwnam(user)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                        "--init-groups", "sudo", "-n", "/usr/local/sbin/opus-secureops",
                        "hand-over", app], check=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def in_process_request(home: Path, app: str, runs: int) -> float:
    settings = settings_module.load({"OPUS_HOME": str(home)})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        privileged.hand_over(settings, app)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run it as root: it installs a system-mode Opus")
    if (present := system_opus.already_installed()) is not None:
        sys.exit(f"Opus is installed here already ({present}); this would overwrite it")
    work = Path(tempfile.mkdtemp(prefix="opus-bench-"))
    key = make_key(work, "bench")
    os.environ["BENCH_SSH"] = (f"ssh -i {key.private} -o IdentitiesOnly=yes "
                               "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                               "-o LogLevel=ERROR -o BatchMode=yes")
    embedded = start_opus()
    system = None
    try:
        system = system_opus.install()
        embedded.cli("keys:add", "bench", str(key.public))
        system.cli("keys:add", "bench", "-", input=key.public.read_text())
        project = make_django_project(work / "app")
        git(project, "remote", "add", "embedded",
            f"ssh://git@127.0.0.1:{embedded.ssh_port}/benchapp.git")
        git(project, "remote", "add", "system",
            f"ssh://git@127.0.0.1:{system.ssh_port}/benchapp.git")
        for mode, port in (("embedded", embedded.ssh_port), ("system", system.ssh_port)):
            git(project, "remote", "add", f"{mode}2",
                f"ssh://git@127.0.0.1:{port}/benchapp2.git")
        base_first, base_again = pushes(project, "embedded", args.runs)
        first, again = pushes(project, "system", args.runs)
        base_second, second = push(project, "embedded2"), push(project, "system2")
        base_request = in_process_request(embedded.home, "benchapp", 20)
        request = secureops_request(system.user, "benchapp", 20)
    finally:
        if system is not None:
            system.remove()
        stop_opus(embedded)
        shutil.rmtree(work, ignore_errors=True)
    print("| what | embedded (baseline) | system mode | ratio |")
    print("|---|---|---|---|")
    print(f"| first push of a new app, fresh installation | {base_first:.2f} s | "
          f"{first:.2f} s | {first / base_first:.2f}x |")
    print(f"| first push of another new app | {base_second:.2f} s | {second:.2f} s | "
          f"{second / base_second:.2f}x |")
    print(f"| code-only push (median of {args.runs}) | {base_again:.2f} s | {again:.2f} s | "
          f"{again / base_again:.2f}x |")
    print(f"| one secureops request (hand-over, median of 20) | {base_request * 1000:.1f} ms "
          f"in-process | {request * 1000:.1f} ms through sudo | {request / base_request:.1f}x |")


if __name__ == "__main__":
    main()
