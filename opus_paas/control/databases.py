"""The databases' commands: the Postgres add-on (`addons:*`), each app's database
(`pg:*`) and its backups (`backups:*`)."""

from __future__ import annotations

import sys

from opus_paas import access
from opus_paas.control import lifecycle
from opus_paas.control.context import Command, Context, arity, confirmed, require_repeated, when
from opus_paas.data import backups, postgres, psql, redis, schedule, server
from opus_paas.errors import Conflict, UsageError
from opus_paas.run import restart as restart_module
from opus_paas.store import Backup, Store
from opus_paas.supervisor import Supervisor

# ---- the add-on -------------------------------------------------------------------------

def cmd_addons(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    config = ctx.store.addon(server.ADDON)
    if config is None:
        ctx.out("postgres   not enabled (`opus addons:enable postgres`)")
    elif config.get("kind") == "external":
        srv = server.parse_admin_url(str(config["url"]))
        ctx.out(f"postgres   enabled: the server at {srv.host}:{srv.port}")
    else:
        ctx.out(f"postgres   enabled: Opus's own cluster ({server.PROGRAM})")
    if ctx.store.addon(redis.ADDON) is None:
        ctx.out("redis      not enabled (`opus addons:enable redis`)")
    else:
        ctx.out("redis      enabled: one server per app (`opus redis:create APP`)")


def cmd_addons_enable(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    if args == ["redis"]:
        access.require_admin(ctx.actor, "enable add-ons")
        redis.enable(ctx.store)
        ctx.out("Redis enabled: `opus redis:create APP` gives an app a Redis server of its "
                "own (REDIS_URL).")
        return
    if args[:1] != ["postgres"] or len(args) not in (1, 3) or \
            (len(args) == 3 and args[1] != "--url"):
        raise UsageError(f"usage: {usage}")
    access.require_admin(ctx.actor, "enable add-ons")
    if len(args) == 3:
        srv = server.parse_admin_url(args[2])
        server.wait_ready(srv, timeout=5)
        ctx.store.set_addon(server.ADDON, {"kind": "external", "url": args[2]})
        ctx.out(f"Postgres enabled: apps' databases go to {srv.host}:{srv.port} "
                f"(`opus pg:create APP` makes one).")
        return
    made = server.init_cluster(ctx.settings)
    ctx.store.set_addon(server.ADDON, {"kind": "embedded"})
    ctx.out("Made Opus's Postgres cluster in " + str(server.data_dir(ctx.settings))
            if made else "Opus's Postgres cluster is there already.")
    supervisor = Supervisor(ctx.settings)
    if ctx.settings.system:
        ctx.out("Start it as root: `opus up --system` (supervisor's programs are root's).")
        return
    if not supervisor.is_running():
        ctx.out("It starts with Opus: `opus up`.")
        return
    supervisor.write_programs("opus", lifecycle.own_programs(ctx.settings))
    supervisor.apply()
    supervisor.start_program(server.PROGRAM)
    server.wait_ready(server.current(ctx.settings, ctx.store))
    supervisor.wait_until_running(server.PROGRAM)
    ctx.out(f"Postgres is running ({server.PROGRAM}); `opus pg:create APP` gives an app "
            "a database.")


# ---- an app's database ------------------------------------------------------------------

def cmd_pg_create(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app = access.app_for(ctx.store, ctx.actor, args[0], manage=True)
    if ctx.store.app_database(app) is None and ctx.store.config(app).get("DATABASE_URL"):
        raise Conflict(f"{app.name} has a DATABASE_URL already (a database Opus does not "
                       f"manage); `opus config:unset {app.name} DATABASE_URL` first")
    database = postgres.create(ctx.settings, ctx.store, app)
    ctx.out(f"Created the database {database.name} (role {database.name}) for {app.name}.")
    version = restart_module.change_config(ctx.settings, ctx.store, ctx.actor, app.name,
                                           {"DATABASE_URL": database.url}, [], restart=True,
                                           emit=ctx.out)
    if version is None:
        ctx.out("Set DATABASE_URL; its first push migrates it (the release command runs "
                "on pushes).")
    else:
        ctx.out(f"Set DATABASE_URL; v{version} is live. Its tables come with the next "
                f"push's release command, or `opus run {app.name} -- python manage.py "
                "migrate`.")


def cmd_pg_info(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app = access.app_for(ctx.store, ctx.actor, args[0])
    details = postgres.info(ctx.settings, ctx.store, app)
    policy = ctx.store.backup_policy(app)
    details["backups"] = len(ctx.store.list_backups(app))
    details["schedule"] = schedule.describe(policy.minute_of_day if policy else None)
    if ctx.json:
        ctx.emit_json(details)
        return
    details["size"] = backups.size_text(details["size"])
    details["created"] = when(details["created"]) + " UTC"
    for key, value in details.items():
        ctx.out(f"{key + ':':<13} {value}")


def cmd_pg_psql(ctx: Context, args: list[str]) -> int:
    usage = ctx.usage
    if len(args) == 3 and args[1] in ("-c", "--command"):
        command: str | None = args[2]
    elif len(args) == 1:
        command = None
    else:
        raise UsageError(f"usage: {usage}")
    local_terminal = not ctx.remote and sys.stdin.isatty() and sys.stdout.isatty()
    return psql.run(ctx.settings, ctx.store, ctx.actor, args[0], command, ctx.out,
                    ctx.cancelled, ctx.terminal, local_terminal)


def cmd_pg_destroy(ctx: Context, args: list[str]) -> None:
    name, repeated = confirmed(ctx.usage, args)
    app = access.app_for(ctx.store, ctx.actor, name, manage=True)
    require_repeated(app.name, repeated, f"pg:destroy drops {app.name}'s database")
    postgres.database_of(ctx.store, app)
    last = backups.capture(ctx.settings, ctx.store, app, "manual")
    postgres.drop(ctx.settings, ctx.store, app)
    if last is not None:
        ctx.out(f"Backed it up first: backup {last.id} (`opus backups:restore {app.name} "
                f"{last.id}` after a new pg:create brings it back).")
    version = restart_module.change_config(ctx.settings, ctx.store, ctx.actor, app.name, {},
                                           ["DATABASE_URL"], restart=True, emit=ctx.out)
    ctx.out(f"Dropped {app.name}'s database; DATABASE_URL is unset" +
            (f" (v{version} is live, on its SQLite file)." if version else "."))


def cmd_pg_rotate(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app = access.app_for(ctx.store, ctx.actor, args[0], manage=True)
    database = postgres.rotate(ctx.settings, ctx.store, app)
    version = restart_module.change_config(ctx.settings, ctx.store, ctx.actor, app.name,
                                           {"DATABASE_URL": database.url}, [], restart=True,
                                           emit=ctx.out)
    ctx.out(f"{database.name} has a new password; the old one no longer works"
            + (f"; v{version} is live with it." if version else "."))


# ---- backups ----------------------------------------------------------------------------

def _describe(backup: Backup) -> str:
    trigger = backup.trigger + (f" v{backup.release_version}" if backup.release_version
                                else "")
    return (f"{backup.id:<6} {when(backup.created)} UTC  {backup.kind:<8} "
            f"{backups.size_text(backup.size):>11}  {trigger}")


def _as_json(backup: Backup) -> dict[str, object]:
    return {"id": backup.id, "app": backup.app, "kind": backup.kind,
            "trigger": backup.trigger, "release": backup.release_version,
            "created": backup.created, "size": backup.size, "sha256": backup.sha256,
            "status": backup.status, "expires": backup.expires}


def cmd_backups(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app = access.app_for(ctx.store, ctx.actor, args[0])
    listed = [b for b in ctx.store.list_backups(app) if b.status == "done"]
    if ctx.json:
        ctx.emit_json([_as_json(b) for b in listed])
        return
    policy = ctx.store.backup_policy(app)
    ctx.out(f"{app.name}: {schedule.describe(policy.minute_of_day if policy else None)}, "
            f"keeps {policy.keep if policy else backups.DEFAULT_KEEP} captured backups")
    if not listed:
        ctx.out(f"No backups yet; `opus backups:capture {app.name}` takes one.")
    for backup in listed:
        ctx.out(_describe(backup))


def cmd_backups_kept(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    listed = [b for b in ctx.store.list_kept_backups()
              if ctx.actor.is_admin or b.owner == ctx.actor.name]
    if ctx.json:
        ctx.emit_json([_as_json(b) for b in listed])
        return
    if not listed:
        ctx.out("No destroyed app's backup is kept for you.")
    for backup in listed:
        ctx.out(f"{_describe(backup)}  of {backup.app}, until {when(backup.expires)} UTC")


def cmd_backups_capture(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    found = backups.capture_now(ctx.settings, ctx.store, ctx.actor, args[0])
    ctx.out(f"Backed up {args[0]}: backup {found.id} ({found.kind}, "
            f"{backups.size_text(found.size)}).")


def cmd_backups_restore(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, (1, 2))
    backup_id = backups.parse_id(args[1]) if len(args) == 2 else None
    chosen, replaced = backups.restore(ctx.settings, ctx.store, ctx.actor, args[0],
                                       backup_id, ctx.out)
    ctx.out(f"Restored backup {chosen.id} (of {chosen.app}, {when(chosen.created)} UTC) "
            f"into {args[0]}." + (f" The data it replaced is backup {replaced.id}."
                                  if replaced else ""))


def cmd_backups_download(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 2)
    if ctx.write_bytes is None:
        raise UsageError("backups:download writes a file to standard output; run it with "
                         "the opus command or over SSH")
    _found, file = backups.download(ctx.settings, ctx.store, ctx.actor, args[0],
                                    backups.parse_id(args[1]))
    with file.open("rb") as handle:
        while (chunk := handle.read(1 << 16)) and not ctx.cancelled.is_set():
            ctx.write_bytes(chunk)


def cmd_backups_schedule(ctx: Context, args: list[str]) -> None:
    usage = ctx.usage
    keep = None
    if len(args) >= 2 and args[-2] == "--keep":
        if not args[-1].isascii() or not args[-1].isdigit() or not 1 <= int(args[-1]) <= 1000:
            raise UsageError(f"--keep takes a count from 1 to 1000; usage: {usage}")
        keep, args = int(args[-1]), args[:-2]
    if len(args) == 3 and args[1] == "daily":
        minute: int | None = schedule.parse_time(args[2])
    elif len(args) == 2 and args[1] == "off":
        minute = None
    else:
        raise UsageError(f"usage: {usage}")
    minute, kept = backups.set_schedule(ctx.settings, ctx.store, ctx.actor, args[0], minute,
                                        keep)
    ctx.out(f"{args[0]}: backups {schedule.describe(minute)}; keeps the newest {kept} "
            "captured and scheduled backups.")


def rollback_note(store: Store, name: str, target: int | None, before: int | None) -> str:
    """What a rollback says about the data: the backup that matches the release it went
    back to (`target`, default the one before `before`), if a release command ran since."""
    app = store.get_app(name)
    if app is None or before is None:
        return ""
    if target is None:
        target = max((r.version for r in store.list_releases(app) if r.version < before),
                     default=before)
    found = backups.matching_data(store, app, target, before)
    if found is None:
        return "Its data was left as it is (no release command ran since)."
    return (f"Its data was left as it is; as it was before v{found.release_version}'s release "
            f"command, it is backup {found.id}: `opus backups:restore {app.name} {found.id}`.")


COMMANDS: list[Command] = [
    Command("addons", "opus addons", "list the add-ons (Postgres, Redis)", cmd_addons),
    Command("addons:enable", "opus addons:enable postgres [--url URL] | redis",
            "run Opus's own Postgres (or use a server given by URL), or let apps have "
            "Redis", cmd_addons_enable, local_only=True,
            note="(URL: postgres://USER:PASSWORD@HOST/DATABASE)"),
    Command("pg:create", "opus pg:create APP", "give an app a Postgres database "
            "(DATABASE_URL, one new release)", cmd_pg_create, takes_app=True),
    Command("pg:info", "opus pg:info APP", "show an app's database", cmd_pg_info,
            takes_app=True),
    Command("pg:psql", "opus pg:psql APP [-c SQL]", "psql on an app's database (ssh -t: "
            "interactive)", cmd_pg_psql, takes_app=True),
    Command("pg:destroy", "opus pg:destroy APP --confirm APP",
            "drop an app's database (backed up first)", cmd_pg_destroy, takes_app=True),
    Command("pg:credentials:rotate", "opus pg:credentials:rotate APP",
            "a new password for an app's database (one new release)", cmd_pg_rotate,
            takes_app=True),
    Command("backups", "opus backups APP", "list an app's backups", cmd_backups,
            takes_app=True),
    Command("backups:capture", "opus backups:capture APP", "back an app's database up now",
            cmd_backups_capture, takes_app=True),
    Command("backups:restore", "opus backups:restore APP [ID]",
            "put a backup back (default: the newest)", cmd_backups_restore, takes_app=True),
    Command("backups:download", "opus backups:download APP ID > FILE",
            "write a backup's file to standard output", cmd_backups_download,
            takes_app=True),
    Command("backups:schedule", "opus backups:schedule APP daily HH:MM|off [--keep N]",
            "back up daily (UTC); how many backups to keep", cmd_backups_schedule,
            takes_app=True),
    Command("backups:kept", "opus backups:kept",
            "destroyed apps' last backups you may restore", cmd_backups_kept),
]
