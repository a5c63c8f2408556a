"""Opus's Postgres reached from Swarm nodes: over TCP with TLS only, each node address
allowed to each app's own database as the app's own role, nothing else.

`allow_nodes(settings, store, addresses)` is the whole switch (idempotent): it finds the
host's address that reaches each node (`ip route get`), gives the cluster a server
certificate for those addresses from Opus's CA, writes pg_hba with one
`hostssl DB ROLE ADDR/32 scram-sha-256` line per node per app database and a
`host all all ADDR/32 reject` after them (so a node's plain TCP, or a node asking for
another database or role, is refused), then reloads the server — or restarts it when
the addresses it listens on change (Postgres reads `listen_addresses` at start only).
No addresses: the cluster goes back to its Unix socket alone.

What the cluster listens on and the node list live in OPUS_HOME/postgres/nodes.json,
so `opus up` starts it the same way (server.program reads it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from opus_paas.data import credentials, server
from opus_paas.errors import InvalidName, NotFound, ServiceError, UsageError
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.tls import private_ca

MAX_NODES = 1000
CERT_NAME = "postgres"
RENEW_BEFORE = 30 * 86400.0


@dataclasses.dataclass(frozen=True)
class Change:
    """What allow_nodes did: the addresses it listens on, and whether it restarted the
    server (`pending`: what the operator must still do, in system mode)."""

    listen: tuple[str, ...]
    nodes: tuple[str, ...]
    restarted: bool
    pending: str | None = None


# ---- pure -------------------------------------------------------------------------------

def check_addresses(addresses: list[str]) -> list[str]:
    """Node addresses: IP literals only (no names, networks or pg_hba keywords), each
    a unicast address another machine can have; canonical, sorted, without repeats."""
    if len(addresses) > MAX_NODES:
        raise InvalidName(f"at most {MAX_NODES} node addresses")
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for text in addresses:
        if not isinstance(text, str) or not text.isascii() or text != text.strip() or \
                "%" in text:
            raise InvalidName(f"invalid node address {text!r}: give an IP address")
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidName(f"invalid node address {text!r}: give an IP address "
                              "(like 10.0.0.12), not a name or a network") from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            raise InvalidName(f"{text} is an IPv4 address written as IPv6; give it as "
                              f"{address.ipv4_mapped}")
        if address.is_unspecified or address.is_loopback or address.is_multicast or \
                address.is_link_local or (isinstance(address, ipaddress.IPv4Address) and
                                          address == ipaddress.IPv4Address("255.255.255.255")):
            raise InvalidName(f"{text} cannot be a node's address (unspecified, loopback, "
                              "link-local or multicast)")
        found.add(address)
    return [str(a) for a in sorted(found, key=lambda a: (a.version, int(a)))]


def render_hba(databases: list[str], nodes: list[str]) -> str:
    """pg_hba.conf for these app databases reached from these node addresses (pure)."""
    lines = [server.PG_HBA.format(admin=server.ADMIN_ROLE).rstrip("\n")]
    if nodes:
        lines.append("# Nodes (written by Opus): TLS only, each app's role its own database "
                     "only;\n# anything else from a node is refused.")
    for node in nodes:
        prefix = "128" if ":" in node else "32"
        for name in databases:
            if not credentials.DATABASE_NAME.fullmatch(name):
                raise InvalidName(f"invalid database name {name!r}")
            lines.append(f"hostssl {name} {name} {node}/{prefix} scram-sha-256")
        lines.append(f"host    all all {node}/{prefix} reject")
    return "\n".join(lines) + "\n"


def url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# ---- where the host is, as nodes see it -------------------------------------------------

def source_address(node: str) -> str:
    """The host's address that packets to `node` leave from (`ip route get`)."""
    done = subprocess.run(["ip", "-j", "route", "get", node], capture_output=True,
                          text=True, check=False, timeout=10,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"})
    try:
        routes = json.loads(done.stdout) if done.returncode == 0 else []
        source = str(routes[0]["prefsrc"])
    except (ValueError, IndexError, KeyError, TypeError):
        raise UsageError(f"this host has no route to node {node} "
                         f"({done.stderr.strip() or 'no source address'}); "
                         "check its network, then add it again") from None
    return check_addresses([source])[0]


# ---- state ------------------------------------------------------------------------------

def state_file(settings: Settings) -> Path:
    return server.nodes_file(settings)


def tls_dir(settings: Settings) -> Path:
    return server.tls_files(settings)[0].parent


def read_state(settings: Settings) -> dict[str, list[str]]:
    try:
        data = json.loads(state_file(settings).read_text())
    except FileNotFoundError:
        return {"nodes": [], "listen": []}
    except (OSError, ValueError) as exc:
        raise ServiceError(f"{state_file(settings)} cannot be read ({exc}); remove it and "
                           "add the nodes again") from None
    return {"nodes": check_addresses(list(data.get("nodes", []))),
            "listen": server.listening(settings)}


def _write(path: Path, text: str, mode: int, owner: tuple[int, int] | None) -> None:
    private_ca.write_file(path, text.encode(), mode, owner)


def app_databases(store: Store) -> list[str]:
    return sorted(found.name for app in store.list_apps()
                  if (found := store.app_database(app)) is not None)


def _certificate(settings: Settings, listen: list[str], owner: tuple[int, int] | None
                 ) -> bool:
    """A server certificate for exactly `listen`, valid for 30 days more; True if a new
    one was installed (the server must then reload)."""
    cert_path, key_path = server.tls_files(settings)
    with contextlib.suppress(OSError, ValueError):
        pem = cert_path.read_text()
        if sorted(private_ca.hosts_of(pem)) == sorted(listen) and key_path.is_file() and \
                private_ca.expires(pem) - time.time() > RENEW_BEFORE:
            return False
    tls_dir(settings).mkdir(mode=0o755, exist_ok=True)
    private_ca.install(private_ca.issue(settings, CERT_NAME, listen), cert_path, key_path,
                       owner)
    return True


# ---- the switch -------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One writer of pg_hba and nodes.json at a time (nodes added while pg:create runs)."""
    fd = os.open(server.home(settings) / ".nodes.lock",
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def allow_nodes(settings: Settings, store: Store, addresses: list[str]) -> Change:
    """Let these node addresses (all of them: the list replaces the last one) reach the
    apps' databases over TLS; rewrite pg_hba and reload, or restart if what the server
    listens on changed."""
    nodes = check_addresses(addresses)
    srv = server.current(settings, store)
    if srv.kind != "embedded":
        raise UsageError("the apps' databases are on the operator's own server: let the "
                         "node addresses reach it there (pg_hba hostssl lines)")
    if not server.enabled(settings):
        raise UsageError("Opus's Postgres cluster is not made; `opus addons:enable postgres`")
    listen = sorted({source_address(node) for node in nodes})
    with _locked(settings):
        return _allow(settings, store, srv, nodes, listen)


def _allow(settings: Settings, store: Store, srv: server.Server, nodes: list[str],
           listen: list[str]) -> Change:
    owner = server.cluster_ids(settings)
    before = read_state(settings)
    if listen:
        _certificate(settings, listen, owner)
    hba = server.data_dir(settings) / "pg_hba.conf"
    _write(hba, render_hba(app_databases(store), nodes), 0o600, owner)
    if nodes:
        _write(state_file(settings), json.dumps({"nodes": nodes, "listen": listen},
                                                indent=1) + "\n", 0o644, None)
    else:
        state_file(settings).unlink(missing_ok=True)     # back to the socket alone
    if before["listen"] == listen:
        _reload(srv)
        return Change(tuple(listen), tuple(nodes), restarted=False)
    return _restart(settings, store, Change(tuple(listen), tuple(nodes), restarted=False))


def follow(settings: Settings, store: Store, addresses: list[str]) -> Change | None:
    """allow_nodes when the apps' databases are on Opus's own cluster, else None (no
    Postgres, or the operator's server): what nodes:add and nodes:remove call with
    every node's address as the manager reports it (`docker node inspect`
    .Status.Addr, an IP literal)."""
    config = store.addon(server.ADDON)
    if config is None or config.get("kind") == "external" or not server.enabled(settings):
        check_addresses(addresses)
        return None
    return allow_nodes(settings, store, addresses)


def refresh(settings: Settings, store: Store) -> None:
    """pg_hba again for the nodes already allowed (an app's database made or dropped)."""
    if not state_file(settings).exists():
        return
    with _locked(settings):
        nodes = read_state(settings)["nodes"]
        _write(server.data_dir(settings) / "pg_hba.conf",
               render_hba(app_databases(store), nodes), 0o600, server.cluster_ids(settings))
        _reload(server.current(settings, store))


def _reload(srv: server.Server) -> None:
    from opus_paas.data import postgres

    with postgres.admin(srv) as conn:
        conn.execute("SELECT pg_reload_conf()")
        # pg_hba_file_rules shows what the server read; an error there is a bad file.
        bad = conn.execute("SELECT line_number, error FROM pg_hba_file_rules "
                           "WHERE error IS NOT NULL").fetchall()
    if bad:
        raise ServiceError(f"Postgres refused pg_hba.conf: {bad[0][1]} (line {bad[0][0]})")


def _restart(settings: Settings, store: Store, change: Change) -> Change:
    """Restart the cluster with its new listen addresses (supervisor's program changes:
    `apply` stops and starts it); in system mode supervisor is root's."""
    if settings.system:
        return dataclasses.replace(change, pending="restart Postgres as root: `opus up "
                                   "--system` (it listens on the nodes' side then)")
    # The one call from data/ into the layers above: the program list is lifecycle's.
    from opus_paas.control import lifecycle
    from opus_paas.supervisor import Supervisor

    supervisor = Supervisor(settings)
    if not supervisor.is_running():
        return dataclasses.replace(change, pending="start Opus: `opus up`")
    supervisor.write_programs("opus", lifecycle.own_programs(settings))
    supervisor.apply()
    supervisor.start_program(server.PROGRAM)
    server.wait_ready(server.current(settings, store))
    supervisor.wait_until_running(server.PROGRAM)
    return dataclasses.replace(change, restarted=True)


def database_url_for_nodes(settings: Settings, store: Store, app: App,
                           ca_path: str = private_ca.CA_IN_CONTAINER) -> str:
    """The app's DATABASE_URL as its containers on nodes use it: the host's node-side
    address, TLS verified against Opus's CA (at `ca_path`, where the container has it)."""
    found = store.app_database(app)
    if found is None:
        raise NotFound(f"{app.name} has no Postgres database; `opus pg:create {app.name}` "
                       "makes one")
    listen = read_state(settings)["listen"]
    if not listen:
        raise UsageError("no node may reach Postgres yet; nodes are allowed when they are "
                         "added (`opus nodes:add HOST`)")
    if any(c in ca_path for c in "&?#%= \n\r") or not ca_path.startswith("/"):
        raise InvalidName(f"invalid CA path {ca_path!r}")
    password = credentials.password_of(found.url)
    return (credentials.database_url(url_host(listen[0]), server.PORT, found.name,
                                     password)
            + f"?sslmode=verify-full&sslrootcert={ca_path}")
