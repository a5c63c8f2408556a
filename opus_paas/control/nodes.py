"""`opus nodes`, `nodes:add HOST`, `nodes:remove NAME`, `nodes:key`: the machines of the
swarm (opus_paas/swarm/nodes.py; docs/scale-out.md, Nodes). Admins only."""

from __future__ import annotations

from opus_paas import access, names
from opus_paas.control.context import Command, Context, arity, when
from opus_paas.errors import UsageError
from opus_paas.swarm import members, nodes

ADD_USAGE = "opus nodes:add HOST [--name NAME] [--port PORT]"
REMOVE_USAGE = "opus nodes:remove NAME [--gone]"


def cmd_nodes(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    access.require_admin(ctx.actor, "list the swarm's nodes")
    rows = nodes.listing(ctx.settings, ctx.store)
    if ctx.json:
        ctx.emit_json(rows)
        return
    ctx.out(f"{'NAME':<20} {'ADDRESS':<18} {'STATE':<8} {'AVAILABILITY':<13} {'ROLE':<8} "
            f"{'TASKS':>5}  ADDED")
    for row in rows:
        added = row["added_at"]
        ctx.out(f"{row['name']!s:<20} {row['address']!s:<18} {row['state']!s:<8} "
                f"{row['availability']!s:<13} {row['role']!s:<8} {row['tasks']!s:>5}  "
                f"{when(added) if isinstance(added, float) else '-'}")


def cmd_nodes_add(ctx: Context, args: list[str]) -> None:
    access.require_admin(ctx.actor, "add swarm nodes")
    if not args or args[0].startswith("-"):
        raise UsageError(f"usage: {ADD_USAGE}")
    host, rest = args[0], iter(args[1:])
    name, port = None, 22
    for option in rest:
        value = next(rest, None)
        if value is None or option not in ("--name", "--port"):
            raise UsageError(f"usage: {ADD_USAGE}")
        if option == "--name":
            name = names.check_node_name(value)
        else:
            if not names.NUMBER.fullmatch(value) or not 1 <= int(value) <= 65535:
                raise UsageError(f"--port takes a TCP port (1-65535), not {value[:20]!r}")
            port = int(value)
    record = nodes.add(ctx.settings, ctx.store, host, ctx.out, name=name, port=port)
    ctx.out(f"Added {record.name}: `opus nodes` lists it.")


def cmd_nodes_remove(ctx: Context, args: list[str]) -> None:
    access.require_admin(ctx.actor, "remove swarm nodes")
    if len(args) not in (1, 2) or (len(args) == 2 and args[1] != "--gone"):
        raise UsageError(f"usage: {REMOVE_USAGE}")
    nodes.remove(ctx.settings, ctx.store, args[0], ctx.out, gone=len(args) == 2,
                 before_drain=lambda node: members.take_node_out(ctx.settings, ctx.store,
                                                                 node))


def cmd_nodes_key(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    access.require_admin(ctx.actor, "read the node key")
    ctx.out(nodes.public_key(ctx.settings))


COMMANDS: list[Command] = [
    Command("nodes", "opus nodes", "list the swarm's nodes: state, availability, tasks",
            cmd_nodes),
    Command("nodes:add", ADD_USAGE, "bring a machine into the swarm over SSH (as root)",
            cmd_nodes_add),
    Command("nodes:remove", REMOVE_USAGE,
            "drain a node, let it leave the swarm and forget it", cmd_nodes_remove),
    Command("nodes:key", "opus nodes:key",
            "print the public key to put in a node's /root/.ssh/authorized_keys",
            cmd_nodes_key),
]
