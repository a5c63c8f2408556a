"""Benchmark: a push to 3 swarm nodes against a push to this host, in the same run.

    .venv/bin/python bench/swarm.py [--runs N]      (root: the nodes need namespaces)

On 3 test nodes (tests/swarm_nodes.py) and one Opus with its registry:

- push: a code-only push of the same Django project to an app on this host and to an
  app on the swarm (web=3), each through the push's own code (opus_paas.run.push:
  build, release, deploy and drain; the swarm one also publishes its image, which the
  nodes pull: the test nodes do not pull for a service by themselves), alternating;
- serve: wrk through the front at the swarm app with web=3 on 3 nodes, web=1 on one
  node, and at the app on this host (web=1);
- a worker node's dockerd killed under wrk: seconds until the front has 3 members
  serving again (opus-swarm-follow's loop, in a thread here).

The pushes run in this process, not over SSH: a test Opus's own programs run the
installed checkout's code. Prints a Markdown table; docs/performance.md keeps one.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dulwich.repo import Repo

from opus_paas import locks
from opus_paas import settings as settings_module
from opus_paas.run import push as push_module
from opus_paas.settings import Settings
from opus_paas.store import Store
from opus_paas.swarm import deploy, follow, images, members
from tests.conftest import free_port, git, make_django_project, make_key, start_opus, stop_opus
from tests.swarm_nodes import Swarm, swarm_nodes

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


def push(settings: Settings, store: Store, name: str, project: Path) -> float:
    """The push of the project's HEAD to app `name`, as the git server runs it once the
    pack is in (build, release, deploy, drain): its seconds."""
    repo_path = push_module.repo_path(settings, name)
    git(project, "push", "-q", "-f", str(repo_path), "main:main")
    sha = git(project, "rev-parse", "HEAD").stdout.strip()
    app = store.get_app(name)
    assert app is not None
    repo = Repo(str(repo_path))
    lines: list[str] = []
    try:
        with locks.app_lock(settings, name):
            started = time.perf_counter()
            deployed = push_module.deploy_commit(settings, store, app, repo, sha.encode(),
                                                 lines.append)
            deployed.finish(lines.append)
            return time.perf_counter() - started
    except Exception:
        print("\n".join(lines[-40:]), file=sys.stderr)
        raise
    finally:
        repo.close()


def pulling(swarm: Swarm) -> None:
    """Publishing also pulls the image on every node (see the module's docstring)."""
    publish = images.publish

    def publish_and_pull(*args, **kwargs):  # type: ignore[no-untyped-def]
        ref = publish(*args, **kwargs)
        pulls = [subprocess.Popen(["/usr/bin/docker", "-H", f"unix://{n.socket}", "pull", "-q",
                                   ref], stdout=subprocess.DEVNULL) for n in swarm.nodes
                 if n.process is not None and n.process.poll() is None]
        for p in pulls:
            p.wait(timeout=300)
        return ref
    images.publish = publish_and_pull


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opus-bench-swarm-"))
    rows: list[tuple[str, str]] = []
    with swarm_nodes(3) as swarm:
        registry = f"{swarm.gateway}:{free_port()}"
        opus = start_opus(OPUS_SWARM_REGISTRY=registry, OPUS_SWARM_DEPLOY_TIMEOUT="120")
        stop = threading.Event()
        following: threading.Thread | None = None
        try:
            settings = dataclasses.replace(settings_module.load(opus.env),
                                           swarm_manager=str(swarm.manager.socket))
            store = Store(settings.db_path)
            pulling(swarm)
            key = make_key(work, "bench")
            opus.cli("keys:add", "bench", str(key.public))
            project = make_django_project(work / "project")
            say(project, "release 0")
            for name in (LOCAL, SWARM):
                opus.cli("apps:create", name)
                # No database: the app may spread (pinning.reason: no SQLite).
                opus.cli("config:set", name, "OPUS_DISABLE_OVERRIDES=DATABASES")
            app = store.get_app(SWARM)
            assert app is not None
            store.set_scheduler(app, "swarm")
            store.set_scale(app, 3)
            firsts = {name: push(settings, store, name, project) for name in (LOCAL, SWARM)}
            local, remote = [], []
            for run in range(args.runs):
                say(project, f"release {run + 1}")
                local.append(push(settings, store, LOCAL, project))
                remote.append(push(settings, store, SWARM, project))
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
            three, _ = wrk(front, f"{SWARM}.localhost")
            emit: list[str] = []
            deploy.scale_app(settings, store, store.get_app(SWARM) or app, {"web": 1},
                             emit.append)
            one, _ = wrk(front, f"{SWARM}.localhost")
            here, _ = wrk(front, f"{LOCAL}.localhost")
            rows += [("requests/s through the front: web=3 on 3 nodes", f"{three:.0f}"),
                     ("requests/s through the front: web=1 on one node", f"{one:.0f}"),
                     ("requests/s through the front: web=1 on this host", f"{here:.0f}")]
            deploy.scale_app(settings, store, store.get_app(SWARM) or app, {"web": 3},
                             emit.append)

            following = threading.Thread(target=follow.run, args=(
                settings, store, members.ApacheFront(settings, store).apply, stop))
            following.start()
            dead = swarm.nodes[2]
            result: list[str] = []
            load = threading.Thread(target=lambda: result.append(
                wrk(front, f"{SWARM}.localhost", 15)[1]))
            load.start()
            time.sleep(2)
            started = time.monotonic()
            dead.kill()

            def serving() -> list[str]:
                live = store.get_app(SWARM)
                assert live is not None
                return [m.host for m in store.swarm_members(live)
                        if m.version == live.live_version and m.enabled]
            while dead.address in serving():
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
            stop.set()
            if following is not None:
                following.join(timeout=10)
            stop_opus(opus)
    print("| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
