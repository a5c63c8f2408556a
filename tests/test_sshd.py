"""The SSH gate, driven with the real ssh client: hostile commands get one line and harm
nothing."""

from __future__ import annotations

import subprocess

import pytest

from opus_paas.store import Store
from tests.conftest import Opus, SshKey


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
