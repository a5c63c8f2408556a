"""Opus's private registry (Debian's docker-registry, the CNCF distribution 2.8) and
a small client of its HTTP API V2 that pushes the layers and manifests images.py makes.

The registry runs as the supervisor program `opus-registry` on the Opus host once
`swarm_registry` is set to host:port with an IP address of this host the nodes reach
(a name or another host's address: a registry the operator runs); its storage lives
in OPUS_HOME/registry. It speaks TLS only, with a certificate from Opus's CA for that
address (OPUS_HOME/registry/tls, renewed 30 days before it ends); `nodes:add` puts the
CA in each node's /etc/docker/certs.d/REGISTRY/ca.crt, and Opus's own client verifies
it the same way. It lets in one user, `opus`, with a password made at first use
(OPUS_HOME/registry/password, 0600; bcrypt in its htpasswd): Opus's client sends it,
the swarm manager's docker client has it in OPUS_HOME/docker/config.json and hands it
to the nodes with each service (`--with-registry-auth`), and a data move gives it to
the node's `docker pull` on stdin (volumes.py). An operator's registry is reached over
TLS verified with `swarm_registry_ca` when that is set, else over plain HTTP.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import secrets
import socket
import ssl
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opus_paas.errors import ServiceError, UsageError
from opus_paas.privileged import INSTANCE_MARKER
from opus_paas.settings import Settings, user_ids
from opus_paas.supervisor import Supervisor
from opus_paas.tls import private_ca

if TYPE_CHECKING:
    from opus_paas.store import Store

PROGRAM = "opus-registry"
BINARY = "/usr/bin/docker-registry"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
RENEW_BEFORE = 30 * 86400.0
HTPASSWD = "/usr/bin/htpasswd"      # apache2-utils
USER = "opus"


def address(settings: Settings) -> str:
    if not settings.swarm_registry:
        raise UsageError("no registry is set: set swarm_registry to host:port, an address "
                         "of this host the nodes reach (e.g. OPUS_SWARM_REGISTRY=10.0.0.1:5000)"
                         ", then run `opus up` to start opus-registry")
    return settings.swarm_registry


def data_dir(settings: Settings) -> Path:
    return settings.home / "registry"


def tls_paths(settings: Settings) -> tuple[Path, Path]:
    """The registry's certificate and key."""
    directory = data_dir(settings) / "tls"
    return directory / "registry.crt", directory / "registry.key"


def host_of(registry: str) -> str:
    """The host part of host:port (an IPv6 literal without its brackets)."""
    host = registry.rpartition(":")[0] or registry
    return host.strip("[]")


def ensure_certificate(settings: Settings) -> bool:
    """A certificate from Opus's CA for the registry's address, unless a valid one for
    it is there; True when one was made."""
    cert, key = tls_paths(settings)
    host = host_of(address(settings))
    if cert.is_file() and key.is_file():
        pem = cert.read_text()
        if private_ca.hosts_of(pem) == [host] and \
                private_ca.expires(pem) - time.time() > RENEW_BEFORE:
            return False
    cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = user_ids(settings.system_user) if settings.system and os.geteuid() == 0 \
        else None
    if owner is not None:
        os.chown(cert.parent, *owner)
    private_ca.install(private_ca.issue(settings, "registry", [host]), cert, key, owner)
    return True


def password(settings: Settings) -> str:
    """The registry's password for its one user, made at first use."""
    path = data_dir(settings) / "password"
    if not path.is_file():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = user_ids(settings.system_user) if settings.system and os.geteuid() == 0 \
            else None       # (root's commands in system mode: the opus user's file)
        private_ca.write_file(path, secrets.token_urlsafe(32).encode(), 0o600, owner)
    return path.read_text().strip()


def credentials(settings: Settings) -> tuple[str, str] | None:
    """(user, password) Opus and the nodes use with its own registry; None for an
    operator's."""
    return (USER, password(settings)) if runs_here(settings) else None


