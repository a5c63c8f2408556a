"""The preview apps' commands: `previews`, `previews:enable`, `previews:disable`."""

from __future__ import annotations

from opus_paas import names
from opus_paas.control.context import Command, Context, arity
from opus_paas.errors import UsageError
from opus_paas.run import previews


def cmd_previews(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    app, limit, rows = previews.listing(ctx.settings, ctx.store, ctx.actor, args[0])
    if ctx.json:
        ctx.emit_json({"app": app.name, "limit": limit, "previews": rows})
        return
    if limit is None:
        ctx.out(f"Previews are off for {app.name} (`opus previews:enable {app.name}`).")
    else:
        ctx.out(f"{app.name}: {len(rows)} of {limit} previews; a push of any branch but "
                f"{app.deploy_branch} deploys one.")
    for row in rows:
        ctx.out(f"{row['branch']:<30} {row['app']:<30} {row['release'] or 'not deployed':<14} "
                f"{row['url']}")


def cmd_previews_enable(ctx: Context, args: list[str]) -> None:
    usage = f"usage: {ctx.usage}"
    limit = None
    if len(args) == 3 and args[1] == "--limit":
        if not names.NUMBER.fullmatch(args[2]):
            raise UsageError(usage)
        limit = int(args[2])
    elif len(args) != 1:
        raise UsageError(usage)
    app, chosen = previews.enable(ctx.settings, ctx.store, ctx.actor, args[0], limit)
    ctx.out(f"Previews are on for {app.name} (at most {chosen}): a push of any branch but "
            f"{app.deploy_branch} deploys it as {app.name}-BRANCH; deleting the branch "
            "destroys it.")


def cmd_previews_disable(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    left = previews.disable(ctx.settings, ctx.store, ctx.actor, args[0])
    ctx.out(f"Previews are off for {args[0]}: other branches are only stored again.")
    if left:
        ctx.out(f"Its previews stay until their branch is deleted: {', '.join(left)}.")


COMMANDS: list[Command] = [
    Command("previews", "opus previews APP", "list an app's preview apps", cmd_previews,
            takes_app=True),
    Command("previews:enable", "opus previews:enable APP [--limit N]",
            "deploy each pushed branch as a preview app APP-BRANCH", cmd_previews_enable,
            takes_app=True, note=f"(N: 1 to {previews.MAX_LIMIT})"),
    Command("previews:disable", "opus previews:disable APP",
            "push branches without previews again", cmd_previews_disable, takes_app=True),
]
