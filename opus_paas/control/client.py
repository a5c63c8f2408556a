"""Client mode: `opus CMD` on a developer's machine runs CMD on an Opus host over SSH.

The host and the app come from a git remote, as with the heroku CLI: `--remote NAME`
names it, and in a checkout whose `opus` remote points at an Opus host (with no Opus
installed locally) that remote is used. The app is passed as `--app`, which every
command taking an app understands.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from opus_paas.control.context import TERMINAL_COMMANDS
from opus_paas.errors import UsageError

DEFAULT_REMOTE = "opus"
# User and host never start with '-': ssh would read them as options.
_USER = r"(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{0,63})@)?"
_HOST = r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\])"
_APP = r"(?P<app>[a-z](?:[a-z0-9-]{0,28}[a-z0-9])?)(?:\.git)?/?"
SSH_URL = re.compile(rf"ssh://{_USER}{_HOST}(?::(?P<port>\d{{1,5}}))?/{_APP}")
SCP_URL = re.compile(rf"{_USER}{_HOST}:{_APP}")


@dataclasses.dataclass(frozen=True)
class Remote:
    host: str
    port: int
    user: str
    app: str


def parse_url(url: str) -> Remote | None:
    """An Opus git URL (ssh://git@host:2222/app.git or git@host:app.git), or None."""
    match = SSH_URL.fullmatch(url) or SCP_URL.fullmatch(url)
    if match is None:
        return None
    parts = match.groupdict()
    return Remote(parts["host"], int(parts.get("port") or 22), parts["user"] or "git",
                  parts["app"])


def take_remote_option(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """Take `--remote NAME` / `-r NAME` out of `argv`."""
    rest: list[str] = []
    name = None
    items = iter(argv)
    for item in items:
        if item == "--":   # the rest belongs to the command (run's program, say)
            rest += [item, *items]
            break
        if item in ("--remote", "-r"):
            name = next(items, None)
            if not name:
                raise UsageError(f"{item} needs the name of a git remote")
        elif item.startswith("--remote="):
            name = item.split("=", 1)[1]
        else:
            rest.append(item)
    return rest, name


def git_remote_url(name: str, cwd: Path) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(cwd), "remote", "get-url", "--", name],
                                capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def find_remote(name: str | None, cwd: Path, local_opus: bool) -> Remote | None:
    """The remote to run over: the one named, or the checkout's `opus` remote when this
    machine runs no Opus; None to run locally."""
    if name is None and local_opus:
        return None
    url = git_remote_url(name or DEFAULT_REMOTE, cwd)
    if url is None:
        if name is None:
            return None
        raise UsageError(f"no git remote {name} here; add one with `git remote add {name} "
                         "ssh://git@HOST:2222/APP.git`")
    remote = parse_url(url)
    if remote is None:
        raise UsageError(f"git remote {name or DEFAULT_REMOTE} ({url}) is not an Opus URL "
                         "such as ssh://git@HOST:2222/APP.git")
    return remote


def ssh_argv(remote: Remote, argv: Sequence[str], environ: Mapping[str, str],
             terminal: bool = False) -> list[str]:
    """The ssh command line running `argv` (with --app) on `remote`; GIT_SSH_COMMAND, if
    set, chooses the ssh program and its options, as it does for git push. With
    `terminal`, a command that takes one (`pg:psql`, `run`) asks for it (-t)."""
    ssh = shlex.split(environ.get("GIT_SSH_COMMAND") or "ssh")
    if terminal and argv and argv[0] in TERMINAL_COMMANDS:
        ssh.append("-t")
    command = list(argv)
    options = command[:command.index("--")] if "--" in command else command
    named = any(a in ("--app", "-a") or a.startswith("--app=") for a in options)
    if command and not named:
        command[1:1] = ["--app", remote.app]   # right after the command's name
    return [*ssh, "-p", str(remote.port), "--", f"{remote.user}@{remote.host}",
            shlex.join(command)]


def run(remote: Remote, argv: Sequence[str]) -> int:
    """Run over SSH with this terminal's input and output; ssh's exit code is ours."""
    on_terminal = sys.stdin.isatty() and sys.stdout.isatty()
    return subprocess.run(ssh_argv(remote, argv, os.environ, on_terminal),
                          check=False).returncode
