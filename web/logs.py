"""An app's logs in the browser: the last lines, then new ones as they are written,
pushed as server-sent events (one JSON entry per event; the page adds them as text)."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    render_template,
    request,
    session,
)

from opus_paas import access, names, privileged
from opus_paas.access import Actor
from opus_paas.errors import NotFound, OpusError
from opus_paas.run import logs
from opus_paas.run.logs import Entry
from opus_paas.store import Store
from web import auth, context

bp = Blueprint("logs", __name__)

TAIL_LINES = 200
# A comment line when nothing came for this long: it keeps proxies from closing an idle
# stream, finds a client that has gone (through the front, at the second heartbeat after
# it went: only then is its slot free), and is when the session is checked again.
HEARTBEAT_SECONDS = 2.0
# However busy the stream, the session and the user's access are checked this often: a
# user signed out, removed, or taken off the app stops receiving within it.
ACCESS_CHECK_SECONDS = 2.0
STREAM_SECONDS = 30 * 60.0     # then the browser reconnects (EventSource does it itself)
MAX_STREAMS = 16               # of gunicorn's 32 threads (lifecycle.dashboard_command)
MAX_STREAMS_PER_USER = 6
QUEUE_ENTRIES = 1000


def _process_type() -> str | None:
    kind = request.args.get("ps") or None
    return names.check_process_type(kind) if kind is not None else None


def _entry_json(entry: Entry) -> dict[str, str]:
    """An entry for the page; a line longer than any should be is cut."""
    return {"at": entry.at, "source": entry.source, "text": entry.text[:privileged.MAX_LINE]}


@bp.route("/apps/<name>/logs")
def show(name: str) -> str:
    app = context.get_app(name)
    kind = _process_type()
    try:
        entries = logs.app_logs(context.settings(), app, kind).tail(TAIL_LINES)
    except NotFound:
        entries = []
    kinds = sorted({path.stem.split(".")[0] for path in
                    logs.log_files(context.settings(), app.name, None)})
    return render_template("logs/show.html", app=app, entries=entries, kind=kind, kinds=kinds)


@bp.route("/apps/<name>/logs/stream")
def stream(name: str) -> Response:
    app = context.get_app(name)
    found = logs.app_logs(context.settings(), app, _process_type())
    if not found.paths and not isinstance(found, logs.SwarmAppLogs):   # swarm: the manager's
        raise NotFound(f"{app.name} has no logs yet; they start with its first deploy")
    user = context.actor().name
    if not _streams.open(user):
        abort(503, f"{MAX_STREAMS_PER_USER} live log streams are open for you already (or "
                   f"{MAX_STREAMS} in all); close a log tab and reload.")
    still_allowed = _still_allowed(session.get("sid"), session.get("stamp"), user, app.name)
    # The stream needs nothing of the request once it has begun: no request context
    # is kept for it.
    response = Response(_events(found, still_allowed), mimetype="text/event-stream")
    # On the response's close, which the server calls even if the stream never began.
    response.call_on_close(lambda: _streams.close(user))
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response


class _Streams:
    """How many live log streams are open, per user and in all: each holds one of the
    dashboard's threads, so they are capped below the thread count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_user: dict[str, int] = {}

    def open(self, user: str) -> bool:
        with self._lock:
            if self._per_user.get(user, 0) >= MAX_STREAMS_PER_USER or \
                    sum(self._per_user.values()) >= MAX_STREAMS:
                return False
            self._per_user[user] = self._per_user.get(user, 0) + 1
            return True

    def close(self, user: str) -> None:
        with self._lock:
            self._per_user[user] -= 1
            if not self._per_user[user]:
                del self._per_user[user]


_streams = _Streams()


def _still_allowed(sid: object, stamp: object, user: str, app: str) -> Callable[[], bool]:
    """Asked every ACCESS_CHECK_SECONDS: may this session still read this app's logs (it
    is still open, its user still there with the same password, and may still use the
    app)?"""
    settings = context.settings()
    lifetime = current_app.permanent_session_lifetime.total_seconds()

    def check() -> bool:
        store = Store(settings.db_path)
        found = store.get_user(user)
        if found is None or not auth.still_open(store, found, sid, stamp, lifetime):
            return False
        try:
            access.app_for(store, Actor(found), app)
        except OpusError:
            return False
        return True

    return check


def _events(found: logs.AppLogs, still_allowed: Callable[[], bool]) -> Iterator[str]:
    """The stream: entries as they come, a heartbeat when there are none. A follower
    thread reads the files; it stops when the client goes (the next write fails and
    this generator is closed), when the session may no longer read the app, or when
    the stream has run its time. A client that reads too slowly misses lines."""
    stop = threading.Event()
    entries: queue.Queue[Entry] = queue.Queue(maxsize=QUEUE_ENTRIES)

    def follow() -> None:
        for entry in found.follow(stop):
            with contextlib.suppress(queue.Full):
                entries.put_nowait(entry)

    threading.Thread(target=follow, daemon=True).start()
    deadline = time.monotonic() + STREAM_SECONDS
    checked = time.monotonic()
    try:
        yield "retry: 2000\n\n"
        while time.monotonic() < deadline:
            try:
                entry = entries.get(timeout=HEARTBEAT_SECONDS)
            except queue.Empty:
                entry = None
            if entry is None or time.monotonic() - checked >= ACCESS_CHECK_SECONDS:
                if not still_allowed():
                    return
                checked = time.monotonic()
            if entry is None:
                yield ": still here\n\n"
                continue
            yield f"data: {json.dumps(_entry_json(entry))}\n\n"
    finally:
        stop.set()
