"""`opus up`, `opus status`, `opus down` on an Opus of the test's own."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from opus_paas.control import commands
from opus_paas.errors import UsageError
from tests.conftest import opus_processes, start_opus, stop_opus


def test_up_twice_is_harmless_and_down_leaves_nothing() -> None:
    opus = start_opus()
    try:
        host_key = (opus.home / "ssh_host_key").read_bytes()
        again = opus.cli("up")
        assert "Opus is up" in again.stdout
        assert "git remote add opus ssh://git@localhost:" in again.stdout
        # A user name to type as it is ($USER is empty in a fresh root shell).
        assert re.search(r"keys:add [a-z][a-z0-9_-]* ~/.ssh/id_ed25519.pub", again.stdout)
        # The host key is generated once and kept (clients pin it).
        assert (opus.home / "ssh_host_key").read_bytes() == host_key
        assert stat.S_IMODE((opus.home / "ssh_host_key").stat().st_mode) == 0o600
        status = opus.cli("status").stdout
        for program in ("opus-sshd", "opus-front", "opus-dashboard", "opus-scheduler",
                        "opus-waker"):
            assert program in status
        assert status.count("RUNNING") == 5
        # The front publishes the dashboard at opus.<domain>.
        code, _headers, page = opus.get("opus.localhost", "/signin")
        assert code == 200 and "Sign in to Opus" in page
        with socket.create_connection(("127.0.0.1", opus.ssh_port), timeout=5) as sock:
            assert sock.recv(64).startswith(b"SSH-2.0-")
        code, headers, body = opus.get("nothing-here.localhost")
        assert code == 404 and "No app is deployed" in body
        assert headers["X-Opus-Served-By"] == "front"
        assert opus_processes(opus.home)
    finally:
        home = opus.home
        stop_opus(opus)
    assert opus_processes(home) == []
    assert "not running" in opus.cli("status").stdout


def test_supervisor_listens_on_a_private_socket_only() -> None:
    opus = start_opus()
    try:
        conf = (opus.home / "supervisor" / "supervisord.conf").read_text()
        assert "[inet_http_server]" not in conf
        sock = opus.home / "supervisor" / "supervisor.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o700
    finally:
        stop_opus(opus)


def test_unknown_command_suggests_close_matches() -> None:
    with pytest.raises(UsageError, match="did you mean keys:add"):
        commands.lookup("keys:ad")


def test_up_without_git_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "OPUS_HOME": str(tmp_path / "home"),
           "OPUS_GIT_BIN": str(tmp_path / "no-git")}
    result = subprocess.run([sys.executable, "-m", "opus_paas", "up"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert f"git is not installed at {tmp_path / 'no-git'}; install it (apt-get install " \
        "git) or set OPUS_GIT_BIN to its path" in result.stderr
    assert not (tmp_path / "home" / "supervisor" / "supervisor.sock").exists()
