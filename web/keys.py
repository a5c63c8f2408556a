"""SSH keys: your own (an admin sees and manages everyone's)."""

from __future__ import annotations

from flask import Blueprint, render_template, url_for
from werkzeug.wrappers import Response as BaseResponse

from opus_paas import users
from web import context, forms

bp = Blueprint("keys", __name__)


@bp.route("/keys")
def index() -> str:
    return render_template("keys/index.html",
                           keys=users.list_keys(context.store(), context.actor()))


@bp.route("/keys", methods=["POST"])
def add() -> BaseResponse:
    user = forms.field("user", 64).strip() or context.actor().name
    owner, key = users.add_key(context.store(), context.actor(), user,
                              forms.field("public_key", 16 * 1024),
                              max_keys=context.settings().ssh_keys_per_user)
    return forms.done(f"Added key {key.fingerprint} for {owner.name}.", [],
                      url_for("keys.index"))


@bp.route("/keys/remove", methods=["POST"])
def remove() -> BaseResponse:
    removed = users.remove_key(context.store(), context.actor(), forms.field("fingerprint", 200))
    return forms.done(f"Removed key {removed.fingerprint} of {removed.user}.", [],
                      url_for("keys.index"))
