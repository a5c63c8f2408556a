"""The front Apache: renders its whole config from the apps' state, tests, swaps, reloads.

Render → `apache2 -t` on the new file → rename into place → graceful (SIGUSR1).
A config that fails its test is never made live.
"""

from __future__ import annotations

import dataclasses
import datetime
import grp
import os
import pwd
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from opus_paas import balancer, secretfile
from opus_paas.errors import ServiceError
from opus_paas.settings import Settings

MODULES = [
    "mpm_event", "authz_core", "authz_host", "mime", "alias", "dir", "headers",
    "proxy", "proxy_http", "setenvif", "proxy_balancer", "slotmem_shm", "lbmethod_byrequests",
]
TOKEN = re.compile(r"[0-9a-f]{32}")
HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")

LOG_FORMAT = '"%v %h %t \\"%r\\" %>s %b %D \\"%{X-Opus-Served-By}o\\""'


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
class Site:
    """One app as the front sees it: its host names, its live port among its two
    balancer members, its static files."""

    app: str
    domains: tuple[str, ...]
    port: int
    static_dir: Path
    members: tuple[int, ...] = ()

    def member_ports(self) -> tuple[int, ...]:
        return self.members or (self.port,)


def _directive_path(path: Path) -> str:
    text = str(path)
    if any(c in text for c in '"\n\r\\') or not path.is_absolute():
        raise ServiceError(f"path {text!r} cannot go into the Apache config; choose a plain path")
    return f'"{text}"'


def manager_token(settings: Settings) -> str:
    """The secret the balancer-manager asks of Opus, made once (front/manager.token, 0600)."""
    return secretfile.read_or_create(settings.front_dir / "manager.token")


