"""Old release images leave Opus's registry (docs/scale-out.md, Images: pruning), on the
real `opus-registry` program (Debian's docker-registry): an app's swarm releases past
`keep_releases` lose their record and their manifest (not the live one, not one whose
services run, not a digest a kept release reuses, never another app's or registry's
image); the garbage collection then removes the blobs no manifest names, never while
an image is being sent; the layer cache forgets layers unused for a month."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from opus_paas import locks
from opus_paas import settings as settings_module
from opus_paas.errors import ServiceError
from opus_paas.settings import Settings
from opus_paas.store import Store, SwarmRelease
from opus_paas.swarm import images, layers, prune, registry
from opus_paas.swarm.layers import Entry
from tests.test_swarm_images import running_registry

BLOBS = Path("docker/registry/v2/blobs/sha256")


def _image(client: registry.Client, app: str, version: int, shared: layers.Layer) -> tuple[
        str, layers.Layer]:
    """A release image of `app` pushed as Opus pushes one: its digest and own layer."""
    own = layers.layer([Entry("app/v.py", "file", 0o644, f"{app} = {version}\n".encode())])
    repo = f"opus/{app}"
    client.ensure_blob(repo, shared.digest, shared.gzipped, images.BASE_REPO)
    client.ensure_blob(repo, own.digest, own.gzipped)
    config = images.image_config(app, version, [shared, own])
    client.ensure_blob(repo, "sha256:" + hashlib.sha256(config).hexdigest(), config)
    body = images.manifest(config, [shared, own])
    return client.put_manifest(repo, f"v{version}", body), own


def _stored(settings: Settings, layer: layers.Layer) -> bool:
    hexa = layer.digest.split(":", 1)[1]
    return (registry.data_dir(settings) / "storage" / BLOBS / hexa[:2] / hexa /
            "data").is_file()


def test_old_release_images_go_and_their_blobs_are_collected(tmp_path: Path) -> None:
    with running_registry(tmp_path, OPUS_KEEP_RELEASES="2") as settings:
        address = settings.swarm_registry
        store = Store(settings.db_path)
        store.init()
        owner = store.create_user("ann", "admin")
        shop, blog = store.create_app("shop", owner, {}), store.create_app("blog", owner, {})
        client = registry.client_for(settings)
        shared = layers.layer([Entry("usr/bin/x", "file", 0o755, b"base")])
        made = {v: _image(client, "shop", v, shared) for v in (1, 2, 3, 4)}
        other, other_own = _image(client, "blog", 1, shared)

        def record(version: int, image: str, services: tuple[str, ...] = ()) -> None:
            store.add_swarm_release(shop, SwarmRelease("shop", version, image, 0, services,
                                                       float(version)))
        ref = {v: f"{address}/opus/shop@{d}" for v, (d, _own) in made.items()}
        record(1, ref[1])
        record(2, ref[2])
        record(3, ref[3], ("shop-web-v3",))          # its services still exist
        record(4, ref[4])
        record(5, ref[2])                            # a rollback to v2: its image again
        record(6, ref[4])
        record(7, f"{address}/opus/blog@{other}")    # hostile: another app's image
        record(8, f"other.example:5000/opus/shop@{made[1][0]}")   # another registry's
        store.add_swarm_release(blog, SwarmRelease("blog", 1, f"{address}/opus/blog@{other}",
                                                   1, (), 1.0))
        # Keep 2 (v8, v7); v6 (live), v3 (services) stay; v5, v4, v2, v1 go. v2's and
        # v4's images are reused by v5 and v6: v4's stays (v6 kept), v2's goes with v5.
        live = store.get_app("shop")
        assert live is not None
        live = dataclasses.replace(live, live_version=6)
        assert prune.forget_releases(settings, store, live) == [1, 2, 4, 5]
        assert [r.version for r in store.swarm_releases(shop)] == [8, 7, 6, 3]
        for version, kept in ((1, False), (2, False), (3, True), (4, True)):
            digest = made[version][0]
            assert (client.get_manifest("opus/shop", digest) is not None) == kept, version
        assert client.get_manifest("opus/blog", other) is not None   # never another's
        assert prune.wanted_marker(settings).exists()
        assert prune.forget_releases(settings, store, live) == []    # nothing more

        # The collection waits while an image is being sent (the lock held shared).
        done = threading.Event()

        def collect() -> None:
            assert prune.collect(settings, store) is True
            done.set()
        with locks.registry_lock(settings, exclusive=False):
            worker = threading.Thread(target=collect)
            worker.start()
            time.sleep(1.0)
            assert not done.is_set() and _stored(settings, made[1][1])
        worker.join(timeout=120)
        assert done.is_set()
        assert not _stored(settings, made[1][1]) and not _stored(settings, made[2][1])
        assert _stored(settings, made[3][1]) and _stored(settings, made[4][1])
        assert _stored(settings, shared) and _stored(settings, other_own)
        assert not prune.wanted_marker(settings).exists()
        assert prune.collect(settings, store) is False               # nothing wanted
        # The registry serves what is kept.
        assert client.get_manifest("opus/shop", made[4][0]) is not None
        # A publish waits for a collection under way, and says so past its time.
        with locks.registry_lock(settings, exclusive=True), \
                pytest.raises(ServiceError, match="garbage collection"), \
                locks.registry_lock(settings, exclusive=False, timeout=0.5):
            pass


def test_the_layer_cache_forgets_what_went_unused_for_a_month(tmp_path: Path) -> None:
    settings = settings_module.load({"OPUS_HOME": str(tmp_path / "home")})
    settings.home.mkdir()
    made = layers.layer([Entry("a", "file", 0o644, b"a")])
    calls: list[str] = []

    def make() -> layers.Layer:
        calls.append("made")
        return made
    images.cached_layer(settings, "venv-old", make)
    images.cached_layer(settings, "venv-new", make)
    cache = settings.home / "images"
    month = prune.CACHE_DAYS * 86400
    old = time.time() - month - 60
    os.utime(cache / "venv-old.tar.gz", (old, old))
    os.utime(cache / "venv-new.tar.gz", (old, old))
    images.cached_layer(settings, "venv-new", make)      # a use: touched
    assert calls == ["made", "made"]
    assert prune.prune_layer_cache(settings) == ["venv-old"]
    assert sorted(p.name for p in cache.iterdir()) == ["venv-new.json", "venv-new.tar.gz"]


def test_what_goes_is_decided_by_version_never_the_live_or_running_ones() -> None:
    def rec(version: int, services: tuple[str, ...] = ()) -> SwarmRelease:
        return SwarmRelease("shop", version, f"r:5000/opus/shop@sha256:{version:064x}", 0,
                            services, 0.0)
    records = [rec(1), rec(2, ("shop-web-v2",)), rec(3), rec(4), rec(5)]
    assert [r.version for r in prune.past_keep(records, 1, 2)] == [3]
    assert prune.past_keep(records, None, 5) == []
    assert [r.version for r in prune.past_keep(records, None, 0)] == [5, 4, 3, 1]
    digests = prune.deletable("shop", "r:5000", [rec(1), rec(3)], [rec(4)])
    assert digests == [f"sha256:{1:064x}", f"sha256:{3:064x}"]
    hostile = SwarmRelease("shop", 9, "r:5000/opus/shop@sha256:../../x", 0, (), 0.0)
    assert prune.deletable("shop", "r:5000", [hostile], []) == []
