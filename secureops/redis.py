"""An app's own Redis server: its redis.conf and its supervisor program, checked and
rendered here (pure) from typed values; every path derived from the layout.

Spec of `redis-install APP`:
    {"port": 30005, "maxmemory": 67108864, "password_sha256": "<64 hex digits>"}

The server listens on 127.0.0.1:PORT only, runs as the app's user from
apps/<app>/run/redis (0700, its config 0600), and knows its password only as the
SHA-256 an ACL rule holds (`user default on #<sha256> …`): the plain password is never
written anywhere by this side. Writes past `maxmemory` are refused (noeviction); the
data is kept in an append-only file, fsynced every second.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

from secureops.checks import _exactly, _number
from secureops.layout import Denied, Layout

REDIS_SERVER = "/usr/bin/redis-server"
SHA256 = re.compile(r"[0-9a-f]{64}")
MIN_MEMORY, MAX_MEMORY = 1 << 20, 1 << 40
CONF = "redis.conf"
LOG = "redis.log"


@dataclasses.dataclass(frozen=True)
class RedisSpec:
    port: int
    maxmemory: int
    password_sha256: str


def check(spec: Any) -> RedisSpec:
    body = _exactly(spec, {"port", "maxmemory", "password_sha256"}, set(), "the spec")
    digest = body["password_sha256"]
    if not isinstance(digest, str) or not SHA256.fullmatch(digest):
        raise Denied("password_sha256 must be 64 lower-case hex digits")
    return RedisSpec(_number(body["port"], "port", 1024, 65535),
                     _number(body["maxmemory"], "maxmemory", MIN_MEMORY, MAX_MEMORY), digest)


def data_dir(layout: Layout, app: str) -> Path:
    return layout.app_dir(app) / "run" / "redis"


def program_name(app: str) -> str:
    return f"{app}-redis"


def conf_name(app: str) -> str:
    """Its supervisor program's file in conf.d (beside app-<app>.conf, which deploys
    rewrite: a deploy never stops the app's Redis)."""
    return f"redis-{app}.conf"


def render_conf(layout: Layout, app: str, spec: RedisSpec) -> str:
    """redis.conf (pure). Every value is typed: a number, a hex digest, a checked path."""
    directory = str(data_dir(layout, app))
    if any(c in directory for c in ' "\'\\\n\r\0'):
        raise Denied("the app's directory cannot go into a Redis config")
    return "\n".join([
        f"# Rendered by secureops for {app}; rewritten by redis-install.",
        "bind 127.0.0.1",
        f"port {spec.port}",
        "protected-mode yes",
        "daemonize no",
        "supervised no",
        'logfile ""',
        "loglevel notice",
        f"dir {directory}",
        # Persistence: an append-only file fsynced every second (a crash loses at most
        # the last second); no periodic RDB snapshot besides.
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        f"maxmemory {spec.maxmemory}",
        "maxmemory-policy noeviction",
        "enable-debug-command no",
        "enable-module-command no",
        # The one user, known by its password's SHA-256 only.
        f"user default on #{spec.password_sha256} ~* &* +@all",
        "",
    ])


def render_program(layout: Layout, app: str, *, user: str | None, guard: Path,
                   guard_python: str, marker: str) -> str:
    """conf.d/redis-<app>.conf: the server under the process-tree guard (nothing
    outlives supervisord), as `user` (None: supervisord's own), its log with the app's."""
    command = " ".join(shlex.quote(a) for a in (
        guard_python, "-I", str(guard), "--", REDIS_SERVER,
        str(data_dir(layout, app) / CONF)))
    for value in (command, str(layout.logs), marker):
        if any(c in value for c in '%"\n\r\0;#\\'):
            raise Denied("a path cannot go into the Redis program's config")
    lines = [
        f"; Rendered by secureops for {app}'s Redis.",
        f"[program:{program_name(app)}]",
        f"command={command}",
        f"directory={data_dir(layout, app)}",
        "autostart=true",
        "autorestart=true",
        "startsecs=1",
        "startretries=5",
        "stopsignal=TERM",
        "stopwaitsecs=30",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={layout.logs / app / LOG}",
        "stdout_logfile_maxbytes=10MB",
        "stdout_logfile_backups=3",
    ]
    if user:
        lines.append(f"user={user}")
    lines.append(f'environment=LANG="C.UTF-8",OPUS_INSTANCE="{marker}"')
    return "\n".join(lines) + "\n"
