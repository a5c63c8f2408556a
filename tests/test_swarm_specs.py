"""Swarm service specs (opus_paas/swarm/services.py): names, ports, limits, health and
placement, with hostile values. Pure, but for one run of the health probe against a
real HTTP server."""
from __future__ import annotations

import dataclasses
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from opus_paas.errors import OpusError
from opus_paas.run.checks import Check
from opus_paas.settings import Settings
from opus_paas.store import App, Limits
from opus_paas.swarm import services
from opus_paas.swarm.services import Health, ServiceSpec
from opus_paas.tls import private_ca

DIGEST = "10.77.1.1:5000/opus/shop@sha256:" + "a" * 64


def _settings() -> Settings:
    return Settings(home=Path("/nonexistent/opus-specs"))


def _app(app_id: int = 7, name: str = "shop") -> App:
    return App(id=app_id, name=name, owner="ann", live_version=None, live_port=None)


def _spec(**changes: object) -> ServiceSpec:
    base = ServiceSpec(name="shop-web-v3", image=DIGEST, app="shop", ptype="web", version=3,
                       uid=30007, replicas=3, port_base=21016, secret="shop-env-v3",
                       limits=Limits(512 << 20, 1.0), health=Health(path="/health",
                                                                    host="shop.localhost"),
                       constraints=("node.labels.opus.node==node2",),
                       mounts=(("/var/lib/opus/ca/ca.crt", "/etc/opus/ca.crt"),))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_blocks_slots_uids_and_names() -> None:
    settings = _settings()
    assert settings.swarm_port_base == 21000 and settings.swarm_uid_base == 30000
    assert services.block_base(settings, 0) == 21000
    assert services.block_base(settings, 2) == 21032
    assert services.slot_port(21032, 1) == 21032 and services.slot_port(21032, 16) == 21047
    assert services.free_block(settings, {0, 1, 3}) == 2
    assert services.task_uid(settings, _app(7)) == 30007
    assert services.service_name("shop", "web", 3) == "shop-web-v3"
    assert services.secret_name("shop", 3) == "shop-env-v3"
    assert services.labels("shop", "web", 3) == {"opus.app": "shop", "opus.ptype": "web",
                                                 "opus.release": "3"}
    top = services.max_blocks(settings) - 1
    assert services.block_base(settings, top) + services.SLOTS - 1 <= 65535
    for bad in (-1, top + 1):
        with pytest.raises(OpusError):
            services.block_base(settings, bad)
    for slot in (0, 17):
        with pytest.raises(OpusError):
            services.slot_port(21000, slot)
    with pytest.raises(OpusError, match="every port block"):
        services.free_block(settings, set(range(services.max_blocks(settings))))


@pytest.mark.parametrize(("app", "ptype", "version"), [
    ("Shop", "web", 1), ("shop;rm", "web", 1), ("-shop", "web", 1), ("../x", "web", 1),
    ("shop", "we b", 1), ("shop", "web\n--publish", 1), ("shop", "", 1),
    ("shop", "w" * 63, 1), ("shop", "web", 0), ("shop", "web", -3)])
def test_hostile_service_names_are_refused(app: str, ptype: str, version: int) -> None:
    with pytest.raises(OpusError):
        services.service_name(app, ptype, version)


def test_create_argv_has_the_hardening_and_the_contract() -> None:
    argv = services.create_argv(_spec())
    assert argv[:2] == ["service", "create"]
    assert argv[-2:] == ["--", DIGEST]
    for flag in ("--read-only", "--init", "--no-resolve-image", "--detach"):
        assert flag in argv
    assert _pairs(argv, "--network") == ["host"]
    assert _pairs(argv, "--cap-drop") == ["ALL"]
    assert _pairs(argv, "--user") == ["30007:30007"]
    assert _pairs(argv, "--restart-delay") == ["1s"]
    assert _pairs(argv, "--hostname") == ["{{.Node.Hostname}}"]
    assert _pairs(argv, "--replicas") == ["3"]
    env = _pairs(argv, "--env")
    assert "OPUS_SLOT={{.Task.Slot}}" in env and "OPUS_PORT_BASE=21016" in env
    assert "OPUS_HEALTH_PATH=/health" in env and f"OPUS_CONFIG_FILE={services.ENV_FILE}" in env
    assert "type=tmpfs,destination=/tmp" in _pairs(argv, "--mount")
    assert "type=bind,source=/var/lib/opus/ca/ca.crt,destination=/etc/opus/ca.crt,readonly" \
        in _pairs(argv, "--mount")
    assert _pairs(argv, "--label") == ["opus.app=shop", "opus.ptype=web", "opus.release=3"]
    assert _pairs(argv, "--limit-memory") == [str(512 << 20)]
    assert _pairs(argv, "--limit-cpu") == ["1.00"]
    assert _pairs(argv, "--constraint") == ["node.labels.opus.node==node2"]
    assert _pairs(argv, "--secret") == ["source=shop-env-v3,target=opus-env,uid=30007,"
                                        "gid=30007,mode=0400"]
    # The health path never reaches the probe's shell: it is in the environment only.
    assert "/health" not in _pairs(argv, "--health-cmd")[0]
    no_check = services.create_argv(_spec(health=None, limits=None, secret=None,
                                          constraints=(), mounts=()))
    assert "--no-healthcheck" in no_check and "--limit-memory" not in no_check
    assert "--secret" not in no_check and "--constraint" not in no_check


