"""The front Apache: its whole config from the apps' state, and its access log.

Opus gives secureops the values (front-install: secureops/front.py renders every
directive, since the front's master reads it as root), which tests the result with
`apache2 -t` and renames it into place; Opus then reloads the front gracefully
(SIGUSR1). A config that fails its test is never made live.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from opus_paas import privileged, secretfile
from opus_paas.front import tls as front_tls
from opus_paas.settings import Settings
from opus_paas.store import Store, TlsSite

TOKEN = re.compile(r"[0-9a-f]{32}")


# A line of that format: vhost, client, [time], then the rest; status, size and
# duration are taken from the end, since the request line may hold anything.
LOG_LINE = re.compile(r"(\S+) (\S+) \[([^\]]{1,40})\] (.*)", re.S)
LOG_TAIL = re.compile(r'.* ([0-9]{3}) (?:[0-9]+|-) ([0-9]+) "[^"]*"', re.S)


@dataclasses.dataclass(frozen=True)
class LogLine:
    """One line of the front's access log."""

    host: str          # the vhost's ServerName
    client: str
    at: datetime.datetime
    rest: str          # "request" status size duration "served-by"

    @property
    def status_and_millis(self) -> tuple[int, float] | None:
        tail = LOG_TAIL.fullmatch(self.rest)
        return (int(tail.group(1)), int(tail.group(2)) / 1000) if tail else None


def parse_log_line(line: str) -> LogLine | None:
    """A line of the access log, or None if it is not one (pure)."""
    match = LOG_LINE.fullmatch(line)
    if not match:
        return None
    try:
        when = datetime.datetime.strptime(match.group(3), "%d/%b/%Y:%H:%M:%S %z")
    except ValueError:
        return None
    return LogLine(match.group(1), match.group(2), when, match.group(4))


def log_lines_for(lines: Iterable[str], hosts: Iterable[str]) -> Iterator[LogLine]:
    """The lines of the access log served for one of `hosts` (pure)."""
    wanted = set(hosts)
    for line in lines:
        parsed = parse_log_line(line)
        if parsed is not None and parsed.host in wanted:
            yield parsed


@dataclasses.dataclass(frozen=True)
class Member:
    """A balancer member: where one instance answers. A disabled member is in the
    config but gets no request until the balancer-manager enables it."""

    host: str                # a swarm node's private address (or 127.0.0.1)
    port: int
    enabled: bool = True

    @property
    def url(self) -> str:
        """Its name in the balancer (and the balancer-manager)."""
        return f"http://{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Site:
    """One app as the front sees it: its host names, its live port among its two
    balancer members. (Its static files are the live release's: secureops derives
    their path.) An app on swarm nodes has `nodes` instead: its members there, and no
    port of its own (`port` 0)."""

    app: str
    domains: tuple[str, ...]
    port: int
    members: tuple[int, ...] = ()
    sleeps: bool = False     # it may sleep: the waker is its balancer's hot standby
    nodes: tuple[Member, ...] = ()

    def member_ports(self) -> tuple[int, ...]:
        return self.members or (self.port,)


def _site_spec(site: Site) -> dict[str, Any]:
    """A site's members in the spec: its loopback ports and the live one, or (on nodes)
    each member's address and whether it is enabled."""
    if site.nodes:
        return {"members": [{"host": m.host, "port": m.port, "enabled": m.enabled}
                            for m in site.nodes]}
    return {"port": site.port, "members": list(site.member_ports())}


def manager_token(settings: Settings) -> str:
    """The secret the balancer-manager asks of Opus (OPUS_HOME/front.token, 0600: Opus's
    own, in system mode too; the front's config gets it from secureops). Made anew by
    every `opus up` (rotate_manager_token): one seen once is no use after a restart."""
    return secretfile.read_or_create(settings.home / "front.token")


def rotate_manager_token(settings: Settings) -> str:
    """A new manager token, replacing the old one (the front takes it at its next
    render, which the new token forces)."""
    return secretfile.replace(settings.home / "front.token")


def manager_ports(settings: Settings) -> tuple[int, int]:
    """The loopback ports the balancer-manager answers on (http, https): the first pair
    of the apps' port block, which no app has (app ids start at 1). In system mode only
    root and the opus user may connect to them (secureops's nftables rules)."""
    return settings.app_port_base, settings.app_port_base + 1


