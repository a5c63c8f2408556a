"""Creating the app and pushing the project's first release, with real git.

`deploy_over_ssh` (what `opus init` does on a developer's machine): `apps:create` (and
`pg:create`) over SSH through the same client as every `opus` command, then `git push
opus main` with the developer's own ssh set-up. `deploy_here` (the dashboard, on the
Opus host): the same commands from the command table as the signed-in user, then `git
push` to Opus's own receive-pack run as that user (`opus_paas.builder.receive`), so the
push takes the path every push takes: lock, build, release, health check, switch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from opus_paas import apps, names, output
from opus_paas.access import Actor
from opus_paas.control import client
from opus_paas.control.context import Context
from opus_paas.errors import OpusError, UsageError
from opus_paas.output import Emit
from opus_paas.settings import Settings
from opus_paas.store import Store

SERVER_URL = re.compile(rf"(?:ssh://)?{client._USER}{client._HOST}(?::(?P<port>\d{{1,5}}))?/?")
PUSH_TIMEOUT = 30 * 60
KEPT_BRANCH = "opus-init"


@dataclasses.dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str = "git"

    def git_url(self, app: str) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}/{app}.git"


def parse_server(url: str) -> Server:
    """`--server ssh://git@HOST:2222` (or `git@HOST:2222`, `HOST`)."""
    match = SERVER_URL.fullmatch(url)
    port = int(match.group("port") or 22) if match else 0
    if match is None or not 0 < port < 65536:
        shown = url if url.isprintable() and len(url) < 100 else repr(url[:100])
        raise UsageError(f"--server {shown} is not an Opus SSH address such as "
                         "ssh://git@opus.example.com:2222")
    return Server(match.group("host"), port, match.group("user") or "git")


def local_server(settings: Settings) -> Server:
    """The Opus this machine runs, as its settings describe it."""
    return Server(settings.ssh_host, settings.ssh_port)


def stream(argv: list[str], emit: Emit, *, cwd: Path | None = None,
           env: Mapping[str, str] | None = None, cancelled: threading.Event | None = None,
           capture: list[str] | None = None) -> int:
    """Run `argv`, each line of its output (both streams) to `emit` as it comes (or to
    `capture`); its exit status. A set `cancelled` ends it."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        raise OpusError(f"{Path(argv[0]).name} could not run ({exc}); is it installed?") \
            from None
    assert proc.stdout is not None
    watcher = None
    if cancelled is not None:
        def watch() -> None:
            while proc.poll() is None:
                if cancelled.wait(0.5):
                    proc.kill()
                    return
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            for part in line.split("\r"):
                if capture is not None:
                    capture.append(part)
                elif part.strip():
                    emit(part)
        return proc.wait(timeout=PUSH_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def deploy_over_ssh(directory: Path, app: str, server: Server, database: str,
                    emit: Emit, env: Mapping[str, str]) -> str:
    """Create `app` on `server`, push `directory`'s main; the app's URL."""
    remote = client.Remote(server.host, server.port, server.user, app)
    git = ["git", "-C", str(directory)]
    _check(stream([*git, "remote", "add", "opus", server.git_url(app)], emit, env=env),
           "git remote add", directory, app, server)
    steps = [["apps:create"]] + ([["pg:create"]] if database == "postgres" else [])
    for step in steps:
        emit(output.step(f"opus {step[0]} {app}"))
        _check(stream(client.ssh_argv(remote, step, env), _indented(emit), env=env),
               f"opus {step[0]}", directory, app, server)
    emit(output.step(f"git push opus main ({server.git_url(app)})"))
    _check(stream([*git, "push", "opus", "main"], emit, env=env), "git push",
           directory, app, server)
    lines: list[str] = []
    stream(client.ssh_argv(remote, ["apps:info", "--json"], env), emit, env=env,
           capture=lines)
    try:
        url = str(json.loads("\n".join(lines))["url"])
    except (ValueError, KeyError, TypeError):
        url = f"(`opus apps:info {app}` shows it)"
    return url


def _indented(emit: Emit) -> Emit:
    return lambda line: emit(output.detail(line))


def _check(status: int, what: str, directory: Path, app: str, server: Server) -> None:
    if status != 0:
        raise OpusError(
            f"{what} failed (above); the project is committed in {directory}. Fix what it "
            f"says, then from there: `opus apps:create {app}` if it was not created, "
            f"and `git push opus main` (its opus remote is {server.git_url(app)}). An SSH "
            "permission error means your key is not on that Opus: `opus keys:add USER "
            "KEY.pub` there.")


def receive_pack_command(actor: Actor, python: str | None = None) -> str:
    """The receive-pack git runs for a push from this host as `actor` (git appends the
    repository path, quoted)."""
    if actor.user is None:
        raise UsageError("a push from the host needs an Opus user to push as")
    user = names.check_user_name(actor.user.name)
    return shlex.join([python or sys.executable, "-m", "opus_paas.builder.receive",
                       "--user", user])


def deploy_here(settings: Settings, store: Store, actor: Actor, directory: Path, app: str,
                database: str, emit: Emit, cancelled: threading.Event,
                run_command: Callable[[Context, list[str]], int]) -> str:
    """Create `app` as `actor` (`run_command` is the command table's `run`) and push
    `directory`'s main to this host's Opus; the app's URL."""
    names.check_app_name(app)
    ctx = Context(settings, actor, _indented(emit), _no_stdin, cancelled=cancelled)
    for step in [["apps:create", app]] + ([["pg:create", app]] if database == "postgres"
                                          else []):
        emit(output.step(f"opus {step[0]} {app}"))
        run_command(ctx, step)
    emit(output.step("git push (as you, to this host's Opus)"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory),
           "LANG": "C.UTF-8", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
           **{k: v for k, v in os.environ.items() if k.startswith("OPUS_")},
           "OPUS_HOME": str(settings.home)}   # the receive-pack serves this very Opus
    status = stream(["git", "-C", str(directory), "push",
                     f"--receive-pack={receive_pack_command(actor)}", f"/{app}.git",
                     "main:refs/heads/main"], emit, env=env, cancelled=cancelled)
    if status != 0:
        found = store.get_app(app)
        if found is None:
            raise OpusError("the push was refused (above); nothing was kept")
        # The project is kept on a branch that does not deploy, so nothing is lost.
        stream(["git", "-C", str(directory), "push", "--quiet",
                f"--receive-pack={receive_pack_command(actor)}", f"/{app}.git",
                f"main:refs/heads/{KEPT_BRANCH}"], emit, env=env, cancelled=cancelled)
        url = apps.info(settings, store, found)["git_url"]
        raise OpusError(f"the push was refused (above); {app} has no release yet. The "
                        f"project is kept on its branch {KEPT_BRANCH}: `git clone -b "
                        f"{KEPT_BRANCH} {url}`, fix it and `git push origin "
                        f"{KEPT_BRANCH}:main`")
    found = store.get_app(app)
    return str(apps.info(settings, store, found)["url"]) if found else ""


def _no_stdin(limit: int) -> str:
    return ""
