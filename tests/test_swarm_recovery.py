"""Recovery of a swarm deploy cut short (opus_paas/swarm/recovery.py): the rule, fast;
then one scenario on real nodes (tests/swarm_nodes.py): a deploy stopped at a failpoint
after its services answer and its members are in the front, its process SIGKILLed,
recovery, nothing of it left and the live release still answering."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Sequence

from opus_paas.store import App, SwarmMember, SwarmRelease
from opus_paas.swarm import nodes
from opus_paas.swarm import recovery as swarm_recovery
from opus_paas.swarm.recovery import Cleanup, Listed, decide

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
