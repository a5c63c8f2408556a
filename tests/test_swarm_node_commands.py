"""`opus nodes:add/nodes/nodes:remove/nodes:key` through the real `opus` CLI against real
machines: dockerd + OpenSSH sshd nodes in namespaces of their own (tests/swarm_nodes.py),
node 1 the manager, nodes 2 and 3 fresh (dockerd up, not joined)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from opus_paas import names, users
from opus_paas import settings as settings_module
from opus_paas.access import OPERATOR, Actor
from opus_paas.control import commands
from opus_paas.control.context import Context
from opus_paas.errors import InvalidName, OpusError, UsageError
from opus_paas.settings import Settings
from opus_paas.store import Store, User
from opus_paas.swarm import nodes as swarm_nodes_module
from opus_paas.swarm.nodes import public_key as nodes_public_key
from tests.conftest import CHECKOUT, require_root, require_tool
from tests.swarm_nodes import DOCKER, DOCKERD, SSHD, Swarm, swarm_nodes
from tests.test_dashboard_browser import (
    all_css,
    css,
    shot,
    wait_for,
)
from tests.test_dashboard_browser import browser as chromium  # noqa: F401 (a fixture)
from tests.test_swarm_nodes import BASE_PORT, BUSYBOX, _placement, _rootfs_tar, _until
from web import create_app

REGISTRY = "registry.opus.test:5000"
PASSWORD = "nodes dashboard password"


def _opus(home: Path, manager: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPUS_")}
    env.update(OPUS_HOME=str(home), PYTHONPATH=str(CHECKOUT))
    if manager:
        env.update(OPUS_SWARM_MANAGER=manager, OPUS_SWARM_REGISTRY=REGISTRY,
                   OPUS_SWARM_REGISTRY_CA=str(home.parent / "registry-ca.crt"),
                   OPUS_SWARM_DRAIN_TIMEOUT="30")
    return env


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "opus_paas", *args], env=env,
                            cwd=env["OPUS_HOME"], capture_output=True, text=True, timeout=180,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"opus {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}{result.stderr}")
    return result


def _listed(env: dict[str, str]) -> dict[str, dict[str, object]]:
    """`opus nodes --json`, through the command table in this process (the CLI's own
    output is checked once: `opus nodes`)."""
    lines: list[str] = []
    ctx = Context(settings_module.load(env), OPERATOR, lines.append, lambda _size: "")
    assert commands.run(ctx, ["nodes", "--json"]) == 0
    return {str(row["name"]): row for row in json.loads("\n".join(lines))}


def _hosts_in_swarm(swarm: Swarm) -> list[str]:
    return sorted(swarm.manager.docker("node", "ls", "--format", "{{.Hostname}}")
                  .stdout.split())


@contextlib.contextmanager
def _dashboard(env: dict[str, str]) -> Iterator[str]:
    """Opus's dashboard (the real Flask app) on a loopback port, with an admin who has a
    password; yields its base URL."""
    settings = settings_module.load(env)
    app = create_app(settings)
    store = Store(settings.db_path)
    users.add_user(store, OPERATOR, "admin", "admin")
    users.set_password(store, OPERATOR, "admin", PASSWORD)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _nodes_page(driver: Any, base: str) -> dict[str, dict[str, str]]:
    driver.get(base + "/nodes")
    if "/signin" in driver.current_url:
        css(driver, "input[name=user]").send_keys("admin")
        css(driver, "input[name=password]").send_keys(PASSWORD)
        css(driver, "form.signin button").click()
        wait_for(lambda: "/signin" not in driver.current_url, "signing in")
        driver.get(base + "/nodes")
    wait_for(lambda: css(driver, "h1").text == "Nodes", "the Nodes page")
    rows = {}
    for row in all_css(driver, "table.nodes tbody tr"):
        cells = [c.text for c in row.find_elements("css selector", "td")]
        rows[row.get_attribute("data-node")] = dict(zip(
            ("name", "address", "state", "availability", "role", "tasks"), cells, strict=False))
    return rows


def test_nodes_add_spread_remove_readd_and_a_changed_host_key(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    require_root("the swarm nodes need network and mount namespaces")
    for tool in (DOCKERD, DOCKER, SSHD, BUSYBOX, "ip", "nsenter", "unshare", "ssh-keygen"):
        require_tool(tool)
    home = tmp_path / "opus"
    home.mkdir()
    (tmp_path / "registry-ca.crt").write_text("-----BEGIN CERTIFICATE-----\nopus test CA\n"
                                              "-----END CERTIFICATE-----\n")
    key_line = _cli(_opus(home), "nodes:key").stdout.strip()
    assert key_line.startswith("ssh-ed25519 ")
    key_file = home / "nodes" / "id_ed25519"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert nodes_public_key(settings_module.load(_opus(home))) == key_line  # made once
    rootfs = tmp_path / "rootfs.tar"
    _rootfs_tar(rootfs)

    with swarm_nodes(3, joined=1, ssh_key=key_line) as swarm:
        env = _opus(home, manager=str(swarm.manager.socket))
        node2, node3 = swarm.nodes[1:]
        assert _hosts_in_swarm(swarm) == ["node1"]
        # A socket that is no manager's: said, and nothing is touched.
        wrong = Settings(home=home, swarm_manager=str(node2.socket))
        assert "is not a swarm manager" in _run(wrong, OPERATOR, "nodes:add", node2.address)
        assert not (home / "nodes" / "known_hosts").exists()

        started = time.monotonic()
        out = _cli(env, "nodes:add", node2.address).stdout
        swarm.timings["nodes:add"] = time.monotonic() - started
        assert "seen for the first time: pinned" in out
        assert "docker.io is installed" in out and "dockerd is running" in out
        assert "Joining the swarm at" in out and "node2 (" in out
        assert "SWMTKN" not in out            # the join token is never shown
        out = _cli(env, "nodes:add", node3.address, "--name", "edge").stdout
        assert "Added edge" in out
        # The host keys were pinned as the nodes' sshd offered them.
        pinned = (home / "nodes" / "known_hosts").read_text()
        assert node2.host_key_line() in pinned and node3.host_key_line() in pinned
        # The registry's CA reached each node's own /etc/docker.
        ca = node3.root / "etc-docker" / "certs.d" / REGISTRY / "ca.crt"
        assert ca.read_text() == (tmp_path / "registry-ca.crt").read_text()

        listed = _listed(env)
        assert sorted(listed) == ["edge", "node1", "node2"]
        assert all(row["state"] == "ready" and row["availability"] == "active"
                   for row in listed.values()), listed
        assert listed["edge"]["address"] == node3.address and listed["node1"]["role"] == \
            "manager"
        table = _cli(env, "nodes").stdout
        assert table.count(" ready ") == 3 and "edge" in table
        labels = swarm.manager.docker("node", "inspect", "node3", "--format",
                                      "{{index .Spec.Labels \"opus.node\"}}").stdout.strip()
        assert labels == "edge"

        assert _hosts_in_swarm(swarm) == ["node1", "node2", "node3"]

        swarm.load_image(rootfs, "opus-spike/httpd:1")
        swarm.manager.docker(
            "service", "create", "--name", "web", "--replicas", "3", "--network", "host",
            "--no-resolve-image", "--read-only", "--cap-drop", "ALL", "--user", "65534:65534",
            "--stop-grace-period", "0s", "--restart-delay", "0s",
            "--env", "SLOT={{.Task.Slot}}", "--env", f"BASE={BASE_PORT}", "--detach",
            "opus-spike/httpd:1",
            "/bin/sh", "-c", 'exec /bin/busybox httpd -f -p "$((BASE + SLOT))" -h /www')
        _until(lambda: len(_placement(swarm)) == 3, 20, "3 running tasks")
        assert sorted(_placement(swarm).values()) == ["node1", "node2", "node3"]
        assert {name: row["tasks"] for name, row in _listed(env).items()} == \
            {"node1": 1, "node2": 1, "edge": 1}
        # What `opus ps` shows per instance (swarm-core calls it): each slot's node.
        by_node = swarm_nodes_module.tasks_by_node(
            swarm_nodes_module.Manager(str(swarm.manager.socket)), ["web"])
        assert {name: [(t.service, t.state) for t in tasks]
                for name, tasks in by_node.items()} == {
            name: [("web", "Running")] for name in ("node1", "node2", "edge")}
        assert sorted(t.slot or 0 for ts in by_node.values() for t in ts) == [1, 2, 3]
        assert swarm_nodes_module.tasks_by_node(
            swarm_nodes_module.Manager(str(swarm.manager.socket)), ["other"]) == {}
        with _dashboard(env) as base:        # the dashboard shows what `opus nodes` does
            driver = request.getfixturevalue("chromium")
            page = _nodes_page(driver, base)
            shot(driver, "nodes")
        assert sorted(page) == ["edge", "node1", "node2"]
        assert page["edge"]["address"] == node3.address and page["node1"]["role"] == "manager"
        assert all(row["state"] == "ready" and row["tasks"] == "1" for row in page.values())

        started = time.monotonic()
        out = _cli(env, "nodes:remove", "edge").stdout
        swarm.timings["nodes:remove"] = time.monotonic() - started
        assert "Draining edge" in out and "web running elsewhere" in out
        assert "Leaving the swarm on edge" in out
        placement = _placement(swarm)
        assert len(placement) == 3 and set(placement.values()) == {"node1", "node2"}
        assert _hosts_in_swarm(swarm) == ["node1", "node2"]
        assert sorted(_listed(env)) == ["node1", "node2"]
        assert "inactive" in node3.docker("info", "--format",
                                          "{{.Swarm.LocalNodeState}}").stdout

        out = _cli(env, "nodes:add", node3.address, "--name", "edge").stdout
        assert "matches the pinned one" in out and "Joining the swarm" in out
        assert _listed(env)["edge"]["state"] == "ready"
        # A nodes:add cut short after the join (not labelled, not recorded) is finished
        # by running it again.
        Store(home / "opus.db").remove_node("edge")
        swarm.manager.docker("node", "update", "--label-rm", "opus.node", "node3")
        out = _cli(env, "nodes:add", node3.address, "--name", "edge").stdout
        assert "matches the pinned one" in out and "in the swarm already" in out
        assert "Labelling the node opus.node=edge" in out
        assert _listed(env)["edge"]["address"] == node3.address

        # Another machine (or a reinstalled one) answering at node 2's address: refused.
        pinned = (home / "nodes" / "known_hosts").read_text()
        node2.start_sshd(key_line, new_host_key=True)
        refused = _cli(env, "nodes:add", node2.address, check=False)
        assert refused.returncode != 0
        assert f"the host key of {node2.address} changed" in refused.stderr
        assert "refuses to log in" in refused.stderr and "known_hosts" in refused.stderr
        assert str(home) not in refused.stderr     # server paths are shown symbolically
        assert (home / "nodes" / "known_hosts").read_text() == pinned
        assert "changed" in _run(settings_module.load(env), OPERATOR, "nodes:remove", "node2")
        assert _listed(env)["node2"]["availability"] == "active"     # nothing was changed
        # A machine lost for good: --gone drains it (the tasks moving was shown above)
        # and removes it without SSH.
        swarm.manager.docker("service", "rm", "web")
        out = _cli(env, "nodes:remove", "node2", "--gone").stdout
        assert "Draining node2" in out and "Leaving" not in out
        assert _hosts_in_swarm(swarm) == ["node1", "node3"]
        assert sorted(_listed(env)) == ["edge", "node1"]
        print("nodes timings (s):", {k: round(v, 2) for k, v in swarm.timings.items()})


HOSTILE_HOSTS = ["-oProxyCommand=touch /tmp/pwned", "root@10.0.0.1", "10.0.0.1:22",
                 "node2;reboot", "node2 -p 23", "$(id)", "`id`", "node2\nreboot", "",
                 "../../etc", "node2/x", "NODE2", "fe80::1%eth0", "10.0.0.1\x00",
                 "a" * 300, "-", "node_2", "1.2.3", "[::1]"]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_hostile_hosts_are_refused(host: str) -> None:
    with pytest.raises(InvalidName, match="without user@ or :port"):
        names.check_node_host(host)


def test_what_a_node_says_of_itself_is_checked() -> None:
    good = "p3x8k1z0q9w7e6r5t4y2u1i0o"
    assert swarm_nodes_module.checked_node_id(good, "n") == good
    for hostile in ("--label-add=x", "abc", good + "\n", good.upper(), None, "x" * 25 + ";"):
        with pytest.raises(OpusError, match="not one"):
            swarm_nodes_module.checked_node_id(hostile, "n")


def test_hosts_and_names_that_are_fine() -> None:
    assert names.check_node_host("10.0.0.12") == "10.0.0.12"
    assert names.check_node_host("2001:db8::1") == "2001:db8::1"
    assert names.check_node_host("node2.example.com") == "node2.example.com"
    assert names.check_node_name("edge-1") == "edge-1"
    for bad in ("-x", "Edge", "a;b", "node.1", "x" * 31, "", "é", "a b"):
        with pytest.raises(InvalidName):
            names.check_node_name(bad)


def _run(settings: Settings, actor: Actor, *args: str) -> str:
    """The command through the command table, as the CLI and SSH run it; its error."""
    lines: list[str] = []
    ctx = Context(settings, actor, lines.append, lambda _size: "")
    try:
        commands.run(ctx, list(args))
    except OpusError as exc:
        return exc.message
    raise AssertionError(f"opus {' '.join(args)} did not fail: {lines}")


def test_nodes_commands_refuse_hostile_values_and_say_how_to_configure_a_swarm(
        tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    for args, expected in [
        (["nodes:add", "10.0.0.1;id"], "invalid host"),
        (["nodes:add", "-oProxyCommand=id"], "usage: opus nodes:add HOST"),
        (["nodes:add", "root@10.0.0.1"], "invalid host"),
        (["nodes:add", "10.0.0.1", "--name", "x;id"], "invalid node name"),
        (["nodes:add", "10.0.0.1", "--port", "22;id"], "--port takes a TCP port"),
        (["nodes:add", "10.0.0.1", "--port", "70000"], "--port takes a TCP port"),
        (["nodes:add", "10.0.0.1", "--user", "x"], "usage: opus nodes:add"),
        (["nodes:remove", "../x"], "invalid node name"),
        (["nodes:remove", "edge", "--force"], "usage: opus nodes:remove"),
        (["nodes:add", "10.0.0.1"], "no swarm is configured: set swarm_manager"),
        (["nodes"], "no swarm is configured: set swarm_manager"),
        (["nodes:remove", "edge"], "no swarm is configured"),
    ]:
        assert expected in _run(settings, OPERATOR, *args), args
    assert not (tmp_path / "nodes").exists()
    # Only admins: a developer learns nothing of the nodes, nor gets the key.
    developer = Actor(User(2, "dev", "developer"))
    for args in (["nodes"], ["nodes:key"], ["nodes:add", "10.0.0.1"], ["nodes:remove", "x"]):
        assert "only an admin may" in _run(settings, developer, *args)
    assert not (tmp_path / "nodes").exists()
    for manager in ("tcp://x:1 -H ssh://evil", "ssh://evil", "relative.sock", "/a b"):
        with pytest.raises(UsageError, match="swarm_manager"):
            settings_module.load({"OPUS_HOME": str(tmp_path), "OPUS_SWARM_MANAGER": manager})
    with pytest.raises(UsageError, match="swarm_registry"):
        settings_module.load({"OPUS_HOME": str(tmp_path), "OPUS_SWARM_REGISTRY": "-x y"})
    # Through the real CLI: the message, not a traceback.
    result = _cli(_opus(tmp_path), "nodes:add", "10.0.0.1", check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("opus: no swarm is configured")
