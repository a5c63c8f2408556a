"""Signing in and out, the session's user, and the CSRF token every form carries.

Passwords are Opus users' (`opus users:passwd`, scrypt). Repeated failures lock sign-in
for the user and for the client's address for a while. A session ends when its user is
removed or their password changes. Every route but sign-in and static files needs a
signed-in user.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from opus_paas.access import Actor
from opus_paas.control import keys
from opus_paas.store import User
from web import context, forms

bp = Blueprint("auth", __name__)

MAX_USER_FAILURES = 5        # per user name, within THROTTLE_WINDOW
MAX_ADDRESS_FAILURES = 20    # per client address
THROTTLE_WINDOW = 15 * 60.0
OPEN_ENDPOINTS = {"auth.signin", "static"}
# A password check for a user that does not exist costs what a real one does.
_DUMMY_HASH = keys.hash_password("not a password of anyone's", b"\0" * 16)


def password_stamp(stored: str | None) -> str:
    """What a session keeps of its user's password hash: a new password ends it."""
    return hashlib.sha256((stored or "").encode()).hexdigest()[:16]


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    token: str = session["csrf"]
    return token


@bp.before_app_request
def load_user_and_check_form() -> BaseResponse | None:
    g.actor = None
    name = session.get("user")
    if isinstance(name, str):
        user = context.store().get_user(name)
        if user is not None and _same(session.get("stamp"),
                                      password_stamp(context.store().password_hash(user))):
            g.actor = Actor(user)
        else:
            session.clear()
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        sent = request.form.get("csrf_token", "")
        if not sent or not _same(sent, session.get("csrf")):
            abort(400, "This form expired or did not come from the dashboard; reload the "
                       "page and send it again.")
    if g.actor is None and request.endpoint not in OPEN_ENDPOINTS:
        if request.method == "GET" and request.endpoint is not None and \
                not request.path.endswith("/stream"):
            return redirect(url_for("auth.signin", next=request.full_path.rstrip("?")))
        abort(401, "Sign in first.")
    return None


def _same(sent: object, kept: object) -> bool:
    """Constant-time equality of two strings (anything else is never equal)."""
    if not isinstance(sent, str) or not isinstance(kept, str):
        return False
    return hmac.compare_digest(sent.encode(), kept.encode())


@bp.app_context_processor
def template_globals() -> dict[str, object]:
    return {"csrf_token": csrf_token, "actor": g.get("actor")}


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> BaseResponse | str | tuple[str, int]:
    if request.method == "GET":
        return render_template("auth/signin.html",
                               next=forms.local_path(request.args.get("next")))
    name = forms.field("user", 64)
    password = forms.field("password", 1024)
    after = forms.local_path(forms.field("next", 2048))
    user_key, address_key = f"user:{name}", f"ip:{client_address()}"
    now = time.time()
    # The attempt counts before the password is checked, so attempts sent at once
    # cannot all slip under the limit.
    attempts = context.store().record_signin_attempt([user_key, address_key], now,
                                                     since=now - THROTTLE_WINDOW)
    wait = _locked_for(attempts, now)
    if wait:
        current_app.logger.warning("sign-in throttled: user %r from %s", name, address_key)
        flash(f"Too many failed sign-ins; try again in {wait // 60 + 1} minutes.", "error")
        return render_template("auth/signin.html", next=after), 429
    user = context.store().get_user(name) if name else None
    stored = context.store().password_hash(user) if user is not None else None
    # Checked even for a user that does not exist, so the time taken tells nothing.
    matches = keys.check_password(password, stored or _DUMMY_HASH)
    if user is None or stored is None or not matches:
        current_app.logger.warning("sign-in failed: user %r from %s", name, address_key)
        flash("Wrong user name or password. (No password yet? `opus users:passwd USER` "
              "sets one.)", "error")
        return render_template("auth/signin.html", next=after), 401
    context.store().clear_signin_failures(user_key)
    context.store().forget_signin_attempt(address_key, now)
    _start_session(user, stored)
    current_app.logger.info("signed in: %s from %s", name, address_key)
    return redirect(after or url_for("apps.index"), code=303)


def client_address() -> str:
    """Whom the per-address throttle counts: the address, or its /64 for IPv6 (one
    host usually has a whole /64)."""
    address = request.remote_addr or "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _start_session(user: User, stored: str) -> None:
    session.clear()      # a new session: nothing planted before sign-in survives it
    session.permanent = True
    session["user"] = user.name
    session["stamp"] = password_stamp(stored)
    session["csrf"] = secrets.token_urlsafe(32)


def restamp(user: User) -> None:
    """After the signed-in user changed their own password: keep this session."""
    session["stamp"] = password_stamp(context.store().password_hash(user))


def _locked_for(attempts: dict[str, list[float]], now: float) -> int:
    """Seconds until sign-in opens again for these keys (0: this attempt may go on)."""
    waits = []
    for key, times in attempts.items():
        limit = MAX_USER_FAILURES if key.startswith("user:") else MAX_ADDRESS_FAILURES
        if len(times) > limit:
            waits.append(max(1, int(times[-limit - 1] + THROTTLE_WINDOW - now)))
    return max(waits, default=0)


@bp.route("/signout", methods=["POST"])
def signout() -> BaseResponse:
    session.clear()
    flash("Signed out.", "info")
    return redirect(url_for("auth.signin"), code=303)
