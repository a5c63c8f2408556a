"""The session cookie: Secure whenever the request came over TLS (the front says so in
X-Forwarded-Proto), HttpOnly and SameSite always (set in the app's config)."""

from __future__ import annotations

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface


class ProxiedSessionInterface(SecureCookieSessionInterface):
    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure
