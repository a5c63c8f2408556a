"""The dashboard: a Flask application factory, one blueprint per area.

Every action calls the same core functions as the CLI (ps, restart, keys, access), with
the signed-in user as the actor, so authorization is decided in one place (access.py).
gunicorn serves `web.wsgi:app` as the supervisor program `opus-dashboard`; the front
publishes it as opus.<domain>.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response
from werkzeug.middleware.proxy_fix import ProxyFix

from opus_paas import secretfile
from opus_paas import settings as settings_module
from opus_paas.settings import Settings
from opus_paas.store import Store
from web import apps, auth, builder, databases, errors, keys, logs, nodes, sampler, users
from web.session import ProxiedSessionInterface

# No script or style from anywhere but the dashboard itself; no framing.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


def create_app(settings: Settings | None = None,
               test_config: Mapping[str, Any] | None = None) -> Flask:
    """The dashboard for the Opus `settings` describe (default: from the environment)."""
    settings = settings if settings is not None else settings_module.load()
    app = Flask(__name__)
    app.config.from_mapping(
        OPUS_SETTINGS=settings,
        SECRET_KEY=secretfile.read_or_create(settings.dashboard_dir / "secret_key", 32),
        SESSION_COOKIE_NAME="opus_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=datetime.timedelta(hours=12),
        MAX_CONTENT_LENGTH=256 * 1024,
        SAMPLE_MEMORY=False,        # the served dashboard samples; tests need not
    )
    if test_config:
        app.config.update(test_config)
    Store(settings.db_path).init()
    # The front is the one proxy in front of the dashboard: trust its one hop.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)  # type: ignore[method-assign]
    app.session_interface = ProxiedSessionInterface()
    for blueprint in (auth.bp, apps.bp, logs.bp, keys.bp, users.bp, databases.bp,
                      builder.bp, nodes.bp):
        app.register_blueprint(blueprint)
    errors.register(app)
    app.jinja_env.filters["when"] = _when
    app.after_request(_security_headers)
    if app.config["SAMPLE_MEMORY"]:
        sampler.start(settings)
    return app


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response
