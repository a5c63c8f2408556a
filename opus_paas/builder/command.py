"""`opus init`: make a new Django project here, create its app on Opus, push it.

It runs on the machine it is typed on (a developer's, or the Opus host), never over
SSH: the project is written there, and pushed with that machine's git and ssh.
"""

from __future__ import annotations

import os
from pathlib import Path

from opus_paas import names, output
from opus_paas.builder import catalogue, deploy, make
from opus_paas.control.context import Command, Context
from opus_paas.errors import InvalidName, UsageError

USAGE = ("opus init [DIR] [--app NAME] [--with ENTRY]… [--db sqlite|postgres] "
         "[--server URL] [--no-deploy] [--list]")


def cmd_init(ctx: Context, args: list[str]) -> None:
    if ctx.remote:
        raise UsageError("`opus init` writes a new project on your machine: run it there "
                         "(with --server ssh://git@HOST:PORT naming this Opus)")
    options = _parse(args)
    if options["list"]:
        for line in catalogue.listing():
            ctx.out(line)
        return
    specs = options["with"]
    assert isinstance(specs, list)
    choice = catalogue.choose(specs, str(options["db"]))
    directory, app = _target(ctx.app, options["dir"])
    server = None
    if not options["no_deploy"]:
        if options["server"]:
            server = deploy.parse_server(str(options["server"]))
        elif ctx.settings.db_path.exists():
            server = deploy.local_server(ctx.settings)
        else:
            raise UsageError("no Opus runs on this machine: name one with --server "
                             "ssh://git@HOST:PORT (or --no-deploy to only make the project)")
    make.make(directory, app, choice, ctx.out)
    if server is None:
        ctx.out(output.step(
            f"Not deployed (--no-deploy). Later: cd {directory} && opus "
            f"apps:create {app} && git remote add opus ssh://git@HOST:PORT/{app}.git "
            "&& git push opus main"))
        return
    url = deploy.deploy_over_ssh(directory, app, server, choice.database, ctx.out,
                                 dict(os.environ))
    ctx.out(output.step(f"{app} is live: {url}"))
    ctx.out(output.detail(f"Your project is in {directory}; `git push opus main` there deploys "
                          "again."))


def _parse(args: list[str]) -> dict[str, object]:
    found: dict[str, object] = {"dir": None, "with": [], "db": "sqlite", "server": None,
                                "no_deploy": False, "list": False}
    items = iter(args)
    for item in items:
        key, sep, value = item.partition("=")
        if key in ("--with", "--db", "--server"):
            given = value if sep else next(items, None)
            if given is None:
                raise UsageError(f"{key} needs a value; usage: {USAGE}")
            if key == "--with":
                found["with"].append(given)   # type: ignore[attr-defined]
            else:
                found[key[2:]] = given
        elif item in ("--no-deploy", "--list"):
            found[item[2:].replace("-", "_")] = True
        elif item.startswith("-") or found["dir"] is not None:
            raise UsageError(f"{item!r} is not an option of opus init; usage: {USAGE}")
        else:
            found["dir"] = item
    return found


def _target(app: str | None, given: object) -> tuple[Path, str]:
    """The project's directory and the app's name: each defaults to the other."""
    if given is None and app is None:
        raise UsageError(f"give a directory or --app NAME; usage: {USAGE}")
    directory = Path(str(given)) if given is not None else Path(str(app))
    name = app if app is not None else directory.resolve().name
    try:
        names.check_app_name(name)
    except InvalidName as exc:
        raise InvalidName(f"{exc.message} (the app's name comes from the directory's; "
                         "choose one with --app NAME)") from None
    make.check_target(directory)
    return directory.absolute(), name


COMMANDS = [
    Command("init", USAGE, "make a new Django project with chosen apps and deploy it",
            cmd_init),
]
