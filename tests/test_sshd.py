"""The SSH gate, driven with the real ssh client: hostile commands get one line and harm
nothing."""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import os
import re
import select
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from opus_paas import privileged, users
from opus_paas import settings as settings_module
from opus_paas.control import sshd
from opus_paas.errors import UsageError
from opus_paas.settings import Settings
from opus_paas.store import Store
from tests.conftest import (
    CONNECTIONS_PER_USER,
    KEYS_PER_USER,
    LOGIN_TIMEOUT,
    Opus,
    SshKey,
    git,
    make_key,
)
from tests.gitwire import authenticated, connect, raw_exec


def ssh(opus: Opus, key: SshKey, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
         "git@127.0.0.1", command],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("command", [
    "git-receive-pack '../../etc/passwd'",
    "git-receive-pack '/etc/passwd.git'",
    "git-receive-pack 'app;id'",
    "git-receive-pack '$(id).git'",
    "git-receive-pack '`id`.git'",
    "git-receive-pack 'App.git'",
    "git-receive-pack '-oops.git'",
    "git-receive-pack 'opus.git'",
    "git-receive-pack '" + "a" * 300 + ".git'",
    "git-receive-pack myapp.git",
    "git-receive-pack 'a.git' extra",
    "git-upload-archive 'myapp.git'",
    "git-receive-pack 'a.git'\ngit-receive-pack 'b.git'",
    "sh -c id",
    "rm -rf /",
])
def test_hostile_commands_are_refused_in_one_line(opus: Opus, admin_key: SshKey,
                                                  command: str) -> None:
    store = Store(opus.home / "opus.db")
    apps_before = store.list_apps()
    result = ssh(opus, admin_key, command)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opus: "), result.stderr
    assert "/tmp/" not in result.stderr and str(opus.home) not in result.stderr
    assert store.list_apps() == apps_before
    assert not any(p.name.startswith(("..", "etc", "app;", "$(")) for p in
                   (opus.home / "repos").iterdir())


def test_clone_of_an_unknown_app_is_refused(opus: Opus, admin_key: SshKey) -> None:
    result = ssh(opus, admin_key, "git-upload-pack '/no-such-app.git'")
    assert result.returncode != 0
    assert "app no-such-app not found" in result.stderr
    assert not (opus.home / "repos" / "no-such-app.git").exists()


