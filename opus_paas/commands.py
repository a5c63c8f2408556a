"""The command table: one entry per `opus` command, shared by the CLI (and later SSH)."""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Callable, Sequence

from opus_paas import gitserver, keys, lifecycle
from opus_paas.errors import UsageError
from opus_paas.settings import Settings
from opus_paas.store import Store

Output = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    usage: str
    summary: str
    run: Callable[[Settings, list[str], Output], None]
    local_only: bool = True


def _no_args(name: str, args: list[str]) -> None:
    if args:
        raise UsageError(f"`opus {name}` takes no arguments")


def cmd_up(settings: Settings, args: list[str], out: Output) -> None:
    _no_args("up", args)
    for line in lifecycle.up(settings):
        out(line)


def cmd_down(settings: Settings, args: list[str], out: Output) -> None:
    _no_args("down", args)
    out(lifecycle.down(settings))


def cmd_status(settings: Settings, args: list[str], out: Output) -> None:
    _no_args("status", args)
    for line in lifecycle.status(settings):
        out(line)


def _store(settings: Settings) -> Store:
    store = Store(settings.db_path)
    store.init()
    return store


def cmd_keys_add(settings: Settings, args: list[str], out: Output) -> None:
    if len(args) != 2:
        raise UsageError("usage: opus keys:add USER FILE|-   (FILE: a .pub file; - reads stdin)")
    user, source = args
    if source == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read(64 * 1024)
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror}; give the path of a .pub "
                             "file, or - to read the key from standard input") from None
        except UnicodeDecodeError:
            raise UsageError(f"{source} is not a text file; give the .pub file") from None
    owner, key = keys.add_key(_store(settings), user, text)
    out(f"Added key {key.fingerprint} for {owner.name} ({owner.role}).")


def cmd_keys_list(settings: Settings, args: list[str], out: Output) -> None:
    _no_args("keys:list", args)
    listed = keys.list_keys(_store(settings))
    if not listed:
        out("No keys yet; add one with `opus keys:add USER FILE`.")
    for key in listed:
        out(f"{key.user:<16} {key.fingerprint}  {key.comment}")


def cmd_keys_remove(settings: Settings, args: list[str], out: Output) -> None:
    if len(args) != 1:
        raise UsageError("usage: opus keys:remove FINGERPRINT   (see `opus keys:list`)")
    key = keys.remove_key(_store(settings), args[0])
    out(f"Removed key {key.fingerprint} of {key.user}.")


def cmd_apps(settings: Settings, args: list[str], out: Output) -> None:
    _no_args("apps", args)
    apps = _store(settings).list_apps()
    if not apps:
        out("No apps yet; push one with `git push opus main`.")
    for app in apps:
        live = f"v{app.live_version}" if app.live_version else "not deployed"
        out(f"{app.name:<30} {live:<14} http://{settings.app_domain(app.name)}:"
            f"{settings.http_port}/")


GIT_SETTINGS = ("deploy-branch",)


def cmd_git_set(settings: Settings, args: list[str], out: Output) -> None:
    if len(args) != 3 or args[1] not in GIT_SETTINGS:
        raise UsageError("usage: opus git:set APP deploy-branch BRANCH")
    app = gitserver.set_deploy_branch(settings, _store(settings), args[0], args[2])
    out(f"Pushes to {app.deploy_branch} now deploy {app.name}; other branches are stored.")


TABLE: dict[str, Command] = {c.name: c for c in [
    Command("up", "opus up", "start Opus and every app", cmd_up),
    Command("down", "opus down", "stop every process Opus started", cmd_down),
    Command("status", "opus status", "show Opus's processes", cmd_status),
    Command("keys:add", "opus keys:add USER FILE|-", "register a public key for a user",
            cmd_keys_add),
    Command("keys:list", "opus keys:list", "list registered keys", cmd_keys_list),
    Command("keys:remove", "opus keys:remove FINGERPRINT", "remove a key", cmd_keys_remove),
    Command("apps", "opus apps", "list apps", cmd_apps),
    Command("git:set", "opus git:set APP deploy-branch BRANCH",
            "choose the branch whose pushes deploy", cmd_git_set),
]}


def lookup(name: str) -> Command:
    command = TABLE.get(name)
    if command is None:
        close = difflib.get_close_matches(name, TABLE, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see `opus help`"
        raise UsageError(f"unknown command {name!r}{hint}")
    return command


def help_lines() -> list[str]:
    return ["Usage: opus COMMAND [ARGS]", ""] + [
        f"  {c.usage:<34} {c.summary}" for c in TABLE.values()
    ]


def run(settings: Settings, argv: Sequence[str], out: Output) -> None:
    if not argv or argv[0] in ("help", "-h", "--help"):
        for line in help_lines():
            out(line)
        return
    lookup(argv[0]).run(settings, list(argv[1:]), out)
