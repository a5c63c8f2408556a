"""The scale-out spike: 3 real dockerd nodes on this machine form a Docker Swarm and run
a host-network service the host reaches over HTTP; a killed node is reported Down and
its task rescheduled.
How the nodes are built: tests/swarm_nodes.py and docs/scale-out.md."""
from __future__ import annotations

import functools
import io
import tarfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import require_root, require_tool
from tests.swarm_nodes import DOCKER, DOCKERD, Node, Swarm, swarm_nodes

BUSYBOX = "/bin/busybox"   # Debian's busybox-static
# Task N listens on BASE_PORT + N (its slot) in its node's network namespace, so two
# tasks of a service can share a node after a reschedule.
BASE_PORT = 8080
CGI = b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nhostname\n"


def _rootfs_tar(path: Path) -> None:
    """A registry-free base: static busybox, its sh, a page and a CGI naming the node."""
    def add(name: str, data: bytes | None = None, mode: int = 0o755,
            kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.mode, info.type, info.linkname = mode, kind, link
        info.size = len(data) if data is not None else 0
        tar.addfile(info, io.BytesIO(data) if data is not None else None)

    with tarfile.open(path, "w") as tar:
        for directory in ("bin", "www", "www/cgi-bin"):
            add(directory, kind=tarfile.DIRTYPE)
        add("bin/busybox", Path(BUSYBOX).read_bytes())
        add("bin/sh", kind=tarfile.SYMTYPE, link="busybox")
        add("bin/hostname", kind=tarfile.SYMTYPE, link="busybox")
        add("www/index.html", b"opus swarm spike\n", mode=0o644)
        add("www/cgi-bin/node", CGI)


# Straight to the node: never through a proxy the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> tuple[int, str]:
    try:
        with _OPENER.open(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def _answers_200(url: str) -> bool:
    return _get(url)[0] == 200


def _until(probe: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not probe():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def _placement(swarm: Swarm) -> dict[int, str]:
    """Task slot -> hostname of the node the manager sees it Running on."""
    out = swarm.manager.docker("service", "ps", "web", "--filter", "desired-state=running",
                               "--format", "{{.Name}} {{.Node}} {{.CurrentState}}").stdout
    placement = {}
    for line in out.splitlines():
        name, node, state = line.split(" ", 2)
        if state.startswith("Running"):
            placement[int(name.rsplit(".", 1)[1])] = node
    return placement


def _node(swarm: Swarm, hostname: str) -> Node:
    [node] = [n for n in swarm.nodes if n.hostname == hostname]
    return node


def test_three_nodes_form_a_swarm_serve_http_and_survive_a_dead_node(tmp_path: Path) -> None:
    require_root("the swarm nodes need network and mount namespaces")
    for tool in (DOCKERD, DOCKER, BUSYBOX, "ip", "nsenter", "unshare"):
        require_tool(tool)
    rootfs = tmp_path / "rootfs.tar"
    _rootfs_tar(rootfs)

    with swarm_nodes(3) as swarm:
        states = swarm.node_states()
        assert sorted(states) == sorted(n.address for n in swarm.nodes)
        assert all(state == ("ready", "active") for state in states.values()), states
        assert "Leader" in swarm.manager.docker("node", "ls").stdout

        started = time.monotonic()
        image = swarm.load_image(rootfs, "opus-spike/httpd:1")
        swarm.timings["image on 3 nodes"] = time.monotonic() - started
        assert image.startswith("sha256:")

        started = time.monotonic()
        swarm.manager.docker(
            "service", "create", "--name", "web", "--replicas", "3", "--network", "host",
            "--no-resolve-image", "--read-only", "--cap-drop", "ALL",
            "--user", "65534:65534", "--limit-memory", "32M",
            "--stop-grace-period", "1s", "--restart-delay", "1s",   # Swarm's default: 5 s
            "--hostname", "{{.Node.Hostname}}", "--env", "SLOT={{.Task.Slot}}",
            "--env", f"BASE={BASE_PORT}", "--detach", "opus-spike/httpd:1",
            "/bin/sh", "-c", 'exec /bin/busybox httpd -f -p "$((BASE + SLOT))" -h /www')
        _until(lambda: len(_placement(swarm)) == 3, 20, "3 running tasks")
        placement = _placement(swarm)
        assert sorted(placement.values()) == ["node1", "node2", "node3"], placement
        for slot, hostname in placement.items():
            url = f"http://{_node(swarm, hostname).address}:{BASE_PORT + slot}/"
            _until(functools.partial(_answers_200, url), 10, f"HTTP 200 from {url}")
        swarm.timings["service converged"] = time.monotonic() - started
        for slot, hostname in placement.items():
            url = f"http://{_node(swarm, hostname).address}:{BASE_PORT + slot}"
            assert _get(f"{url}/") == (200, "opus swarm spike\n")
            # The address exists in that node's namespace only, and the task names its node.
            assert _get(f"{url}/cgi-bin/node") == (200, f"{hostname}\n")
        spec = swarm.manager.docker(
            "service", "inspect", "web", "-f",
            "{{.Spec.TaskTemplate.ContainerSpec.ReadOnly}} "
            "{{.Spec.TaskTemplate.ContainerSpec.User}} "
            "{{.Spec.TaskTemplate.ContainerSpec.CapabilityDrop}}").stdout.split()
        assert spec == ["true", "65534:65534", "[ALL]"]

        dead = swarm.nodes[2]
        [dead_slot] = [slot for slot, host in placement.items() if host == dead.hostname]
        started = time.monotonic()
        dead.kill()
        swarm.timings["node reported down"] = _until(
            lambda: swarm.node_states()[dead.address][0] == "down", 20,
            f"the manager to report node {dead.index} down")
        alive = {addr for addr, (state, _) in swarm.node_states().items() if state == "ready"}
        assert alive == {swarm.nodes[0].address, swarm.nodes[1].address}
        assert "Down" in swarm.manager.docker("node", "ls").stdout
        # A dead dockerd's task lives on and serves until its node comes back (the front
        # must drop a Down node's members itself: docs/scale-out.md, failure modes).
        assert _get(f"http://{dead.address}:{BASE_PORT + dead_slot}/")[0] == 200

        # Swarm reschedules the lost slot onto a live node; its port (BASE + slot) is free
        # there, whichever slots that node already runs.
        _until(lambda: _placement(swarm).get(dead_slot, dead.hostname) != dead.hostname,
               30, f"slot {dead_slot} to be rescheduled")
        moved_to = _node(swarm, _placement(swarm)[dead_slot])
        url = f"http://{moved_to.address}:{BASE_PORT + dead_slot}/"
        _until(functools.partial(_answers_200, url), 10, f"HTTP 200 from {url}")
        swarm.timings["3 tasks serving again"] = time.monotonic() - started
        assert moved_to is not dead and len(_placement(swarm)) == 3
        print("swarm spike timings (s):",
              {name: round(seconds, 2) for name, seconds in swarm.timings.items()})
