"""Client mode: `opus CMD` in a checkout runs CMD on the Opus host its `opus` remote names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from opus_paas.control import client
from opus_paas.errors import UsageError
from tests.conftest import CHECKOUT, Opus, SshKey, git, make_key


@pytest.mark.parametrize(("url", "expected"), [
    ("ssh://git@opus.example.com:2222/myapp.git", ("opus.example.com", 2222, "git", "myapp")),
    ("ssh://opus.example.com/myapp", ("opus.example.com", 22, "git", "myapp")),
    ("git@opus.example.com:myapp.git", ("opus.example.com", 22, "git", "myapp")),
    ("ssh://deploy@[::1]:2222/my-app.git", ("[::1]", 2222, "deploy", "my-app")),
])
def test_opus_urls_are_understood(url: str, expected: tuple[str, int, str, str]) -> None:
    remote = client.parse_url(url)
    assert remote is not None
    assert (remote.host, remote.port, remote.user, remote.app) == expected


@pytest.mark.parametrize("url", [
    "https://github.com/someone/project.git",
    "ssh://git@host:2222/../etc.git",
    "ssh://-oProxyCommand=id@host/app.git",
    "ssh://git@-oProxyCommand=id/app.git",
    "-oProxyCommand=id:app.git",
    "ssh://git@host:2222/App.git",
    "/srv/repos/app.git",
    "ssh://git@host:2222/app.git extra",
])
def test_anything_else_is_not_an_opus_url(url: str) -> None:
    assert client.parse_url(url) is None


def test_the_ssh_command_line_carries_the_app_and_stops_option_parsing() -> None:
    remote = client.Remote("h", 2222, "git", "myapp")
    argv = client.ssh_argv(remote, ["config:set", "A=b c"],
                           {"GIT_SSH_COMMAND": "ssh -i /k -o BatchMode=yes"})
    assert argv == ["ssh", "-i", "/k", "-o", "BatchMode=yes", "-p", "2222", "--", "git@h",
                    "config:set --app myapp 'A=b c'"]


@pytest.mark.parametrize(("argv", "sent"), [
    (["apps:info", "--app", "other"], "apps:info --app other"),
    (["ps:stop", "--app=staging"], "ps:stop --app=staging"),
    (["run", "--", "python", "manage.py", "migrate"],
     "run --app myapp -- python manage.py migrate"),
    (["run", "--", "ls", "-a"], "run --app myapp -- ls -a"),
    (["run", "-a", "other", "--", "ls", "-a"], "run -a other -- ls -a"),
])
def test_the_app_goes_right_after_the_command_unless_one_is_named(argv: list[str],
                                                                  sent: str) -> None:
    remote = client.Remote("h", 2222, "git", "myapp")
    assert client.ssh_argv(remote, argv, {})[-1] == sent


def test_the_remote_option_is_taken_out() -> None:
    assert client.take_remote_option(["config", "--remote", "prod", "-n"]) == \
        (["config", "-n"], "prod")
    assert client.take_remote_option(["run", "--", "pip", "install", "-r", "req.txt"]) == \
        (["run", "--", "pip", "install", "-r", "req.txt"], None)
    assert client.take_remote_option(["config", "--remote=staging"]) == (["config"], "staging")
    with pytest.raises(UsageError):
        client.take_remote_option(["config", "--remote"])


def test_in_a_checkout_opus_runs_the_command_on_the_remote_host(
        opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    owner = make_key(tmp_path, "client-owner")
    opus.cli("keys:add", "client-owner", str(owner.public))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    git(checkout, "init", "-q", "-b", "main")
    git(checkout, "remote", "add", "opus",
        f"ssh://git@127.0.0.1:{opus.ssh_port}/clientapp.git")
    git(checkout, "remote", "add", "staging",
        f"ssh://git@127.0.0.1:{opus.ssh_port}/clientstage.git")
    env = {**owner.git_env(opus), "OPUS_HOME": str(tmp_path / "no-opus-here"),
           "PYTHONPATH": str(CHECKOUT)}
    env.pop("OPUS_SSH_PORT", None)

    def opus_here(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "opus_paas", *args], cwd=checkout,
                              env=env, capture_output=True, text=True, timeout=60,
                              check=False, stdin=subprocess.DEVNULL)

    created = opus_here("apps:create")   # the app comes from the remote's URL
    assert created.returncode == 0, created.stderr
    assert "Created clientapp." in created.stdout
    assert "SECRET_KEY:" in opus_here("config").stdout
    set_ = opus_here("config:set", "WHERE=over ssh")
    assert set_.returncode == 0, set_.stderr
    assert opus_here("config:get", "WHERE").stdout == "over ssh\n"
    missing = opus_here("config:get", "NOPE")
    assert missing.returncode == 3 and "has no config var NOPE" in missing.stderr
    assert opus_here("apps:create", "--remote", "staging").returncode == 0
    # An app named explicitly wins over the remote's; `run`'s own options stay its own.
    other = opus_here("config:set", "--app=clientstage", "ONLY=staging")
    assert other.returncode == 0, other.stderr
    assert "ONLY" not in json.loads(opus_here("config", "--json").stdout)
    assert "clientstage" in opus.cli("apps").stdout
    unknown = opus_here("config", "--remote", "nowhere")
    assert unknown.returncode == 2 and "no git remote nowhere here" in unknown.stderr
    # Where an Opus runs locally, the same command is local (the operator's).
    local = subprocess.run([sys.executable, "-m", "opus_paas", "config", "clientapp",
                            "--json"], cwd=checkout,
                           env={**opus.env, "PYTHONPATH": str(CHECKOUT)},
                           capture_output=True, text=True, check=False)
    assert json.loads(local.stdout)["WHERE"] == "over ssh"
    assert not (tmp_path / "no-opus-here").exists()   # client mode made no local Opus


def test_a_terminal_is_asked_for_psql_on_a_terminal_only() -> None:
    remote = client.Remote("opus.example", 2222, "git", "shop")
    on = client.ssh_argv(remote, ["pg:psql"], {}, terminal=True)
    assert on[:2] == ["ssh", "-t"] and on[-1] == "pg:psql --app shop"
    assert "-t" not in client.ssh_argv(remote, ["pg:psql"], {}, terminal=False)
    assert "-t" not in client.ssh_argv(remote, ["backups:download", "1"], {}, terminal=True)
