"""The front's whole httpd.conf, checked and rendered here (pure), from a typed spec.

The front's master runs as root and reads all of its config: a `LoadModule`, a piped
log or an `Include` there would run code as root. So the caller gives values only
(addresses, host names, ports, the balancer-manager's token) and this module writes
every directive itself; paths come from the layout.

Spec:
    {"listen_host": "127.0.0.1", "listen_port": 8080, "scheme": "http",
     "https_port": 8443, "manager_port": 20000, "manager_tls_port": 20001,
     "dashboard": {"domain": "opus.localhost", "host": "127.0.0.1", "port": 8090,
                   "tls": null},
     "token": "<32 hex digits>",
     "sites": [{"app": "shop", "domains": ["shop.localhost", "www.shop.example"],
                "port": 20001, "members": [20000, 20001],
                "tls": {"domains": ["www.shop.example"], "redirect": false,
                        "serial": "4a3f"}}],
     "redis": [{"app": "shop", "port": 30005}]}

A site's members are either its two loopback ports, as above ("port": the live one), or,
for an app whose processes run on swarm nodes, objects and no "port":
    "members": [{"host": "10.0.12.34", "port": 21000, "enabled": true}, ...]
(1 to 256 of them; a host is 127.0.0.1 or a private IPv4 address: 10/8, 172.16/12,
192.168/16; a port 1024-65535). A disabled member is rendered but gets no request until
the balancer-manager enables it. Members on another host fail fast (a 1 s connect
timeout, 2 s out of rotation after an error, no kept connection), so a dead node is
skipped; the port rules (verbs.port_guards) cover the loopback ones only.

"redis" (optional) lists the apps' own Redis servers: no vhost, only their ports' rules
(verbs.port_guards: the app's user alone may answer from its port).

A site's "tls" (optional) asks for https on some of its domains; verbs.front_install
keeps only the names its installed certificate covers (`with_installed_certs`), so a
name without a certificate stays on http, never on a wrong certificate.

The balancer-manager answers only on its own loopback ports (manager_port, and
manager_tls_port for the https vhosts): each app's vhosts listen there too, and the
manager's `Require` checks the port the connection really came in on (Apache's
SERVER_PORT, made the physical port: by default it is the Host header's), the token and
loopback. In system mode nftables lets only root and the opus user connect to those
ports (firewall.py), so an app's user holding the token still cannot use it.
"""

from __future__ import annotations

import dataclasses
import grp
import hashlib
import hmac
import ipaddress
import pwd
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secureops.certs import DASHBOARD_SITE, FALLBACK_SITE, covers
from secureops.checks import _exactly, _number, _text, app_name
from secureops.layout import Denied, Layout

