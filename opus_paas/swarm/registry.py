"""Opus's private registry (Debian's docker-registry, the CNCF distribution 2.8) and
a small client of its HTTP API V2 that pushes the layers and manifests images.py makes.

The registry runs as the supervisor program `opus-registry` on the Opus host once
`swarm_registry` is set to host:port with an IP address of this host the nodes reach
(a name or another host's address: a registry the operator runs); its storage lives
in OPUS_HOME/registry. Plain HTTP for now: nodes list it in their
daemon.json's insecure-registries (docs/scale-out.md, Images: TLS with Opus's CA is
the gap).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from opus_paas.errors import ServiceError, UsageError
from opus_paas.privileged import INSTANCE_MARKER
from opus_paas.settings import Settings, user_ids

PROGRAM = "opus-registry"
BINARY = "/usr/bin/docker-registry"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def address(settings: Settings) -> str:
    if not settings.swarm_registry:
        raise UsageError("no registry is set: set swarm_registry to host:port, an address "
                         "of this host the nodes reach (e.g. OPUS_SWARM_REGISTRY=10.0.0.1:5000)"
                         ", then run `opus up` to start opus-registry")
    return settings.swarm_registry


def data_dir(settings: Settings) -> Path:
    return settings.home / "registry"


def config_text(settings: Settings) -> str:
    """The registry's config.yml: storage under OPUS_HOME, listening on swarm_registry,
    deletes allowed (old releases' images are pruned), no debug listener."""
    listen = address(settings)
    storage = data_dir(settings) / "storage"
    return "\n".join([
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {json.dumps(str(storage))}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {json.dumps(listen)}",
        "  headers:",
        "    X-Content-Type-Options: [nosniff]",
        "",
    ])


def write_config(settings: Settings) -> Path:
    """Writes config.yml (render to a temp file, rename into place); its path."""
    directory = data_dir(settings)
    (directory / "storage").mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / "config.yml"
    temp = directory / "config.yml.new"
    temp.write_text(config_text(settings))
    temp.replace(path)
    ids = user_ids(settings.system_user) if settings.system and os.geteuid() == 0 else None
    if ids is not None:         # `opus up --system` writes it; the opus user runs it
        for owned in (directory, directory / "storage", path):
            os.chown(owned, *ids)
    return path


def runs_here(settings: Settings) -> bool:
    """Whether Opus runs the registry itself: swarm_registry's host is an IP address of
    this host. A name, or another host's address, is a registry the operator runs."""
    host = settings.swarm_registry.rpartition(":")[0] or settings.swarm_registry
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError:
            return False
    return True


def program(settings: Settings) -> dict[str, Any] | None:
    """The supervisor program of the registry, as supervisor.Program's fields, once
    swarm_registry names an address of this host (`opus up` adds it to Opus's own
    programs)."""
    if not settings.swarm_registry or not runs_here(settings):
        return None
    config = write_config(settings)
    return {
        "name": PROGRAM,
        "command": [BINARY, "serve", str(config)],
        "directory": data_dir(settings),
        "log_file": settings.logs_dir / f"{PROGRAM}.log",
        "environment": {"PATH": "/usr/bin:/bin", "HOME": str(data_dir(settings)),
                        INSTANCE_MARKER: str(settings.home)},
        "user": settings.system_user if settings.system else None,
        "startsecs": 1,
        "stopwaitsecs": 10,
    }


class Client:
    """The registry's HTTP API V2 (plain HTTP), for one `host:port`."""

    def __init__(self, registry: str, timeout: float = 120) -> None:
        self.registry = registry
        self.timeout = timeout

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        host, _, port = self.registry.partition(":")
        conn = http.client.HTTPConnection(host, int(port or 80), timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        except OSError as exc:
            raise ServiceError(f"the registry {self.registry} does not answer ({exc}); is "
                               f"{PROGRAM} running (`opus status`)?") from None
        finally:
            conn.close()

    def _fail(self, what: str, status: int, data: bytes) -> ServiceError:
        return ServiceError(f"the registry {self.registry} refused {what}: HTTP {status} "
                            f"{data[:300].decode(errors='replace')}")

    def has_blob(self, repo: str, digest: str) -> bool:
        status, _headers, _data = self._request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return status == 200

    def mount_blob(self, repo: str, digest: str, source: str) -> bool:
        """Links a blob `source` holds into `repo` without sending it; False if the
        registry opened an upload instead (then `upload_blob`)."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        status, headers, data = self._request("POST", f"/v2/{repo}/blobs/uploads/?{query}")
        if status == 201:
            return True
        if status == 202 and headers.get("location"):
            self._request("DELETE", self._path(headers["location"]))
            return False
        raise self._fail(f"mounting {digest} into {repo}", status, data)

    def upload_blob(self, repo: str, digest: str, data: bytes) -> None:
        status, headers, body = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        if status != 202 or not headers.get("location"):
            raise self._fail(f"an upload to {repo}", status, body)
        location = self._path(headers["location"])
        joiner = "&" if "?" in location else "?"
        status, _headers, body = self._request(
            "PUT", f"{location}{joiner}{urllib.parse.urlencode({'digest': digest})}", data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        if status != 201:
            raise self._fail(f"blob {digest} for {repo}", status, body)

    def ensure_blob(self, repo: str, digest: str, data: bytes, shared: str | None = None
                    ) -> bool:
        """Makes `repo` hold the blob; True if its bytes had to be sent. With `shared`
        (a repository the same blob goes to for every app, e.g. opus/base), the bytes
        are sent there at most once and mounted into `repo`."""
        if self.has_blob(repo, digest):
            return False
        sent = False
        if shared is not None:
            if not self.has_blob(shared, digest):
                self.upload_blob(shared, digest, data)
                sent = True
            if self.mount_blob(repo, digest, shared):
                return sent
        self.upload_blob(repo, digest, data)
        return True

    def put_manifest(self, repo: str, tag: str, manifest: bytes) -> str:
        """Stores the manifest under `tag`; its digest, as the registry computed it."""
        status, headers, body = self._request(
            "PUT", f"/v2/{repo}/manifests/{tag}", manifest,
            {"Content-Type": MANIFEST_V2, "Content-Length": str(len(manifest))})
        if status != 201:
            raise self._fail(f"the manifest {repo}:{tag}", status, body)
        return headers.get("docker-content-digest", "")

    def get_manifest(self, repo: str, reference: str) -> bytes | None:
        status, _headers, body = self._request("GET", f"/v2/{repo}/manifests/{reference}",
                                               headers={"Accept": MANIFEST_V2})
        return body if status == 200 else None

    def delete_manifest(self, repo: str, digest: str) -> bool:
        """Deletes the manifest `digest` of `repo` (its blobs go at the next garbage
        collection); False when the registry had none."""
        status, _headers, body = self._request("DELETE", f"/v2/{repo}/manifests/{digest}")
        if status in (200, 202):
            return True
        if status == 404:
            return False
        raise self._fail(f"deleting the manifest {repo}@{digest}", status, body)

    def _path(self, location: str) -> str:
        parsed = urllib.parse.urlsplit(location)
        return parsed.path + (f"?{parsed.query}" if parsed.query else "")