@pytest.mark.parametrize("limits", [
    Limits(-1, None), Limits(0, None), Limits(1024, None), Limits(2 ** 62, None),
    Limits(True, None), Limits("512M; rm -rf /", None),  # type: ignore[arg-type]
    Limits(None, 0.0), Limits(None, -1.0), Limits(None, 1e99), Limits(None, float("nan")),
    Limits(None, float("inf")), Limits(None, "1,--privileged"),  # type: ignore[arg-type]
])
def test_hostile_limits_are_refused(limits: Limits) -> None:
    with pytest.raises(OpusError):
        services.create_argv(_spec(limits=limits))


@pytest.mark.parametrize("changes", [
    {"health": Health(path="/x y")}, {"health": Health(path="health")},
    {"health": Health(path="/\n--privileged")}, {"health": Health(path="/ok", host="a b")},
    {"health": Health(interval="5s --privileged")}, {"health": Health(retries=0)},
    {"constraints": ("node.labels.opus.node==a,b",)},
    {"constraints": ("node.role==manager\n",)}, {"constraints": ("engine.labels.x==1",)},
    {"mounts": (("/etc/../root", "/x"),)}, {"mounts": (("relative", "/x"),)},
    {"mounts": (("/a,readonly=false", "/x"),)}, {"mounts": (("/a", "/x,type=volume"),)},
    {"env": (("PATH=", "x"),)}, {"env": (("A", "two words"),)},
    {"image": "--privileged"}, {"image": "Shop:latest"}, {"image": "x@sha256:zz"},
    {"uid": 0}, {"uid": -5}, {"replicas": 17}, {"replicas": -1},
    {"port_base": 80}, {"port_base": 65530}, {"secret": "-x"}, {"secret": "a" * 70},
    {"name": "other-web-v3"}, {"ptype": "web;x", "name": "shop-web;x-v3"},
    {"ca_config": "opus-ca-0123456789ab,target=/etc/passwd"}, {"ca_config": "-x"},
    {"ca_config": "opus-ca-0123456789AB"}, {"ca_config": "opus-ca-0123456789a"},
    {"ca_config": "opus-ca-0123456789abc"}, {"ca_config": "shop-env-v3"},
    {"ca_config": "opus-ca-0123456789ab\n"}, {"ca_config": ""},
    {"ca_config": "opus-ca-0123456789ab mode=0777"},
])
def test_hostile_spec_values_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(OpusError):
        services.create_argv(_spec(**changes))


def test_the_ca_config_is_named_after_its_content_and_mounted_read_only() -> None:
    name = services.ca_config_name(b"-----BEGIN CERTIFICATE-----\nA\n")
    assert name.startswith("opus-ca-") and len(name) == len("opus-ca-") + 12
    assert services.ca_config_name(b"-----BEGIN CERTIFICATE-----\nA\n") == name
    assert services.ca_config_name(b"-----BEGIN CERTIFICATE-----\nB\n") != name
    argv = services.create_argv(_spec(ca_config=name))
    assert _pairs(argv, "--config") == [
        f"source={name},target=/etc/opus/ca.crt,uid=0,gid=0,mode=0444"]
    assert services.CA_TARGET == private_ca.CA_IN_CONTAINER
    assert argv.index("--config") < argv.index("--")
    assert "--config" not in services.create_argv(_spec())


def test_health_comes_from_the_apps_check() -> None:
    assert Health.of(Check(disabled=True), "shop.localhost") is None
    health = Health.of(Check(path="/up?x=1", timeout=30.0), "shop.localhost")
    assert health is not None and health.path == "/up?x=1" and health.start_period == "30s"
    assert Health.of(Check(timeout=9999.0), "x.localhost").start_period == "600s"  # type: ignore[union-attr]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/ok" and self.headers["Host"] == "shop.localhost" \
            else 503
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("path", "status"), [("/ok", 0), ("/bad", 1),
                                              ("/ok';exit 0;'", 1)])
def test_the_health_probe_runs_as_docker_runs_it(http_server: int, path: str,
                                                  status: int) -> None:
    """What --health-cmd runs (sh -c, values from the environment), against a real server
    on slot 2's port."""
    env = {"PATH": os.environ["PATH"], "OPUS_PORT_BASE": str(http_server - 1),
           "OPUS_SLOT": "2", "OPUS_HEALTH_PATH": path, "OPUS_HEALTH_HOST": "shop.localhost"}
    result = subprocess.run(["/bin/sh", "-c", services.HEALTH_PROBE], env=env, timeout=30,
                            capture_output=True, check=False)
    assert result.returncode == status, result.stderr
