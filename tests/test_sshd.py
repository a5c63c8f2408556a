"""The SSH gate, driven with the real ssh client: hostile commands get one line and harm
nothing."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from opus_paas import privileged
from opus_paas.control import sshd
from opus_paas.settings import Settings
from opus_paas.store import Store
from tests.conftest import CONNECTIONS_PER_KEY, Opus, SshKey, git, make_key
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


def on_a_terminal(argv: list[str], keystrokes: bytes = b"") -> tuple[int, list[str]]:
    """Run `argv` (an ssh client) on a real pseudo-terminal, typing `keystrokes`; return
    its exit status and the lines it showed."""
    controller, terminal = os.openpty()
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal,
                            start_new_session=True)
    os.close(terminal)
    if keystrokes:
        time.sleep(2)   # let the remote side ask first
        os.write(controller, keystrokes)
    output = b""
    with contextlib.suppress(OSError):   # EIO once ssh has exited and closed the terminal
        while chunk := os.read(controller, 4096):
            output += chunk
    os.close(controller)
    return proc.wait(30), [ln.strip() for ln in output.decode().splitlines() if ln.strip()]


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


def test_each_key_has_a_connection_cap(opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    key = make_key(tmp_path, "capped")
    opus.cli("keys:add", "capped", str(key.public))
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q",
        "--allow-empty", "-m", "1")
    git(repo, "push", f"ssh://git@127.0.0.1:{opus.ssh_port}/capped.git", "HEAD:refs/heads/x",
        env=key.git_env(opus))
    holders = []
    try:
        for _ in range(CONNECTIONS_PER_KEY):
            client = connect(opus, key)
            channel = client.get_transport().open_session()   # type: ignore[union-attr]
            channel.exec_command("git-upload-pack 'capped.git'")
            channel.settimeout(20)
            assert channel.recv(4)   # the advertisement: this connection holds a slot
            holders.append(client)
        over = raw_exec(opus, key, "git-upload-pack 'capped.git'")
        assert over.stderr.strip() == ("opus: too many connections with this key at once "
                                       f"(limit {CONNECTIONS_PER_KEY}); wait for one to "
                                       "finish and try again")
        # Another key is not affected.
        other = raw_exec(opus, admin_key, "git-upload-pack 'nothing.git'")
        assert "app nothing not found" in other.stderr
    finally:
        for client in holders:
            client.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "too many" not in raw_exec(opus, key, "git-upload-pack 'capped.git'",
                                      b"0000").stderr:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the slots were not given back")


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
    ("git-receive-pack 'shop.git'", "git-receive-pack shop.git"),
])
def test_logged_commands_keep_names_and_hide_values(command: str, logged: str) -> None:
    from opus_paas import redact
    assert redact.logged_command(command) == logged
    assert "s3cret" not in redact.logged_command(command)
