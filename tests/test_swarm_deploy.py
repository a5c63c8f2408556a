"""A swarm app's releases across 3 real nodes (tests/swarm_nodes.py), through a real Opus
(its front) and the swarm deploy (opus_paas/swarm/deploy.py), called as a push calls it
(the app's lock held): web=3 spread over the nodes; a second release under wrk with not
one failed request; a node killed under load (its member disabled, the rescheduled task
added by the follow loop of opus-swarm-follow, run here in a thread of the test: the
programs of a test Opus run the installed checkout's code); a rollback to the first
release's image digest. The release images are busybox ones loaded on every node (no
registry, no build): what is tested here is the deploy, not the image."""
from __future__ import annotations

import dataclasses
import io
import json
import re
import subprocess
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from opus_paas import locks
from opus_paas import settings as settings_module
from opus_paas.settings import Settings
from opus_paas.store import Store, SwarmMember
from opus_paas.swarm import deploy, follow, services
from tests.conftest import (
    Opus,
    make_key,
    require_root,
    require_tool,
    start_opus,
    stop_opus,
)
from tests.swarm_nodes import DOCKER, DOCKERD, Swarm, swarm_nodes

APP = "swarmy"
BUSYBOX = "/bin/busybox"
# The tasks' command and Docker health check in the busybox image (a release image
# has its own entrypoint and python3 for the probe).
SERVE = ("/bin/sh", "-c",
         'exec /bin/busybox httpd -f -p "$((OPUS_PORT_BASE + OPUS_SLOT - 1))" -h /www')
HEALTH = services.Health(
    command=("exec wget -q -O /dev/null "
             "http://127.0.0.1:$((OPUS_PORT_BASE + OPUS_SLOT - 1))$OPUS_HEALTH_PATH"),
    interval="2s", start_period="20s")


def _rootfs(path: Path, page: bytes) -> None:
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes | None = None, mode: int = 0o755,
                kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.type, info.linkname = mode, kind, link
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for directory in ("bin", "www"):
            add(directory, kind=tarfile.DIRTYPE)
        add("bin/busybox", Path(BUSYBOX).read_bytes())
        for tool in ("sh", "wget"):
            add(f"bin/{tool}", kind=tarfile.SYMTYPE, link="busybox")
        add("www/index.html", page, mode=0o644)


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


def _release(settings: Settings, store: Store, version: int, image: str,
             lines: list[str]) -> deploy.Switched:
    """What a push does once its build is done: the swarm deploy under the app's lock,
    then the drain of the old release."""
    app = store.get_app(APP)
    assert app is not None
    with locks.app_lock(settings, APP):
        switched = deploy.deploy(settings, store, app, version, image, {"GREETING": "hi"},
                                 lines.append, args=SERVE, health=HEALTH,
                                 record=lambda port: store.set_live(app, version, port))
        switched.finish(lines.append)
    return switched


def _serving(store: Store) -> list[SwarmMember]:
    app = store.get_app(APP)
    assert app is not None
    return [m for m in store.swarm_members(app)
            if m.version == app.live_version and m.enabled]


def test_releases_reach_three_nodes_blue_green_follow_a_dead_node_and_roll_back(
        tmp_path: Path) -> None:
    require_root("the swarm nodes need network and mount namespaces")
    for tool in (DOCKERD, DOCKER, BUSYBOX, "ip", "nsenter", "unshare", "wrk"):
        require_tool(tool)
    _rootfs(tmp_path / "one.tar", b"release one\n")
    _rootfs(tmp_path / "two.tar", b"release two\n")
    timings: dict[str, float] = {}
    swarm: Swarm
    with swarm_nodes(3) as swarm:
        one = swarm.load_image(tmp_path / "one.tar", "opus-test/swarmy:1")
        two = swarm.load_image(tmp_path / "two.tar", "opus-test/swarmy:2")
        opus = start_opus(OPUS_SWARM_DEPLOY_TIMEOUT="40")
        settings = dataclasses.replace(settings_module.load(opus.env),
                                       swarm_manager=str(swarm.manager.socket))
        store = Store(settings.db_path)
        stop = threading.Event()
        following = threading.Thread(target=follow.run, name="follow", args=(
            settings, store, deploy.ApacheFront(settings, store).apply, stop))
        try:
            opus.cli("keys:add", "admin", str(make_key(tmp_path, "admin").public))
            opus.cli("apps:create", APP)
            app = store.get_app(APP)
            assert app is not None
            store.set_scheduler(app, "swarm")
            store.set_scale(app, 3)
            by_address = {n.address: n.hostname for n in swarm.nodes}

            # 1. The first release: web=3, one task on each node, all behind the front.
            lines: list[str] = []
            started = time.monotonic()
            first = _release(settings, store, 1, one, lines)
            timings["first deploy"] = time.monotonic() - started
            members = _serving(store)
            assert sorted(by_address[m.host] for m in members) == ["node1", "node2", "node3"]
            assert sorted(m.slot for m in members) == [1, 2, 3]
            assert {m.port for m in members} == {21000, 21001, 21002}, members
            assert _get(opus) == (200, "release one\n")
            assert "Switched through the front's balancer" in "\n".join(lines)
            spec = json.loads(swarm.manager.docker("service", "inspect", "swarmy-web-v1").stdout)
            container = spec[0]["Spec"]["TaskTemplate"]["ContainerSpec"]
            assert container["User"] == f"{30000 + app.id}:{30000 + app.id}"
            assert container["ReadOnly"] is True and container["CapabilityDrop"] == ["ALL"]

            # 2. A second release under load: blue/green, not one failed request.
            load = Load(opus, seconds=10)
            time.sleep(1)
            started = time.monotonic()
            second = _release(settings, store, 2, two, lines)
            timings["code-only deploy"] = second.timings["switched"]
            timings["code-only deploy incl. drain"] = time.monotonic() - started
            requests, non_2xx, socket_errors = load.result()
            timings["requests under deploy"] = requests
            assert requests > 100, load.report
            assert (non_2xx, socket_errors) == (0, 0), load.report
            assert _get(opus) == (200, "release two\n")
            assert {m.port for m in _serving(store)} == {21016, 21017, 21018}
            listed = swarm.manager.docker("service", "ls", "--filter", f"label=opus.app={APP}",
                                          "--format", "{{.Name}}").stdout.split()
            assert listed == ["swarmy-web-v2"]            # v1's services are gone
            assert [r.services for r in store.swarm_releases(app)] == [("swarmy-web-v2",), ()]
            assert first.release.image == one        # kept for rollback

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
            running = deploy.ApacheFront(settings, store).manager(app).members()[1]
            assert not running[deploy.member_url(lost)].enabled
            assert running[deploy.member_url(moved)].enabled
            assert _get(opus) == (200, "release two\n")

            # 4. Rollback: the first release's kept digest, deployed again as v3.
            started = time.monotonic()
            kept = deploy.rollback_image(store, app, 1)
            assert kept == one
            back = _release(settings, store, 3, kept, lines)
            timings["rollback"] = time.monotonic() - started
            print("rollback steps (s):", {k: round(v, 2) for k, v in back.timings.items()})
            print("\n".join(line for line in lines if "still had" in line))
            assert _get(opus) == (200, "release one\n")
        finally:
            stop.set()
            if following.is_alive():
                following.join(timeout=10)
            stop_opus(opus)
    print("swarm deploy timings (s):", {k: round(v, 2) for k, v in timings.items()})
