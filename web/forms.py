"""Running a form's action: the core function's output becomes messages on the page
the form was sent from."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from flask import flash, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from web import context

MAX_MESSAGE_LINES = 6      # the messages travel in the session cookie: keep them short
MAX_LINE = 300


def back(default: str) -> str:
    """Where the form was sent from, if that is a page of this dashboard; else `default`."""
    referrer = urlsplit(request.referrer or "")
    if referrer.netloc == request.host and referrer.path.startswith("/"):
        return referrer.path + (f"?{referrer.query}" if referrer.query else "")
    return default


def done(summary: str, output: list[str], default: str) -> BaseResponse:
    """Say what happened (with the last lines of the action's output) and go back."""
    flash(context.shown(summary), "info")
    for line in output[-MAX_MESSAGE_LINES:]:
        flash(context.shown(line.strip())[:MAX_LINE], "output")
    return redirect(back(default), code=303)


def collector() -> tuple[list[str], Callable[[str], None]]:
    """A list, and an `emit` that appends a core function's output lines to it."""
    lines: list[str] = []
    return lines, lines.append


def field(name: str, limit: int = 4096) -> str:
    """A form field as sent (missing: empty), at most `limit` characters."""
    return request.form.get(name, "")[:limit]
