"""Running a form's action: the core function's output becomes messages on the page
the form was sent from. Where to go back to, and the form's fields, checked."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from flask import flash, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from opus_paas.errors import UsageError
from web import context

# The messages travel in the session cookie (4 KB at most): keep them short.
MAX_MESSAGE_LINES = 5
MAX_MESSAGE_BYTES = 300


def local_path(target: str | None) -> str:
    """`target` if it is a path on this dashboard (ASCII, printable, not `//host` or
    `/\\host`, which browsers take for another site); else ""."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")) and \
            target.isascii() and target.isprintable():
        return target
    return ""


def back(default: str) -> str:
    """Where the form was sent from, if that is a page of this dashboard; else `default`."""
    referrer = urlsplit(request.referrer or "")
    if referrer.netloc != request.host:
        return default
    path = referrer.path + (f"?{referrer.query}" if referrer.query else "")
    return local_path(path) or default


def short(text: str) -> str:
    """`text` cut to MAX_MESSAGE_BYTES of UTF-8 (on a character boundary)."""
    data = text.encode()
    if len(data) <= MAX_MESSAGE_BYTES:
        return text
    return data[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore") + "…"


def done(summary: str, output: list[str], default: str) -> BaseResponse:
    """Say what happened (with the last lines of the action's output) and go back."""
    flash(short(context.shown(summary)), "info")
    for line in output[-MAX_MESSAGE_LINES:]:
        flash(short(context.shown(line.strip())), "output")
    return redirect(back(default), code=303)


def collector() -> tuple[list[str], Callable[[str], None]]:
    """A list, and an `emit` that appends a core function's output lines to it."""
    lines: list[str] = []
    return lines, lines.append


def field(name: str, limit: int = 4096) -> str:
    """A form field as sent (missing: empty); longer than `limit` is refused, never cut."""
    value = request.form.get(name, "")
    if len(value) > limit:
        raise UsageError(f"{name} is longer than {limit} characters")
    return value
