"""The store's swarm records: scheduler, limits, releases, members (docs/scale-out.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opus_paas.store import Limits, Store, SwarmMember, SwarmRelease


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "opus.db")
    store.init()
    return store


def test_scheduler_defaults_to_local_and_refuses_unknown_values(store: Store) -> None:
    owner = store.create_user("ann", "admin")
    app = store.create_app("blog", owner, {})
    assert store.scheduler(app) == "local"
    store.set_scheduler(app, "swarm")
    assert store.scheduler(app) == "swarm"
    assert store.list_schedulers() == {app.id: "swarm"}
    for hostile in ("", "Swarm", "swarm; DROP TABLE apps", "kubernetes"):
        with pytest.raises(ValueError, match="local, swarm"):
            store.set_scheduler(app, hostile)
    assert store.scheduler(app) == "swarm"


def test_limits_are_per_process_type_and_cleared_by_no_limit(store: Store) -> None:
    app = store.create_app("blog", store.create_user("ann", "admin"), {})
    store.set_limits(app, "web", Limits(512 * 2**20, 1.0))
    store.set_limits(app, "worker", Limits(None, 0.5))
    store.set_limits(app, "web", Limits(256 * 2**20, 1.0))
    assert store.limits(app) == {"web": Limits(256 * 2**20, 1.0), "worker": Limits(None, 0.5)}
    store.set_limits(app, "worker", Limits(None, None))
    assert store.limits(app) == {"web": Limits(256 * 2**20, 1.0)}


def test_releases_and_members_are_kept_per_version_and_go_with_the_app(store: Store) -> None:
    owner = store.create_user("ann", "admin")
    app, other = store.create_app("blog", owner, {}), store.create_app("shop", owner, {})
    image = "10.0.0.1:5000/opus/blog@sha256:" + "a" * 64
    for version in (1, 2):
        store.add_swarm_release(app, SwarmRelease("blog", version, image, version, ("web",), 1.0))
    assert [r.version for r in store.swarm_releases(app)] == [2, 1]
    assert store.get_swarm_release(app, 1) == SwarmRelease("blog", 1, image, 1, ("web",), 1.0)
    members = [SwarmMember("blog", 2, "web", slot, f"node{slot}", f"10.0.0.{slot}", 21016 + slot,
                           slot != 3) for slot in (1, 2, 3)]
    store.set_swarm_members(app, 2, "web", members)
    store.set_swarm_members(other, 1, "web", members[:1])
    assert store.swarm_members(app) == members
    store.set_swarm_members(app, 2, "web", members[:2])
    assert store.swarm_members(app) == members[:2]
    store.remove_swarm_release(app, 1)
    assert store.get_swarm_release(app, 1) is None
    store.remove_swarm_members(app, 2)
    assert store.swarm_members(app) == []
    store.delete_app(other)
    assert store.list_swarm_members() == {}
