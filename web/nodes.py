"""The swarm's nodes, for admins: what `opus nodes` lists (opus_paas/swarm/nodes.py)."""

from __future__ import annotations

from flask import Blueprint, render_template

from opus_paas import access
from opus_paas.errors import OpusError, UsageError
from opus_paas.swarm import nodes
from web import context

bp = Blueprint("nodes", __name__)


@bp.route("/nodes")
def index() -> str:
    access.require_admin(context.actor(), "see the swarm's nodes")
    settings = context.settings()
    rows: list[dict[str, object]] = []
    problem = ""
    try:
        rows = nodes.listing(settings, context.store())
    except UsageError as exc:       # no swarm configured: how to configure one
        problem = exc.message
    except OpusError as exc:        # the manager does not answer: say so, list what Opus knows
        problem = exc.message
        rows = [{"name": n.name, "address": n.address, "state": "unknown",
                 "availability": "-", "role": "worker", "tasks": "-", "added_at": n.added_at}
                for n in context.store().list_nodes()]
    return render_template("nodes/index.html", rows=rows, problem=context.shown(problem))
