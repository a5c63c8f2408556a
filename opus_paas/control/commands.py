"""The command table: one entry per `opus` command, shared by the local CLI and SSH.

A command gets a Context (settings, who runs it, where output goes) and its
arguments; authorization happens in the core functions it calls (access.py).
Global options, anywhere after the command name: `--json`, `--app APP` / `-a APP`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from opus_paas import __version__, access, apps, names, redact, users
from opus_paas.builder import command as builder_command
from opus_paas.control import appfrom, databases, doctor, lifecycle, placement, sleeping, system
from opus_paas.control import nodes as nodes_commands
from opus_paas.control import previews as previews_commands
from opus_paas.control import pythons as pythons_commands
from opus_paas.control import redis as redis_commands
from opus_paas.control import tls as tls_commands
from opus_paas.control.context import STDIN_LIMIT, Command, Context, arity, when
from opus_paas.data import backups
from opus_paas.errors import NotFound, UsageError
from opus_paas.run import buildlog, logs, programs, ps
from opus_paas.run import restart as restart_module
from opus_paas.settings import Settings

# ---- Opus itself (host only) -----------------------------------------------------------

def cmd_up(ctx: Context, args: list[str]) -> None:
    if args not in ([], ["--system"]):
        raise UsageError(f"usage: {ctx.usage}")
    for line in lifecycle.up(ctx.settings, system_mode=args == ["--system"]):
        ctx.out(line)


def cmd_install(ctx: Context, args: list[str]) -> None:
    usage = f"usage: {ctx.usage}"
    if "--system" not in args:
        raise UsageError(usage)
    home, user, pairs = system.DEFAULT_HOME, "opus", []
    items = iter(a for a in args if a != "--system")
    for item in items:
        value = next(items, None)
        if value is None or item not in ("--home", "--user", "--set"):
            raise UsageError(usage)
        if item == "--home":
            home = Path(value)
        elif item == "--user":
            user = value
        else:
            pairs.append(value)
    for line in system.install(home, user, pairs):
        ctx.out(line)


def cmd_uninstall(ctx: Context, args: list[str]) -> None:
    if "--system" not in args or not set(args) <= {"--system", "--purge"}:
        raise UsageError(f"usage: {ctx.usage}")
    for line in system.uninstall(ctx.settings, purge="--purge" in args):
        ctx.out(line)


def cmd_down(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    ctx.out(lifecycle.down(ctx.settings))


def cmd_status(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    for line in lifecycle.status(ctx.settings):
        ctx.out(line)


def cmd_version(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    if ctx.json:
        ctx.emit_json({"version": __version__})
    else:
        ctx.out(f"opus {__version__}")


# ---- apps ------------------------------------------------------------------------------

def cmd_apps(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    listed = apps.visible(ctx.store, ctx.actor)
    if ctx.json:
        ctx.emit_json([apps.info(ctx.settings, ctx.store, a) for a in listed])
        return
    if not listed:
        ctx.out("No apps yet; push one with `git push opus main`.")
    parents = ctx.store.list_preview_parents()
    for app in listed:
        live = f"v{app.live_version}" if app.live_version else "not deployed"
        mark = f"  (preview of {parents[app.id]})" if app.id in parents else ""
        ctx.out(f"{app.name:<30} {live:<14} http://{ctx.settings.app_domain(app.name)}:"
                f"{ctx.settings.http_port}/{mark}")


def cmd_apps_create(ctx: Context, args: list[str]) -> None:
    name, source = appfrom.parse_args(args)
    if source is not None:
        app = appfrom.create_from(ctx.settings, ctx.store, ctx.actor, name, source, ctx.out,
                                  cancelled=ctx.cancelled)
    else:
        app = apps.create(ctx.settings, ctx.store, ctx.actor, name)
    ctx.out(f"Created {app.name}. Push to it: git remote add opus "
            f"{apps.info(ctx.settings, ctx.store, app)['git_url']}")


def cmd_apps_info(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    details = apps.describe(ctx.settings, ctx.store, ctx.actor, args[0])
    if ctx.json:
        ctx.emit_json(details)
        return
    for key, value in details.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        ctx.out(f"{key + ':':<15} {shown if shown not in (None, '') else '-'}")


def cmd_apps_destroy(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    arity(usage, args, (1, 3))
    confirm = ""
    if len(args) == 3 and args[1] == "--confirm":
        confirm = args[2]
    elif len(args) != 1:
        raise UsageError(f"usage: {usage}")
    kept = apps.destroy(ctx.settings, ctx.store, ctx.actor, args[0], confirm)
    ctx.out(backups.destroyed_message(args[0], kept))


# ---- config and rollback ---------------------------------------------------------------

def cmd_config(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    _, config = apps.config(ctx.store, ctx.actor, args[0])
    if ctx.json:
        ctx.emit_json(config)
        return
    width = max((len(k) for k in config), default=0) + 1
    for key, value in config.items():
        # Another user's value must not drive this terminal: escape what is not
        # printable (config:get and --json give it exactly).
        shown = value if value.isprintable() else json.dumps(value, ensure_ascii=False)
        ctx.out(f"{key + ':':<{width}} {shown}")


def cmd_config_get(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 2)
    app, config = apps.config(ctx.store, ctx.actor, args[0])
    if args[1] not in config:
        raise NotFound(f"{app.name} has no config var {args[1]}; `opus config {app.name}` "
                       "lists them")
    ctx.out(config[args[1]])


def _restart_flag(args: list[str]) -> tuple[list[str], bool]:
    return [a for a in args if a != "--no-restart"], "--no-restart" not in args


def cmd_config_set(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    args, restart = _restart_flag(args)
    if len(args) < 2:
        raise UsageError(f"usage: {usage}")
    updates: dict[str, str] = {}
    for pair in args[1:]:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"{pair!r} has no '='; usage: {usage}")
        updates[key] = value
    version = restart_module.change_config(ctx.settings, ctx.store, ctx.actor, args[0],
                                           updates, [], restart=restart, emit=ctx.out)
    _config_done(ctx, args[0], ", ".join(updates), "Set", version)


def cmd_config_unset(ctx: Context, args: list[str]) -> None:
    args, restart = _restart_flag(args)
    if len(args) < 2:
        raise UsageError(f"usage: {ctx.usage}")
    version = restart_module.change_config(ctx.settings, ctx.store, ctx.actor, args[0], {},
                                           args[1:], restart=restart, emit=ctx.out)
    _config_done(ctx, args[0], ", ".join(args[1:]), "Unset", version)


def _config_done(ctx: Context, app: str, keys_: str, verb: str, version: int | None) -> None:
    if version is None:
        ctx.out(f"{verb} {keys_} on {app}; the next deploy takes it.")
    else:
        ctx.out(f"{verb} {keys_} on {app}; v{version} is live.")


def cmd_rollback(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, (1, 2))
    target = None
    if len(args) == 2:
        text = args[1].removeprefix("v")
        if not names.NUMBER.fullmatch(text):
            raise UsageError(f"{args[1]!r} is not a release; give one such as v3")
        target = int(text)
    before = access.app_for(ctx.store, ctx.actor, args[0]).live_version
    version = restart_module.rollback(ctx.settings, ctx.store, ctx.actor, args[0], target,
                                      ctx.out)
    ctx.out(f"Rolled {args[0]} back; v{version} is live.")
    ctx.out(databases.rollback_note(ctx.store, args[0], target, before))


# ---- processes -------------------------------------------------------------------------

def cmd_ps(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    found = ps.processes(ctx.settings, ctx.store, ctx.actor, args[0])
    if ctx.json:
        ctx.emit_json(found)
        return
    app = access.app_for(ctx.store, ctx.actor, args[0])
    asleep = ctx.store.is_asleep(app)
    if asleep:
        ctx.out(f"web.1  asleep    (no request for a while; the next one wakes it: "
                f"`opus ps:autosleep {app.name}`)")
    elif not found:
        ctx.out(f"{app.name} has no processes" + (" (stopped; `opus ps:start` starts it)"
                                                   if app.stopped else ""))
    for proc in found:
        label = f"{proc['type']}.{proc['number']}"
        if proc["state"] == "CRASHED":
            ctx.out(f"{label}  CRASHED   restarting in {proc['restart_in']} s "
                    f"(crashed {proc['crashes']} times in a row; `opus logs "
                    f"{app.name} --ps {proc['type']}` shows why)")
        elif "node" in proc:      # a task on a swarm node (swarm/appview.py)
            ctx.out(f"{label}  {proc['state']:<9} on {proc['node']:<14} "
                    f"{proc['address'] or '-':<21} up {proc['uptime']} s  "
                    f"(v{proc['release']}{'; ' + proc['error'] if proc['error'] else ''})")
        elif proc["type"] == "web":
            ctx.out(f"{label}  {proc['state']:<9} pid {proc['pid']:<7} "
                    f"up {proc['uptime']} s  {proc['processes']} process(es) x "
                    f"{app.web_threads} threads  ({proc['name']})")
        else:
            ctx.out(f"{label}  {proc['state']:<9} pid {proc['pid']:<7} up {proc['uptime']} s")
    formation = {k: v for k, v in ctx.store.formation(app).items() if v[1]}
    for kind in sorted(formation):
        ctx.out(f"{kind}  stopped (`opus ps:start {app.name} {kind}` starts it)")


def cmd_ps_scale(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    if len(args) < 2:
        raise UsageError(f"usage: {usage}")
    app = ps.scale(ctx.settings, ctx.store, ctx.actor, args[0], ps.parse_scale(args[1:]),
                   ctx.out)
    others = " ".join(f"{k}={v[0]}" for k, v in sorted(ctx.store.formation(app).items()))
    ctx.out(f"Scaled {app.name}: web={app.web_processes}" + (f" {others}" if others else "")
            + ".")


def cmd_ps_set(ctx: Context, args: list[str]) -> None:
    threads = ps.parse_threads(args[2]) if len(args) == 3 and args[1] == "web" else None
    if threads is None:
        raise UsageError(f"usage: {ctx.usage}")
    app = ps.set_web(ctx.settings, ctx.store, ctx.actor, args[0], threads, ctx.out)
    ctx.out(f"{app.name}'s web: {app.web_processes} process(es) x {app.web_threads} threads.")


def _app_and_type(usage: str, args: list[str]) -> tuple[str, str | None]:
    if len(args) not in (1, 2):
        raise UsageError(f"usage: {usage}")
    if len(args) == 2:
        names.check_process_type(args[1])
    return args[0], (args[1] if len(args) == 2 else None)


def cmd_ps_restart(ctx: Context, args: list[str]) -> None:
    app, kind = _app_and_type(ctx.usage, args)
    ps.restart(ctx.settings, ctx.store, ctx.actor, app, ctx.out, kind)
    ctx.out(f"Restarted {app}" + (f" {kind}" if kind else "") + ".")


def cmd_ps_stop(ctx: Context, args: list[str]) -> None:
    app, kind = _app_and_type(ctx.usage, args)
    ps.stop(ctx.settings, ctx.store, ctx.actor, app, kind)
    what = f"{app} {kind}" if kind else app
    ctx.out(f"Stopped {what}; `opus ps:start {what}` starts it again.")


def cmd_ps_start(ctx: Context, args: list[str]) -> None:
    app, kind = _app_and_type(ctx.usage, args)
    what = f"{app} {kind}" if kind else app
    started = ps.start(ctx.settings, ctx.store, ctx.actor, app, ctx.out, kind)
    ctx.out(f"Started {what}." if started else f"{what} is running already.")


def cmd_run(ctx: Context, args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        raise UsageError(f"usage: {ctx.usage}")
    return ps.run_one_off(ctx.settings, ctx.store, ctx.actor, args[0], args[2:], ctx.out,
                          ctx.cancelled, ctx.terminal)


# ---- domains ---------------------------------------------------------------------------

def cmd_domains(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    found = apps.domains(ctx.settings, ctx.store, ctx.actor, args[0])
    if ctx.json:
        ctx.emit_json(found)
        return
    for domain in found:
        ctx.out(domain)


def _change_domain(ctx: Context, args: list[str], add: bool) -> None:
    arity(ctx.usage, args, 2)
    version = restart_module.change_domain(ctx.settings, ctx.store, ctx.actor, args[0],
                                           args[1], add=add, emit=ctx.out)
    done = f"{'Added' if add else 'Removed'} {args[1]} {'to' if add else 'from'} {args[0]}"
    ctx.out(done + (f"; v{version} is live." if version else "."))


def cmd_domains_add(ctx: Context, args: list[str]) -> None:
    _change_domain(ctx, args, add=True)
    tls_commands.wake_scheduler(ctx)     # a certificate for the new name, if it may have one


def cmd_domains_remove(ctx: Context, args: list[str]) -> None:
    _change_domain(ctx, args, add=False)


# ---- releases, builds, logs ------------------------------------------------------------

def cmd_releases(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app, listed = apps.releases(ctx.store, ctx.actor, args[0])
    if ctx.json:
        ctx.emit_json([{"version": r.version, "sha": r.sha, "description": r.description,
                        "created": r.created, "live": r.version == app.live_version,
                        "state": r.state, "note": r.note} for r in listed])
        return
    if not listed:
        ctx.out(f"{app.name} has no releases yet; push to deploy one.")
    for rel in listed:
        live = "  (live)" if rel.version == app.live_version else ""
        note = f"  [{rel.note or rel.state}]" if rel.note or not rel.released else ""
        ctx.out(f"v{rel.version:<5} {rel.sha[:7]}  {when(rel.created)} UTC  "
                f"{rel.description}{live}{note}")


def cmd_builds(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    _, listed = apps.builds(ctx.store, ctx.actor, args[0])
    if ctx.json:
        ctx.emit_json([{"id": b.id, "sha": b.sha, "status": b.status, "started": b.started,
                        "finished": b.finished} for b in listed])
        return
    for build in listed:
        ctx.out(f"{build.id:<6} {build.sha[:7]}  {build.status:<10} {when(build.started)} UTC")


def cmd_builds_output(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    args, count = _option_number(args, ("-n", "--num"), usage)
    arity(usage, args, (1, 2))
    app, listed = apps.builds(ctx.store, ctx.actor, args[0])
    if len(args) == 2:
        listed = [b for b in listed if str(b.id) == args[1]]
    if not listed:
        raise NotFound(f"no such build of {app.name}; `opus builds {app.name}` lists them")
    pairs = redact.replacements(ctx.settings)
    try:
        for line in buildlog.lines(listed[0].log_path, count):
            ctx.out(redact.shown(line, pairs))
    except FileNotFoundError:
        raise NotFound(f"the output of build {listed[0].id} is gone") from None


def _option_number(args: list[str], flags: tuple[str, ...],
                   usage: str) -> tuple[list[str], int | None]:
    """`args` without one `FLAG NUMBER` pair, and the number (None: not given)."""
    rest, number, items = [], None, iter(args)
    for item in items:
        if item in flags:
            value = next(items, "")
            if not names.NUMBER.fullmatch(value):
                raise UsageError(f"{item} needs a number of lines; usage: {usage}")
            number = int(value)
        else:
            rest.append(item)
    return rest, number


def cmd_logs(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    positional, count, follow_, process_type = [], 100, False, None
    items = iter(args)
    for item in items:
        if item in ("-t", "--tail"):
            follow_ = True
        elif item in ("-n", "--num"):
            value = next(items, "")
            if not names.NUMBER.fullmatch(value):
                raise UsageError(f"-n needs a number of lines; usage: {usage}")
            count = int(value)
        elif item in ("-p", "--ps"):
            process_type = next(items, None)
            if process_type is None:
                raise UsageError(f"--ps needs a process type; usage: {usage}")
        else:
            positional.append(item)
    arity(usage, positional, 1)
    app = access.app_for(ctx.store, ctx.actor, positional[0])
    found = logs.app_logs(ctx.settings, app, process_type)
    for entry in found.tail(count):
        ctx.out(entry.render(app.name))
    if follow_:
        # Access is asked again as the stream goes on: a collaborator taken off the app
        # (or a removed user) stops receiving it.
        allowed = functools.partial(access.still_may_use, ctx.store, ctx.actor, app)
        try:
            for entry in found.follow(ctx.cancelled, allowed):
                ctx.out(entry.render(app.name))
        except NotFound:
            raise NotFound(f"{app.name} has no logs yet; they start with its first deploy") \
                from None
        if not ctx.cancelled.is_set() and not allowed():
            raise access.not_found(app.name)


def cmd_apps_rename(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 2)
    app = apps.rename(ctx.settings, ctx.store, ctx.actor, args[0], args[1], ctx.out)
    info = apps.info(ctx.settings, ctx.store, app)
    ctx.out(f"Renamed {args[0]} to {app.name}: {info['url']}")
    ctx.out(f"Point your git remote at it: git remote set-url opus {info['git_url']}")


# ---- access ----------------------------------------------------------------------------

def cmd_access(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app, people = apps.people(ctx.store, ctx.actor, args[0])
    if ctx.json:
        ctx.emit_json({"owner": app.owner, "collaborators": people})
        return
    ctx.out(f"{app.owner:<16} owner")
    for name in people:
        ctx.out(f"{name:<16} collaborator")


def cmd_access_add(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 2)
    app, user = access.add_collaborator(ctx.store, ctx.actor, args[0], args[1])
    ctx.out(f"{user.name} may now push to and manage the config of {app.name}.")


def cmd_access_remove(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 2)
    app, user = access.remove_collaborator(ctx.store, ctx.actor, args[0], args[1])
    ctx.out(f"{user.name} may no longer use {app.name}.")


# ---- keys and users --------------------------------------------------------------------

def cmd_keys(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    listed = users.list_keys(ctx.store, ctx.actor)
    if ctx.json:
        ctx.emit_json([{"user": k.user, "fingerprint": k.fingerprint, "name": k.comment}
                       for k in listed])
        return
    if not listed:
        ctx.out("No keys yet; add one with `opus keys:add USER FILE`.")
    for key in listed:
        ctx.out(f"{key.user:<16} {key.fingerprint}  {key.comment}")


def cmd_keys_add(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    arity(usage, args, 2)
    user, source = args
    if source == "-":
        text = ctx.read_stdin(STDIN_LIMIT)
    elif ctx.remote:
        raise UsageError("over SSH the key comes from standard input: "
                         f"ssh … keys:add {user} - < KEY.pub")
    else:
        text = _read_local_file(source)
    owner, key = users.add_key(ctx.store, ctx.actor, user, text,
                              max_keys=ctx.settings.ssh_keys_per_user)
    ctx.out(f"Added key {key.fingerprint} for {owner.name} ({owner.role}).")


def _read_local_file(source: str) -> str:
    try:
        with open(source, encoding="utf-8") as handle:
            return handle.read(STDIN_LIMIT)
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}; give the path of a .pub "
                         "file, or - to read the key from standard input") from None
    except UnicodeDecodeError:
        raise UsageError(f"{source} is not a text file; give the .pub file") from None


def cmd_keys_remove(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    key = users.remove_key(ctx.store, ctx.actor, args[0])
    ctx.out(f"Removed key {key.fingerprint} of {key.user}.")


def cmd_users(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    access.require_admin(ctx.actor, "list users")
    listed = ctx.store.list_users()
    if ctx.json:
        ctx.emit_json([{"name": u.name, "role": u.role} for u in listed])
        return
    for user in listed:
        ctx.out(f"{user.name:<16} {user.role}")


def cmd_users_add(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    role = "developer"
    if len(args) == 3 and args[1] == "--role":
        role = args[2]
    elif len(args) != 1:
        raise UsageError(f"usage: {usage}")
    user = users.add_user(ctx.store, ctx.actor, args[0], role)
    ctx.out(f"Added {user.name} ({user.role}); add their key with "
            f"`opus keys:add {user.name} FILE`.")


def cmd_users_remove(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    user = users.remove_user(ctx.store, ctx.actor, args[0])
    ctx.out(f"Removed {user.name} and their keys.")


def cmd_users_role(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 2)
    user = users.set_role(ctx.store, ctx.actor, args[0], args[1])
    ctx.out(f"{user.name} is now {user.role}.")


def cmd_users_passwd(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    lines = ctx.read_stdin(STDIN_LIMIT).splitlines()
    user = users.set_password(ctx.store, ctx.actor, args[0], lines[0] if lines else "")
    ctx.out(f"Set the dashboard password of {user.name}.")


# ---- git -------------------------------------------------------------------------------

GIT_SETTINGS = ("deploy-branch",)


def cmd_checks(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    check = apps.health_check(ctx.settings, ctx.store, ctx.actor, args[0])
    if ctx.json:
        ctx.emit_json(dataclasses.asdict(check))
        return
    ctx.out(check.describe(ctx.settings.health_timeout))


def cmd_checks_set(ctx: Context, args: list[str]) -> None:
    if len(args) < 2:
        raise UsageError(f"usage: {ctx.usage}")
    check = apps.set_health_check(ctx.settings, ctx.store, ctx.actor, args[0], args[1:])
    ctx.out(f"Health check of {args[0]}: {check.describe(ctx.settings.health_timeout)}; "
            "from its next deploy.")


def cmd_checks_disable(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    check = apps.set_health_check(ctx.settings, ctx.store, ctx.actor, args[0], None)
    ctx.out(f"Health check of {args[0]} {check.describe(ctx.settings.health_timeout)}; "
            f"`opus checks:set {args[0]} path=/` enables it again.")


def cmd_git_set(ctx: Context, args: list[str]) -> None:
    if len(args) != 3 or args[1] not in GIT_SETTINGS:
        raise UsageError(f"usage: {ctx.usage}")
    app = apps.set_deploy_branch(ctx.settings, ctx.store, ctx.actor, args[0], args[2])
    ctx.out(f"Pushes to {app.deploy_branch} now deploy {app.name}; other branches are stored.")


CORE: list[Command] = [
    Command("up", "opus up [--system]", "start Opus and every app (--system: as root, "
            "after install --system)", cmd_up, local_only=True),
    Command("install", "opus install --system [--home DIR] [--user NAME] [--set KEY=VALUE]…",
            "set up system mode: an opus user, a user per app, secureops (root)",
            cmd_install, local_only=True),
    Command("uninstall", "opus uninstall --system [--purge]",
            "undo install --system (--purge: with the apps' data)", cmd_uninstall,
            local_only=True),
    Command("down", "opus down", "stop every process Opus started", cmd_down,
            local_only=True),
    Command("status", "opus status", "show Opus's processes", cmd_status, local_only=True),
    Command("version", "opus version", "show Opus's version", cmd_version),
    Command("apps", "opus apps", "list the apps you may use", cmd_apps),
    Command("apps:create", "opus apps:create APP [--from SOURCE]",
            "create an app (from a git URL: its first deploy, app.json applied)",
            cmd_apps_create,
            takes_app=True),
    Command("apps:info", "opus apps:info APP", "show an app", cmd_apps_info, takes_app=True),
    Command("apps:destroy", "opus apps:destroy APP --confirm APP",
            "delete an app and everything it has", cmd_apps_destroy, takes_app=True),
    Command("config", "opus config APP", "show an app's config vars", cmd_config,
            takes_app=True),
    Command("config:get", "opus config:get APP KEY", "print one config var", cmd_config_get,
            takes_app=True),
    Command("config:set", "opus config:set APP KEY=VALUE… [--no-restart]",
            "set config vars (one new release)", cmd_config_set, takes_app=True),
    Command("config:unset", "opus config:unset APP KEY… [--no-restart]",
            "unset config vars (one new release)", cmd_config_unset, takes_app=True),
    Command("ps", "opus ps APP", "list an app's processes", cmd_ps, takes_app=True),
    Command("ps:scale", "opus ps:scale APP web=N [TYPE=N …]",
            "run web with N processes, other Procfile types with N each",
            cmd_ps_scale, takes_app=True),
    Command("ps:set", "opus ps:set APP web threads=T",
            "threads per web process, applied without downtime", cmd_ps_set, takes_app=True,
            note=f"(T from 1 to {programs.MAX_THREADS})"),
    Command("ps:restart", "opus ps:restart APP [TYPE]", "restart an app without downtime",
            cmd_ps_restart, takes_app=True),
    Command("ps:stop", "opus ps:stop APP [TYPE]", "stop an app's processes", cmd_ps_stop,
            takes_app=True),
    Command("ps:start", "opus ps:start APP [TYPE]", "start a stopped app", cmd_ps_start,
            takes_app=True),
    Command("run", "opus run APP -- COMMAND [ARGS…]",
            "run a one-off command in the live release", cmd_run, takes_app=True,
            note="(the -- is needed)"),
    Command("domains", "opus domains APP", "list an app's domains", cmd_domains,
            takes_app=True),
    Command("domains:add", "opus domains:add APP DOMAIN", "serve an app on a domain",
            cmd_domains_add, takes_app=True),
    Command("domains:remove", "opus domains:remove APP DOMAIN", "stop serving a domain",
            cmd_domains_remove, takes_app=True),
    Command("rollback", "opus rollback APP [vN]", "go back to an earlier release",
            cmd_rollback, takes_app=True),
    Command("releases", "opus releases APP", "list an app's releases", cmd_releases,
            takes_app=True),
    Command("builds", "opus builds APP", "list an app's builds", cmd_builds, takes_app=True),
    Command("builds:output", "opus builds:output APP [BUILD_ID] [-n LINES]",
            "show a build's output (the latest by default)", cmd_builds_output,
            takes_app=True, note="(see `opus builds APP`)"),
    Command("logs", "opus logs APP [-n LINES] [-t] [--ps TYPE]",
            "show (-t: follow) an app's logs", cmd_logs, takes_app=True),
    Command("apps:rename", "opus apps:rename APP NEW_NAME", "rename an app",
            cmd_apps_rename, takes_app=True),
    Command("access", "opus access APP", "list who may use an app", cmd_access,
            takes_app=True),
    Command("access:add", "opus access:add APP USER", "let a user use an app",
            cmd_access_add, takes_app=True),
    Command("access:remove", "opus access:remove APP USER", "take a user off an app",
            cmd_access_remove, takes_app=True),
    Command("keys", "opus keys", "list SSH keys", cmd_keys),
    Command("keys:add", "opus keys:add USER FILE|-", "register a public key for a user",
            cmd_keys_add, note="(FILE: a .pub file; - reads standard input)"),
    Command("keys:remove", "opus keys:remove FINGERPRINT|NAME", "remove a key",
            cmd_keys_remove, note="(see `opus keys`)"),
    Command("users", "opus users", "list users (admins)", cmd_users),
    Command("users:add", "opus users:add USER [--role admin|developer]", "add a user",
            cmd_users_add),
    Command("users:remove", "opus users:remove USER", "remove a user and their keys",
            cmd_users_remove),
    Command("users:role", "opus users:role USER admin|developer", "change a user's role",
            cmd_users_role),
    Command("users:passwd", "opus users:passwd USER", "set a dashboard password (stdin)",
            cmd_users_passwd, note="(the password comes from standard input)"),
    Command("checks", "opus checks APP", "show what a new instance must answer",
            cmd_checks, takes_app=True),
    Command("checks:set", "opus checks:set APP [path=/PATH] [timeout=SECONDS] [attempts=N]",
            "change an app's health check", cmd_checks_set, takes_app=True),
    Command("checks:disable", "opus checks:disable APP",
            "switch on connection alone, without an HTTP check", cmd_checks_disable,
            takes_app=True),
    Command("git:set", "opus git:set APP deploy-branch BRANCH",
            "choose the branch whose pushes deploy", cmd_git_set, takes_app=True),
]

# Every command: Opus's core, then each capability's own (its module's COMMANDS list).
TABLE: dict[str, Command] = {c.name: c for c in [*CORE, *doctor.COMMANDS,
                                                     *pythons_commands.COMMANDS,
                                                     *tls_commands.COMMANDS,
                                                     *databases.COMMANDS,
                                                     *redis_commands.COMMANDS,
                                                     *builder_command.COMMANDS,
                                                     *previews_commands.COMMANDS,
                                                     *sleeping.COMMANDS,
                                                     *nodes_commands.COMMANDS,
                                                     *placement.COMMANDS]}


def lookup(name: str) -> Command:
    command = TABLE.get(name)
    if command is None:
        close = difflib.get_close_matches(name, [*TABLE, "help"], n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see `opus help`"
        shown = name if name.isprintable() and len(name) <= 40 else repr(name[:40])
        raise UsageError(f"unknown command {shown}{hint}")
    return command


def help_lines(remote: bool = False) -> list[str]:
    return ["Usage: opus COMMAND [ARGS] [--json] [--app APP]", ""] + [
        f"  {c.usage:<44} {c.summary}" for c in TABLE.values()
        if not (remote and c.local_only)
    ]


def split_options(argv: Sequence[str]) -> tuple[list[str], bool, str | None]:
    """Take the global options out of `argv`: (the rest, --json, --app value). Nothing
    after `--` is an option: it stays, with the `--`, for commands such as `run`."""
    rest: list[str] = []
    as_json, app = False, None
    items = iter(argv)
    for item in items:
        if item == "--":
            rest += [item, *items]
            break
        if item == "--json":
            as_json = True
        elif item in ("--app", "-a") or item.startswith("--app="):
            if app is not None:
                raise UsageError("give --app once")
            app = item.split("=", 1)[1] if "=" in item else next(items, None)
            if not app:
                raise UsageError(f"{item} needs an app name")
        else:
            rest.append(item)
    return rest, as_json, app


def run(ctx: Context, argv: Sequence[str]) -> int:
    """Run the command `argv` names; return its exit status."""
    args, ctx.json, ctx.app = split_options(argv)
    if not args or args[0] in ("help", "-h", "--help"):
        if len(args) > 1:
            command = lookup(args[1])
            ctx.out(f"Usage: {command.usage_line}")
            ctx.out(f"  {command.summary}")
            return 0
        for line in help_lines(ctx.remote):
            ctx.out(line)
        return 0
    command = lookup(args[0])
    if ctx.remote and command.local_only:
        raise UsageError(f"`opus {command.name}` runs on the Opus host only")
    rest = args[1:]
    ctx.usage = command.usage_line
    if command.takes_app and ctx.app is not None:
        rest.insert(0, ctx.app)
    return command.run(ctx, rest) or 0


def local_context(settings: Settings) -> Context:
    """The host's operator at a shell: every power, output to stdout."""
    return Context(settings, access.OPERATOR, print, sys.stdin.read,
                   write_bytes=_write_stdout_bytes)


def _write_stdout_bytes(data: bytes) -> None:
    """Binary output (a backup) to standard output, never onto a terminal."""
    if sys.stdout.isatty():
        raise UsageError("this writes a binary file: redirect it, e.g. `> backup.dump`")
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
