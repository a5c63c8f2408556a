"""Each app's own Redis server (Debian's `redis-server`): one per app, run by Opus's
supervisor as the app's own user, on 127.0.0.1 at redis_port_base + the app's id.

secureops writes its config (apps/<app>/run/redis/redis.conf, 0600, in a 0700
directory of the app's user) and its program (conf.d/redis-<app>.conf) from typed
values: the server knows its password only as the SHA-256 in an ACL rule. The password
itself is in opus.db, in REDIS_URL (a config var) and in the table that records the
server. System mode's port rules (secureops/firewall.py) let only the app's user, Opus
and root connect to the port, and only the app's user answer from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import secrets
import socket
import subprocess
import threading
import time
from typing import Any

from opus_paas import access, locks, ports, privileged, redact
from opus_paas.access import Actor
from opus_paas.errors import Conflict, NotFound, ServiceError, UsageError
from opus_paas.front import sites
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.settings import MEMORY_SIZE, Settings
from opus_paas.store import App, AppRedis, Store
from opus_paas.supervisor import Supervisor

ADDON = "redis"
REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
INSTALL_HINT = "sudo apt-get install -y --no-install-recommends redis-server"
READY_TIMEOUT = 15.0
PASSWORD_BYTES = 32
UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
PROGRAM = re.compile(r"([a-z](?:[a-z0-9-]{0,28}[a-z0-9])?)-redis")
MAX_COMMAND = 64 * 1024


# ---- pure -------------------------------------------------------------------------------

def maxmemory_bytes(size: str) -> int:
    """A size as the setting takes it (64mb, 1gb, 1048576) in bytes."""
    match = MEMORY_SIZE.fullmatch(size.strip().lower())
    if match is None:
        raise UsageError(f"redis_maxmemory {size!r} is not a size; give one such as 64mb")
    return int(match.group(1)) * UNITS[match.group(2) or ""]


def url(password: str, port: int) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def shown_url(port: int) -> str:
    """REDIS_URL as commands show it: without the password."""
    return f"redis://:***@127.0.0.1:{port}/0"


def password_of(redis_url: str) -> str:
    return redis_url.partition("://:")[2].rpartition("@")[0]


def program_name(app: str) -> str:
    return f"{app}-redis"


def app_of_program(group: str) -> str | None:
    """The app whose Redis a supervisor group is (pure)."""
    match = PROGRAM.fullmatch(group)
    return match.group(1) if match else None


def command_line(command: str) -> str:
    """One redis-cli command line (`-c`): one line of printable text."""
    if not command.strip() or len(command) > MAX_COMMAND or \
            any(c in command for c in "\0\r\n"):
        raise UsageError(f"redis:cli -c takes one command on one line (at most {MAX_COMMAND} "
                         "characters), such as -c 'GET mykey'")
    return command


# ---- talking to a server ----------------------------------------------------------------

def ask(port: int, password: str, *words: str, timeout: float = 5.0) -> Any:
    """One command to the server on `port` after AUTH; its reply (str, int, list or
    None). ServiceError when it cannot be reached or answers with an error."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        for command in (("AUTH", password), words):
            sock.sendall(_encode(command))
            reply = _reply(reader)
            if isinstance(reply, RedisError):
                raise ServiceError(f"Redis said: {reply}")
        return reply


class RedisError(str):
    """An error reply."""


def _encode(words: tuple[str, ...]) -> bytes:
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# What Opus reads of a reply: the server runs as the app's user, which may change it.
MAX_REPLY_BYTES = 8 << 20
MAX_REPLY_ITEMS = 1024


def _reply(reader: Any, depth: int = 0) -> Any:
    line = reader.readline(1 << 16)
    if not line.endswith(b"\r\n"):
        raise ServiceError("the Redis server closed the connection")
    kind, body = line[:1], line[1:-2].decode("utf-8", "replace")
    try:
        if kind == b"+":
            return body
        if kind == b"-":
            return RedisError(body)
        if kind == b":":
            return int(body)
        if kind == b"$" and int(body) <= MAX_REPLY_BYTES:
            size = int(body)
            return None if size < 0 else reader.read(size + 2)[:-2].decode("utf-8", "replace")
        if kind == b"*" and int(body) <= MAX_REPLY_ITEMS and depth < 4:
            count = int(body)
            return None if count < 0 else [_reply(reader, depth + 1) for _ in range(count)]
    except ValueError:
        pass
    raise ServiceError("the Redis server answered in a way Opus does not take (a malformed "
                       "or oversized reply)")