def spec(settings: Settings, sites: list[Site], token: str,
         tls: dict[str, TlsSite] | None = None,
         redis: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """What secureops renders the front's whole config from (pure): values only. `tls`:
    each site's HTTPS state (front/tls.py), by site name; `redis`: each app's Redis
    port (system mode keeps it to the app's user, as it does instance ports)."""
    known = tls or {}
    manager, manager_tls = manager_ports(settings)
    return {
        "listen_host": settings.http_host, "listen_port": settings.http_port,
        "scheme": settings.public_scheme, "https_port": settings.tls_port,
        "manager_port": manager, "manager_tls_port": manager_tls,
        "dashboard": {"domain": settings.dashboard_domain, "host": settings.dashboard_host,
                      "port": settings.dashboard_port,
                      "tls": front_tls.dashboard_tls(settings, known)},
        "token": token,
        "waker_port": settings.waker_port,
        "sites": [{"app": s.app, "domains": list(s.domains), **_site_spec(s),
                   "sleeps": s.sleeps,
                   "tls": front_tls.site_tls(known.get(s.app), list(s.domains))}
                  for s in sorted(sites, key=lambda s: s.app)],
        "redis": [{"app": app, "port": port} for app, port in sorted(redis or [])],
    }


def record(wanted: dict[str, Any]) -> dict[str, Any]:
    """What Opus keeps of a spec it installed (pure): the token only as its sha256, so
    the record says when a new token needs a new render without holding the secret."""
    kept = {k: v for k, v in wanted.items() if k != "token"}
    kept["token_sha256"] = hashlib.sha256(str(wanted["token"]).encode()).hexdigest()
    return kept


def program_command(settings: Settings) -> list[str]:
    """The supervisor command that runs the front in the foreground."""
    return [settings.apache_bin, "-f", str(settings.front_dir / "httpd.conf"), "-DFOREGROUND"]


def _installed(settings: Settings) -> Path:
    """Opus's record of the spec the front's config was last rendered from (0600, no
    token in it)."""
    return settings.home / "front.json"


def _installed_spec(settings: Settings) -> object:
    """The record of the spec the installed config was rendered from (None: unknown)."""
    try:
        return json.loads(_installed(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _wanted(settings: Settings, sites: list[Site]) -> dict[str, Any]:
    return spec(settings, sites, manager_token(settings), front_tls.states(settings),
                _redis_ports(settings))


def _redis_ports(settings: Settings) -> list[tuple[str, int]]:
    """Every app's Redis port, from the database (none before it exists)."""
    if not settings.db_path.exists():
        return []
    return [(r.app, r.port) for r in Store(settings.db_path).list_redis_servers()]


def is_current(settings: Settings, sites: list[Site]) -> bool:
    """True if the config installed (what the front runs, or will on its next reload) is
    exactly what these sites render to."""
    return bool(_installed_spec(settings) == record(_wanted(settings, sites)))


def tls_vhost(settings: Settings, app: str) -> tuple[int, str] | None:
    """The manager's https port and a host name of the app's https vhost in the
    installed config, if it has one (its balancer is switched with the http vhost's)."""
    installed = _installed_spec(settings)
    if not isinstance(installed, dict) or not installed.get("manager_tls_port"):
        return None
    for site in installed.get("sites", []):
        if isinstance(site, dict) and site.get("app") == app and site.get("tls"):
            return int(installed["manager_tls_port"]), str(site["tls"]["domains"][0])
    return None


def write(settings: Settings, sites: list[Site]) -> bool:
    """Have secureops render, test and install the config; True if it changed. A config
    Apache rejects is never installed (ServiceError says why)."""
    wanted = _wanted(settings, sites)
    if _installed_spec(settings) == record(wanted) and \
            (settings.front_dir / "httpd.conf").exists():
        return False
    _installed(settings).unlink(missing_ok=True)     # unknown until secureops is done
    privileged.install_front(settings, wanted)
    secretfile.write_private(_installed(settings), json.dumps(record(wanted), sort_keys=True))
    return True
