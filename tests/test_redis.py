"""The Redis add-on end to end, on the session's Opus with Debian's redis-server: a tiny
app pushed over SSH reads and writes its own Redis through REDIS_URL; redis:cli and
redis:info; the password nowhere but in opus.db and the app's config (not the server's
config, `ps` or the logs); writes past maxmemory refused (noeviction); data kept across
a restart; redis:destroy and apps:destroy leave nothing; hostile names and arguments."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from opus_paas import settings as settings_module
from opus_paas.data import redis
from opus_paas.errors import ServiceError
from opus_paas.run.supervisor import Supervisor
from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    git,
    make_key,
    push_main,
    require_tool,
)
from tests.test_databases import ssh

APP = "redisweb"
# The app: a stdlib web server that counts its visits in Redis and shows a greeting
# kept there (RESP spoken by hand: no client library to install).
WEB = '''\
import os, socket
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

def ask(*words):
    url = urlsplit(os.environ["REDIS_URL"])
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for command in (("AUTH", url.password), words):
            sock.sendall(b"*%d\\r\\n" % len(command) + b"".join(
                b"$%d\\r\\n%s\\r\\n" % (len(w.encode()), w.encode()) for w in command))
            line = reader.readline()
        if line[:1] == b"$":
            size = int(line[1:])
            return None if size < 0 else reader.read(size + 2)[:-2].decode()
        return line[1:].strip().decode()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if "REDIS_URL" not in os.environ:
            body = b"hits: 0 greeting: no redis yet"
        else:
            body = f"hits: {ask('INCR', 'hits')} greeting: {ask('GET', 'greeting')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''
URL = re.compile(r"redis://:([A-Za-z0-9_-]{43})@127\.0\.0\.1:(\d+)/0")


def page(opus: Opus) -> tuple[int, str]:
    status, _headers, body = opus.get(opus.app_host(APP))
    assert status == 200, body
    found = re.fullmatch(r"hits: (\d+) greeting: (.*)", body)
    assert found, body
    return int(found.group(1)), found.group(2)


def cli(opus: Opus, app: str, command: str, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    return opus.cli("redis:cli", app, "-c", command, check=check)


@pytest.fixture(scope="module")
def enabled(opus: Opus) -> Opus:
    require_tool(redis.REDIS_SERVER)
    require_tool(redis.REDIS_CLI)
    done = opus.cli("addons:enable", "redis")
    assert "Redis enabled" in done.stdout, done.stdout
    assert "redis      enabled" in opus.cli("addons").stdout
    return opus


@pytest.fixture(scope="module")
def web(enabled: Opus, admin_key: SshKey, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny app, pushed, then given its Redis (a new release with REDIS_URL)."""
    project = tmp_path_factory.mktemp("redis-src") / APP
    project.mkdir()
    (project / "requirements.txt").write_text("six==1.16.0\n")
    (project / "Procfile").write_text("web: python web.py\n")
    (project / "web.py").write_text(WEB)
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "counts in redis")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{enabled.ssh_port}/{APP}.git")
    assert "Released v1" in push_main(project, enabled, admin_key)
    assert page(enabled) == (0, "no redis yet")
    created = enabled.cli("redis:create", APP).stdout
    assert f"Started {APP}'s Redis ({APP}-redis)" in created and "v2 is live" in created, \
        created
    url = enabled.cli("config:get", APP, "REDIS_URL").stdout.strip()
    assert URL.fullmatch(url), url
    return url


def _processes_text() -> bytes:
    seen = b""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                seen += (entry / "cmdline").read_bytes() + b"\n"
            except OSError:
                continue
    return seen


def test_an_app_reads_and_writes_its_own_redis_through_redis_url(enabled: Opus,
                                                                  web: str) -> None:
    password, port = URL.fullmatch(web).groups()  # type: ignore[union-attr]
    first, greeting = page(enabled)
    assert greeting == "None"
    assert cli(enabled, APP, 'SET greeting "hello from redis:cli"').stdout.strip() == "OK"
    second, greeting = page(enabled)
    assert second == first + 1 and greeting == "hello from redis:cli"
    assert cli(enabled, APP, "GET hits").stdout.strip() == f'"{second}"'
    # An error reply is an exit status; no option reaches redis-cli through -c.
    refused = cli(enabled, APP, "-h 10.0.0.1 NOSUCH", check=False)
    assert refused.returncode == 1 and "(error) ERR unknown command" in refused.stdout

    info = enabled.cli("redis:info", APP).stdout
    assert re.search(rf"^port:\s+{port}$", info, re.M), info
    assert re.search(r"^state:\s+RUNNING$", info, re.M), info
    assert re.search(r"^keys:\s+2$", info, re.M), info
    assert "maxmemory:    8mb" in info and password not in info

    # The server's config holds the password's SHA-256, never the password; it and its
    # directory are the run user's alone.
    directory = enabled.home / "apps" / APP / "run" / "redis"
    conf = directory / "redis.conf"
    text = conf.read_text()
    assert password not in text
    assert f"user default on #{hashlib.sha256(password.encode()).hexdigest()} " in text
    assert f"port {port}\n" in text and "bind 127.0.0.1\n" in text
    assert "maxmemory 8388608\n" in text and "maxmemory-policy noeviction\n" in text
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    run_user = "nobody" if os.geteuid() == 0 else None
    if run_user:
        assert conf.stat().st_uid == directory.stat().st_uid == 65534
    # Listening on loopback only, as the program Opus's supervisor runs.
    with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
        pass
    assert re.search(rf"{APP}-redis\s+RUNNING", enabled.cli("status").stdout)
    # Nowhere else: not in any process's arguments, nor in any log.
    assert password.encode() not in _processes_text()
    for path in (enabled.home / "logs").rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