MODULES = [
    "mpm_event", "authz_core", "authz_host", "mime", "alias", "dir", "headers",
    "proxy", "proxy_http", "setenvif", "proxy_balancer", "slotmem_shm", "lbmethod_byrequests",
]
# A host name: dot-separated labels of letters, digits and inner hyphens.
DOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
TOKEN = re.compile(r"[0-9a-f]{32}")
SERIAL = re.compile(r"[0-9a-f]{1,64}")
TLS_MODULES = ["ssl", "socache_shmcb", "http2", "rewrite"]
# Mozilla's "intermediate" TLS 1.2 suites (TLS 1.3's are OpenSSL's defaults): forward
# secrecy and AEAD only.
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
HSTS = "max-age=31536000"
CHALLENGE_PATH = "/.well-known/acme-challenge/"
MAX_SITES = 5000
MAX_DOMAINS = 100
MAX_MEMBERS = 256
LOOPBACK = "127.0.0.1"
# Where a member may live besides loopback: the private IPv4 ranges (RFC 1918) only, so
# the front (root's master reads the config) never becomes a proxy to the internet.
PRIVATE_NETS = tuple(ipaddress.IPv4Network(n) for n in
                     ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
# Members on nodes: a dead node costs one second, then two out of rotation.
REMOTE_MEMBER = "connectiontimeout=1 retry=2 disablereuse=on"
# Members a swarm app's balancer may gain at run time (a release's tasks, a rescheduled
# one) before a reload must make room (swarm deploy hook).
REMOTE_GROWTH = 24
# What opus_paas/balancer.py calls them (repeated on purpose: nothing is imported).
MANAGER_PATH = "/.opus/balancer"
MANAGER_HEADER = "X-Opus-Token"
# A sleeping app's vhost tells the waker which app it is, with a proof only the front's
# token makes (opus_paas/run/sleep.py checks it the same way).
WAKE_HEADER = "X-Opus-Wake"
LOG_FORMAT = '"%v %h %t \\"%r\\" %>s %b %D \\"%{X-Opus-Served-By}o\\""'


@dataclasses.dataclass(frozen=True)
class Tls:
    domains: tuple[str, ...]      # served over https (covered by the site's certificate)
    redirect: bool                # http -> https for those names, and HSTS
    serial: str = ""              # the certificate's (Opus's record: a new one reloads)


@dataclasses.dataclass(frozen=True)
class Member:
    """A balancer member: an instance's address; a disabled one is present but idle."""

    host: str                     # 127.0.0.1, or a node's private IPv4 address
    port: int
    enabled: bool

    @property
    def local(self) -> bool:
        return self.host == LOOPBACK

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Site:
    app: str
    domains: tuple[str, ...]
    members: tuple[Member, ...]
    tls: Tls | None = None
    sleeps: bool = False          # its instance may sleep: the waker is its hot standby

    def local_ports(self) -> tuple[int, ...]:
        """The loopback ports among its members (the ones the port rules guard)."""
        return tuple(m.port for m in self.members if m.local)


def wake_proof(token: str, app: str) -> str:
    """What a sleeping app's vhost sends the waker: an HMAC of the app's name under the
    front's token, so no app can ask the waker to wake another (pure)."""
    return hmac.new(token.encode(), b"opus-waker\0" + app.encode(), hashlib.sha256).hexdigest()


@dataclasses.dataclass(frozen=True)
class RedisPort:
    """An app's own Redis server's loopback port (no vhost: its port rule only)."""

    app: str
    port: int


@dataclasses.dataclass(frozen=True)
class FrontSpec:
    listen_host: str
    listen_port: int
    scheme: str
    dashboard_domain: str
    dashboard_host: str
    dashboard_port: int
    token: str
    sites: tuple[Site, ...]
    https_port: int = 8443
    dashboard_tls: bool = False
    manager_port: int = 0          # the manager's own loopback ports (http, https)
    manager_tls_port: int = 0
    redis: tuple[RedisPort, ...] = ()
    waker_port: int = 0            # the waker's loopback port (0: none)


def _address(value: Any, what: str) -> str:
    text = _text(value, what, 253)
    try:
        if "%" in text:        # an IPv6 scope id: anything but '%' could follow
            raise ValueError(text)
        return str(ipaddress.ip_address(text))
    except ValueError:
        if DOMAIN.fullmatch(text):
            return text
    raise Denied(f"{what} {text[:60]!r} is not an IP address or a host name")


def _domain(value: Any, what: str) -> str:
    text = _text(value, what, 253)
    if not DOMAIN.fullmatch(text):
        raise Denied(f"{what} {text[:60]!r} is not a host name")
    return text


def check(spec: Any) -> FrontSpec:
    """The front spec, every value typed and bounded, no host name or port held twice."""
    body = _exactly(spec, {"listen_host", "listen_port", "scheme", "dashboard", "token",
                           "sites", "https_port", "manager_port", "manager_tls_port"},
                    {"redis", "waker_port"}, "the front spec")
    dash = _exactly(body["dashboard"], {"domain", "host", "port", "tls"}, set(), "dashboard")
    if body["scheme"] not in ("http", "https"):
        raise Denied("scheme must be http or https")
    if not isinstance(body["token"], str) or not TOKEN.fullmatch(body["token"]):
        raise Denied("token must be 32 lower-case hex digits")
    front = FrontSpec(
        listen_host=_address(body["listen_host"], "listen_host"),
        listen_port=_number(body["listen_port"], "listen_port", 1, 65535),
        scheme=body["scheme"],
        dashboard_domain=_domain(dash["domain"], "the dashboard's domain"),
        dashboard_host=_address(dash["host"], "the dashboard's host"),
        dashboard_port=_number(dash["port"], "the dashboard's port", 1, 65535),
        token=body["token"],
        sites=_sites(body["sites"]),
        https_port=_number(body["https_port"], "https_port", 1, 65535),
        manager_port=_number(body["manager_port"], "manager_port", 1024, 65535),
        manager_tls_port=_number(body["manager_tls_port"], "manager_tls_port", 1024, 65535),
        redis=_redis(body.get("redis", [])),
        waker_port=_number(body.get("waker_port", 0), "waker_port", 0, 65535),
    )
    if front.waker_port and front.waker_port < 1024:
        raise Denied("waker_port must be a port from 1024 to 65535")
    if any(s.sleeps for s in front.sites) and not front.waker_port:
        raise Denied("a site sleeps, but the spec names no waker_port")
    if dash["tls"] is not None:
        # The dashboard's https: its own name only, always redirected.
        dashboard = Site(DASHBOARD_SITE, (front.dashboard_domain,),
                         (Member(LOOPBACK, 1024, True),))
        _tls(dash["tls"], dashboard)
        front = dataclasses.replace(front, dashboard_tls=True)
    hosts = [front.dashboard_domain] + [d for s in front.sites for d in s.domains]
    if len(set(hosts)) != len(hosts):
        raise Denied("a host name is given twice (two apps, or an app and the dashboard)")
    addresses = [(m.host, m.port) for s in front.sites for m in s.members]
    if len(set(addresses)) != len(addresses):
        raise Denied("a port is given to two apps (the same address and port): an app's vhost "
                     "may only lead to its own")
    ports = [p for s in front.sites for p in s.local_ports()]
    own = [front.listen_port, front.dashboard_port, front.https_port, front.manager_port,
           front.manager_tls_port]
    if front.waker_port and front.waker_port in [*own, *ports]:
        raise Denied("the waker's port is an app's, the front's, the dashboard's or the "
                     "balancer-manager's")
    if set(own) & set(ports):
        raise Denied("an app's port is the front's or the dashboard's, or the "
                     "balancer-manager's")
    if {r.port for r in front.redis} & (set(own) | set(ports)):
        raise Denied("a Redis port is an app instance's, the front's, the dashboard's or "
                     "the balancer-manager's")
    if front.https_port in (front.listen_port, front.dashboard_port):
        raise Denied("https_port must differ from the http and the dashboard's ports")
    if len(set(own)) != len(own) and not (front.listen_port == front.dashboard_port and
                                          len(set(own)) == len(own) - 1):
        raise Denied("the balancer-manager's two ports must differ from each other and "
                     "from the front's and the dashboard's")
    return front


def _sites(value: Any) -> tuple[Site, ...]:
    if not isinstance(value, list) or len(value) > MAX_SITES:
        raise Denied(f"sites must be a list of at most {MAX_SITES}")
    sites = []
    for item in value:
        # With "port": its loopback ports, that one live; without: members by address.
        remote = isinstance(item, dict) and "port" not in item
        entry = _exactly(item, {"app", "domains", "members"} | (set() if remote else {"port"}),
                         {"tls", "sleeps"}, "a site")
        app = app_name(_text(entry["app"], "a site's app", 64))
        domains = entry["domains"]
        if not isinstance(domains, list) or not 1 <= len(domains) <= MAX_DOMAINS:
            raise Denied(f"{app}: domains must be a list of 1 to {MAX_DOMAINS}")
        site = Site(app, tuple(_domain(d, f"{app}: a domain") for d in domains),
                    _members(entry["members"], app) if remote else
                    _loopback_members(entry["members"], entry["port"], app))
        if entry.get("tls") is not None:
            site = dataclasses.replace(site, tls=_tls(entry["tls"], site))
        if not isinstance(entry.get("sleeps", False), bool):
            raise Denied(f"{app}: sleeps must be true or false")
        if entry.get("sleeps", False) and not all(m.local for m in site.members):
            raise Denied(f"{app}: an app with members on nodes cannot sleep")
        site = dataclasses.replace(site, sleeps=entry.get("sleeps", False))
        sites.append(site)
    if len({s.app for s in sites}) != len(sites):
        raise Denied("an app has two sites")
    return tuple(sites)


def _loopback_members(members: Any, live: Any, app: str) -> tuple[Member, ...]:
    """An app's one or two loopback ports, `live` the enabled one."""
    if not isinstance(members, list) or not 1 <= len(members) <= 2:
        raise Denied(f"{app}: members must be a list of 1 or 2 ports")
    ports = tuple(_number(p, f"{app}: a member", 1024, 65535) for p in members)
    port = _number(live, f"{app}: port", 1024, 65535)
    if port not in ports or len(set(ports)) != len(ports):
        raise Denied(f"{app}: port must be one of its members, each given once")
    return tuple(Member(LOOPBACK, p, p == port) for p in ports)


def _members(members: Any, app: str) -> tuple[Member, ...]:
    """An app's members as addresses: [{"host", "port", "enabled"}], 1 to MAX_MEMBERS,
    each address once."""
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
        raise Denied(f"{app}: members must be a list of 1 to {MAX_MEMBERS} members")
    found = []
    for item in members:
        entry = _exactly(item, {"host", "port", "enabled"}, set(),
                         f"{app}: a member (host, port, enabled)")
        if not isinstance(entry["enabled"], bool):
            raise Denied(f"{app}: a member's enabled must be true or false")
        found.append(Member(member_host(entry["host"], app),
                            _number(entry["port"], f"{app}: a member's port", 1024, 65535),
                            entry["enabled"]))
    if len({(m.host, m.port) for m in found}) != len(found):
        raise Denied(f"{app}: a member (address and port) is given twice")
    return tuple(found)


def member_host(value: Any, app: str) -> str:
    """A member's host: exactly 127.0.0.1 or a private IPv4 address in its usual form
    (no names, no IPv6, no other spelling of an address)."""
    try:
        if not isinstance(value, str) or len(value) > 15:
            raise ValueError(value)
        address = ipaddress.IPv4Address(value)
        if str(address) != value or not (
                value == LOOPBACK or any(address in net for net in PRIVATE_NETS)):
            raise ValueError(value)
    except ValueError:
        raise Denied(f"{app}: member host {repr(value)[:60]} must be 127.0.0.1 or a private "
                     "IPv4 address (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16): give the "
                     "node's private address") from None
    return value


def _redis(value: Any) -> tuple[RedisPort, ...]:
    """The apps' Redis ports: [{"app": NAME, "port": N}], each app and port once."""
    if not isinstance(value, list) or len(value) > MAX_SITES:
        raise Denied(f"redis must be a list of at most {MAX_SITES}")
    found = []
    for item in value:
        entry = _exactly(item, {"app", "port"}, set(), "a Redis server")
        app = app_name(_text(entry["app"], "a Redis server's app", 64))
        found.append(RedisPort(app, _number(entry["port"], f"{app}: Redis port", 1024, 65535)))
    if len({r.app for r in found}) != len(found) or len({r.port for r in found}) != len(found):
        raise Denied("an app or a port is given two Redis servers")
    return tuple(found)


def _tls(value: Any, site: Site) -> Tls:
    body = _exactly(value, {"domains", "redirect", "serial"}, set(), f"{site.app}: tls")
    domains = body["domains"]
    if not isinstance(domains, list) or not 1 <= len(domains) <= MAX_DOMAINS or \
            not all(isinstance(d, str) for d in domains) or \
            not set(domains) <= set(site.domains) or len(set(domains)) != len(domains):
        raise Denied(f"{site.app}: tls domains must be some of its own domains, each once")
    if not isinstance(body["redirect"], bool):
        raise Denied(f"{site.app}: tls redirect must be true or false")
    if not isinstance(body["serial"], str) or not SERIAL.fullmatch(body["serial"]):
        raise Denied(f"{site.app}: tls serial must be 1 to 64 lower-case hex digits")
    return Tls(tuple(domains), body["redirect"], body["serial"])


def with_installed_certs(spec: FrontSpec,
                         installed: Callable[[str], list[str] | None]) -> FrontSpec:
    """The spec with https kept only for names a site's installed certificate covers
    (`installed(site)`: the names, None without a certificate)."""
    sites = []
    for site in spec.sites:
        if site.tls is not None:
            names = installed(site.app) or []
            covered = tuple(d for d in site.tls.domains if covers(names, d))
            site = dataclasses.replace(site, tls=Tls(covered, site.tls.redirect,
                                                     site.tls.serial) if covered else None)
        sites.append(site)
    dashboard = spec.dashboard_tls and covers(installed(DASHBOARD_SITE) or [],
                                              spec.dashboard_domain)
    return dataclasses.replace(spec, sites=tuple(sites), dashboard_tls=dashboard)


def any_tls(spec: FrontSpec) -> bool:
    return spec.dashboard_tls or any(site.tls for site in spec.sites)


def _path(path: object) -> str:
    text = str(path)
    if any(c in text for c in '"\n\r\\\0') or not text.startswith("/"):
        raise Denied(f"path {text!r} cannot go into the Apache config")
    return f'"{text}"'


def _front_identity(layout: Layout, same_user: bool) -> list[str]:
    """User and Group for the front's children: the front's own user in system mode,
    the shared run user when embedded Opus runs as root, none otherwise."""
    user = layout.shared_user if same_user else layout.front_user
    if not user:
        return []
    try:
        entry = pwd.getpwnam(user)
        group = layout.front_group if not same_user else grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        raise Denied(f"user {user} does not exist") from None
    return [f"User {user}", f"Group {group}"]


def render(layout: Layout, spec: FrontSpec, *, same_user: bool) -> str:
    """httpd.conf for these sites (pure, but for the user database)."""
    front, logs = layout.front, layout.logs / "front"
    tls = any_tls(spec)
    vhost = _vhost(spec.listen_host, spec.listen_port)
    app_vhost = _vhost(spec.listen_host, spec.listen_port, spec.manager_port)
    tls_vhost = _vhost(spec.listen_host, spec.https_port, spec.manager_tls_port)
    listen = f"[{spec.listen_host}]" if ":" in spec.listen_host else spec.listen_host
    lines = [
        "# Rendered by secureops from Opus's spec; edits are overwritten.",
        f"ServerRoot {_path(front)}",
        f"PidFile {_path(front / 'httpd.pid')}",
        f"DefaultRuntimeDir {_path(front / 'run')}",
        f"Listen {listen}:{spec.listen_port}",
        # The balancer-manager's own port (each app's vhost listens there too).
        f"Listen 127.0.0.1:{spec.manager_port}",
        "ServerName localhost",
        "ServerTokens Prod",
        "ServerSignature Off",
        "TraceEnable Off",
        "Timeout 60",
        "KeepAlive On",
    ]
    if tls:
        lines.append(f"Listen {listen}:{spec.https_port} https")
        lines.append(f"Listen 127.0.0.1:{spec.manager_tls_port} https")
    modules = MODULES + (TLS_MODULES if tls else [])
    lines += [f"LoadModule {m}_module {_path(layout.apache_modules + '/mod_' + m + '.so')}"
              for m in modules]
    lines += _front_identity(layout, same_user)
    lines += [
        "TypesConfig /etc/mime.types",
        f"ErrorLog {_path(logs / 'error.log')}",
        f"LogFormat {LOG_FORMAT} opus",
        # Opus's own calls to the balancer-manager are no app's traffic.
        f'SetEnvIf Request_URI "^{re.escape(MANAGER_PATH)}" opus_internal',
        f"CustomLog {_path(logs / 'access.log')} opus env=!opus_internal",
        "ProxyRequests Off",
        "ProxyTimeout 60",
        "<Directory />",
        "    AllowOverride None",
        "    Require all denied",
        "</Directory>",
        # ACME's HTTP-01 challenges: the files Opus writes, on every host name, before
        # any app or redirect; no link inside is followed.
        f"Alias {CHALLENGE_PATH} {_path(layout.home / 'acme' / 'challenges')[:-1]}/\"",
        f"<Directory {_path(layout.home / 'acme' / 'challenges')}>",
        "    Options None",
        "    Require all granted",
        "    ForceType text/plain",
        "</Directory>",
    ]
    if tls:
        lines += _tls_globals(layout)
    lines += [
        "",
        "# First vhost: any host name no app has.",
        app_vhost,
        "    ServerName _default_",
        '    Header always set X-Opus-Served-By "front"',
        f"    RedirectMatch 404 ^(?!{re.escape(CHALLENGE_PATH)})",
        '    ErrorDocument 404 "No app is deployed at this host name. '
        'Push one with git push opus main."',
        "</VirtualHost>",
    ]
    if tls:
        fallback = layout.front / "certs" / FALLBACK_SITE
        lines += [
            "",
            "# First https vhost: a name with no certificate of its own gets this",
            "# self-signed one (for \"invalid\"), never another site's.",
            tls_vhost,
            "    ServerName _default_",
            *_certificate(fallback),
            "    RedirectMatch 404 ^",
            '    ErrorDocument 404 "No certificate for this host name yet: use http."',
            "</VirtualHost>",
        ]
    lines += ["", "# The dashboard (gunicorn). Its live logs are a stream: flushed as they come."]
    lines += _dashboard(spec, vhost, redirect=spec.dashboard_tls, scheme=spec.scheme)
    if spec.dashboard_tls:
        lines += ["", *_dashboard(spec, _vhost(spec.listen_host, spec.https_port),
                                  redirect=False, scheme="https",
                                  certificate=layout.front / "certs" / DASHBOARD_SITE)]
    for site in sorted(spec.sites, key=lambda s: s.app):
        lines += ["", *_site(layout, spec, site, app_vhost)]
        if site.tls is not None:
            lines += ["", *_site(layout, spec, site, tls_vhost, tls=site.tls)]
    return "\n".join(lines) + "\n"


def _vhost(host: str, port: int, manager_port: int | None = None) -> str:
    """A VirtualHost line: the front's address, and the manager's when given."""
    extra = f" 127.0.0.1:{manager_port}" if manager_port is not None else ""
    return f"<VirtualHost {_host_port(host, port)}{extra}>"


def _tls_globals(layout: Layout) -> list[str]:
    return [
        "# TLS 1.2 and 1.3 only; HTTP/2 where the client offers it (ALPN).",
        "Protocols h2 http/1.1",
        "SSLProtocol -all +TLSv1.2 +TLSv1.3",
        f"SSLCipherSuite {TLS12_CIPHERS}",
        "SSLHonorCipherOrder off",
        "SSLSessionTickets off",
        "SSLCompression off",
        f"SSLSessionCache \"shmcb:{layout.front / 'run' / 'ssl_scache'}(512000)\"",
        "SSLSessionCacheTimeout 300",
    ]


def _certificate(directory: Path) -> list[str]:
    return [
        "    SSLEngine on",
        f"    SSLCertificateFile {_path(directory / 'chain.pem')}",
        f"    SSLCertificateKeyFile {_path(directory / 'key.pem')}",
    ]


def _redirect(domains: tuple[str, ...], https_port: int) -> list[str]:
    """http -> https (301) for `domains`, but for ACME's challenges."""
    port = "" if https_port == 443 else f":{https_port}"
    names = "|".join(re.escape(d) for d in domains)
    return [
        "    RewriteEngine On",
        f"    RewriteCond %{{REQUEST_URI}} !^{re.escape(CHALLENGE_PATH)}",
        f"    RewriteCond %{{HTTP_HOST}} ^({names})(:[0-9]+)?$ [NC]",
        f"    RewriteRule ^ https://%1{port}%{{REQUEST_URI}} [R=301,L]",
    ]


def _dashboard(spec: FrontSpec, vhost: str, *, redirect: bool, scheme: str,
               certificate: Path | None = None) -> list[str]:
    lines = [vhost, f"    ServerName {spec.dashboard_domain}"]
    if certificate is not None:
        lines += _certificate(certificate)
    if redirect:
        lines += _redirect((spec.dashboard_domain,), spec.https_port)
    lines += [
        "    ProxyPreserveHost On",
        f'    RequestHeader set X-Forwarded-Proto "{scheme}"',
        f'    ProxyPass "{CHALLENGE_PATH}" !',
        f'    ProxyPass / "http://{_host_port(spec.dashboard_host, spec.dashboard_port)}/" '
        "flushpackets=on retry=0",
        "</VirtualHost>",
    ]
    return lines


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _site(layout: Layout, spec: FrontSpec, site: Site, vhost: str,
          tls: Tls | None = None) -> list[str]:
    """An app's vhost: on http (all its names), or, with `tls`, on https (the names its
    certificate covers). Each has its own balancer; Opus switches both."""
    static = _path(layout.static / site.app / "current")
    balancer = f"balancer://app-{site.app}"
    manager = spec.manager_tls_port if tls is not None else spec.manager_port
    domains = tls.domains if tls is not None else site.domains
    lines = [vhost, f"    ServerName {domains[0]}"]
    if len(domains) > 1:
        lines.append(f"    ServerAlias {' '.join(domains[1:])}")
    if tls is not None:
        lines += _certificate(layout.front / "certs" / site.app)
        if tls.redirect:
            lines.append(f'    Header always set Strict-Transport-Security "{HSTS}"')
    elif site.tls is not None and site.tls.redirect:
        lines += _redirect(site.tls.domains, spec.https_port)
    lines += [
        "    ProxyPreserveHost On",
        f'    RequestHeader set X-Forwarded-Proto "{"https" if tls else spec.scheme}"',
        # Set on every request (a client's own is replaced): the waker's proof.
        *([f'    RequestHeader set {WAKE_HEADER} "{wake_proof(spec.token, site.app)}"']
          if site.sleeps else []),
        f'    ProxyPass "{CHALLENGE_PATH}" !',
        # Static files come from secureops's copy of the live release's STATIC_ROOT
        # (static.py: root's, through its own `current` link), never from the app's
        # tree, which the app can change; the front reads nothing of the app's.
        "    ProxyPass /static/ !",
        f"    Alias /static/ {static[:-1]}/\"",
        f"    <Directory {static}>",
        "        Options None",
        "        Require all granted",
        '        Header set X-Opus-Served-By "front-static"',
        "    </Directory>",
        # Both instances are members; the one not serving is disabled. A deploy flips
        # them through the balancer-manager (no graceful restart).
        f'    <Proxy "{balancer}">',
    ]
    # A sleeping app's members are retried a second after a refused connection (with
    # retry=0 Apache picks the dead member again instead of its hot standby); meanwhile
    # requests go to the waker, which wakes the app or hands them to it.
    retry = 1 if site.sleeps else 0
    for member in site.members:
        options = f"retry={retry}" if member.local else REMOTE_MEMBER
        disabled = "" if member.enabled else " status=+D"
        lines.append(f'        BalancerMember "{member.url}" {options}{disabled}')
    if site.sleeps:
        lines.append(f'        BalancerMember "http://127.0.0.1:{spec.waker_port}" retry=0 '
                     "status=+H")
    # Swarm deploy hook (opus_paas/swarm/deploy.py): room for members added through the
    # balancer-manager, so a release on new node ports needs no graceful reload.
    if not all(m.local for m in site.members):
        lines.append(f"        ProxySet growth={REMOTE_GROWTH}")
    lines += [
        "    </Proxy>",
        f'    ProxyPass "{MANAGER_PATH}" !',
        f'    <Location "{MANAGER_PATH}">',
        "        SetHandler balancer-manager",
        # SERVER_PORT is the port the connection came in on (by default it is the Host
        # header's, which a client chooses): only the manager's own port will do.
        "        UseCanonicalName On",
        "        UseCanonicalPhysicalPort On",
        f"        Require expr \"%{{SERVER_PORT}} == '{manager}' && "
        f"%{{REMOTE_ADDR}} == '127.0.0.1' && "
        f"%{{HTTP:{MANAGER_HEADER}}} == '{spec.token}'\"",
        "    </Location>",
        f"    ProxyPass / {balancer}/",
    ]
    lines += [f"    ProxyPassReverse / {member.url}/" for member in site.members]
    lines.append("</VirtualHost>")
    return lines
