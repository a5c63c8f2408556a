"""A swarm app's releases across 3 real nodes (tests/swarm_nodes.py), through a real Opus
started with the swarm's settings: its sshd takes the pushes (real `git push` over real
SSH: build, release, image published to its `opus-registry`, swarm deploy, drain), the
nodes pull each release's image from that registry by digest as real nodes do, and its
own `opus-swarm-follow` keeps the front in step with the swarm. The move from this host
to the swarm, web=3 spread over the nodes; a code-only push under wrk with not one
failed request; a node killed under load (its member disabled, the rescheduled task
added); a node drained under load with `opus nodes:remove` (no failed request);
`opus rollback` to a kept image digest, `opus ps:scale`, `ps:stop`/`ps:start`
and the move back, through the CLI. The app is the tests' Django fixture with a view
that needs no database, so the pinning rule lets it spread
(`OPUS_DISABLE_OVERRIDES=DATABASES`)."""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from opus_paas import settings as settings_module
from opus_paas.run import programs
from opus_paas.settings import Settings
from opus_paas.store import Store, SwarmMember, SwarmNode
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import members as swarm_members
from opus_paas.swarm import registry
from opus_paas.tls import private_ca
from tests.conftest import (
    Opus,
    SshKey,
    free_port,
    git,
    make_django_project,
    make_key,
    require_root,
    require_tool,
    start_opus,
    stop_opus,
    wait_for_deploy,
)
from tests.swarm_nodes import DOCKER, DOCKERD, swarm_nodes

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