def test_writes_past_maxmemory_are_refused_and_the_data_survives_a_restart(
        enabled: Opus, web: str) -> None:
    password, port_text = URL.fullmatch(web).groups()  # type: ignore[union-attr]
    port = int(port_text)
    value = "x" * (1 << 20)
    written = 0
    with pytest.raises(ServiceError, match="OOM command not allowed"):
        for n in range(20):                  # 8mb: refused well before 20 MB
            redis.ask(port, password, "SET", f"big:{n}", value)
            written += 1
    assert 2 <= written < 10
    # noeviction: what was written is all still there.
    assert redis.ask(port, password, "EXISTS", *[f"big:{n}" for n in range(written)]) == \
        written
    assert redis.ask(port, password, "DEL", *[f"big:{n}" for n in range(written)]) == written
    hits, _greeting = page(enabled)

    supervisor = Supervisor(settings_module.load(enabled.env))
    pid = next(p["pid"] for p in supervisor.processes() if p["name"] == f"{APP}-redis")
    supervisor.restart_group(f"{APP}-redis")
    redis.wait_ready(port, password)
    assert next(p["pid"] for p in supervisor.processes()
                if p["name"] == f"{APP}-redis") != pid
    again, greeting = page(enabled)
    assert again == hits + 1 and greeting == "hello from redis:cli"


def test_redis_commands_refuse_hostile_names_arguments_and_strangers(
        enabled: Opus, web: str, tmp_path: Path) -> None:
    for name in ("../x", "a;b", "-c", "Redisweb", "x" * 40, "opus", "a\nb"):
        for args in (["redis:create", name], ["redis:info", name],
                     ["redis:cli", name, "-c", "PING"],
                     ["redis:destroy", name, "--confirm", name]):
            done = enabled.cli(*args, check=False)
            assert done.returncode != 0 and "invalid app name" in done.stderr, (args, done)
    for args, said in (
            (["redis:cli", APP, "-c", "GET a\nFLUSHALL"], "one command on one line"),
            (["redis:cli", APP, "-c", "GET a\rFLUSHALL"], "one command on one line"),
            (["redis:cli", APP, "-c", ""], "one command on one line"),
            (["redis:cli", APP, "PING"], "usage: opus redis:cli"),
            (["redis:cli", APP, "-x", "PING"], "usage: opus redis:cli"),
            (["redis:destroy", APP], "usage: opus redis:destroy"),
            (["redis:destroy", APP, "--confirm", "other"], "repeat its name"),
            (["redis:create", APP], "has a Redis server already"),
            (["addons:enable", "redis", "--url", "x"], "usage: opus addons:enable")):
        done = enabled.cli(*args, check=False)
        assert done.returncode != 0 and said in done.stderr, (args, done.stderr)
    assert enabled.cli("redis:info", APP).returncode == 0    # nothing was flushed
    assert page(enabled)[1] == "hello from redis:cli"
    # Someone else's app is missing to a stranger; enabling is the host's own business.
    stranger = make_key(tmp_path, "redisstranger")
    enabled.cli("keys:add", "redisstranger", str(stranger.public))
    for command in (f"redis:info {APP}", f"redis:cli {APP} -c PING",
                    f"redis:create {APP}", f"redis:destroy {APP} --confirm {APP}"):
        done = ssh(enabled, stranger, command)
        assert done.returncode != 0 and b"not found, or you may not use it" in done.stderr
    assert b"only on the Opus host" in ssh(enabled, stranger, "addons:enable redis").stderr \
        or ssh(enabled, stranger, "addons:enable redis").returncode != 0


def test_redis_destroy_and_apps_destroy_leave_nothing(enabled: Opus, web: str) -> None:
    # An app with no release gets REDIS_URL for its first push; apps:destroy takes it all.
    enabled.cli("apps:create", "redisbare")
    assert "the app's next push takes it" in enabled.cli("redis:create", "redisbare").stdout
    bare = enabled.cli("config:get", "redisbare", "REDIS_URL").stdout.strip()
    bare_port = int(URL.fullmatch(bare).group(2))  # type: ignore[union-attr]
    assert cli(enabled, "redisbare", "SET k v").stdout.strip() == "OK"
    conf_d = enabled.home / "supervisor" / "conf.d"
    assert (conf_d / "redis-redisbare.conf").exists()
    enabled.cli("apps:destroy", "redisbare", "--confirm", "redisbare")
    assert not (conf_d / "redis-redisbare.conf").exists()
    assert not (enabled.home / "apps" / "redisbare").exists()
    assert "redisbare" not in enabled.cli("status").stdout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", bare_port), timeout=2).close()

    port = int(URL.fullmatch(web).group(2))  # type: ignore[union-attr]
    done = enabled.cli("redis:destroy", APP, "--confirm", APP).stdout
    assert "REDIS_URL is unset (v3 is live)" in done, done
    assert enabled.cli("config:get", APP, "REDIS_URL", check=False).returncode != 0
    assert not (enabled.home / "apps" / APP / "run" / "redis").exists()
    assert not (conf_d / f"redis-{APP}.conf").exists()
    assert f"{APP}-redis" not in enabled.cli("status").stdout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    gone = enabled.cli("redis:info", APP, check=False)
    assert gone.returncode != 0 and f"redis:create {APP}" in gone.stderr