def htpasswd_line(user: str, secret: str) -> str:
    """`user:bcrypt-hash` (apache2-utils' htpasswd; the password on its stdin)."""
    result = subprocess.run([HTPASSWD, "-B", "-i", "-n", user], input=secret,
                            capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0 or not result.stdout.startswith(f"{user}:$2"):
        raise ServiceError(f"{HTPASSWD} could not hash the registry's password "
                           f"({result.stderr.strip()[-200:]}); install apache2-utils")
    return result.stdout.strip()


def docker_config_dir(settings: Settings) -> Path | None:
    """The swarm manager's docker client's config (DOCKER_CONFIG), holding the
    registry's credentials for `--with-registry-auth`; None without Opus's registry."""
    found = credentials(settings) if settings.swarm_registry else None
    if found is None:
        return None
    directory = settings.home / "docker"
    directory.mkdir(mode=0o700, exist_ok=True)
    wanted = auth_config(address(settings), found)
    path = directory / "config.json"
    # Root's commands in system mode write it as the opus user's, who runs the others.
    owner = user_ids(settings.system_user) if settings.system and os.geteuid() == 0 \
        else None
    if not path.is_file() or path.read_bytes() != wanted:
        private_ca.write_file(path, wanted, 0o600, owner)
    if owner is not None:
        os.chown(directory, *owner)
    return directory


def auth_config(registry: str, found: tuple[str, str]) -> bytes:
    """A docker client's config.json naming the registry's credentials (pure)."""
    token = base64.b64encode(f"{found[0]}:{found[1]}".encode()).decode()
    return json.dumps({"auths": {registry: {"auth": token}}}, sort_keys=True).encode()


def config_text(settings: Settings, tls: tuple[Path, Path] | None = None,
                htpasswd: Path | None = None) -> str:
    """The registry's config.yml: storage under OPUS_HOME, listening on swarm_registry
    (over TLS with `tls`, certificate and key; letting in the users of `htpasswd`),
    deletes allowed (old releases' images are pruned), no debug listener."""
    listen = address(settings)
    storage = data_dir(settings) / "storage"
    served = ["  tls:", f"    certificate: {json.dumps(str(tls[0]))}",
              f"    key: {json.dumps(str(tls[1]))}"] if tls else []
    auth = ["auth:", "  htpasswd:", "    realm: opus-registry",
            f"    path: {json.dumps(str(htpasswd))}"] if htpasswd else []
    return "\n".join([
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        *auth,
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {json.dumps(str(storage))}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {json.dumps(listen)}",
        *served,
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
    tls = htpasswd = None
    if runs_here(settings):
        ensure_certificate(settings)
        tls = tls_paths(settings)
        htpasswd = directory / "htpasswd"
        private_ca.write_file(htpasswd, (htpasswd_line(USER, password(settings)) + "\n")
                              .encode(), 0o600)
    temp.write_text(config_text(settings, tls, htpasswd))
    temp.replace(path)
    ids = user_ids(settings.system_user) if settings.system and os.geteuid() == 0 else None
    if ids is not None:         # `opus up --system` writes it; the opus user runs it
        for owned in (directory, directory / "storage", path, directory / "htpasswd",
                      directory / "password"):
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


def trusted_ca(settings: Settings) -> Path | None:
    """The CA the registry's certificate is verified with: Opus's for its own registry,
    `swarm_registry_ca` for an operator's (None: an operator's over plain HTTP)."""
    if runs_here(settings):
        return private_ca.ensure(settings)
    return Path(settings.swarm_registry_ca) if settings.swarm_registry_ca else None


def client_for(settings: Settings) -> Client:
    return Client(address(settings), ca=trusted_ca(settings), auth=credentials(settings))


def renew_certificate(settings: Settings, _store: Store | None = None) -> bool:
    """opus-scheduler's daily turn: a certificate renewed (or made for a new address)
    restarts opus-registry, which reads it at start. True when it did."""
    if not settings.swarm_registry or not runs_here(settings) or \
            not ensure_certificate(settings):
        return False
    write_config(settings)
    supervisor = Supervisor(settings)
    if supervisor.is_running():
        supervisor.restart_group(PROGRAM)
    return True


class Client:
    """The registry's HTTP API V2 for one `host:port`: over TLS verified with `ca`
    (its certificate must name that host), or plain HTTP without one."""

    def __init__(self, registry: str, timeout: float = 120, ca: Path | None = None,
                 auth: tuple[str, str] | None = None) -> None:
        self.registry = registry
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(ca)) if ca else None
        self.auth = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode() \
            if auth else None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        host, _, port = self.registry.rpartition(":")
        host = host.strip("[]")
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, int(port or 443), timeout=self.timeout, context=self.context) \
            if self.context else http.client.HTTPConnection(host, int(port or 80),
                                                            timeout=self.timeout)
        sent = dict(headers or {})
        if self.auth:
            sent["Authorization"] = self.auth
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
            if response.status == 401:
                raise ServiceError(f"the registry {self.registry} refused Opus's credentials "
                                   "(HTTP 401): check OPUS_HOME/registry/password, then "
                                   "`opus up` (which writes its htpasswd again)")
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        except ssl.SSLCertVerificationError as exc:
            raise ServiceError(f"the registry {self.registry} is not the one Opus trusts "
                               f"({exc.verify_message}): its certificate must come from "
                               "the CA Opus verifies it with (Opus's own, or "
                               "swarm_registry_ca)") from None
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
