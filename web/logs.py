"""An app's logs in the browser: the last lines, then new ones as they are written,
pushed as server-sent events (one JSON entry per event; the page adds them as text)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator

from flask import Blueprint, Response, render_template, request, stream_with_context

from opus_paas import logs, names
from opus_paas.errors import NotFound
from opus_paas.logs import Entry
from web import context

bp = Blueprint("logs", __name__)

TAIL_LINES = 200
HEARTBEAT_SECONDS = 15.0       # a comment line keeps proxies from closing an idle stream
STREAM_SECONDS = 30 * 60.0     # then the browser reconnects (EventSource does it itself)


def _process_type() -> str | None:
    kind = request.args.get("ps") or None
    return names.check_process_type(kind) if kind is not None else None


def _entry_json(entry: Entry) -> dict[str, str]:
    return {"at": entry.at, "source": entry.source, "text": entry.text}


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
    if not found.paths:
        raise NotFound(f"{app.name} has no logs yet; they start with its first deploy")
    response = Response(stream_with_context(_events(found)), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _events(found: logs.AppLogs) -> Iterator[str]:
    """The stream: entries as they come, a heartbeat when there are none. A follower
    thread reads the files; it stops when the client goes (the next write fails and
    this generator is closed) or when the stream has run its time."""
    stop = threading.Event()
    entries: queue.Queue[Entry] = queue.Queue(maxsize=10_000)

    def follow() -> None:
        for entry in found.follow(stop):
            while not stop.is_set():
                try:
                    entries.put(entry, timeout=1)
                    break
                except queue.Full:
                    continue

    threading.Thread(target=follow, daemon=True).start()
    deadline = time.monotonic() + STREAM_SECONDS
    try:
        yield "retry: 2000\n\n"
        while time.monotonic() < deadline:
            try:
                entry = entries.get(timeout=HEARTBEAT_SECONDS)
            except queue.Empty:
                yield ": still here\n\n"
                continue
            yield f"data: {json.dumps(_entry_json(entry))}\n\n"
    finally:
        stop.set()
