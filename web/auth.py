"""Signing in and out, the session's user, and the CSRF token every form carries.

Passwords are Opus users' (`opus users:passwd`, scrypt). Repeated failures slow down
sign-in for that user from that address (a growing wait between attempts), and lock the
address after many; no one elsewhere can lock a user out. A session is a row in opus.db
that its cookie names: it ends when its user signs out (a copied cookie stops working
too), is removed, or changes password. Every route but sign-in and static files needs
a signed-in user.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
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

from opus_paas import users
from opus_paas.access import Actor
from opus_paas.store import Store, User
from web import context, forms

bp = Blueprint("auth", __name__)

FREE_FAILURES = 5            # per (address, user name) within THROTTLE_WINDOW; then…
BACKOFF_BASE = 2.0           # …each attempt waits 2, 4, 8… s after the last failure
MAX_ADDRESS_FAILURES = 20    # per client address, any user
THROTTLE_WINDOW = 15 * 60.0
OPEN_ENDPOINTS = {"auth.signin", "static"}
# A password check for a user that does not exist costs what a real one does.
_DUMMY_HASH = users.hash_password("not a password of anyone's", b"\0" * 16)


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
        if user is not None and session_is_open(user, session.get("sid"),
                                                session.get("stamp")):
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


def session_is_open(user: User, sid: object, stamp: object) -> bool:
    """The session (by its id and password stamp) is one opus.db still has for `user`."""
    return still_open(context.store(), user, sid, stamp,
                      current_app.permanent_session_lifetime.total_seconds())


def still_open(store: Store, user: User, sid: object, stamp: object,
               lifetime: float) -> bool:
    """session_is_open, outside a request (a live log stream asks it as it goes)."""
    return (isinstance(sid, str) and _same(stamp, password_stamp(store.password_hash(user)))
            and store.is_dashboard_session_open(_sid_hash(sid), user, time.time() - lifetime))


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


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
    address_key = f"ip:{client_address()}"
    pair_key = f"pair:{client_address()}|{name}"
    now = time.time()
    # The attempt counts before the password is checked, so attempts sent at once
    # cannot all slip under the limit.
    attempts = context.store().record_signin_attempt([pair_key, address_key], now,
                                                     since=now - THROTTLE_WINDOW)
    wait = wait_before(attempts[pair_key], attempts[address_key], now)
    if wait:
        # The backoff runs from the last failure that was checked, not from this one.
        context.store().forget_signin_attempt(pair_key, now)
        current_app.logger.warning("sign-in throttled: user %r from %s", name, address_key)
        flash(f"Too many failed sign-ins; try again in {_duration(wait)}.", "error")
        return render_template("auth/signin.html", next=after), 429
    user = context.store().get_user(name) if name else None
    stored = context.store().password_hash(user) if user is not None else None
    # Checked even for a user that does not exist, so the time taken tells nothing.
    matches = users.check_password(password, stored or _DUMMY_HASH)
    if user is None or stored is None or not matches:
        current_app.logger.warning("sign-in failed: user %r from %s", name, address_key)
        flash("Wrong user name or password. (No password yet? `opus users:passwd USER` "
              "sets one.)", "error")
        return render_template("auth/signin.html", next=after), 401
    context.store().clear_signin_failures(pair_key)
    context.store().forget_signin_attempt(address_key, now)
    _start_session(user, stored)
    current_app.logger.info("signed in: %s from %s", name, address_key)
    return redirect(after or url_for("apps.index"), code=303)


def client_address() -> str:
    """Whom the per-address throttle counts: the address, or its /64 for IPv6 (one
    host usually has a whole /64). Through the front it is the address the front saw:
    ProxyFix takes the last X-Forwarded-For entry, the one the front appends after any
    the client sent."""
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
    sid, now = secrets.token_urlsafe(32), time.time()
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    context.store().open_dashboard_session(_sid_hash(sid), user, now, now - lifetime)
    session["user"] = user.name
    session["sid"] = sid
    session["stamp"] = password_stamp(stored)
    session["csrf"] = secrets.token_urlsafe(32)


def restamp(user: User) -> None:
    """After the signed-in user changed their own password: keep this session."""
    session["stamp"] = password_stamp(context.store().password_hash(user))


def wait_before(pair: list[float], address: list[float], now: float) -> int:
    """Seconds before this attempt may be checked (0: now), given the attempt times
    (oldest first, this one last) of its (address, user) pair and of its address."""
    waits = [0.0]
    over = len(pair) - FREE_FAILURES - 1
    if over >= 0:
        needed = min(THROTTLE_WINDOW, BACKOFF_BASE * 2 ** over)
        waits.append(pair[-2] + needed - now)
    if len(address) > MAX_ADDRESS_FAILURES:
        waits.append(address[-MAX_ADDRESS_FAILURES - 1] + THROTTLE_WINDOW - now)
    longest = max(waits)
    return 0 if longest <= 0 else max(1, math.ceil(longest))


def _duration(seconds: int) -> str:
    return f"{seconds} seconds" if seconds < 60 else f"{seconds // 60 + 1} minutes"


@bp.route("/signout", methods=["POST"])
def signout() -> BaseResponse:
    sid = session.get("sid")
    if isinstance(sid, str):
        context.store().close_dashboard_session(_sid_hash(sid))
    session.clear()
    flash("Signed out.", "info")
    return redirect(url_for("auth.signin"), code=303)