def render(settings: Settings, sites: list[Site], token: str = "0" * 32) -> str:
    """The front's httpd.conf for these sites (pure: no I/O). `token` guards each app's
    balancer-manager."""
    if not TOKEN.fullmatch(token):
        raise ServiceError("the front's manager token is malformed; delete front/manager.token")
    if not HOST.fullmatch(settings.dashboard_host):
        raise ServiceError(f"dashboard_host {settings.dashboard_host!r} is not a host name or "
                           "an IP address; fix OPUS_DASHBOARD_HOST")
    if settings.public_scheme not in ("http", "https"):
        raise ServiceError("public_scheme must be http or https; fix OPUS_PUBLIC_SCHEME")
    front = settings.front_dir
    logs = settings.logs_dir / "front"
    lines = [
        "# Rendered by Opus from its database; edits are overwritten.",
        f"ServerRoot {_directive_path(front)}",
        f"PidFile {_directive_path(front / 'httpd.pid')}",
        f"DefaultRuntimeDir {_directive_path(front / 'run')}",
        f"Listen {settings.http_host}:{settings.http_port}",
        "ServerName localhost",
        "ServerTokens Prod",
        "ServerSignature Off",
        "TraceEnable Off",
        "Timeout 60",
        "KeepAlive On",
    ]
    lines += [f"LoadModule {m}_module {settings.apache_modules}/mod_{m}.so" for m in MODULES]
    if os.geteuid() == 0:
        # The master binds as root; its children serve as the unprivileged run user.
        user = settings.app_run_user() or "nobody"
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
        lines += [f"User {user}", f"Group {group}"]
    lines += [
        "TypesConfig /etc/mime.types",
        f"ErrorLog {_directive_path(logs / 'error.log')}",
        f"LogFormat {LOG_FORMAT} opus",
        # Opus's own calls to the balancer-manager are no app's traffic.
        f'SetEnvIf Request_URI "^{re.escape(balancer.MANAGER_PATH)}" opus_internal',
        f"CustomLog {_directive_path(logs / 'access.log')} opus env=!opus_internal",
        "ProxyRequests Off",
        "ProxyTimeout 60",
        "<Directory />",
        "    AllowOverride None",
        "    Require all denied",
        "</Directory>",
        "",
        "# First vhost: any host name no app has.",
        f"<VirtualHost {settings.http_host}:{settings.http_port}>",
        "    ServerName _default_",
        '    Header always set X-Opus-Served-By "front"',
        "    RedirectMatch 404 ^",
        '    ErrorDocument 404 "No app is deployed at this host name. '
        'Push one with git push opus main."',
        "</VirtualHost>",
        "",
        "# The dashboard (gunicorn). Its live logs are a stream: flushed as they come.",
        f"<VirtualHost {settings.http_host}:{settings.http_port}>",
        f"    ServerName {settings.dashboard_domain}",
        "    ProxyPreserveHost On",
        f'    RequestHeader set X-Forwarded-Proto "{settings.public_scheme}"',
        f'    ProxyPass / "http://{settings.dashboard_host}:{settings.dashboard_port}/" '
        "flushpackets=on retry=0",
        "</VirtualHost>",
    ]
    for site in sorted(sites, key=lambda s: s.app):
        static = _directive_path(site.static_dir)
        lines += [
            "",
            f"<VirtualHost {settings.http_host}:{settings.http_port}>",
            f"    ServerName {site.domains[0]}",
        ]
        if len(site.domains) > 1:
            lines.append(f"    ServerAlias {' '.join(site.domains[1:])}")
        lines += [
            "    ProxyPreserveHost On",
            f'    RequestHeader set X-Forwarded-Proto "{settings.public_scheme}"',
            # Static files come straight from the release's STATIC_ROOT (through
            # the app's `current` symlink), never from the app.
            "    ProxyPass /static/ !",
            f"    Alias /static/ {static[:-1]}/\"",
            f"    <Directory {static}>",
            "        Options None",
            "        Require all granted",
            '        Header set X-Opus-Served-By "front-static"',
            "    </Directory>",
            # Both instances are members; the one not serving is disabled. A deploy
            # flips them through the balancer-manager (no graceful restart).
            f'    <Proxy "balancer://{balancer.balancer_name(site.app)}">',
        ]
        for port in site.member_ports():
            disabled = "" if port == site.port else " status=+D"
            lines.append(f'        BalancerMember "{balancer.member_url(port)}" retry=0'
                         f'{disabled}')
        lines += [
            "    </Proxy>",
            f'    ProxyPass "{balancer.MANAGER_PATH}" !',
            f'    <Location "{balancer.MANAGER_PATH}">',
            "        SetHandler balancer-manager",
            f"        Require expr \"%{{REMOTE_ADDR}} == '127.0.0.1' && "
            f"%{{HTTP:{balancer.MANAGER_HEADER}}} == '{token}'\"",
            "    </Location>",
            f"    ProxyPass / balancer://{balancer.balancer_name(site.app)}/",
        ]
        lines += [f"    ProxyPassReverse / {balancer.member_url(port)}/"
                  for port in site.member_ports()]
        lines.append("</VirtualHost>")
    return "\n".join(lines) + "\n"


def program_command(settings: Settings) -> list[str]:
    """The supervisor command that runs the front in the foreground."""
    return [settings.apache_bin, "-f", str(settings.front_dir / "httpd.conf"), "-DFOREGROUND"]


def is_current(settings: Settings, sites: list[Site]) -> bool:
    """True if the config on disk (what the front runs, or will on its next reload) is
    exactly what these sites render to."""
    try:
        on_disk = (settings.front_dir / "httpd.conf").read_text()
    except FileNotFoundError:
        return False
    return on_disk == render(settings, sites, manager_token(settings))


def write(settings: Settings, sites: list[Site]) -> bool:
    """Render, test and install the config; True if it changed."""
    front = settings.front_dir
    (front / "run").mkdir(parents=True, exist_ok=True)
    (settings.logs_dir / "front").mkdir(parents=True, exist_ok=True)
    live = front / "httpd.conf"
    text = render(settings, sites, manager_token(settings))
    if live.exists() and live.read_text() == text:
        return False
    candidate = front / "httpd.conf.new"
    candidate.unlink(missing_ok=True)
    # 0600: it holds the balancer-manager's token; only the front's master reads it.
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    check = subprocess.run(
        [settings.apache_bin, "-t", "-f", str(candidate)],
        capture_output=True, text=True, check=False,
    )
    if check.returncode != 0:
        raise ServiceError(
            "the new front config failed Apache's test and was not installed: "
            + check.stderr.strip().replace(str(settings.home), "$OPUS_HOME")
        )
    os.replace(candidate, live)
    return True