def wait_ready(port: int, password: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ask(port, password, "PING", timeout=2) == "PONG":
                return
        except (OSError, ServiceError) as exc:
            if time.monotonic() > deadline:
                raise ServiceError(f"the app's Redis did not answer on port {port} ({exc}); "
                                   "see `opus logs APP --ps redis`") from None
        time.sleep(0.1)


def check_listener(settings: Settings, app: str, port: int) -> None:
    """System mode: what listens on the port must be the app's own user (the port rules
    stop anyone else from answering; this says so plainly)."""
    if not settings.system:
        return
    try:
        expected = pwd.getpwnam(f"opus-{app}").pw_uid
    except KeyError:
        raise ServiceError(f"{app} has no user of its own") from None
    if ports.listeners(port) != {expected}:
        raise ServiceError(f"port {port}, {app}'s Redis port, is held by another user's "
                           "process; ask the operator to look at what listens there")


# ---- the add-on -------------------------------------------------------------------------

def require_installed() -> None:
    missing = [p for p in (REDIS_SERVER, REDIS_CLI) if not os.access(p, os.X_OK)]
    if missing:
        raise UsageError(f"Redis is not installed ({', '.join(missing)} missing); install "
                         f"Debian's redis-server first: {INSTALL_HINT}")


def enable(store: Store) -> None:
    require_installed()
    store.set_addon(ADDON, {"kind": "per-app"})


def require_enabled(store: Store) -> None:
    if store.addon(ADDON) is None:
        raise UsageError("Redis is not enabled on this Opus; the operator enables it with "
                         "`opus addons:enable redis`")


def server_of(store: Store, app: App) -> AppRedis:
    found = store.app_redis(app)
    if found is None:
        raise NotFound(f"{app.name} has no Redis; `opus redis:create {app.name}` makes one")
    return found


def port_for(settings: Settings, store: Store, app: App) -> int:
    """The app's Redis port: redis_port_base + its id, outside the apps' instance ports."""
    port = settings.redis_port_base + app.id
    highest = max((a.id for a in store.list_apps()), default=app.id)
    instance_ports = range(settings.app_port_base, settings.app_port_base + 2 * highest + 2)
    if not 1024 <= port <= 65535 or port in instance_ports or \
            port in (settings.http_port, settings.tls_port, settings.dashboard_port,
                     settings.ssh_port):
        raise UsageError(f"{app.name}'s Redis port would be {port}, which is not free for "
                         "it (outside 1024-65535, or an app's or Opus's own port); set "
                         "redis_port_base (OPUS_REDIS_PORT_BASE) to a block of free ports")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise ServiceError(f"{app.name}'s Redis port {port} is in use by another "
                               "process; free it (or set redis_port_base to a block of free "
                               "ports) and try again") from None
    return port


def install(settings: Settings, server: AppRedis) -> bool:
    """secureops writes the server's config and program; True if the config changed."""
    return privileged.install_redis(settings, server.app, server.port,
                                    maxmemory_bytes(settings.redis_maxmemory),
                                    server.password_sha256)


def start(settings: Settings, supervisor: Supervisor, server: AppRedis,
          restart: bool = False) -> None:
    """Have supervisor run the server (restarted if `restart`) and wait until it answers
    as the app's own."""
    name = program_name(server.app)
    with locks.host_lock(settings):
        supervisor.apply()
    if restart:
        supervisor.restart_group(name)
    else:
        supervisor.start_program(name)
    # Answering PING as the app's own is the test (supervisor's RUNNING comes a
    # second later, after startsecs).
    wait_ready(server.port, password_of(server.url))
    check_listener(settings, server.app, server.port)


def create(settings: Settings, store: Store, app: App) -> AppRedis:
    """The app's Redis: recorded, its port ruled (system mode) before it listens, its
    config and program installed, running and answering. Undone whole if a step fails."""
    require_enabled(store)
    require_installed()
    if store.app_redis(app) is not None:
        raise Conflict(f"{app.name} has a Redis server already; `opus redis:info {app.name}` "
                       "shows it")
    port = port_for(settings, store, app)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    digest = hashlib.sha256(password.encode()).hexdigest()
    store.add_app_redis(app, port, digest, url(password, port))
    server = server_of(store, app)
    supervisor = Supervisor(settings)
    try:
        # The port's rule first: no other app may hold the port when the app connects.
        sites.refresh_front(settings, store, supervisor)
        install(settings, server)
        if not supervisor.is_running():
            raise ServiceError("Opus is not running; `opus up` first")
        start(settings, supervisor, server)
    except BaseException:
        with contextlib.suppress(Exception):
            _remove(settings, store, app, supervisor)
        raise
    return server


def _remove(settings: Settings, store: Store, app: App, supervisor: Supervisor) -> None:
    privileged.remove_redis(settings, app.name, data=False)
    if supervisor.is_running():
        with locks.host_lock(settings):
            supervisor.apply()
    privileged.remove_redis(settings, app.name, data=True)
    store.remove_app_redis(app)
    sites.refresh_front(settings, store, supervisor)


def destroy(settings: Settings, store: Store, app: App) -> None:
    """Stop the app's Redis and remove its program, data and port rule."""
    server_of(store, app)
    _remove(settings, store, app, Supervisor(settings))


def stop_for_destroy(settings: Settings, store: Store, app: App) -> None:
    """apps:destroy: take the Redis program away before the app's own are (its data
    and record go with the app's)."""
    if store.app_redis(app) is not None:
        privileged.remove_redis(settings, app.name, data=False)


def info(settings: Settings, store: Store, app: App) -> dict[str, Any]:
    """What `redis:info` shows: never the password."""
    server = server_of(store, app)
    supervisor = Supervisor(settings)
    details: dict[str, Any] = {
        "port": server.port, "url": shown_url(server.port),
        "program": program_name(app.name),
        "state": supervisor.process_state(program_name(app.name)),
        "maxmemory": settings.redis_maxmemory, "policy": "noeviction",
        "persistence": "append-only file, fsynced every second",
        "created": server.created,
    }
    with contextlib.suppress(OSError, ServiceError, ValueError):
        text = ask(server.port, password_of(server.url), "INFO")
        fields = dict(line.split(":", 1) for line in str(text).splitlines()
                      if ":" in line and not line.startswith("#"))
        details["version"] = fields.get("redis_version", "?")
        details["used_memory"] = fields.get("used_memory_human", "?")
        details["keys"] = sum(int(m) for m in re.findall(r"^db\d+:keys=(\d+)", str(text),
                                                          re.M))
    return details


def cli(settings: Settings, store: Store, actor: Actor, name: str, command: str,
        emit: Emit, cancelled: threading.Event) -> int:
    """redis-cli as the app's user on its server: the password in REDISCLI_AUTH (its
    environment), the command on its standard input (never in its arguments, which
    every local user can read). Exit status 1 when the server answered an error."""
    app = access.app_for(store, actor, name)
    server = server_of(store, app)
    command_line(command)
    argv = [REDIS_CLI, "--no-raw", "-h", "127.0.0.1", "-p", str(server.port)]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
           "HOME": str(AppPaths.of(settings, app.name).home),
           "REDISCLI_AUTH": password_of(server.url)}
    failed = False
    try:
        for line in privileged.stream(settings, app.name, argv,
                                      cwd=AppPaths.of(settings, app.name).home, env=env,
                                      timeout=60, cancelled=cancelled,
                                      input=command + "\n"):
            failed = failed or line.startswith(("(error)", "Could not connect", "AUTH failed"))
            emit(redact.printable(line))
    except subprocess.CalledProcessError as exc:
        return exc.returncode if exc.returncode > 0 else 128 - exc.returncode
    return 1 if failed else 0


def carry_over(store: Store, app: App, config: dict[str, str]) -> dict[str, str]:
    """`config` (an older release's, being rolled back to) with the app's current
    REDIS_URL: a rollback must not lose the server redis:create made since."""
    found = store.app_redis(app)
    return config if found is None else {**config, "REDIS_URL": found.url}


def reconcile(settings: Settings, store: Store, supervisor: Supervisor) -> list[str]:
    """`opus up`: every app's Redis config and program as the settings say, running
    (restarted if its config changed); a line for each that does not answer."""
    report = []
    for server in store.list_redis_servers():
        try:
            changed = install(settings, server)
            start(settings, supervisor, server, restart=changed)
        except (ServiceError, UsageError) as exc:
            report.append(f"{server.app}'s Redis is not running: {exc}")
    return report
