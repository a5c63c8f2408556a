"""The Redis add-on end to end, on the session's Opus with Debian's redis-server: a tiny
app pushed over SSH reads and writes its own Redis through REDIS_URL; redis:cli and
redis:info; the password nowhere but in opus.db and the app's config (not the server's
config, `ps` or the logs); writes past maxmemory refused (noeviction); data kept across
a restart; redis:destroy and apps:destroy leave nothing; hostile names and arguments."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from opus_paas import redact
from opus_paas import settings as settings_module
from opus_paas.data import redis
from opus_paas.errors import ServiceError, UsageError
from opus_paas.store import Store
from opus_paas.supervisor import Supervisor
from secureops import firewall, front
from secureops import redis as redis_conf
from secureops.layout import Denied, Layout
from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    git,
    make_key,
    push_main,
    require_tool,
)
from tests.test_databases import in_process, ssh

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


def here(opus: Opus, *argv: str) -> str:
    """A read-only command in this process (the CLI's start-up costs 0.6 s): its output;
    AssertionError if it failed."""
    said: list[str] = []
    refused = in_process(opus, list(argv), said)
    assert refused is None, refused
    return "\n".join(said) + "\n"


@pytest.fixture(scope="module")
def enabled(opus: Opus) -> Opus:
    require_tool(redis.REDIS_SERVER)
    require_tool(redis.REDIS_CLI)
    done = opus.cli("addons:enable", "redis")
    assert "Redis enabled" in done.stdout, done.stdout
    assert "redis      enabled" in here(opus, "addons")
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
    url = here(enabled, "config:get", APP, "REDIS_URL").strip()
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
    assert here(enabled, "redis:cli", APP, "-c", "GET hits").strip() == f'"{second}"'
    # An error reply is an exit status; no option reaches redis-cli through -c.
    refused = cli(enabled, APP, "-h 10.0.0.1 NOSUCH", check=False)
    assert refused.returncode == 1 and "(error) ERR unknown command" in refused.stdout

    info = here(enabled, "redis:info", APP)
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
    assert re.search(rf"{APP}-redis\s+RUNNING", here(enabled, "status"))
    # Its log: with `--ps redis` (unstamped, so not merged into the app's own).
    assert "Ready to accept connections" in here(enabled, "logs", APP, "--ps", "redis")
    assert "Ready to accept connections" not in here(enabled, "logs", APP)
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

    # `opus doctor` notices a stopped server; `opus up`'s reconcile starts it, and
    # rewrites its config from the settings (restarting it when that changed).
    with supervisor._proxy() as proxy:
        proxy.stopProcess(f"{APP}-redis")
    said: list[str] = []
    assert in_process(enabled, ["doctor"], said) is None
    assert f"{APP}: its Redis ({APP}-redis) is not running; `opus up` will start it" in said
    settings = settings_module.load(enabled.env)
    store = Store(settings.db_path)
    assert redis.reconcile(settings, store, supervisor) == []
    assert supervisor.process_state(f"{APP}-redis") in ("STARTING", "RUNNING")
    conf = enabled.home / "apps" / APP / "run" / "redis" / "redis.conf"
    bigger = dataclasses.replace(settings, redis_maxmemory="9mb")
    assert redis.reconcile(bigger, store, supervisor) == []
    assert "maxmemory 9437184\n" in conf.read_text()
    assert redis.ask(port, password, "CONFIG", "GET", "maxmemory") == ["maxmemory", "9437184"]
    assert page(enabled)[0] == again + 1       # (its data kept through that restart too)


def test_redis_commands_refuse_hostile_names_arguments_and_strangers(
        enabled: Opus, web: str, tmp_path: Path) -> None:
    for name in ("../x", "a;b", "-c", "Redisweb", "x" * 40, "opus", "a\nb", ""):
        for args in (["redis:create", name], ["redis:info", name],
                     ["redis:cli", name, "-c", "PING"],
                     ["redis:destroy", name, "--confirm", name]):
            refused = in_process(enabled, args)
            assert refused is not None and "invalid app name" in refused.message, args
    for args, said in (
            (["redis:cli", APP, "-c", "GET a\nFLUSHALL"], "one command on one line"),
            (["redis:cli", APP, "-c", "GET a\rFLUSHALL"], "one command on one line"),
            (["redis:cli", APP, "-c", "GET a\0"], "one command on one line"),
            (["redis:cli", APP, "-c", " "], "one command on one line"),
            (["redis:cli", APP, "-c", "GET " + "a" * 70000], "one command on one line"),
            (["redis:cli", APP, "PING"], "usage: opus redis:cli"),
            (["redis:cli", APP, "-x", "PING"], "usage: opus redis:cli"),
            (["redis:destroy", APP], "usage: opus redis:destroy"),
            (["redis:destroy", APP, "--confirm", "other"], "repeat its name"),
            (["redis:create", APP], "has a Redis server already"),
            (["addons:enable", "redis", "--url", "x"], "usage: opus addons:enable")):
        refused = in_process(enabled, args)
        assert refused is not None and said in refused.message, (args, refused)
    assert page(enabled)[1] == "hello from redis:cli"      # nothing was flushed
    # Someone else's app is missing to a stranger; enabling is the host's own business.
    stranger = make_key(tmp_path, "redisstranger")
    enabled.cli("keys:add", "redisstranger", str(stranger.public))
    for command in (f"redis:info {APP}", f"redis:cli {APP} -c PING",
                    f"redis:create {APP}", f"redis:destroy {APP} --confirm {APP}"):
        done = ssh(enabled, stranger, command)
        assert done.returncode == 3 and b"not found, or you may not use it" in done.stderr
    refused_ssh = ssh(enabled, stranger, "addons:enable redis")
    assert refused_ssh.returncode != 0 and b"runs on the Opus host only" in refused_ssh.stderr


def test_redis_destroy_and_apps_destroy_leave_nothing(enabled: Opus, web: str) -> None:
    # An app with no release gets REDIS_URL for its first push; apps:destroy takes it all.
    enabled.cli("apps:create", "redisbare")
    settings = settings_module.load(enabled.env)
    bare_app = Store(settings.db_path).get_app("redisbare")
    assert bare_app is not None
    with socket.socket() as squatter:        # its port taken: refused, nothing made
        squatter.bind(("127.0.0.1", settings.redis_port_base + bare_app.id))
        busy = in_process(enabled, ["redis:create", "redisbare"])
        assert busy is not None and "is in use by another process" in busy.message
    assert "REDIS_URL" not in here(enabled, "config", "redisbare")
    assert "the app's next push takes it" in enabled.cli("redis:create", "redisbare").stdout
    bare = here(enabled, "config:get", "redisbare", "REDIS_URL").strip()
    bare_port = int(URL.fullmatch(bare).group(2))  # type: ignore[union-attr]
    assert here(enabled, "redis:cli", "redisbare", "-c", "SET k v").strip() == "OK"
    conf_d = enabled.home / "supervisor" / "conf.d"
    assert (conf_d / "redis-redisbare.conf").exists()
    enabled.cli("apps:destroy", "redisbare", "--confirm", "redisbare")
    assert not (conf_d / "redis-redisbare.conf").exists()
    assert not (enabled.home / "apps" / "redisbare").exists()
    assert "redisbare" not in here(enabled, "status")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", bare_port), timeout=2).close()

    port = int(URL.fullmatch(web).group(2))  # type: ignore[union-attr]
    done = enabled.cli("redis:destroy", APP, "--confirm", APP).stdout
    assert "REDIS_URL is unset (v3 is live)" in done, done
    assert "REDIS_URL" not in here(enabled, "config", APP)
    assert not (enabled.home / "apps" / APP / "run" / "redis").exists()
    assert not (conf_d / f"redis-{APP}.conf").exists()
    assert f"{APP}-redis" not in here(enabled, "status")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    gone = in_process(enabled, ["redis:info", APP])
    assert gone is not None and f"redis:create {APP}" in gone.message


# ---- pure parts: what secureops takes and renders ---------------------------------------

def _layout(tmp_path: Path) -> Layout:
    return Layout(home=tmp_path / "home", conf_d=tmp_path / "conf.d", front=tmp_path / "front",
                  logs=tmp_path / "logs", log=tmp_path / "log", front_group="root")


@pytest.mark.parametrize("spec, said", [
    ({"port": 30001, "maxmemory": 1 << 26}, "missing keys"),
    ({"port": 30001, "maxmemory": 1 << 26, "password_sha256": "0" * 64, "user": "root"},
     "unknown keys"),
    ({"port": 80, "maxmemory": 1 << 26, "password_sha256": "0" * 64}, "port must be"),
    ({"port": "30001", "maxmemory": 1 << 26, "password_sha256": "0" * 64}, "port must be"),
    ({"port": 30001, "maxmemory": 10, "password_sha256": "0" * 64}, "maxmemory must be"),
    ({"port": 30001, "maxmemory": True, "password_sha256": "0" * 64}, "maxmemory must be"),
    ({"port": 30001, "maxmemory": 1 << 26, "password_sha256": "0" * 63 + "\n"},
     "64 lower-case hex"),
    ({"port": 30001, "maxmemory": 1 << 26, "password_sha256": "plain password"},
     "64 lower-case hex"),
    ([], "must be a JSON object"),
])
def test_secureops_refuses_a_hostile_redis_spec(spec: object, said: str) -> None:
    with pytest.raises(Denied, match=said):
        redis_conf.check(spec)


def test_the_redis_config_and_program_are_rendered_from_typed_values(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    spec = redis_conf.check({"port": 30007, "maxmemory": 1 << 26,
                             "password_sha256": "ab" * 32})
    text = redis_conf.render_conf(layout, "shop", spec)
    assert "bind 127.0.0.1\nport 30007\n" in text
    assert f"dir {layout.home}/apps/shop/run/redis\n" in text
    assert "maxmemory 67108864\nmaxmemory-policy noeviction\n" in text
    assert "appendonly yes\nappendfsync everysec\n" in text
    assert text.endswith(f"user default on #{'ab' * 32} ~* &* +@all\n")
    assert "requirepass" not in text
    program = redis_conf.render_program(layout, "shop", user="opus-shop",
                                        guard=Path("/usr/local/lib/opus/opus_guard.py"),
                                        guard_python="/usr/bin/python3", marker="/var/lib/opus")
    assert "[program:shop-redis]\n" in program and "user=opus-shop\n" in program
    assert (f"command=/usr/bin/python3 -I /usr/local/lib/opus/opus_guard.py -- "
            f"/usr/bin/redis-server {layout.home}/apps/shop/run/redis/redis.conf\n") in program
    assert f"stdout_logfile={layout.logs}/shop/redis.log\n" in program
    with pytest.raises(Denied):
        redis_conf.render_program(layout, "shop", user=None, guard=Path("/x;y #z"),
                                  guard_python="/usr/bin/python3", marker="/h")


FRONT = {"listen_host": "127.0.0.1", "listen_port": 8080, "scheme": "http",
         "https_port": 8443, "manager_port": 20000, "manager_tls_port": 20001,
         "dashboard": {"domain": "opus.localhost", "host": "127.0.0.1", "port": 8090,
                       "tls": None},
         "token": "0" * 32,
         "sites": [{"app": "shop", "domains": ["shop.localhost"], "port": 20002,
                    "members": [20002, 20003]}]}


@pytest.mark.parametrize("redis_list, said", [
    ([{"app": "../x", "port": 30001}], "invalid app name"),
    ([{"app": "shop", "port": 30001, "user": "root"}], "unknown keys"),
    ([{"app": "shop", "port": 22}], "Redis port must be"),
    ([{"app": "shop", "port": 30001}, {"app": "shop", "port": 30002}], "two Redis"),
    ([{"app": "shop", "port": 30001}, {"app": "blog", "port": 30001}], "two Redis"),
    ([{"app": "shop", "port": 20003}], "a Redis port is an app instance's"),
    ([{"app": "shop", "port": 8090}], "a Redis port is an app instance's"),
    ({"shop": 30001}, "redis must be a list"),
])
def test_the_front_spec_refuses_hostile_redis_ports(redis_list: object, said: str) -> None:
    with pytest.raises(Denied, match=said):
        front.check({**FRONT, "redis": redis_list})


def test_the_front_spec_carries_redis_ports_to_the_port_rules() -> None:
    spec = front.check({**FRONT, "redis": [{"app": "shop", "port": 30001}]})
    assert spec.redis == (front.RedisPort("shop", 30001),)
    assert front.check(FRONT).redis == ()         # (a spec from before: none)
    rules = firewall.render([firewall.Guard("redis of shop", (30001,),
                                            frozenset({0, 999, 300001}), frozenset({300001}))])
    assert "tcp dport 30001 meta skuid != { 0, 999, 300001 } reject with tcp reset" in rules
    assert "tcp sport 30001 meta skuid != 300001 drop" in rules


@pytest.mark.parametrize("size, expected", [("64mb", 64 << 20), ("1gb", 1 << 30),
                                            ("512KB", 512 << 10), ("1048576", 1 << 20),
                                            (" 8mb ", 8 << 20)])
def test_maxmemory_sizes(size: str, expected: int) -> None:
    assert redis.maxmemory_bytes(size) == expected


@pytest.mark.parametrize("size", ["64 mb", "-1mb", "1tb", "mb", "1e9", "64mb; rm"])
def test_a_maxmemory_that_is_no_size_is_refused(size: str) -> None:
    with pytest.raises(UsageError, match="redis_maxmemory"):
        settings_module.load({"OPUS_HOME": "/nonexistent-opus-home",
                              "OPUS_REDIS_MAXMEMORY": size})


def test_opus_logs_a_redis_cli_command_without_its_words() -> None:
    assert redact.command_line(["redis:cli", "shop", "-c", "SET token s3cret"]) == \
        ["redis:cli", "shop", "-c", redact.HIDDEN]
    assert "s3cret" not in redact.logged_command("redis:cli shop --command='SET t s3cret'")
    assert redact.command_line(["redis:destroy", "shop", "--confirm", "shop"]) == \
        ["redis:destroy", "shop", "--confirm", "shop"]


@pytest.mark.parametrize("answer", [b"$999999999\r\n", b"*5000\r\n", b"*1\r\n" * 6 + b":1\r\n",
                                    b"?what\r\n", b":12x\r\n", b"+no end", b""])
def test_opus_takes_no_oversized_or_malformed_reply_from_an_apps_server(answer: bytes) -> None:
    """The server runs as the app's user, who may change it: what Opus reads is bounded."""
    with pytest.raises(ServiceError):
        redis._reply(io.BytesIO(answer))


def test_opus_reads_a_servers_replies() -> None:
    reader = io.BytesIO(b"+PONG\r\n:7\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n-ERR x\r\n")
    assert [redis._reply(reader) for _ in range(6)] == ["PONG", 7, "hello", None, ["a", 1],
                                                         "ERR x"]


def test_enabling_without_redis_installed_says_how_to_install_it(
        opus: Opus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis, "REDIS_SERVER", "/nonexistent/redis-server")
    refused = in_process(opus, ["addons:enable", "redis"])
    assert refused is not None and refused.exit_code == 2
    assert "apt-get install -y --no-install-recommends redis-server" in refused.message
    assert "/nonexistent/redis-server missing" in refused.message
