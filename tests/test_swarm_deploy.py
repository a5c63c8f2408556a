"""A swarm app's releases across 3 real nodes (tests/swarm_nodes.py), through a real Opus
(its front, its registry) and the push's own code (opus_paas/run/push.py: build,
release, image published, swarm deploy, drain), run in the test's process as the git
server runs it once a pack is in (a test Opus's own programs, sshd among them, run the
installed checkout's code, not this one's): the move from this host to the swarm, web=3
spread over the nodes; a code-only push under wrk with not one failed request; a node
killed under load (its member disabled, the rescheduled task added by the follow loop
of opus-swarm-follow, run in a thread here); `opus rollback` to a kept image digest,
`opus ps:scale`, `ps:stop`/`ps:start` and the move back, through the CLI. The app is the
tests' Django fixture with a view that needs no database, so the pinning rule lets it
spread (`OPUS_DISABLE_OVERRIDES=DATABASES`)."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from dulwich.repo import Repo

from opus_paas import access, locks
from opus_paas import settings as settings_module
from opus_paas.run import programs, ps
from opus_paas.run import push as push_module
from opus_paas.settings import Settings
from opus_paas.store import Store, SwarmMember
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import follow, images, registry
from opus_paas.swarm import members as swarm_members
from tests.conftest import (
    Opus,
    free_port,
    git,
    make_django_project,
    make_key,
    require_root,
    require_tool,
    start_opus,
    stop_opus,
)
from tests.swarm_nodes import DOCKER, DOCKERD, Swarm, swarm_nodes

APP = "swarmy"
VIEWS = '''\
from django.http import HttpResponse


def index(request):
    return HttpResponse("{greeting}")
'''
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(opus: Opus) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{opus.http_port}/",
                                     headers={"Host": opus.app_host(APP)})
    try:
        with _OPENER.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def _until(probe: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not probe():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - start


class Load:
    """wrk through the front for `seconds`, in a thread."""

    def __init__(self, opus: Opus, seconds: int) -> None:
        wrk = require_tool("wrk")
        self.report = ""
        url = f"http://127.0.0.1:{opus.http_port}/"

        def run() -> None:
            result = subprocess.run([wrk, "-t2", "-c8", f"-d{seconds}s", "-H",
                                     f"Host: {opus.app_host(APP)}", url], capture_output=True,
                                    text=True, timeout=seconds + 60, check=False)
            self.report = result.stdout + result.stderr
        self.thread = threading.Thread(target=run)
        self.thread.start()

    def result(self) -> tuple[int, int, int]:
        """(requests, non-2xx/3xx, socket errors)."""
        self.thread.join()
        requests = re.search(r"(\d+) requests in", self.report)
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", self.report)
        sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                            r"timeout (\d+)", self.report)
        assert requests, self.report
        return (int(requests.group(1)), int(non_2xx.group(1)) if non_2xx else 0,
                sum(int(n) for n in sockets.groups()) if sockets else 0)


def _say(project: Path, greeting: str) -> None:
    (project / "pages" / "views.py").write_text(VIEWS.replace("{greeting}", greeting))
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", greeting)


def _push(settings: Settings, store: Store, project: Path, lines: list[str]) -> float:
    """The push of the project's HEAD, as the git server runs it once the pack is in,
    under the app's lock; its seconds."""
    repo_path = push_module.repo_path(settings, APP)
    git(project, "push", "-q", "-f", str(repo_path), "main:main")
    sha = git(project, "rev-parse", "HEAD").stdout.strip()
    app = store.get_app(APP)
    assert app is not None
    repo = Repo(str(repo_path))
    try:
        with locks.app_lock(settings, APP):
            started = time.monotonic()
            push_module.deploy_commit(settings, store, app, repo, sha.encode(),
                                      lines.append).finish(lines.append)
            return time.monotonic() - started
    finally:
        repo.close()


