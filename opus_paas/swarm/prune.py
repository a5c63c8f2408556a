"""Old release images leave Opus's registry (docs/scale-out.md, Images: pruning).

- `forget_releases` (after a push, with the old slugs): the app's swarm releases past
  the newest `keep_releases` lose their record (never the live one, nor one whose
  services exist), and their manifest is deleted from the registry, unless a kept
  record names the same digest (a rollback's release reuses its image) or the image
  is not in this app's repository of Opus's registry.
- `collect` (opus-scheduler, hourly): once manifests were deleted, `docker-registry
  garbage-collect` removes the blobs no manifest names any more. It holds the
  registry's lock exclusively and a publish holds it shared, so no upload is in flight
  (a blob sent before its manifest would otherwise go). Layers kept in OPUS_HOME/images
  and unused for CACHE_DAYS go too, and the swarm's configs of CAs no longer Opus's.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from opus_paas import locks
from opus_paas.errors import OpusError, ServiceError
from opus_paas.settings import Settings
from opus_paas.store import App, Store, SwarmRelease
from opus_paas.swarm import nodes, registry, services
from opus_paas.tls import private_ca

log = logging.getLogger("opus.swarm.prune")

CACHE_DAYS = 30
GC_TIMEOUT = 600.0
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def wanted_marker(settings: Settings) -> Path:
    """Present while deleted manifests wait for a garbage collection."""
    return registry.data_dir(settings) / "collect-wanted"


def past_keep(records: Sequence[SwarmRelease], live: int | None, keep: int
              ) -> list[SwarmRelease]:
    """The records that go (pure): beyond the newest `keep`, not the live release's,
    none whose services exist."""
    newest = sorted(records, key=lambda r: r.version, reverse=True)
    return [r for r in newest[keep:] if r.version != live and not r.services]


def deletable(app: str, address: str, gone: Sequence[SwarmRelease],
              kept: Sequence[SwarmRelease]) -> list[str]:
    """The manifest digests to delete (pure): those of `gone` records in this app's
    repository of the registry at `address`, that no kept record names."""
    prefix = f"{address}/opus/{app}@"
    named = {r.image for r in kept}
    found = []
    for record in gone:
        if not record.image.startswith(prefix) or record.image in named:
            continue
        digest = record.image[len(prefix):]
        if DIGEST.fullmatch(digest) and digest not in found:
            found.append(digest)
    return found


def forget_releases(settings: Settings, store: Store, app: App) -> list[int]:
    """The app's old swarm releases go, with their manifests; the versions forgotten."""
    records = store.swarm_releases(app)
    gone = past_keep(records, app.live_version, settings.keep_releases)
    if not gone:
        return []
    versions = {r.version for r in gone}
    kept = [r for r in records if r.version not in versions]
    digests = deletable(app.name, settings.swarm_registry, gone, kept) \
        if settings.swarm_registry else []
    client = registry.client_for(settings) if digests else None
    deleted = False
    for digest in digests:
        assert client is not None
        try:
            deleted |= client.delete_manifest(f"opus/{app.name}", digest)
        except OpusError as exc:      # the record goes all the same: its image stays
            log.warning("%s: manifest %s not deleted: %s", app.name, digest, exc.message)
    for record in gone:
        store.remove_swarm_release(app, record.version)
    if deleted and registry.runs_here(settings):
        wanted_marker(settings).parent.mkdir(parents=True, exist_ok=True)
        wanted_marker(settings).touch()
    return sorted(versions)


def collect(settings: Settings, store: Store) -> bool:
    """The registry's garbage collection, when manifests were deleted since the last
    one; the layer cache's old entries and old CAs' configs in any case. True when it
    collected."""
    prune_layer_cache(settings)
    try:
        forget_ca_configs(settings)
    except OpusError as exc:
        log.warning("old CA configs not looked at: %s", exc.message)
    marker = wanted_marker(settings)
    if not settings.swarm_registry or not registry.runs_here(settings) or \
            not marker.exists():
        return False
    config = registry.write_config(settings)
    with locks.registry_lock(settings, exclusive=True, timeout=GC_TIMEOUT):
        marker.unlink()
        try:
            result = subprocess.run([registry.BINARY, "garbage-collect", str(config)],
                                    capture_output=True, text=True, timeout=GC_TIMEOUT,
                                    check=False, cwd=registry.data_dir(settings))
        except subprocess.TimeoutExpired:
            marker.touch()
            raise ServiceError(f"the registry's garbage collection took over "
                               f"{GC_TIMEOUT:.0f} s; it runs again at the next turn") from None
        if result.returncode != 0:
            marker.touch()
            raise ServiceError("the registry's garbage collection failed: "
                               f"{(result.stderr or result.stdout).strip()[-600:]}")
    return True


def forget_ca_configs(settings: Settings) -> list[str]:
    """The swarm's configs of CAs Opus no longer has (labelled `opus.ca`, named
    `opus-ca-<hash>`, not the current CA's); one a service still uses stays (Docker
    refuses) until the next turn. Their names."""
    if not settings.swarm_manager:
        return []
    mgr = nodes.manager(settings)
    try:
        current = services.ca_config_name(private_ca.ca_cert_path(settings).read_bytes())
    except OSError:
        current = ""        # no CA (yet): every old one may go
    listed = mgr("config", "ls", "--filter", "label=opus.ca=1", "--format",
                 "{{.Name}}").split()
    removed = []
    for name in listed:
        if name != current and services.CA_CONFIG.fullmatch(name) and \
                mgr.run("config", "rm", name).returncode == 0:
            removed.append(name)
    return removed


def prune_layer_cache(settings: Settings, now: float | None = None) -> list[str]:
    """Layers in OPUS_HOME/images unused for CACHE_DAYS go (a use touches them); their
    keys."""
    directory = settings.home / "images"
    if not directory.is_dir():
        return []
    limit = (time.time() if now is None else now) - CACHE_DAYS * 86400
    removed = []
    for blob in sorted(directory.glob("*.tar.gz")):
        if blob.stat().st_mtime < limit:
            key = blob.name[:-len(".tar.gz")]
            blob.unlink(missing_ok=True)
            (directory / f"{key}.json").unlink(missing_ok=True)
            removed.append(key)
    return removed
