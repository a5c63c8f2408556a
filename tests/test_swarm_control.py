"""Where an app runs and with how much (`scheduler`, `scheduler:set`, `ps:resize`:
opus_paas/control/placement.py) and what it runs on the swarm (`opus ps`, `opus logs`,
the dashboard's Node column: opus_paas/swarm/appview.py).

The parsers get fast unit tests; the commands run through the command table (and the
real `opus` CLI once) against an Opus home of their own; one scenario on three real
dockerd nodes (tests/swarm_nodes.py) checks each task's node and the merged logs."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opus_paas import settings as settings_module
from opus_paas.access import OPERATOR, Actor
from opus_paas.control import commands
from opus_paas.control.context import Context
from opus_paas.errors import Forbidden, NotFound, OpusError, UsageError
from opus_paas.layout import AppPaths
from opus_paas.settings import Settings
from opus_paas.store import App, Limits, Store, SwarmMember, SwarmNode
from opus_paas.swarm import appview, limits
from tests.conftest import CHECKOUT, require_root, require_tool
from tests.swarm_nodes import DOCKER, DOCKERD, Swarm, swarm_nodes
from tests.test_swarm_nodes import BUSYBOX, _rootfs_tar, _until

M = 1 << 20


# ---- limits (pure) ------------------------------------------------------------------------

def test_limits_parse_merge_and_describe() -> None:
    assert limits.parse(["memory=512M", "cpus=1"]) == Limits(512 * M, 1.0)
    assert limits.parse(["memory=2g"]) == Limits(2 << 30, None)
    assert limits.parse(["cpus=0.5"], Limits(512 * M, 2.0)) == Limits(512 * M, 0.5)
    assert limits.parse(["cpus=0.05"]) == Limits(None, 0.05)
    assert limits.parse(["memory=none"], Limits(512 * M, 2.0)) == Limits(None, 2.0)
    assert limits.parse(["memory=6M", "cpus=512"]) == Limits(6 * M, 512.0)
    assert limits.parse(["memory=4096G"]) == Limits(4 << 40, None)
    assert limits.parse(["memory=15360K"]) == Limits(15360 << 10, None)
    assert limits.describe(Limits(512 * M, 1.0)) == "memory=512M cpus=1"
    assert limits.describe(Limits(1536 * M, 0.25)) == "memory=1536M cpus=0.25"
    assert limits.describe(Limits(2 << 30, None)) == "memory=2G"
    assert limits.describe(Limits(None, None)) == "no limits"
    assert limits.describe(None) == "no limits"


@pytest.mark.parametrize("pairs", [
    ["memory=-512M"], ["memory=0M"], ["memory=0"], ["memory=512"], ["memory=1e99"],
    ["memory=512M; rm -rf /"], ["memory=512M\n"], ["memory= 512M"], ["memory=5M"],
    ["memory=4097G"], ["memory=99999999999G"], ["memory=512MB"], ["memory=0x200M"],
    ["memory=\uff15\uff11\uff12M"], ["memory=512T"], ["memory="], ["cpus=-1"], ["cpus=0"],
    ["cpus=0.001"],
    ["cpus=1e99"], ["cpus=513"], ["cpus=1;reboot"], ["cpus=nan"], ["cpus=inf"], ["cpus=1."],
    ["cpus=.5"], ["cpus=99999"], ["disk=1G"], ["MEMORY=512M"], ["memory"], ["--memory=1G"],
    ["memory=512M", "memory=1G"], [], ["memory=512M", "swap=1G"],
])
def test_limits_refuse_hostile_values(pairs: list[str]) -> None:
    with pytest.raises(UsageError) as refused:
        limits.parse(pairs, Limits(256 * M, 1.0))
    assert "\n" not in refused.value.message and len(refused.value.message) < 200


# ---- appview parsers (pure) -------------------------------------------------------------

def _service(name: str, app: str, ptype: str, release: str) -> dict[str, object]:
    return {"ID": "id" + name.replace("-", ""), "Spec": {"Name": name, "Labels": {
        "opus.app": app, "opus.ptype": ptype, "opus.release": release}}}


WEB = appview.Service("idshopwebv3", "shop-web-v3", "shop", "web", 3)
WORKER = appview.Service("idshopworkerv3", "shop-worker-v3", "shop", "worker", 3)


def test_services_of_keep_the_apps_own_labelled_services() -> None:
    raw: list[dict[str, object]] = [_service("shop-worker-v3", "shop", "worker", "3"),
           _service("shop-web-v2", "shop", "web", "2"),
           _service("shop-web-v3", "shop", "web", "3"),
           _service("other-web-v1", "other", "web", "1"),        # another app
           _service("shop-x-v1", "shop", "web;rm -rf /", "1"),   # not a process type
           _service("shop-y-v1", "shop", "web", "1e3"),          # not a release
           {"ID": "bare", "Spec": {"Name": "bare"}},             # no labels
           {**_service("shop-z-v1", "shop", "web", "1"), "ID": "-rm"},     # not an id
           _service("shop-\x1b[2J-v1", "shop", "web", "1"),      # not a name
           {"ID": "odd", "Spec": "not a dict"}]
    found = appview.services_of(raw, {"shop"})
    assert [s.name for s in found] == ["shop-web-v3", "shop-web-v2", "shop-worker-v3"]
    assert found[0] == WEB
    assert [s.app for s in appview.services_of(raw, {"shop", "other"})].count("other") == 1


def test_tasks_of_name_nodes_and_ports() -> None:
    raw = [{"ServiceID": WEB.id, "Slot": 2, "NodeID": "n2",
            "Status": {"State": "running", "Timestamp": "2026-12-06T20:14:53.985770934Z"}},
           {"ServiceID": WEB.id, "Slot": 1, "NodeID": "n1",
            "Status": {"State": "starting", "Timestamp": "2026-12-06T20:14:53Z"}},
           {"ServiceID": WORKER.id, "Slot": 1, "NodeID": "gone-node-id-0123456789",
            "Status": {"State": "failed", "Err": "task: non-zero exit (1)"}},
           {"ServiceID": "idother", "Slot": 1, "NodeID": "n1", "Status": {}},   # not ours
           {"ServiceID": WEB.id, "Slot": True, "NodeID": "n1", "Status": {}}]    # no slot
    members = [SwarmMember("shop", 3, "web", 2, "web-2", "10.0.0.2", 21033, True)]
    raw.append({"ServiceID": WEB.id, "Slot": 4, "NodeID": "n3", "Status": {
        "State": "running", "Err": "exit \x1b]0;owned\x07"}})
    found = appview.tasks_of(raw, [WEB, WORKER], {"n1": "node1", "n2": "web-2",
                                                  "n3": "evil\x1b[2Jnode"},
                             {"n1": "10.0.0.1", "n2": "10.0.0.2"}, members)
    assert [(t.ptype, t.slot, t.node, t.state, t.address) for t in found] == [
        ("web", 1, "node1", "STARTING", ""), ("web", 2, "web-2", "RUNNING", "10.0.0.2:21033"),
        ("web", 4, "unknown-node", "RUNNING", ""), ("worker", 1, "gone-node-id", "FAILED", "")]
    assert found[1].since == pytest.approx(1796588093.98577)
    assert found[3].error == "task: non-zero exit (1)"
    assert found[2].error == "exit \\x1b]0;owned\\x07"
    assert found[1].since is not None
    entry = appview.as_process(found[1], found[1].since + 42.5)
    assert entry["node"] == "web-2" and entry["uptime"] == 42 and entry["pid"] is None
    assert entry["name"] == "shop-web-v3.2" and entry["release"] == 3
    assert appview.as_process(found[0], time.time())["uptime"] == 0


def test_timestamps_from_docker() -> None:
    assert appview.timestamp("2026-12-06T20:14:53Z") == 1796588093.0
    assert appview.timestamp("2026-12-06T21:14:53.5+01:00") == 1796588093.5
    assert appview.iso(1796588093.98577) == "2026-12-06T20:14:53.985770Z"
    for bad in ("", "yesterday", "2026-12-06 20:14:53Z", "2026-13-06T20:14:53Z",
                "2026-12-06T20:14:53.1Z; rm"):
        assert appview.timestamp(bad) is None


def test_log_lines_are_parsed_prefixed_and_merged_in_time_order() -> None:
    hosts = {"node2": "web-2"}
    line = appview.log_line(
        "2026-12-06T20:14:54.059202033Z shop-web-v3.2@node2    | GET / | 200\n", WEB, hosts)
    assert line == appview.LogLine("2026-12-06T20:14:54.059202Z", "web.2@web-2", "GET / | 200")
    assert appview.log_line("2026-12-06T20:14:54.1Z shop-web-v3.1@node3 |", WEB,
                            hosts) == appview.LogLine("2026-12-06T20:14:54.100000Z",
                                                      "web.1@node3", "")
    assert appview.log_line("2026-12-06T20:14:54Z shop-web-v3.1@node3    |   indented", WEB,
                            hosts).text == "  indented"   # type: ignore[union-attr]
    assert appview.log_line("2026-12-06T20:14:54Z shop-web-v3.1@ev\x1bil    | x", WEB,
                            hosts).source == "web.1@unknown-node"   # type: ignore[union-attr]
    for other in ("shop-web-v3.2@node2    | no time",
                  "2026-12-06T20:14:54Z shop-web-v33.2@node2    | another service",
                  "2026-12-06T20:14:54Z shop-worker-v3.1@node2    | another type",
                  "2026-12-06T20:14:54Z shop-web-v3.x@node2    | no slot",
                  "error from daemon in stream: Error grabbing logs: rpc error",
                  "soon 2026 shop-web-v3.2@node2    | bad time"):
        assert appview.log_line(other, WEB, hosts) is None, other
    web = ("2026-12-06T20:14:55.000000001Z shop-web-v3.1@node1    | web third\n"
           "2026-12-06T20:14:53Z shop-web-v3.1@node1    | web first\n")
    worker = "2026-12-06T20:14:54.5Z shop-worker-v3.1@node2    | worker second\n"
    merged = appview.log_lines_of([(WEB, web), (WORKER, worker), (WEB, "junk\n")], hosts, 10)
    assert [(m.source, m.text) for m in merged] == [
        ("web.1@node1", "web first"), ("worker.1@web-2", "worker second"),
        ("web.1@node1", "web third")]
    assert [m.text for m in appview.log_lines_of([(WEB, web), (WORKER, worker)], hosts, 1)] \
        == ["web third"]
    assert appview.log_lines_of([(WEB, web)], hosts, 0) == []


def test_a_down_nodes_logs_are_named_as_missing() -> None:
    stderr = ("error from daemon in stream: Error grabbing logs: rpc error: code = Unknown "
              "desc = warning: incomplete log stream. some logs could not be retrieved for the "
              "following reasons: node bnznzgz6oogvm0q86hwv1k7p9 is not available, node "
              "qqqqqqqqqqqqqqqqqqqqqqqqq is not available\n")
    assert appview.unavailable_nodes(stderr, {"bnznzgz6oogvm0q86hwv1k7p9": "web-3"}) == \
        ["qqqqqqqqqqqq", "web-3"]
    assert appview.unavailable_nodes("Error: No such service: shop-web-v1", {}) == []


# ---- the commands, through the command table --------------------------------------------

def _home(tmp_path: Path, manager: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPUS_")}
    env.update(OPUS_HOME=str(tmp_path / "home"), PYTHONPATH=str(CHECKOUT))
    if manager:
        env["OPUS_SWARM_MANAGER"] = manager
    return env


def _store(settings: Settings) -> Store:
    store = Store(settings.db_path)
    store.init()
    return store


def _run(env: dict[str, str], actor: Actor, *args: str) -> tuple[int, str]:
    """A command through the command table, as the CLI and SSH run it."""
    lines: list[str] = []
    ctx = Context(settings_module.load(env), actor, lines.append, lambda _size: "")
    status = commands.run(ctx, list(args))
    return status, "\n".join(lines)


def _released(settings: Settings, store: Store, app: App, procfile: dict[str, str],
              framework: str = "django") -> App:
    """`app` with a live release whose build recorded `procfile` (no build ran)."""
    slug = AppPaths.of(settings, app.name).slug(1)
    (slug / ".opus").mkdir(parents=True)
    (slug / ".opus" / "build.json").write_text(json.dumps(
        {"process_types": procfile, "framework": framework}))
    store.set_live(app, 1, 20001)
    fresh = store.get_app(app.name)
    assert fresh is not None
    return fresh


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opus_paas", *args], env=env,
                          cwd=env["OPUS_HOME"], capture_output=True, text=True, timeout=120,
                          check=False)


def test_scheduler_set_refuses_without_nodes_and_says_why_an_app_is_pinned(
        tmp_path: Path) -> None:
    env = _home(tmp_path)
    settings = settings_module.load(env)
    store = _store(settings)
    owner, dev = store.create_user("ann", "developer"), store.create_user("bob", "developer")
    store.create_user("eve", "developer")
    shop = _released(settings, store, store.create_app("shop", owner, {}),
                     {"web": "gunicorn shop.wsgi", "worker": "python worker.py"})
    api = _released(settings, store, store.create_app(
        "api", owner, {"DATABASE_URL": "postgres://u:p@db/api"}), {"web": "gunicorn api.wsgi"})
    store.grant(shop, dev)
    ann, bob, eve = (Actor(store.get_user(n)) for n in ("ann", "bob", "eve"))

    assert _run(env, ann, "scheduler", "shop") == (0, "local")
    assert json.loads(_run(env, ann, "scheduler", "shop", "--json")[1]) == \
        {"app": "shop", "scheduler": "local", "data_node": None}
    with pytest.raises(UsageError, match="no swarm is configured: set swarm_manager"):
        _run(env, ann, "scheduler:set", "shop", "swarm")

    env = _home(tmp_path, manager="/run/opus-test-no-such.sock")
    with pytest.raises(UsageError, match=r"the swarm has no nodes yet: add one with "
                                         r"`opus nodes:add HOST`"):
        _run(env, ann, "scheduler:set", "shop", "swarm")
    assert store.scheduler(shop) == "local"

    store.add_node(SwarmNode("web-2", "10.0.0.2", 22, "x" * 25, time.time()))
    store.add_node(SwarmNode("web-1", "10.0.0.1", 22, "y" * 25, time.time()))
    for hostile in ("kubernetes", "swarm; rm -rf /", "SWARM", "", "swarm\n", "--force"):
        with pytest.raises(UsageError, match="the scheduler is swarm or local"):
            _run(env, ann, "scheduler:set", "shop", hostile)
    for name in ("../shop", "shop;ls", "-shop"):
        with pytest.raises(OpusError):
            _run(env, ann, "scheduler:set", name, "swarm")
    with pytest.raises(Forbidden, match=r"only ann \(the owner\) or an admin"):
        _run(env, bob, "scheduler:set", "shop", "swarm")     # a collaborator
    with pytest.raises(NotFound, match="app shop not found"):
        _run(env, eve, "scheduler:set", "shop", "swarm")     # a stranger
    with pytest.raises(NotFound, match="app shop not found"):
        _run(env, eve, "scheduler", "shop")
    assert store.scheduler(shop) == "local"

    status, out = _run(env, ann, "scheduler:set", "shop", "swarm")
    assert status == 0
    assert out.splitlines() == [
        "shop uses SQLite (db.sqlite3 in data/): it stays on node web-1; attach Postgres "
        "with `opus pg:create shop` to spread it",
        "shop moves to the swarm at its next deploy: `opus ps:restart shop` (or a push) "
        "moves it now."]
    assert store.scheduler(shop) == "swarm"
    assert _run(env, bob, "scheduler", "shop") == (0, "swarm")
    assert _run(env, ann, "scheduler:set", "shop", "swarm") == \
        (0, "shop runs on the swarm already.")
    # An app on Postgres spreads: nothing to say about pinning.
    assert _run(env, OPERATOR, "scheduler:set", "api", "swarm")[1] == (
        "api moves to the swarm at its next deploy: `opus ps:restart api` (or a push) "
        "moves it now.")
    # Files in data/ pin an app too; the node is the one its instances run on now.
    store.set_scheduler(shop, "local")
    AppPaths.of(settings, "api").data.mkdir(parents=True)
    (AppPaths.of(settings, "api").data / "media").mkdir()
    store.set_scheduler(api, "local")
    store.set_swarm_members(api, 1, "web", [
        SwarmMember("api", 1, "web", 1, "web-2", "10.0.0.2", 21000, True)])
    assert _run(env, OPERATOR, "scheduler:set", "api", "swarm")[1].splitlines()[0] == (
        "api uses files in data/ (media): it stays on node web-2; keep those files in object "
        "storage (or Postgres) and empty data/ to spread it")
    assert _run(env, ann, "scheduler:set", "api", "local")[1] == (
        "api moves to this host at its next deploy: `opus ps:restart api` (or a push) "
        "moves it now.")
    assert store.scheduler(api) == "local"

    # The real CLI: usage errors exit 2, with the usage line.
    result = _cli(env, "scheduler:set", "shop")
    assert result.returncode == 2 and "opus scheduler:set APP swarm|local" in result.stderr
    result = _cli(env, "scheduler", "api")
    assert (result.returncode, result.stdout) == (0, "local\n")


def test_ps_resize_records_limits_and_refuses_hostile_input(tmp_path: Path) -> None:
    env = _home(tmp_path)
    settings = settings_module.load(env)
    store = _store(settings)
    owner = store.create_user("ann", "developer")
    store.create_user("eve", "developer")
    shop = _released(settings, store, store.create_app("shop", owner, {}),
                     {"web": "gunicorn shop.wsgi", "worker": "python worker.py",
                      "release": "python manage.py migrate"})
    ann, eve = Actor(store.get_user("ann")), Actor(store.get_user("eve"))

    assert _run(env, ann, "ps:resize", "shop") == (0, "web          no limits")
    status, out = _run(env, ann, "ps:resize", "shop", "web", "memory=512M", "cpus=1")
    assert status == 0 and out == (
        "shop web: memory=512M cpus=1; shop runs on this host, where limits are recorded "
        "only: they apply once it runs on the swarm (`opus scheduler:set shop swarm`).")
    assert store.limits(shop) == {"web": Limits(512 * M, 1.0)}
    _run(env, ann, "ps:resize", "shop", "web", "cpus=0.5")            # memory stays
    _run(env, ann, "ps:resize", "shop", "worker", "memory=1G")
    assert store.limits(shop) == {"web": Limits(512 * M, 0.5), "worker": Limits(1 << 30, None)}
    assert _run(env, ann, "ps:resize", "shop")[1].splitlines() == [
        "web          memory=512M cpus=0.5", "worker       memory=1G",
        "(shop runs on this host, where limits are recorded only: they apply once it runs on "
        "the swarm (`opus scheduler:set shop swarm`))"]
    assert json.loads(_run(env, ann, "ps:resize", "shop", "--json")[1]) == {
        "web": {"memory_bytes": 512 * M, "cpus": 0.5},
        "worker": {"memory_bytes": 1 << 30, "cpus": None}}
    store.set_scheduler(shop, "swarm")
    assert _run(env, ann, "ps:resize", "shop", "worker", "memory=none")[1] == (
        "shop worker: no limits; it applies from shop's next deploy (`opus ps:restart shop` "
        "or a push).")
    assert store.limits(shop) == {"web": Limits(512 * M, 0.5)}

    before = store.limits(shop)
    for args in (["web", "memory=-1M"], ["web", "memory=1e99"], ["web", "memory=512M; rm"],
                 ["web", "cpus=0"], ["web", "memory=99999999999G"], ["web", "gpu=1"],
                 ["web", "memory=512M", "memory=1G"], ["web;ls", "memory=512M"],
                 ["../web", "cpus=1"]):
        with pytest.raises(OpusError) as refused:
            _run(env, ann, "ps:resize", "shop", *args)
        assert refused.value.exit_code == 2, args
    with pytest.raises(NotFound, match="shop has no process type 'clock'; its Procfile has: "
                                       "web, worker"):
        _run(env, ann, "ps:resize", "shop", "clock", "memory=512M")
    with pytest.raises(NotFound, match="has no process type 'release'"):
        _run(env, ann, "ps:resize", "shop", "release", "memory=512M")
    with pytest.raises(NotFound, match="app shop not found"):
        _run(env, eve, "ps:resize", "shop", "web", "memory=512M")
    with pytest.raises(NotFound, match="app shop not found"):
        _run(env, eve, "ps:resize", "shop")
    with pytest.raises(UsageError, match="usage: opus ps:resize APP"):
        _run(env, ann, "ps:resize", "shop", "web")
    assert store.limits(shop) == before

    # The real CLI: a hostile value exits 2 and changes nothing.
    result = _cli(env, "ps:resize", "shop", "web", "memory=512M;reboot")
    assert result.returncode == 2, result
    assert "memory takes a size such as 512M or 2G" in result.stderr
    assert store.limits(shop) == before


# ---- ps and logs on real nodes -----------------------------------------------------------

# ---- ps and logs on real nodes -----------------------------------------------------------

# Each task prints a numbered line on stdout and one on stderr (both are its logs).
TICKER = ('i=0; while true; do i=$((i+1)); echo "$TYPE tick $i"; echo "$TYPE oops $i" >&2; '
          '/bin/busybox sleep 0.4; done')
PS_LINE = re.compile(r"(web|worker)\.([0-9]+)  (\S+)\s+on (\S+)\s+(\S+)\s+up ([0-9]+) s  "
                     r"\(v1\)")
LOG_LINE = re.compile(r"(\S+) shop\[(web|worker)\.([0-9]+)@(\S+)\]: (web|worker) "
                      r"(tick|oops) ([0-9]+)")
ADMIN_PASSWORD = "control dashboard password"


def _create_service(swarm: Swarm, name: str, app: str, ptype: str, replicas: int) -> None:
    swarm.manager.docker(
        "service", "create", "--name", name, "--replicas", str(replicas), "--network",
        "host", "--no-resolve-image", "--label", f"opus.app={app}", "--label",
        f"opus.ptype={ptype}", "--label", "opus.release=1", "--restart-delay", "1s",
        "--stop-grace-period", "1s", "--env", f"TYPE={ptype}", "--detach",
        "opus-test/ticker:1", "/bin/sh", "-c", TICKER)


def _placement(swarm: Swarm, services: list[str]) -> dict[tuple[str, int], str]:
    """(service, slot) -> host name of the node Docker runs it on."""
    out = swarm.manager.docker("service", "ps", *services, "--filter",
                               "desired-state=running", "--format",
                               "{{.Name}} {{.Node}} {{.CurrentState}}").stdout
    found = {}
    for line in out.splitlines():
        name, node, state = line.split(" ", 2)
        if state.startswith("Running"):
            service, _, slot = name.rpartition(".")
            found[(service, int(slot))] = node
    return found


def test_ps_and_logs_show_each_tasks_node_and_merged_logs(tmp_path: Path) -> None:
    require_root("the swarm nodes need network and mount namespaces")
    for tool in (DOCKERD, DOCKER, BUSYBOX, "ip", "nsenter", "unshare"):
        require_tool(tool)
    rootfs = tmp_path / "rootfs.tar"
    _rootfs_tar(rootfs)
    started = time.monotonic()
    with swarm_nodes(3) as swarm:
        swarm.load_image(rootfs, "opus-test/ticker:1")
        node2 = swarm.manager.docker("node", "inspect", "-f", "{{.ID}}", "node2").stdout.strip()
        swarm.manager.docker("node", "update", "--label-add", "opus.node=web-2", node2)
        _create_service(swarm, "shop-web-v1", "shop", "web", 3)
        _create_service(swarm, "shop-worker-v1", "shop", "worker", 1)
        _create_service(swarm, "other-web-v1", "other", "web", 1)    # another app's
        ours = ["shop-web-v1", "shop-worker-v1"]
        _until(lambda: len(_placement(swarm, [*ours, "other-web-v1"])) == 5, 30,
               "5 running tasks")
        placement = {key: ("web-2" if host == "node2" else host)
                     for key, host in _placement(swarm, ours).items()}
        converged = time.monotonic() - started

        env = _home(tmp_path, manager=str(swarm.manager.socket))
        settings = settings_module.load(env)
        store = _store(settings)
        owner = store.create_user("admin", "admin")
        shop = store.create_app("shop", owner, {})
        other = store.create_app("other", owner, {})
        store.set_scheduler(shop, "swarm")
        store.set_scheduler(other, "swarm")
        store.set_swarm_members(shop, 1, "web", [
            SwarmMember("shop", 1, "web", slot, placement[("shop-web-v1", slot)], "10.0.0.1",
                        21000 + slot - 1, True) for slot in (1, 2, 3)])
        time.sleep(1.5)     # a few lines from every task

        # opus ps: each task, its node (the opus.node label where there is one) and port.
        begun = time.monotonic()
        result = _cli(env, "ps", "shop")
        ps_seconds = time.monotonic() - begun
        assert result.returncode == 0, result.stderr
        rows = [PS_LINE.fullmatch(line) for line in result.stdout.splitlines()]
        assert all(rows), result.stdout
        shown = {(f"shop-{m.group(1)}-v1", int(m.group(2))): m.group(4)
                 for m in rows if m is not None}
        assert shown == placement, (result.stdout, placement)
        assert all(m.group(3) == "RUNNING" for m in rows if m is not None)
        addresses = {int(m.group(2)): m.group(5) for m in rows if m and m.group(1) == "web"}
        by_name = {n.hostname: n.address for n in swarm.nodes} | {"web-2": swarm.nodes[1].address}
        assert addresses == {slot: f"{by_name[placement[('shop-web-v1', slot)]]}:"
                                   f"{21000 + slot - 1}" for slot in (1, 2, 3)}
        assert "other" not in result.stdout

        # opus logs: both streams of every task, in time order, each from TYPE.SLOT@NODE.
        begun = time.monotonic()
        result = _cli(env, "logs", "shop", "-n", "40")
        logs_seconds = time.monotonic() - begun
        assert result.returncode == 0, result.stderr
        lines = [LOG_LINE.fullmatch(line) for line in result.stdout.splitlines()]
        assert len(lines) == 40 and all(lines), result.stdout
        found = [m for m in lines if m is not None]
        assert [m.group(1) for m in found] == sorted(m.group(1) for m in found)
        for m in found:
            assert m.group(2) == m.group(5)
            assert placement[(f"shop-{m.group(2)}-v1", int(m.group(3)))] == m.group(4), m.group(0)
        assert {(m.group(2), int(m.group(3))) for m in found} == \
            {("web", 1), ("web", 2), ("web", 3), ("worker", 1)}
        assert {m.group(6) for m in found} == {"tick", "oops"}
        worker = _cli(env, "logs", "shop", "--ps", "worker", "-n", "5").stdout.splitlines()
        assert len(worker) == 5 and all("shop[worker.1@" in line for line in worker), worker
        last_tick = max(int(m.group(7)) for m in found)

        # opus logs -t: new lines as they come, until the client goes.
        follower = subprocess.Popen(
            [sys.executable, "-m", "opus_paas", "logs", "shop", "-n", "0", "-t"], env=env,
            cwd=env["OPUS_HOME"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(4)
        finally:
            follower.send_signal(signal.SIGINT)
            out, err = follower.communicate(timeout=30)
        followed = [LOG_LINE.fullmatch(line) for line in out.splitlines()]
        assert followed and all(followed), (out, err)
        assert {(m.group(2), int(m.group(3))) for m in followed if m} == \
            {("web", 1), ("web", 2), ("web", 3), ("worker", 1)}
        assert min(int(m.group(7)) for m in followed if m) > last_tick - 2
        # The follower's docker clients ended with it.
        left = subprocess.run(["pgrep", "-f", f"{swarm.manager.socket} service logs"],
                              capture_output=True, text=True, check=False).stdout.split()
        assert not left, left

        # The dashboard's app page: a Node column.
        from opus_paas import users
        from tests.test_web import csrf
        from web import create_app
        users.set_password(store, OPERATOR, "admin", ADMIN_PASSWORD)
        client = create_app(settings, {"TESTING": True}).test_client()
        reply = client.post("/signin", data={"user": "admin", "password": ADMIN_PASSWORD,
                                             "csrf_token": csrf(client)})
        assert reply.status_code == 303
        page = client.get("/apps/shop")
        assert page.status_code == 200
        assert "<th>Node</th>" in page.text
        rows_shown = {label: node for node, label in re.findall(
            r'<tr data-type="(?:web|worker)" data-node="([^"]+)">\s*<td>([a-z]+\.[0-9]+)</td>',
            page.text)}
        assert rows_shown == {f"{service.split('-')[1]}.{slot}": node
                              for (service, slot), node in placement.items()}
        # The app list counts its tasks: web runs on the nodes.
        store.set_live(shop, 1, 20001)
        assert re.search(r'<a href="/apps/shop">shop</a>.*?<span class="status status-running">',
                         client.get("/").text, re.S)
        page = client.get("/apps/shop/logs")
        assert page.status_code == 200
        sources = set(re.findall(r'<span class="source">shop\[([a-z]+\.[0-9]+@[a-z0-9-]+)\]',
                                 page.text))
        assert sources == {f"{service.split('-')[1]}.{slot}@{node}"
                           for (service, slot), node in placement.items()}, sources

        # A dead node: its tasks' lines are missing, and `opus logs` says so at once.
        swarm.nodes[2].kill()
        begun = time.monotonic()
        result = _cli(env, "logs", "shop", "-n", "10")
        dead_seconds = time.monotonic() - begun
        assert result.returncode == 0, result.stderr
        assert re.search(r"shop\[swarm\]: some lines could not be read: node node3 is not "
                         r"available \(see `opus nodes`\)", result.stdout), result.stdout
        assert "@node3]" not in result.stdout
        assert dead_seconds < 10
    print(f"control scenario: converged {converged:.1f} s, opus ps {ps_seconds:.2f} s, "
          f"opus logs {logs_seconds:.2f} s ({dead_seconds:.2f} s with a dead node), "
          f"whole {time.monotonic() - started:.1f} s")
