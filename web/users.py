"""Users, for admins: add, remove, change roles, set passwords. Anyone may change their
own password here too."""

from __future__ import annotations

from flask import Blueprint, render_template, url_for
from werkzeug.wrappers import Response as BaseResponse

from opus_paas import access, users
from opus_paas.errors import UsageError
from web import auth, context, forms

bp = Blueprint("users", __name__)


@bp.route("/users")
def index() -> str:
    access.require_admin(context.actor(), "see the users")
    return render_template("users/index.html", users=context.store().list_users(),
                           roles=users.ROLES)


@bp.route("/users", methods=["POST"])
def add() -> BaseResponse:
    user = users.add_user(context.store(), context.actor(), forms.field("name", 64),
                         forms.field("role", 16))
    return forms.done(f"Added {user.name} ({user.role}). They sign in once a password is "
                      "set, and push once they have a key.", [], url_for("users.index"))


@bp.route("/users/<name>/role", methods=["POST"])
def role(name: str) -> BaseResponse:
    user = users.set_role(context.store(), context.actor(), name, forms.field("role", 16))
    return forms.done(f"{user.name} is now {user.role}.", [], url_for("users.index"))


@bp.route("/users/<name>/remove", methods=["POST"])
def remove(name: str) -> BaseResponse:
    user = users.remove_user(context.store(), context.actor(), name)
    return forms.done(f"Removed {user.name} and their keys.", [], url_for("users.index"))


@bp.route("/users/<name>/password", methods=["POST"])
def password(name: str) -> BaseResponse:
    if name == context.actor().name:
        # A session left open must not let someone lock its owner out.
        me = users.get_user(context.store(), name)
        if not users.check_password(forms.field("current", 1024),
                                   context.store().password_hash(me)):
            raise UsageError("your current password is not right; give it to set a new one")
    user = users.set_password(context.store(), context.actor(), name,
                             forms.field("password", 1024))
    done = forms.done(f"Set the password of {user.name}.", [], url_for("keys.index"))
    if user.name == context.actor().name:
        auth.restamp(user)   # this session goes on; the user's others end
    return done
