"""The Redis add-on's commands (`redis:*`): each app's own Redis server."""

from __future__ import annotations

from opus_paas import access
from opus_paas.control.context import (
    Command,
    Context,
    arity,
    confirmed,
    require_repeated,
    when,
)
from opus_paas.data import redis
from opus_paas.errors import UsageError
from opus_paas.run import restart as restart_module


def cmd_redis_create(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app = access.app_for(ctx.store, ctx.actor, args[0], manage=True)
    if ctx.store.app_redis(app) is None and ctx.store.config(app).get("REDIS_URL"):
        raise UsageError(f"{app.name} has a REDIS_URL already (a server Opus does not run); "
                         f"`opus config:unset {app.name} REDIS_URL` first")
    server = redis.create(ctx.settings, ctx.store, app)
    ctx.out(f"Started {app.name}'s Redis ({redis.program_name(app.name)}) on "
            f"127.0.0.1:{server.port}, at most {ctx.settings.redis_maxmemory}.")
    version = restart_module.change_config(ctx.settings, ctx.store, ctx.actor, app.name,
                                           {"REDIS_URL": server.url}, [], restart=True,
                                           emit=ctx.out)
    ctx.out("Set REDIS_URL" + (f"; v{version} is live with it." if version else
                              "; the app's next push takes it."))


def cmd_redis_info(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app = access.app_for(ctx.store, ctx.actor, args[0])
    details = redis.info(ctx.settings, ctx.store, app)
    if ctx.json:
        ctx.emit_json(details)
        return
    details["created"] = when(details["created"]) + " UTC"
    for key, value in details.items():
        ctx.out(f"{key + ':':<13} {value}")


def cmd_redis_cli(ctx: Context, args: list[str]) -> int:
    usage = ctx.usage
    if len(args) != 3 or args[1] not in ("-c", "--command"):
        raise UsageError(f"usage: {usage}")
    return redis.cli(ctx.settings, ctx.store, ctx.actor, args[0], args[2], ctx.out,
                     ctx.cancelled)


def cmd_redis_destroy(ctx: Context, args: list[str]) -> None:
    name, repeated = confirmed(ctx.usage, args)
    app = access.app_for(ctx.store, ctx.actor, name, manage=True)
    require_repeated(app.name, repeated,
                     f"redis:destroy deletes {app.name}'s Redis data for good")
    redis.destroy(ctx.settings, ctx.store, app)
    version = restart_module.change_config(ctx.settings, ctx.store, ctx.actor, app.name, {},
                                           ["REDIS_URL"], restart=True, emit=ctx.out)
    ctx.out(f"Removed {app.name}'s Redis and its data; REDIS_URL is unset"
            + (f" (v{version} is live)." if version else "."))


COMMANDS: list[Command] = [
    Command("redis:create", "opus redis:create APP", "give an app a Redis server of its "
            "own (REDIS_URL, one new release)", cmd_redis_create, takes_app=True),
    Command("redis:info", "opus redis:info APP", "show an app's Redis", cmd_redis_info,
            takes_app=True),
    Command("redis:cli", "opus redis:cli APP -c 'COMMAND'", "run one command on an app's "
            "Redis (redis-cli)", cmd_redis_cli, takes_app=True),
    Command("redis:destroy", "opus redis:destroy APP --confirm APP",
            "stop an app's Redis and delete its data", cmd_redis_destroy, takes_app=True),
]