def _push(opus: Opus, key: SshKey, project: Path) -> tuple[float, str]:
    """`git push opus main` over SSH, to its end and then the end of the drain that
    follows it (under the app's lock); its seconds and what git printed."""
    started = time.monotonic()
    result = git(project, "push", "opus", "main", env=key.git_env(opus), check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    wait_for_deploy(opus.home, APP)
    return time.monotonic() - started, out


def _opus(opus: Opus, *args: str) -> str:
    """The opus CLI (this checkout's), with the test Opus's settings (the swarm's)."""
    return opus.cli(*args).stdout


def _local_programs(settings: Settings) -> list[str]:
    """The app's supervisor programs on this host."""
    return [str(p["name"]) for p in Supervisor(settings).processes()
            if (programs.program_owner(str(p["group"])) or ("",))[0] == APP]


def _opus_programs(settings: Settings) -> dict[str, str]:
    """Opus's own supervisor programs here and their states."""
    return {str(p["name"]): str(p["statename"]) for p in Supervisor(settings).processes()
            if str(p["name"]).startswith("opus-")}


def _serving(store: Store) -> list[SwarmMember]:
    app = store.get_app(APP)
    assert app is not None
    return [m for m in store.swarm_members(app)
            if m.version == app.live_version and m.enabled]


def test_pushes_reach_three_nodes_blue_green_follow_a_dead_node_and_roll_back(
        tmp_path: Path) -> None:
    require_root("the swarm nodes need network and mount namespaces")
    for tool in (DOCKERD, DOCKER, registry.BINARY, "ip", "nsenter", "unshare", "wrk"):
        require_tool(tool)
    timings: dict[str, float] = {}
    # The nodes pull each task's image from Opus's registry, as real nodes do.
    with swarm_nodes(3, offline_images=False) as swarm:
        started = time.monotonic()
        opus = start_opus(OPUS_SWARM_MANAGER=str(swarm.manager.socket),
                          OPUS_SWARM_REGISTRY=f"{swarm.gateway}:{free_port()}",
                          OPUS_SWARM_DEPLOY_TIMEOUT="60")
        timings["opus up (registry, follow)"] = time.monotonic() - started
        settings = settings_module.load(opus.env)
        store = Store(settings.db_path)
        # The nodes trust Opus's registry as `opus nodes:add` sets them up (its CA).
        swarm.trust_registry(settings.swarm_registry, private_ca.ca_cert_path(settings))
        try:
            own = _opus_programs(settings)
            assert own["opus-registry"] == own["opus-swarm-follow"] == "RUNNING", own
            key = make_key(tmp_path, "admin")
            opus.cli("keys:add", "admin", str(key.public))
            project = make_django_project(tmp_path / "project")
            git(project, "remote", "add", "opus",
                f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
            _say(project, "release one")
            opus.cli("apps:create", APP)
            opus.cli("config:set", APP, "OPUS_DISABLE_OVERRIDES=DATABASES")
            app = store.get_app(APP)
            assert app is not None
            by_address = {n.address: n.hostname for n in swarm.nodes}

            # 0. The first push: on this host (mod_wsgi under supervisor).
            timings["first push, this host"], out = _push(opus, key, project)
            assert re.search(r"remote: -----> Released v1 in [\d.]+ s", out), out
            assert "Starting v1 on its own port" in out and "on the swarm" not in out, out
            assert _get(opus) == (200, "release one")
            assert _local_programs(settings) != []

            # 1. The move to the swarm (scheduler:set wants nodes from nodes:add, tested on
            # its own): `opus ps:restart` makes v2 of the same build there: an image
            # published to opus-registry and pulled by each node, web=3, one task on each
            # node, behind the front; the programs here stop.
            store.set_scheduler(app, "swarm")
            store.set_scale(app, 3)
            started = time.monotonic()
            out = _opus(opus, "ps:restart", APP)
            timings["move to the swarm (image published, web=3)"] = time.monotonic() - started
            assert "Publishing v2's image" in out and "Healthy: " in out, out
            members = _serving(store)
            assert sorted(by_address[m.host] for m in members) == ["node1", "node2", "node3"]
            assert {m.port for m in members} == {21000, 21001, 21002}, members
            assert _get(opus) == (200, "release one")
            assert _local_programs(settings) == []
            [kept] = store.swarm_releases(app)
            assert re.fullmatch(rf"{settings.swarm_registry}/opus/{APP}@sha256:[0-9a-f]{{64}}",
                                kept.image), kept
            # Each node pulled the image by its digest from opus-registry for its task.
            for node in swarm.nodes:
                digests = node.docker("image", "inspect", "-f", "{{json .RepoDigests}}",
                                      kept.image).stdout
                assert json.loads(digests) == [kept.image], (node.hostname, digests)
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
            timings["code-only push to 3 nodes, under load"], out = _push(opus, key, project)
            requests, non_2xx, socket_errors = load.result()
            # What the push printed: v3's image, its start on the swarm, healthy, switched.
            for line in ("Publishing v3's image", "Starting v3 on the swarm: web=3",
                         "Healthy: node", "Switched through the front's balancer",
                         "Released v3"):
                assert any(said.startswith("remote: ") and line in said
                           for said in out.splitlines()), (line, out)
            assert out.index("Switched through") < out.index("main -> main"), out
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

            # 3. A worker node dies under load: opus-swarm-follow disables its member at
            # once and adds the rescheduled task (pulled on its new node) when it answers.
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

            # 3b. A node drained under load (`opus nodes:remove NODE --gone`: drained,
            # then forgotten; the machine itself is not reached): its tasks move to the
            # node left, the front follows, and no request fails.
            drained = swarm.nodes[1]
            docker_id = swarm.manager.docker("node", "inspect", "-f", "{{.ID}}",
                                             drained.hostname).stdout.strip()
            store.add_node(SwarmNode(drained.hostname, drained.address, 22, docker_id,
                                     time.time()))
            load = Load(opus, seconds=10)
            time.sleep(1)
            started = time.monotonic()
            out = _opus(opus, "nodes:remove", drained.hostname, "--gone")
            assert f"Draining {drained.hostname}" in out, out
            # The front stopped sending it requests before the drain stopped a task.
            assert out.index(f"The front no longer sends {drained.hostname} requests of "
                             f"{APP}") < out.index("Draining"), out
            _until(lambda: sorted(m.slot for m in _serving(store)) == [1, 2, 3] and
                   all(m.host == swarm.nodes[0].address for m in _serving(store)), 60,
                   "every slot to serve from the node left")
            timings["node drained -> full capacity on the node left"] = \
                time.monotonic() - started
            requests, non_2xx, socket_errors = load.result()
            assert requests > 100, load.report
            assert (non_2xx, socket_errors) == (0, 0), load.report
            assert _get(opus) == (200, "release two")

            # 4. `opus rollback APP v2`: v2's kept digest, as v4 (no build, no publish).
            started = time.monotonic()
            out = _opus(opus, "rollback", APP, "v2")
            timings["rollback"] = time.monotonic() - started
            assert "v4 is live" in out and kept.image in out, out
            assert "Publishing" not in out
            assert _get(opus) == (200, "release one")
            assert store.get_swarm_release(app, 4).image == kept.image  # type: ignore[union-attr]

            # 5. `opus ps:scale APP web=2`: the slot Swarm stops (not always the highest)
            # leaves the front.
            started = time.monotonic()
            _opus(opus, "ps:scale", APP, "web=2")
            timings["scale 3 -> 2"] = time.monotonic() - started
            serving = _serving(store)
            assert len({m.slot for m in serving}) == len(serving) == 2, serving
            running = swarm_members.ApacheFront(settings, store).manager(app).members()[1]
            assert sorted(url for url, m in running.items() if m.enabled) == \
                sorted(swarm_members.member_url(m) for m in serving)
            assert _get(opus) == (200, "release one")

            # 6. `opus ps:stop`: no task left, nothing served; `opus ps:start`: v5 serves.
            # The services go to 0 at once (`--detach`); their tasks stop within their
            # grace period (10 s: each finishes its requests).
            started = time.monotonic()
            _opus(opus, "ps:stop", APP)

            def replicas() -> list[str]:
                return swarm.manager.docker("service", "ls", "--filter", f"label=opus.app={APP}",
                                            "--format", "{{.Replicas}}").stdout.split()
            assert replicas() and all(r.endswith("/0") for r in replicas()), replicas()
            assert _serving(store) == [] and _get(opus)[0] != 200
            _until(lambda: all(r == "0/0" for r in replicas()), 20, "no task left")
            timings["ps:stop -> no task left"] = time.monotonic() - started
            _opus(opus, "ps:start", APP)
            # The first request right after a start from nothing failed (no answer within
            # 5 s) in 2 of about 10 runs on a loaded machine, cause not found yet
            # (docs/scale-out.md, Gaps): it is counted, and the app must answer soon after.
            started = time.monotonic()
            first = _get(opus)
            if first != (200, "release one"):
                try:
                    _until(lambda: _get(opus) == (200, "release one"), 20, "v5 to answer")
                except AssertionError as exc:     # what the front and the store hold
                    front_now = swarm_members.ApacheFront(settings, store).manager(app).members()
                    raise AssertionError(f"{exc}; first answer {first}; the front's members "
                                         f"{front_now}; the store's "
                                         f"{store.swarm_members(app)}") from None
                timings["ps:start: first request failed, then answered after"] = \
                    time.monotonic() - started
            assert len(_serving(store)) == 2

            # 7. Back to this host: `opus ps:restart` runs v6 here; the services go.
            store.set_scheduler(app, "local")
            started = time.monotonic()
            _opus(opus, "ps:restart", APP)
            timings["move back to this host"] = time.monotonic() - started
            assert _get(opus) == (200, "release one")
            assert _local_programs(settings) != []
            assert swarm.manager.docker("service", "ls", "-q", "--filter",
                                        f"label=opus.app={APP}").stdout.split() == []
            assert all(r.services == () for r in store.swarm_releases(app))
        finally:
            drains = [line for log in (opus.home / "builds" / APP).glob("*")
                      if log.is_file() for line in log.read_text(errors="replace").splitlines()
                      if "still had" in line]
            stop_opus(opus)
    print("swarm deploy timings (s):", {k: round(v, 2) for k, v in timings.items()})
    print("\n".join(drains))