def test_shell_request_is_answered_and_closed(opus: Opus, admin_key: SshKey) -> None:
    result = subprocess.run(
        ["ssh", "-i", str(admin_key.private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-T", "-p", str(opus.ssh_port), "git@127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "Opus gives no shell" in result.stderr


def ssh_with(opus: Opus, key: SshKey, *options: str, command: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
            *options, "git@127.0.0.1"] + ([command] if command else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def test_only_public_key_authentication_is_offered(opus: Opus, admin_key: SshKey) -> None:
    result = ssh_with(opus, admin_key, "-o", "PreferredAuthentications=password,"
                      "keyboard-interactive", "-o", "PubkeyAuthentication=no",
                      command="git-upload-pack 'x.git'")
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_a_subsystem_request_is_refused(opus: Opus, admin_key: SshKey) -> None:
    result = ssh_with(opus, admin_key, "-s", command="sftp")
    assert result.returncode != 0
    assert "subsystem request failed" in result.stderr


def on_a_terminal(argv: list[str], keystrokes: bytes = b"",
                  asked: tuple[bytes, ...] = ()) -> tuple[int, list[str]]:
    """Run `argv` (an ssh client) on a real pseudo-terminal, typing `keystrokes` once it
    shows one of `asked` (its prompts; none given: after 2 s); return its exit status and
    the lines it showed."""
    controller, terminal = os.openpty()
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal,
                            start_new_session=True)
    os.close(terminal)
    output = b""
    if keystrokes:
        output = until_asked(controller, asked)     # let the remote side ask first
        os.write(controller, keystrokes)
    with contextlib.suppress(OSError):   # EIO once ssh has exited and closed the terminal
        while chunk := os.read(controller, 4096):
            output += chunk
    os.close(controller)
    return proc.wait(30), [ln.strip() for ln in output.decode().splitlines() if ln.strip()]


def until_asked(controller: int, asked: tuple[bytes, ...], seconds: float = 30) -> bytes:
    """What the terminal showed until one of the prompts `asked` (none: for 2 s)."""
    if not asked:
        time.sleep(2)
        return b""
    shown = b""
    deadline = time.monotonic() + seconds
    while not any(prompt in shown for prompt in asked) and time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            try:
                shown += os.read(controller, 4096)
            except OSError:     # EIO: it exited without asking
                break
    return shown


def ssh_t(opus: Opus, key: SshKey, command: str) -> list[str]:
    return ["ssh", "-t", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
            "git@127.0.0.1", command]


def test_a_terminal_is_given_to_run_only_others_are_told(opus: Opus,
                                                         admin_key: SshKey) -> None:
    """`ssh -t` on a real terminal: a command other than `run` goes on without one, and
    says so."""
    status, lines = on_a_terminal(ssh_t(opus, admin_key, "git-upload-pack 'no-such-app.git'"))
    assert status != 0
    assert lines == ["opus: a terminal is given to `opus run` and `opus pg:psql` only; going "
                     "on without one",
                     "opus: app no-such-app not found, or you may not use it"]


def test_an_environment_variable_is_refused_with_a_notice(opus: Opus,
                                                          admin_key: SshKey) -> None:
    result = ssh_with(opus, admin_key, "-o", "SetEnv=LD_PRELOAD=/tmp/evil.so",
                      command="git-upload-pack 'no-such-app.git'")
    assert "opus: environment variable refused" in result.stderr
    assert "app no-such-app not found" in result.stderr


def test_remote_port_forwarding_is_refused(opus: Opus, admin_key: SshKey) -> None:
    result = ssh_with(opus, admin_key, "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9",
                      command="git-upload-pack 'no-such-app.git'")
    assert result.returncode == 255
    assert "remote port forwarding failed" in result.stderr


def test_local_port_forwarding_and_second_channels_are_refused(opus: Opus,
                                                               admin_key: SshKey) -> None:
    with authenticated(opus, admin_key) as transport:
        with pytest.raises(paramiko.ChannelException, match=r"prohibited|Administratively"):
            transport.open_channel("direct-tcpip", ("127.0.0.1", opus.http_port),
                                   ("127.0.0.1", 40000))
        transport.open_session().close()
        with pytest.raises(paramiko.ChannelException):
            transport.open_session()   # one command per connection


def test_a_connection_that_never_asks_for_a_command_is_closed(opus: Opus,
                                                              admin_key: SshKey) -> None:
    with authenticated(opus, admin_key) as transport:
        channel = transport.open_session()
        started = time.monotonic()
        channel.settimeout(30)
        message = channel.recv_stderr(1000).decode()
        assert "opus: no command within 6 s; closing the connection" in message
        assert 5 < time.monotonic() - started < 15


def test_a_client_that_never_speaks_ssh_is_dropped(opus: Opus) -> None:
    with socket.create_connection(("127.0.0.1", opus.ssh_port), timeout=30) as sock:
        assert sock.recv(100).startswith(b"SSH-2.0-")
        started = time.monotonic()
        while sock.recv(4096):
            pass
        assert time.monotonic() - started < 20


def test_each_user_has_one_connection_cap_across_all_their_keys(
        opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    key, spare = make_key(tmp_path, "capped"), make_key(tmp_path, "capped-spare")
    opus.cli("keys:add", "capped", str(key.public))
    opus.cli("keys:add", "capped", str(spare.public))
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q",
        "--allow-empty", "-m", "1")
    git(repo, "push", f"ssh://git@127.0.0.1:{opus.ssh_port}/capped.git", "HEAD:refs/heads/x",
        env=key.git_env(opus))
    holders = []
    refusal = (f"opus: too many connections for capped at once, all keys together (limit "
               f"{CONNECTIONS_PER_USER}); wait for one to finish and try again")
    try:
        for one in itertools.islice(itertools.cycle([key, spare]), CONNECTIONS_PER_USER):
            client = connect(opus, one)
            channel = client.get_transport().open_session()   # type: ignore[union-attr]
            channel.exec_command("git-upload-pack 'capped.git'")
            channel.settimeout(20)
            assert channel.recv(4)   # the advertisement: this connection holds a slot
            holders.append(client)
        for one in (key, spare):   # a key of one's own does not get round the cap
            over = raw_exec(opus, one, "git-upload-pack 'capped.git'")
            assert over.stderr.strip() == refusal
            assert over.status == 5
        # Another user is not affected.
        other = raw_exec(opus, admin_key, "git-upload-pack 'nothing.git'")
        assert "app nothing not found" in other.stderr
    finally:
        for client in holders:
            client.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "too many" not in raw_exec(opus, spare, "git-upload-pack 'capped.git'",
                                      b"0000").stderr:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the slots were not given back")


def test_one_address_is_capped_before_the_handshake_and_others_still_get_in(
        opus: Opus, admin_key: SshKey) -> None:
    """Idle connections from 127.0.0.1 fill its share of logins; the next one from it
    is closed at once with one line, while 127.0.0.2 logs in and runs a command."""
    per_source = 10   # the default ssh_unauthenticated_per_source
    held = []
    try:
        for _ in range(per_source):
            sock = socket.create_connection(("127.0.0.1", opus.ssh_port), timeout=10)
            held.append(sock)
            assert sock.recv(100).startswith(b"SSH-2.0-")   # admitted, and left idle
        with socket.create_connection(("127.0.0.1", opus.ssh_port), timeout=10) as over:
            assert read_to_end(over) == (b"opus: too many connections from your address "
                                         b"are logging in; try again later\r\n")
        other = ssh_with(opus, admin_key, "-o", "BindAddress=127.0.0.2", command="apps")
        assert other.returncode == 0, other.stderr
        assert all(s.fileno() != -1 for s in held)
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while ssh_with(opus, admin_key, command="apps").returncode != 0:
        assert time.monotonic() < deadline, "the address's slots were not given back"
        time.sleep(0.3)
    log = (opus.home / "logs" / "opus-sshd.log").read_text()
    assert (f"refused a connection from 127.0.0.1: {per_source} connections from it have "
            f"not logged in yet (ssh_unauthenticated_per_source = {per_source})") in log


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def test_a_login_trickled_a_byte_at_a_time_is_cut_at_the_login_deadline(opus: Opus) -> None:
    """Each byte comes well within every read timeout, but the login as a whole has
    a deadline."""
    with socket.create_connection(("127.0.0.1", opus.ssh_port), timeout=10) as sock:
        assert sock.recv(100).startswith(b"SSH-2.0-")
        started = time.monotonic()
        sock.settimeout(1)
        for byte in itertools.cycle(b"SSH-2.0-slow"):
            assert time.monotonic() - started < LOGIN_TIMEOUT + 10, "never cut off"
            try:
                sock.send(bytes([byte]))
                if not sock.recv(100):
                    break
            except TimeoutError:
                continue
            except OSError:   # reset
                break
        assert LOGIN_TIMEOUT - 1 < time.monotonic() - started < LOGIN_TIMEOUT + 3


def test_keys_add_past_the_users_key_cap_is_refused_with_how_to_remove_one(
        opus: Opus, tmp_path: Path) -> None:
    key = make_key(tmp_path, "keyful")
    opus.cli("keys:add", "keyful", str(key.public))
    store = Store(opus.home / "opus.db")
    for i in range(KEYS_PER_USER - 1):
        blob = b"".join(len(f).to_bytes(4, "big") + f for f in (b"ssh-ed25519",
                                                                os.urandom(32)))
        store.add_key("keyful", users.fingerprint(blob),
                      "ssh-ed25519 " + base64.b64encode(blob).decode(), f"old-{i}")
    extra = make_key(tmp_path, "one-too-many").public.read_text()

    def add() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
             "git@127.0.0.1", "keys:add keyful -"],
            input=extra, capture_output=True, text=True, timeout=60, check=False)

    refused = add()
    assert refused.returncode == 5
    assert refused.stderr == (
        f"opus: keyful has {KEYS_PER_USER} SSH keys, the most one user may have "
        f"(ssh_keys_per_user = {KEYS_PER_USER}); remove one first: `opus keys` lists them, "
        "`opus keys:remove FINGERPRINT|NAME` removes one\n")
    # An admin adding it for them is held to the same cap.
    assert opus.cli("keys:add", "keyful", "-", input=extra, check=False).returncode == 5
    assert len([k for k in store.list_keys() if k.user == "keyful"]) == KEYS_PER_USER
    assert ssh(opus, key, "keys:remove old-0").returncode == 0
    added = add()
    assert added.returncode == 0, added.stderr


def test_the_ssh_limits_are_settings_with_safe_defaults(tmp_path: Path) -> None:
    defaults = settings_module.load({"OPUS_HOME": str(tmp_path)})
    assert defaults.ssh_login_timeout < 30
    assert (defaults.ssh_unauthenticated_per_source, defaults.ssh_connections_per_user,
            defaults.ssh_keys_per_user) == (10, 8, 20)
    (tmp_path / "opus.toml").write_text("ssh_keys_per_user = 5\n"
                                        "ssh_connections_per_key = 3\n")
    from_file = settings_module.load({"OPUS_HOME": str(tmp_path)})
    assert (from_file.ssh_keys_per_user, from_file.ssh_connections_per_user) == (5, 3)
    from_env = settings_module.load({"OPUS_HOME": str(tmp_path), "OPUS_SSH_KEYS_PER_USER": "7",
                                     "OPUS_SSH_LOGIN_TIMEOUT": "2.5",
                                     "OPUS_SSH_UNAUTHENTICATED_PER_SOURCE": "4"})
    assert (from_env.ssh_keys_per_user, from_env.ssh_login_timeout,
            from_env.ssh_unauthenticated_per_source) == (7, 2.5, 4)
    for name, value in [("OPUS_SSH_KEYS_PER_USER", "0"), ("OPUS_SSH_LOGIN_TIMEOUT", "nan"),
                        ("OPUS_SSH_LOGIN_TIMEOUT", "inf"),
                        ("OPUS_SSH_UNAUTHENTICATED_PER_SOURCE", "-1"),
                        ("OPUS_SSH_CONNECTIONS_PER_USER", "many")]:
        with pytest.raises(UsageError, match=f"{name}: .* is not valid"):
            settings_module.load({"OPUS_HOME": str(tmp_path), name: value})


def test_a_flood_of_refusals_from_one_address_logs_a_few_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    limiter = sshd.SourceLimiter(2)
    assert limiter.admit("192.0.2.1") and limiter.admit("192.0.2.1")
    with caplog.at_level(logging.WARNING, logger="opus.sshd"):
        assert not any(limiter.admit("192.0.2.1") for _ in range(1000))
        assert limiter.admit("192.0.2.2")   # another address is not affected
    assert len(caplog.records) == 10   # the 1st, 2nd, 4th, … 512th
    limiter.release("192.0.2.1")
    assert limiter.admit("192.0.2.1")


def test_each_connection_is_logged_with_key_user_command_and_outcome(
        opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    stranger = make_key(tmp_path, "stranger")
    ssh(opus, admin_key, "git-upload-pack 'logged-app.git'")
    ssh(opus, stranger, "git-upload-pack 'logged-app.git'")
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(admin_key.public)],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    stranger_fp = subprocess.run(["ssh-keygen", "-lf", str(stranger.public)],
                                 capture_output=True, text=True, check=True).stdout.split()[1]
    deadline = time.monotonic() + 5
    log = ""
    while time.monotonic() < deadline:
        log = (opus.home / "logs" / "opus-sshd.log").read_text()
        if "logged-app" in log and stranger_fp in log:
            break
        time.sleep(0.2)
    assert re.search(rf"user=admin key={re.escape(fingerprint)} "
                     r"command='git-upload-pack logged-app.git' status=3 "
                     r"outcome=NotFound: app logged-app not found", log), log[-2000:]
    assert f"auth refused: unregistered key {stranger_fp}" in log


def test_leftovers_of_an_interrupted_push_are_removed_at_start(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    repo = settings.repos_dir / "app.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    (repo / "objects" / "incoming-x1" / "pack").mkdir(parents=True)
    (repo / "refs" / "heads" / "main.lock").write_text("")
    (repo / "packed-refs.lock").write_text("")
    (settings.repos_dir / ".half.git.new").mkdir()
    sshd.remove_leftovers(settings)
    assert sorted(p.name for p in settings.repos_dir.iterdir()) == ["app.git"]
    assert not list(repo.rglob("*.lock")) and not list(repo.glob("objects/incoming-*"))
    assert (repo / "HEAD").is_file()


@pytest.mark.parametrize(("requested", "term"), [
    (b"xterm-256color", "xterm-256color"), (b"screen.linux", "screen.linux"),
    (b"", "dumb"), (b"xterm\nLD_PRELOAD=/tmp/x.so", "dumb"), (b"-xterm", "dumb"),
    (b"x" * 65, "dumb"), (b"../../etc/passwd", "dumb"), (b"xterm\x00", "dumb"),
    (b"\xff\xfe", "dumb"), (b"vt100 ", "dumb")])
def test_a_clients_terminal_type_reaches_the_step_only_as_a_plain_name(requested: bytes,
                                                                       term: str) -> None:
    assert privileged.terminal_type(requested) == term


def test_the_log_names_config_keys_but_never_their_values(opus: Opus,
                                                         admin_key: SshKey) -> None:
    """opus-sshd.log records each command; values that may be secrets (config values,
    `pg:psql -c` SQL, a mistyped command's arguments) are `***` there, and in no log."""
    value, sql, typo = "cfg-value-7f3a9", "SELECT 'sql-value-7f3a9'", "typo-value-7f3a9"
    assert ssh(opus, admin_key, "apps:create logsecret").returncode == 0
    done = ssh(opus, admin_key, f"config:set logsecret LOGGED_KEY={value} --no-restart")
    assert done.returncode == 0, done.stderr
    ssh(opus, admin_key, f'pg:psql logsecret -c "{sql}"')
    ssh(opus, admin_key, f"config:sett logsecret OTHER={typo}")
    log = opus.home / "logs" / "opus-sshd.log"
    deadline = time.monotonic() + 10
    while "config:sett" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert "command='config:set logsecret LOGGED_KEY=*** --no-restart'" in text, text[-2000:]
    assert "command='pg:psql logsecret -c ***'" in text
    assert "command='config:sett *** ***'" in text
    for path in (opus.home / "logs").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (value, "sql-value", typo):
                assert secret.encode() not in data, (path, secret)


@pytest.mark.parametrize(("command", "logged"), [
    ("config:set shop A=s3cret B='two words' --no-restart",
     "config:set shop A=*** B=*** --no-restart"),
    ("config:set shop 'A=x\nB=s3cret'", "config:set shop A=***"),
    ("config:set shop s3cret", "config:set shop ***"),
    ("config:set shop 'unclosed s3cret", "config:set ***"),
    ("pg:psql shop -c 'SELECT s3cret'", "pg:psql shop -c ***"),
    ("pg:psql shop --command='SELECT s3cret'", "pg:psql shop --command=***"),
    ("pg:psql shop -c\"SELECT s3cret\"", "pg:psql shop -c***"),
    ("addons:enable postgres --url postgres://opus:s3cret@db/x",
     "addons:enable postgres --url ***"),
    ("certs:add shop '-----BEGIN s3cret' x", "certs:add shop *** ***"),
    ("config:sett shop A=s3cret", "config:sett *** ***"),
    ("$(s3cret) a", "*** ***"),
    ("ps:scale shop web=2", "ps:scale shop web=2"),
    ("apps:create shop --from https://me:s3cret@example.com/r.git",
     "apps:create shop --from ***"),
    ("git-receive-pack 'shop.git'", "git-receive-pack shop.git"),
])
def test_logged_commands_keep_names_and_hide_values(command: str, logged: str) -> None:
    from opus_paas import redact
    assert redact.logged_command(command) == logged
    assert "s3cret" not in redact.logged_command(command)
