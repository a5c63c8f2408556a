"""Recovery of a swarm deploy cut short (opus_paas/swarm/recovery.py): the rule, fast;
then one scenario on real nodes (tests/swarm_nodes.py): a deploy stopped at a failpoint
after its services answer and its members are in the front, its process SIGKILLed,
recovery, nothing of it left and the live release still answering."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from opus_paas import locks
from opus_paas import settings as settings_module
from opus_paas.settings import Settings
from opus_paas.store import App, Store, SwarmMember, SwarmRelease
from opus_paas.swarm import deploy, nodes, services
from opus_paas.swarm import recovery as swarm_recovery
from opus_paas.swarm.members import ApacheFront, member_url
from opus_paas.swarm.recovery import Cleanup, Listed, decide
from tests.conftest import make_key, require_root, require_tool, start_opus, stop_opus
from tests.swarm_nodes import DOCKER, DOCKERD, swarm_nodes

APP = App(id=3, name="shop", owner="ann", live_version=5, live_port=21016)
IMAGE = "127.0.0.1:5000/opus/shop@sha256:" + "a" * 64


def _record(version: int, block: int, services: tuple[str, ...] | None = None
            ) -> SwarmRelease:
    names = (f"shop-web-v{version}",) if services is None else services
    return SwarmRelease("shop", version, IMAGE, block, names, 0.0)


def _service(version: int | str, ptype: str = "web", app: str = "shop",
             name: str | None = None) -> Listed:
    return Listed(name or f"{app}-{ptype}-v{version}",
                  {"opus.app": app, "opus.ptype": ptype, "opus.release": str(version)})


def _secret(version: int | str, app: str = "shop") -> Listed:
    return Listed(f"{app}-env-v{version}", {"opus.app": app})


def _member(version: int, slot: int, enabled: bool = True) -> SwarmMember:
    return SwarmMember("shop", version, "web", slot, f"node{slot}", f"10.0.0.{slot}",
                       21000 + 16 * version + slot - 1, enabled)


def test_a_move_back_cut_short_leaves_web_at_zero_and_recovery_scales_it_with_its_data(
        ) -> None:
    """A stop after a pinned app's tasks stopped for its data to come home (the app not
    stopped): the live web at 0 tasks is scaled up again, and its data is recorded on
    the node its service pins and mounts the volume on."""
    web = dataclasses.replace(_service(5), replicas=0, data_node="node2")
    cleanup = swarm_recovery.decide(APP, [_record(5, 1)], {5}, [_member(5, 1, False)],
                                    [web], [_secret(5)])
    assert cleanup.rescale and cleanup.data_node == "node2" and bool(cleanup)
    assert "scaled up again" in cleanup.describe()
    assert not cleanup.services and not cleanup.secrets     # the live release stays
    # Not when the app was stopped (ps:stop), nor another release's or type's service.
    stopped = dataclasses.replace(APP, stopped=True)
    assert not swarm_recovery.decide(stopped, [_record(5, 1)], {5}, [], [web], []).rescale
    for other in (dataclasses.replace(_service(5, "worker"), replicas=0),
                  dataclasses.replace(_service(5), replicas=2),
                  dataclasses.replace(_service(5), replicas=None)):
        assert not swarm_recovery.decide(APP, [_record(5, 1)], {5}, [], [other], []).rescale
    # What pins a service and its data, from `docker service inspect`'s Spec.
    spec = {"TaskTemplate": {
        "ContainerSpec": {"Mounts": [{"Type": "volume", "Source": "opus-data-shop",
                                      "Target": "/data"}]},
        "Placement": {"Constraints": ["node.labels.opus.node==node2"]}}}
    assert swarm_recovery.pinned_data_node("shop", spec) == "node2"
    assert swarm_recovery.pinned_data_node("blog", spec) is None     # not its volume
    assert swarm_recovery.pinned_data_node("shop", {"TaskTemplate": "x"}) is None
    unpinned = json.loads(json.dumps(spec))
    unpinned["TaskTemplate"]["Placement"] = {}
    assert swarm_recovery.pinned_data_node("shop", unpinned) is None


def test_a_deploy_cut_short_before_its_switch_goes_and_the_live_release_stays() -> None:
    records = [_record(6, 2, ("shop-web-v6", "shop-worker-v6")), _record(5, 1),
               _record(4, 0, ())]
    members = [_member(5, 1), _member(5, 2), _member(6, 1, False), _member(6, 2, False)]
    cleanup = decide(APP, records, {4, 5}, members,
                     [_service(5), _service(6), _service(6, "worker")],
                     [_secret(5), _secret(6)])
    assert cleanup == Cleanup(services=("shop-web-v6", "shop-worker-v6"),
                              secrets=("shop-env-v6",), members=(6,), forget=(6,))
    assert "v6" in cleanup.describe() and "v5" not in cleanup.describe()


def test_the_old_release_of_a_finish_cut_short_goes_its_record_stays_for_rollback() -> None:
    app = dataclasses.replace(APP, live_version=6)
    cleanup = decide(app, [_record(6, 2), _record(5, 1)], {5, 6},
                     [_member(6, 1), _member(5, 1, False)], [_service(5), _service(6)],
                     [_secret(5), _secret(6)])
    assert cleanup == Cleanup(services=("shop-web-v5",), secrets=("shop-env-v5",),
                              members=(5,), strip=(5,))


def test_nothing_left_nothing_to_do() -> None:
    cleanup = decide(APP, [_record(5, 1), _record(4, 0, ())], {4, 5}, [_member(5, 1)],
                     [_service(5)], [_secret(5)])
    assert not cleanup and cleanup == Cleanup()


def test_odd_or_hostile_labels_are_never_touched() -> None:
    odd = [
        _service(6, app="other"),                              # another app's label
        Listed("shop-web-v6", {"opus.app": "other", "opus.release": "6",
                               "opus.ptype": "web"}),           # our name, their label
        _service("six"), _service("6 "), _service("-6"), _service("0"), _service("06"),
        _service("1e3"), _service("٦"),                       # not a plain release number
        Listed("shop-web-v7", {}),                              # no labels at all
        Listed("shop-web-v7", {"opus.app": "shop"}),            # no release, no type
        Listed("shop-web-v7", {"opus.app": "shop", "opus.release": "7"}),  # no type
        _service(7, name="postgres"),                           # a name Opus never gives
        _service(7, name="shop-web-v8"),                        # name and label disagree
        _service(7, ptype="we b"),                              # a type Opus refuses
        _service(7, ptype="../x"),
    ]
    secrets = [_secret(6, app="other"), Listed("shop-env-v6", {}),
               Listed("shop-env-vx", {"opus.app": "shop"}),
               Listed("shop-env-v6-extra", {"opus.app": "shop"}),
               Listed("shop-env-v0", {"opus.app": "shop"}),
               Listed("db-password", {"opus.app": "shop"})]
    cleanup = decide(APP, [_record(5, 1)], {5}, [_member(5, 1)], odd, secrets)
    assert cleanup == Cleanup()


def test_an_app_back_on_this_host_loses_everything_on_the_swarm() -> None:
    """Its live release is a local one (a move back cut short before retire)."""
    app = dataclasses.replace(APP, live_version=7)
    cleanup = decide(app, [_record(6, 2), _record(5, 1, ())], {5, 6, 7},
                     [_member(6, 1)], [_service(6)], [_secret(6), _secret(5)])
    assert cleanup == Cleanup(services=("shop-web-v6",),
                              secrets=("shop-env-v5", "shop-env-v6"), members=(6,),
                              strip=(6,))


def test_a_crash_between_the_switch_and_its_record_turns_the_live_members_on() -> None:
    members = [_member(5, 1, False), _member(5, 2, False), _member(6, 1), _member(6, 2)]
    cleanup = decide(APP, [_record(6, 2), _record(5, 1)], {5}, members, [_service(6)], [])
    assert cleanup.members == (6,) and cleanup.forget == (6,)
    assert cleanup.enable == (_member(5, 1), _member(5, 2))
    # A stopped app's members stay off (ps:stop), and so do they with nothing cut short.
    stopped = dataclasses.replace(APP, stopped=True)
    assert decide(stopped, [_record(6, 2), _record(5, 1)], {5}, members, [], []).enable == ()
    assert decide(APP, [_record(5, 1)], {5}, members[:2], [], []) == Cleanup()


def test_a_record_made_before_its_services_goes_without_them() -> None:
    """A stop between the record and `service create`: nothing on the swarm."""
    cleanup = decide(APP, [_record(6, 2), _record(5, 1)], {5}, [], [_service(5)], [])
    assert cleanup == Cleanup(forget=(6,))


class FakeManager(nodes.Manager):
    """What `docker service|secret ls` and `inspect` answer, recorded calls."""

    def __init__(self, objects: dict[str, list[object]]) -> None:
        super().__init__("unix:///nonexistent")
        self.objects = objects
        self.calls: list[tuple[str, ...]] = []

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        kind = args[0]
        items = self.objects.get(kind, [])
        if args[1] == "ls":
            assert args[2:] == ("--quiet", "--filter", "label=opus.app=shop")
            out = "".join(f"id{i}\n" for i in range(len(items)))
        else:
            out = json.dumps(items)
        return subprocess.CompletedProcess(args, 0, out, "")


def test_the_listing_reads_names_and_labels_and_skips_what_it_cannot_read() -> None:
    raw: Sequence[object] = [
        {"Spec": {"Name": "shop-web-v6", "Labels": {"opus.app": "shop",
                                                     "opus.ptype": "web",
                                                     "opus.release": "6"}}},
        {"Spec": {"Name": "shop-web-v7", "Labels": None}},
        {"Spec": {"Name": "shop-web-v8", "Labels": {"opus.release": 8}}},
        {"Spec": {"Labels": {"opus.app": "shop"}}}, {"Spec": "x"}, "junk",
    ]
    mgr = FakeManager({"service": list(raw)})
    found = swarm_recovery._inspect(mgr, "service", "shop")
    assert found == [Listed("shop-web-v6", {"opus.app": "shop", "opus.ptype": "web",
                                            "opus.release": "6"}),
                     Listed("shop-web-v7", {}), Listed("shop-web-v8", {})]
    assert swarm_recovery._inspect(FakeManager({}), "secret", "shop") == []


# ---- on real nodes ------------------------------------------------------------------------

NAME = "swarmy"
BUSYBOX = "/bin/busybox"
# The tasks' command and Docker health check in a busybox image (no build, no registry:
# what is tested here is what a cut-short deploy leaves, not the image).
# The shell stays PID 1 and ends on SIGTERM (busybox's httpd as PID 1 ignores it, and
# Docker would kill it only after the 10 s grace: the secret goes once its tasks have).
SERVE = ("/bin/sh", "-c",
         "trap 'exit 0' TERM; /bin/busybox httpd -f "
         '-p "$((OPUS_PORT_BASE + OPUS_SLOT - 1))" -h /www & wait')
HEALTH = services.Health(
    command=("exec wget -q -O /dev/null "
             "http://127.0.0.1:$((OPUS_PORT_BASE + OPUS_SLOT - 1))$OPUS_HEALTH_PATH"),
    interval="2s", start_period="20s")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


def _release(settings: Settings, store: Store, version: int, image: str) -> None:
    """A swarm deploy as a push runs it (under the app's lock), drained."""
    app = store.get_app(NAME)
    assert app is not None
    lines: list[str] = []
    with locks.app_lock(settings, NAME):
        deploy.deploy(settings, store, app, version, image, {"GREETING": "hi"},
                      lines.append, args=SERVE, health=HEALTH,
                      record=lambda port: store.set_live(app, version, port)
                      ).finish(lines.append)


def main() -> None:
    """The deploy this test cuts short, in a process of its own: `python -c` with the
    test Opus's environment; argv: VERSION IMAGE."""
    settings = settings_module.load()
    _release(settings, Store(settings.db_path), int(sys.argv[1]), sys.argv[2])


def _get(http_port: int) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}/",
                                     headers={"Host": f"{NAME}.localhost"})
    try:
        with _OPENER.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def _until(probe: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_deploy_killed_after_its_switch_leaves_nothing_once_up_has_run(
        tmp_path: Path) -> None:
    require_root("the swarm nodes need network and mount namespaces")
    for tool in (DOCKERD, DOCKER, BUSYBOX, "ip", "nsenter", "unshare"):
        require_tool(tool)
    _rootfs(tmp_path / "one.tar", b"release one\n")
    _rootfs(tmp_path / "two.tar", b"release two\n")
    timings: dict[str, float] = {}
    began = time.monotonic()
    with swarm_nodes(2) as swarm:
        one = swarm.load_image(tmp_path / "one.tar", "opus-test/swarmy:1")
        two = swarm.load_image(tmp_path / "two.tar", "opus-test/swarmy:2")
        opus = start_opus(OPUS_FAILPOINTS="1", OPUS_SWARM_DEPLOY_TIMEOUT="40")
        env = {**opus.env, "OPUS_SWARM_MANAGER": str(swarm.manager.socket)}
        settings = settings_module.load(env)
        store = Store(settings.db_path)
        child: subprocess.Popen[bytes] | None = None
        try:
            timings["nodes and Opus"] = time.monotonic() - began
            opus.cli("keys:add", "admin", str(make_key(tmp_path, "admin").public))
            opus.cli("apps:create", NAME)
            app = store.get_app(NAME)
            assert app is not None
            store.set_scheduler(app, "swarm")
            store.set_scale(app, 2)
            started = time.monotonic()
            _release(settings, store, 1, one)
            timings["v1 deployed"] = time.monotonic() - started
            assert _get(opus.http_port) == (200, "release one\n")

            # v2's deploy stops where the front sends traffic to it and the database
            # does not say so yet; its process is SIGKILLed there.
            points = settings.home / "failpoints"
            points.mkdir(exist_ok=True)
            (points / "armed").write_text("swarm.switched")
            started = time.monotonic()
            child = subprocess.Popen(
                [sys.executable, "-c", "from tests.test_swarm_recovery import main; main()",
                 "2", two], env=env, cwd=Path(__file__).parent.parent)
            reached = points / "swarm.switched.reached"
            _until(lambda: reached.exists() or child.poll() is not None, 60,
                   "v2's deploy to reach its switch")
            assert reached.exists(), f"the deploy ended ({child.returncode}) before its switch"
            _until(lambda: reached.read_text().strip(), 5, "the failpoint's pid")
            assert int(reached.read_text()) == child.pid
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
            reached.unlink()
            timings["v2 deployed to its switch"] = time.monotonic() - started
            assert _get(opus.http_port) == (200, "release two\n")   # the switch happened
            app = store.get_app(NAME)
            assert app is not None and app.live_version == 1
            assert {r.version for r in store.swarm_releases(app)} == {1, 2}
            assert {m.version for m in store.swarm_members(app)} == {1, 2}

            # `opus up` (this checkout's), with requests going on throughout.
            answers: list[tuple[int, str]] = []
            stop = threading.Event()

            def ask() -> None:
                while not stop.is_set():
                    answers.append(_get(opus.http_port))
                    time.sleep(0.05)
            asking = threading.Thread(target=ask)
            asking.start()
            started = time.monotonic()
            try:
                up = subprocess.run([sys.executable, "-m", "opus_paas", "up"], env=env,
                                    capture_output=True, text=True, timeout=120, check=False)
            finally:
                timings["opus up"] = time.monotonic() - started
                time.sleep(0.5)
                stop.set()
                asking.join()
            print(up.stdout + up.stderr)
            assert up.returncode == 0, up.stdout + up.stderr
            assert "swarmy: removed what a deploy cut short left" in up.stdout + up.stderr, \
                up.stdout + up.stderr
            assert "not answering" not in up.stdout      # (its tasks serve on the nodes)
            failed = [a for a in answers if a[0] != 200]
            assert answers and not failed, f"{len(failed)} of {len(answers)} failed"
            assert {body for _status, body in answers} <= {"release one\n", "release two\n"}

            # Nothing of v2 is left; v1 serves, its services untouched.
            listed = {kind: swarm.manager.docker(kind, "ls", "--filter",
                                                 f"label=opus.app={NAME}", "--format",
                                                 "{{.Name}}").stdout.split()
                      for kind in ("service", "secret")}
            assert listed == {"service": ["swarmy-web-v1"], "secret": ["swarmy-env-v1"]}
            assert [(r.version, r.services) for r in store.swarm_releases(app)] == \
                [(1, ("swarmy-web-v1",))]
            members = store.swarm_members(app)
            assert {(m.version, m.enabled) for m in members} == {(1, True)}
            assert len(members) == 2
            running = ApacheFront(settings, store).manager(app).members()[1]
            assert {url for url, m in running.items() if m.enabled} == \
                {member_url(m) for m in members}
            for _ in range(10):
                assert _get(opus.http_port) == (200, "release one\n")
            assert swarm_recovery.plan(settings, store, app) == Cleanup()
        finally:
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(10)
            stop_opus(opus)
    timings["the scenario"] = time.monotonic() - began
    print("swarm recovery timings (s):", {k: round(v, 2) for k, v in timings.items()})
