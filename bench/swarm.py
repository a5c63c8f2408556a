"""Benchmark: a push to 3 swarm nodes against a push to this host, in the same run.

    .venv/bin/python bench/swarm.py [--runs N]      (root: the nodes need namespaces)

On 3 test nodes (tests/swarm_nodes.py, pulling by digest as real nodes do) and one test
Opus started with the swarm's settings (its own sshd, opus-registry and
opus-swarm-follow):

- push: a code-only `git push` over SSH of the same Django project to an app on this
  host and to an app on the swarm (web=3), alternating; each timed to the end of the
  drain that follows it (the app's lock);
- serve: wrk through the front at the swarm app with web=3 on 3 nodes, web=1 on one
  node (`opus ps:scale`), and at the app on this host (web=1);
- a worker node's dockerd killed under wrk: seconds until the front has 3 members
  serving again (Opus's own opus-swarm-follow).

Prints a Markdown table and each swarm push's timed steps; docs/performance.md keeps one.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opus_paas import settings as settings_module
from opus_paas.store import Store
from opus_paas.tls import private_ca
from tests.conftest import (
    Opus,
    SshKey,
    free_port,
    git,
    make_django_project,
    make_key,
    start_opus,
    stop_opus,
    wait_for_deploy,
)
from tests.swarm_nodes import swarm_nodes

VIEWS = '''\
from django.http import HttpResponse


def index(request):
    return HttpResponse("{greeting}")
'''
LOCAL, SWARM = "bench-local", "bench-swarm"


def wrk(url: str, host: str, seconds: int = 5) -> tuple[float, str]:
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{seconds}s", "-H", f"Host: {host}", url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1)), out


def say(project: Path, greeting: str) -> None:
    (project / "pages" / "views.py").write_text(VIEWS.replace("{greeting}", greeting))
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", greeting)


def push(opus: Opus, key: SshKey, name: str, project: Path) -> tuple[float, str]:
    """`git push NAME main` over SSH, to the end of the drain that follows it: its seconds
    and what git printed."""
    started = time.monotonic()
    result = git(project, "push", name, "main", env=key.git_env(opus), check=False)
    out = result.stdout + result.stderr
    if result.returncode != 0:
        print(out, file=sys.stderr)
        raise SystemExit(f"the push to {name} failed")
    wait_for_deploy(opus.home, name, 180)
    return time.monotonic() - started, out


def steps(out: str) -> str:
    """What the push printed about its steps (headings, timings, the swarm's waits)."""
    return "\n".join(line.rstrip() for line in out.splitlines() if re.match(
        r"remote: (----->|\s+(Collected|Waiting|Healthy|Switched|Health check|\S+@sha256))",
        line))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opus-bench-swarm-"))
    rows: list[tuple[str, str]] = []
    logs: list[str] = []
    with swarm_nodes(3, offline_images=False) as swarm:
        opus = start_opus(OPUS_SWARM_MANAGER=str(swarm.manager.socket),
                          OPUS_SWARM_REGISTRY=f"{swarm.gateway}:{free_port()}",
                          OPUS_SWARM_DEPLOY_TIMEOUT="120")
        try:
            settings = settings_module.load(opus.env)
            store = Store(settings.db_path)
            # The nodes trust Opus's registry (its CA), as `opus nodes:add` sets them up.
            swarm.trust_registry(settings.swarm_registry, private_ca.ca_cert_path(settings))
            key = make_key(work, "bench")
            opus.cli("keys:add", "bench", str(key.public))
            project = make_django_project(work / "project")
            say(project, "release 0")
            for name in (LOCAL, SWARM):
                opus.cli("apps:create", name)
                # No database: the app may spread (pinning.reason: no SQLite).
                opus.cli("config:set", name, "OPUS_DISABLE_OVERRIDES=DATABASES")
                git(project, "remote", "add", name,
                    f"ssh://git@127.0.0.1:{opus.ssh_port}/{name}.git")
            app = store.get_app(SWARM)
            assert app is not None
            store.set_scheduler(app, "swarm")
            store.set_scale(app, 3)
            firsts = {name: push(opus, key, name, project)[0] for name in (LOCAL, SWARM)}
            local, remote = [], []
            for run in range(args.runs):
                say(project, f"release {run + 1}")
                seconds, out = push(opus, key, LOCAL, project)
                local.append(seconds)
                logs.append(f"push {run + 1} to this host ({seconds:.1f} s):\n{steps(out)}")
                seconds, out = push(opus, key, SWARM, project)
                remote.append(seconds)
                logs.append(f"push {run + 1} to 3 nodes ({seconds:.1f} s):\n{steps(out)}")
            med_local, med_remote = statistics.median(local), statistics.median(remote)
            rows += [
                ("first push, this host", f"{firsts[LOCAL]:.1f} s"),
                ("first push, 3 nodes (web=3; image built, published, pulled)",
                 f"{firsts[SWARM]:.1f} s"),
                (f"code-only push, this host (median of {args.runs})",
                 f"{med_local:.1f} s ({', '.join(f'{t:.1f}' for t in local)})"),
                (f"code-only push, 3 nodes (median of {args.runs})",
                 f"{med_remote:.1f} s ({', '.join(f'{t:.1f}' for t in remote)})"),
                ("ratio 3 nodes / this host (goal ≤ 1.5)", f"**{med_remote / med_local:.2f}x**"),
            ]
            front = f"http://127.0.0.1:{opus.http_port}/"
            three, _ = wrk(front, opus.app_host(SWARM))
            opus.cli("ps:scale", SWARM, "web=1")
            one, _ = wrk(front, opus.app_host(SWARM))
            here, _ = wrk(front, opus.app_host(LOCAL))
            rows += [("requests/s through the front: web=3 on 3 nodes", f"{three:.0f}"),
                     ("requests/s through the front: web=1 on one node", f"{one:.0f}"),
                     ("requests/s through the front: web=1 on this host", f"{here:.0f}")]
            opus.cli("ps:scale", SWARM, "web=3")

            def serving() -> list[str]:
                live = store.get_app(SWARM)
                assert live is not None
                return [m.host for m in store.swarm_members(live)
                        if m.version == live.live_version and m.enabled]
            started = time.monotonic()
            while len(serving()) < 3:
                assert time.monotonic() - started < 60, "web=3 never served"
                time.sleep(0.1)
            dead = swarm.nodes[2]
            result: list[str] = []
            load = threading.Thread(target=lambda: result.append(
                wrk(front, opus.app_host(SWARM), 15)[1]))
            load.start()
            time.sleep(2)
            started = time.monotonic()
            dead.kill()
            while dead.address in serving():
                assert time.monotonic() - started < 60, "the dead node's member stayed"
                time.sleep(0.05)
            disabled = time.monotonic() - started
            while len(serving()) < 3 or dead.address in serving():
                assert time.monotonic() - started < 120, "no full capacity after 120 s"
                time.sleep(0.05)
            full = time.monotonic() - started
            load.join()
            errors = re.search(r"Socket errors: .*", result[0])
            non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", result[0])
            rows += [("node death → its member disabled", f"{disabled:.1f} s"),
                     ("node death → 3 members serving again", f"{full:.1f} s"),
                     ("failed requests around the death (wrk, 15 s)",
                      f"{non_2xx.group(1) if non_2xx else 0} non-2xx; "
                      f"{errors.group(0) if errors else 'no socket errors'}")]
        finally:
            stop_opus(opus)
    print("| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\n\n".join(logs))


if __name__ == "__main__":
    main()
