"""The rule by which the front follows the swarm (opus_paas/swarm/follow.py: decide, diff)
and a deploy's readiness (swarm/deploy.py: readiness). Pure: tasks, nodes and probe
results are data here; the real ones are in tests/test_swarm_deploy.py."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from opus_paas.control import lifecycle
from opus_paas.settings import Settings
from opus_paas.store import App, SwarmMember
from opus_paas.swarm import deploy, follow, members
from opus_paas.swarm.follow import TaskInfo
from opus_paas.swarm.nodes import NodeState

BASE = 21016
SERVICE = "shop-web-v4"
NODES = {f"id{i}": NodeState(f"id{i}", f"node{i}", f"node{i}", f"10.77.5.1{i}", "ready",
                             "active", i == 1) for i in (1, 2, 3)}
APP = App(id=3, name="shop", owner="ann", live_version=4, live_port=BASE)


def _down(*ids: str) -> dict[str, NodeState]:
    return {k: (NodeState(v.id, v.name, v.hostname, v.address, "down", v.availability,
                          v.manager) if k in ids else v) for k, v in NODES.items()}


def _task(slot: int, node: int, state: str = "running", desired: str = "running",
          service: str = SERVICE, error: str = "") -> TaskInfo:
    return TaskInfo(service, slot, f"id{node}", state, desired, error)


def _member(slot: int, node: int, enabled: bool = True, version: int = 4) -> SwarmMember:
    return SwarmMember("shop", version, "web", slot, f"node{node}", f"10.77.5.1{node}",
                       BASE + slot - 1, enabled)


def _ok(*pairs: tuple[int, int]) -> dict[tuple[str, int], bool]:
    return {(f"10.77.5.1{node}", BASE + slot - 1): True for slot, node in pairs}


def _decide(tasks: list[TaskInfo], nodes: dict[str, NodeState],
            probes: dict[tuple[str, int], bool],
            previous: list[SwarmMember]) -> list[SwarmMember]:
    return follow.decide("shop", 4, "web", BASE, tasks, nodes, probes, previous)


def test_healthy_tasks_are_the_members() -> None:
    tasks = [_task(1, 1), _task(2, 2), _task(3, 3)]
    assert _decide(tasks, NODES, _ok((1, 1), (2, 2), (3, 3)), []) == \
        [_member(1, 1), _member(2, 2), _member(3, 3)]


def test_a_node_being_drained_serves_no_more_and_its_slots_move_once_answering() -> None:
    """`nodes:remove` drains a node: its tasks still run (and answer) for a moment, but
    the front takes them off at once; the replacement joins once it answers."""
    draining = {**NODES, "id2": dataclasses.replace(NODES["id2"], availability="drain")}
    previous = [_member(1, 1), _member(2, 2), _member(3, 3)]
    tasks = [_task(1, 1), _task(2, 2), _task(3, 3), _task(2, 1, state="starting")]
    probes = _ok((1, 1), (2, 2), (3, 3))
    assert _decide(tasks, draining, probes, previous) == \
        [_member(1, 1), _member(2, 2, enabled=False), _member(3, 3)]
    moved = SwarmMember("shop", 4, "web", 2, "node1", "10.77.5.11", BASE + 1, True)
    tasks[-1] = _task(2, 1)
    assert _decide(tasks, draining, {**probes, ("10.77.5.11", BASE + 1): True},
                   previous) == [_member(1, 1), moved, _member(3, 3)]


def test_a_task_not_answering_yet_is_not_a_member_and_a_failing_one_is_disabled() -> None:
    tasks = [_task(1, 1), _task(2, 2), _task(3, 3, state="starting")]
    probes = {**_ok((1, 1)), ("10.77.5.12", BASE + 1): False}
    assert _decide(tasks, NODES, probes, []) == [_member(1, 1)]
    previous = [_member(1, 1), _member(2, 2), _member(3, 3)]
    assert _decide(tasks, NODES, probes, previous) == \
        [_member(1, 1), _member(2, 2, enabled=False), _member(3, 3, enabled=False)]


def test_a_down_nodes_member_is_disabled_at_once_even_if_it_still_answers() -> None:
    previous = [_member(1, 1), _member(2, 2), _member(3, 3)]
    # The manager has not rescheduled yet: the task is still "running" on node 3.
    tasks = [_task(1, 1), _task(2, 2), _task(3, 3)]
    members = _decide(tasks, _down("id3"), _ok((1, 1), (2, 2), (3, 3)), previous)
    assert members == [_member(1, 1), _member(2, 2), _member(3, 3, enabled=False)]
    change = follow.diff(APP, previous, members)
    assert change is not None and not change.render
    assert change.disable == [_member(3, 3, enabled=False)] and change.enable == []


def test_a_rescheduled_task_replaces_its_slots_member_once_healthy() -> None:
    previous = [_member(1, 1), _member(2, 2), _member(3, 3, enabled=False)]
    moved = [_task(1, 1), _task(2, 2), _task(3, 3, state="shutdown", desired="shutdown"),
             _task(3, 1, state="starting")]
    # Starting on node 1: the slot keeps its (disabled) member meanwhile.
    waiting = _decide(moved, _down("id3"), _ok((1, 1), (2, 2)), previous)
    assert waiting == previous
    assert follow.diff(APP, previous, waiting) is None
    running = [*moved[:3], _task(3, 1)]
    members = _decide(running, _down("id3"), _ok((1, 1), (2, 2), (3, 1)), previous)
    assert members == [_member(1, 1), _member(2, 2), _member(3, 1)]
    change = follow.diff(APP, previous, members)
    assert change is not None and change.render and change.enable == [_member(3, 1)]


def test_a_slot_with_no_task_left_loses_its_member_and_other_releases_are_ignored() -> None:
    previous = [_member(1, 1), _member(2, 2), _member(3, 3)]
    tasks = [_task(1, 1), _task(2, 2), _task(3, 3, state="shutdown", desired="shutdown"),
             _task(1, 2, service="shop-web-v3"), _task(2, 3, service="other-web-v4")]
    members = _decide(tasks, NODES, _ok((1, 1), (2, 2), (1, 2), (2, 3)), previous)
    assert members == [_member(1, 1), _member(2, 2)]


def test_two_healthy_tasks_in_a_slot_keep_the_member_it_had() -> None:
    previous = [_member(1, 2)]
    tasks = [_task(1, 1), _task(1, 2)]
    assert _decide(tasks, NODES, _ok((1, 1), (1, 2)), previous) == [_member(1, 2)]


def test_hostile_task_data_is_skipped() -> None:
    raw = [{"ServiceID": "s1", "Slot": 1, "NodeID": "id1", "DesiredState": "running",
            "Status": {"State": "running", "Err": "x" * 1000}},
           {"ServiceID": "s1", "Slot": True, "NodeID": "id1"},
           {"ServiceID": "s1", "Slot": "2"}, {"ServiceID": "unknown", "Slot": 1},
           {"ServiceID": "s1", "Slot": 99, "NodeID": "id2", "DesiredState": "running",
            "Status": "nonsense"}, "not a task", None]
    tasks = follow.parse_tasks(json.loads(json.dumps(raw)), {"s1": SERVICE})
    assert [(t.slot, t.state) for t in tasks] == [(1, "running"), (99, "")]
    assert len(tasks[0].error) == 300
    assert follow.parse_tasks({"not": "a list"}, {}) == []
    # Slot 99 is outside a port block: never a member, never probed.
    assert _decide(tasks, NODES, _ok((1, 1)), []) == [_member(1, 1)]
    assert follow.candidates(4, SERVICE, BASE, tasks, NODES) == [("10.77.5.11", BASE)]


def test_readiness_waits_for_every_slot_and_gives_up_on_repeated_failures() -> None:
    tasks = [_task(1, 1), _task(2, 2, state="starting")]
    ready = deploy.readiness("shop", 4, 3, BASE, tasks, NODES, _ok((1, 1)))
    assert ready.members == [_member(1, 1)] and ready.failed is None
    assert ready.waiting == ["slot 2 on node2: starting", "slot 3: not scheduled"]
    failing = [_task(1, 1, state="failed", desired="shutdown", error="no such image")] * 3
    gave_up = deploy.readiness("shop", 4, 1, BASE, failing, NODES, {})
    assert gave_up.failed == "slot 1 failed 3 times: no such image"
    done = deploy.readiness("shop", 4, 2, BASE, [_task(1, 1), _task(2, 3)], NODES,
                            _ok((1, 1), (2, 3)))
    assert done.waiting == [] and [m.node for m in done.members] == ["node1", "node3"]


def test_a_node_lost_and_its_task_moved_in_one_look_turns_the_old_address_off() -> None:
    """The old member is gone from the set, but its container may still answer: the
    running front must disable it, not only learn of the new one."""
    previous = [_member(1, 1), _member(2, 2), _member(3, 3)]
    moved = [_task(1, 1), _task(2, 2), _task(3, 3, state="shutdown", desired="shutdown"),
             _task(3, 1)]
    members = _decide(moved, _down("id3"), _ok((1, 1), (2, 2), (3, 1), (3, 3)), previous)
    assert members == [_member(1, 1), _member(2, 2), _member(3, 1)]
    change = follow.diff(APP, previous, members)
    assert change is not None and change.render
    assert change.enable == [_member(3, 1)]
    assert change.disable == [_member(3, 3, enabled=False)]


def test_opus_swarm_follow_runs_once_a_swarm_is_set(tmp_path: Path) -> None:
    alone = lifecycle.own_programs(Settings(home=tmp_path))
    assert "opus-swarm-follow" not in {p.name for p in alone}
    swarm = Settings(home=tmp_path, swarm_manager="/run/docker.sock")
    [program] = [p for p in lifecycle.own_programs(swarm) if p.name == "opus-swarm-follow"]
    assert program.command[-2:] == ["-m", "opus_paas.swarm.follow"]
    assert program.environment["OPUS_SWARM_MANAGER"] == "/run/docker.sock"


def test_after_a_scale_down_any_slots_swarm_keeps_will_do() -> None:
    """Swarm does not stop the highest slots first: slots 1 and 3 may stay."""
    tasks = [_task(1, 1), _task(2, 2, state="shutdown", desired="shutdown"), _task(3, 3)]
    ready = deploy.readiness("shop", 4, 2, BASE, tasks, NODES, _ok((1, 1), (3, 3)))
    assert ready.waiting == [] and [m.slot for m in ready.members] == [1, 3]
    starting = deploy.readiness("shop", 4, 2, BASE, tasks, NODES, _ok((1, 1)))
    assert starting.waiting == ["slot 3 on node3: running, not answering its check yet"]


def test_connections_to_node_members_are_read_from_proc_net_tcp() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n"
        "   1: 01344D0A:C350 0B344D0A:5208 01 00000000:00000000 00:00000000 00000000\n"
        "   2: 01344D0A:C351 0C344D0A:5209 02 00000000:00000000 00:00000000 00000000\n"
        "   3: 01344D0A:C352 0D344D0A:520A 06 00000000:00000000 00:00000000 00000000\n"
        "   4: garbage\n")
    # 10.77.52.11:21000 established, 10.77.52.12:21001 connecting; TIME_WAIT and
    # listening sockets are not requests.
    assert members.parse_proc_tcp(text) == {("10.77.52.11", 21000), ("10.77.52.12", 21001)}