def _opus(opus: Opus, settings: Settings, *args: str) -> str:
    """The opus CLI (this checkout's) with the swarm's manager set."""
    result = subprocess.run([sys.executable, "-m", "opus_paas", *args],
                            env={**opus.env, "OPUS_SWARM_MANAGER": settings.swarm_manager},
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _local_programs(settings: Settings) -> list[str]:
    """The app's supervisor programs on this host."""
    return [str(p["name"]) for p in Supervisor(settings).processes()
            if (programs.program_owner(str(p["group"])) or ("",))[0] == APP]


def _serving(store: Store) -> list[SwarmMember]:
    app = store.get_app(APP)
    assert app is not None
    return [m for m in store.swarm_members(app)
            if m.version == app.live_version and m.enabled]


def _pull_when_published(monkeypatch: pytest.MonkeyPatch, swarm: Swarm) -> None:
    """The test nodes never pull for a service (DOCKER_SERVICE_PREFER_OFFLINE_IMAGE,
    tests/swarm_nodes.py); real nodes pull when their task is scheduled. Publishing
    pulls on every live node here, within the push's time."""
    publish = images.publish

    def publish_and_pull(*args, **kwargs):  # type: ignore[no-untyped-def]
        ref = publish(*args, **kwargs)
        pulls = [subprocess.Popen([DOCKER, "-H", f"unix://{node.socket}", "pull", "-q", ref],
                                  stdout=subprocess.DEVNULL) for node in swarm.nodes
                 if node.process is not None and node.process.poll() is None]
        assert all(p.wait(timeout=300) == 0 for p in pulls)
        return ref
    monkeypatch.setattr(images, "publish", publish_and_pull)


def test_pushes_reach_three_nodes_blue_green_follow_a_dead_node_and_roll_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_root("the swarm nodes need network and mount namespaces")
    for tool in (DOCKERD, DOCKER, registry.BINARY, "ip", "nsenter", "unshare", "wrk"):
        require_tool(tool)
    timings: dict[str, float] = {}
    with swarm_nodes(3) as swarm:
        _pull_when_published(monkeypatch, swarm)
        opus = start_opus(OPUS_SWARM_REGISTRY=f"{swarm.gateway}:{free_port()}",
                          OPUS_SWARM_DEPLOY_TIMEOUT="60")
        settings = dataclasses.replace(settings_module.load(opus.env),
                                       swarm_manager=str(swarm.manager.socket))
        store = Store(settings.db_path)
        stop = threading.Event()
        following = threading.Thread(target=follow.run, name="follow", args=(
            settings, store, swarm_members.ApacheFront(settings, store).apply, stop))
        try:
            opus.cli("keys:add", "admin", str(make_key(tmp_path, "admin").public))
            project = make_django_project(tmp_path / "project")
            _say(project, "release one")
            opus.cli("apps:create", APP)
            opus.cli("config:set", APP, "OPUS_DISABLE_OVERRIDES=DATABASES")
            app = store.get_app(APP)
            assert app is not None
            by_address = {n.address: n.hostname for n in swarm.nodes}

            # 0. The first push: on this host (mod_wsgi under supervisor).
            lines: list[str] = []
            timings["first push, this host"] = _push(settings, store, project, lines)
            assert _get(opus) == (200, "release one")
            assert _local_programs(settings) != []

            # 1. The move to the swarm (scheduler:set wants nodes from nodes:add, tested on
            # its own): ps:restart (here in-process: it publishes, and the nodes must
            # pull) makes v2 of the same build there: an image, web=3, one task on each
            # node, behind the front; the programs here stop.
            store.set_scheduler(app, "swarm")
            store.set_scale(app, 3)
            started = time.monotonic()
            moved_lines: list[str] = []
            ps.restart(settings, store, access.OPERATOR, APP, moved_lines.append)
            timings["move to the swarm (image published, web=3)"] = time.monotonic() - started
            out = "\n".join(moved_lines)
            assert "Publishing v2's image" in out and "Healthy: " in out, out
            members = _serving(store)
            assert sorted(by_address[m.host] for m in members) == ["node1", "node2", "node3"]
            assert {m.port for m in members} == {21000, 21001, 21002}, members
            assert _get(opus) == (200, "release one")
            assert _local_programs(settings) == []
            [kept] = store.swarm_releases(app)
            assert re.fullmatch(rf"{settings.swarm_registry}/opus/{APP}@sha256:[0-9a-f]{{64}}",
                                kept.image), kept
            spec = json.loads(swarm.manager.docker("service", "inspect", "swarmy-web-v2").stdout)
            container = spec[0]["Spec"]["TaskTemplate"]["ContainerSpec"]
            assert container["User"] == f"{30000 + app.id}:{30000 + app.id}"
            assert container["ReadOnly"] is True and container["CapabilityDrop"] == ["ALL"]
            # The config vars are in the release's secret, never in the service's spec.
            secret_key = store.config(app)["SECRET_KEY"]
            assert secret_key not in json.dumps(spec)
            assert [s["SecretName"] for s in container["Secrets"]] == ["swarmy-env-v2"]
            # Docker's own health check (the python3 probe in the image) passes too.
            worker = swarm.nodes[1]

            def healthy() -> bool:
                ids = worker.docker("ps", "-q", "--filter", "label=opus.app=swarmy").stdout
                states = [worker.docker("inspect", "-f", "{{.State.Health.Status}}",
                                        cid).stdout.strip() for cid in ids.split()]
                return states == ["healthy"]
            _until(healthy, 30, "Docker's health check to pass on node 2")

            # 2. A code-only push under load: blue/green, not one failed request.
            _say(project, "release two")
            load = Load(opus, seconds=10)
            time.sleep(1)
            timings["code-only push to 3 nodes, under load"] = _push(settings, store,
                                                                     project, lines)
            requests, non_2xx, socket_errors = load.result()
            assert requests > 100, load.report
            assert (non_2xx, socket_errors) == (0, 0), load.report
            assert _get(opus) == (200, "release two")
            assert {m.port for m in _serving(store)} == {21016, 21017, 21018}
            listed = swarm.manager.docker("service", "ls", "--filter", f"label=opus.app={APP}",
                                          "--format", "{{.Name}}").stdout.split()
            assert listed == ["swarmy-web-v3"]            # v2's services are gone
            assert [r.services for r in store.swarm_releases(app)] == \
                [("swarmy-web-v3",), ()]
            assert "swarmy-env-v2" not in swarm.manager.docker("secret", "ls").stdout

            # 3. A worker node dies under load: the follow loop disables its member at
            # once and adds the rescheduled task when it answers.
            following.start()
            dead = swarm.nodes[2]
            [lost] = [m for m in _serving(store) if m.host == dead.address]
            load = Load(opus, seconds=12)
            time.sleep(1)
            started = time.monotonic()
            dead.kill()
            _until(lambda: all(m.host != dead.address for m in _serving(store)), 30,
                   "the dead node's member to be disabled")
            timings["node death -> member disabled"] = time.monotonic() - started
            _until(lambda: sorted(m.slot for m in _serving(store)) == [1, 2, 3], 60,
                   "the lost slot to serve again on a live node")
            timings["node death -> full capacity"] = time.monotonic() - started
            requests, non_2xx, socket_errors = load.result()
            timings["failed requests around a node death"] = non_2xx + socket_errors
            assert requests > 100, load.report
            [moved] = [m for m in _serving(store) if m.slot == lost.slot]
            assert moved.host != dead.address
            # The running front agrees: the dead node's address (its container still
            # answers) gets no request, the moved task does.
            running = swarm_members.ApacheFront(settings, store).manager(app).members()[1]
            assert not running[swarm_members.member_url(lost)].enabled
            assert running[swarm_members.member_url(moved)].enabled
            assert _get(opus) == (200, "release two")

            # 4. `opus rollback APP v2`: v2's kept digest, as v4 (no build, no publish).
            started = time.monotonic()
            out = _opus(opus, settings, "rollback", APP, "v2")
            timings["rollback"] = time.monotonic() - started
            assert "v4 is live" in out and kept.image in out, out
            assert "Publishing" not in out
            assert _get(opus) == (200, "release one")
            assert store.get_swarm_release(app, 4).image == kept.image  # type: ignore[union-attr]

            # 5. `opus ps:scale APP web=2`: the slot Swarm stops (not always the highest)
            # leaves the front.
            started = time.monotonic()
            _opus(opus, settings, "ps:scale", APP, "web=2")
            timings["scale 3 -> 2"] = time.monotonic() - started
            serving = _serving(store)
            assert len({m.slot for m in serving}) == len(serving) == 2, serving
            running = swarm_members.ApacheFront(settings, store).manager(app).members()[1]
            assert sorted(url for url, m in running.items() if m.enabled) == \
                sorted(swarm_members.member_url(m) for m in serving)
            assert _get(opus) == (200, "release one")

            # 6. `opus ps:stop`: no task left, nothing served; `opus ps:start`: v5 serves.
            _opus(opus, settings, "ps:stop", APP)
            replicas = swarm.manager.docker("service", "ls", "--filter", f"label=opus.app={APP}",
                                            "--format", "{{.Replicas}}").stdout.split()
            assert replicas and all(r.startswith("0/") for r in replicas), replicas
            assert _serving(store) == [] and _get(opus)[0] != 200
            _opus(opus, settings, "ps:start", APP)
            assert _get(opus) == (200, "release one")
            assert len(_serving(store)) == 2

            # 7. Back to this host: `opus ps:restart` runs v6 here; the services go.
            stop.set()
            following.join(timeout=10)
            store.set_scheduler(app, "local")
            started = time.monotonic()
            _opus(opus, settings, "ps:restart", APP)
            timings["move back to this host"] = time.monotonic() - started
            assert _get(opus) == (200, "release one")
            assert _local_programs(settings) != []
            assert swarm.manager.docker("service", "ls", "-q", "--filter",
                                        f"label=opus.app={APP}").stdout.split() == []
            assert all(r.services == () for r in store.swarm_releases(app))
        finally:
            stop.set()
            if following.is_alive():
                following.join(timeout=10)
            stop_opus(opus)
    print("swarm deploy timings (s):", {k: round(v, 2) for k, v in timings.items()})
    print("\n".join(line for line in lines if "still had" in line))
