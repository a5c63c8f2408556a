"""New project: the project builder (`opus init`) from the dashboard. The form offers
the catalogue's entries only (no free-text package specs); sending it makes the project
on this host, creates the app as the signed-in user and pushes it, and the page shows
every line of that as it happens (a streamed response)."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from flask import Blueprint, Response, render_template, request, stream_with_context, url_for
from markupsafe import escape

from opus_paas import access, names
from opus_paas.access import Actor
from opus_paas.builder import catalogue, deploy, make
from opus_paas.control import commands
from opus_paas.errors import Conflict, OpusError, UsageError
from opus_paas.settings import Settings
from opus_paas.store import Store
from web import context, forms

bp = Blueprint("builder", __name__)

OUTPUT_MARK = "<!--output-->"
_DONE = object()


def _require_creator() -> None:
    if not access.may_create(context.settings(), context.actor()):
        access.require_admin(context.actor(), "create apps here")


@bp.route("/new")
def new() -> str:
    _require_creator()
    return render_template("builder/new.html", entries=catalogue.ENTRIES.values(),
                           databases=catalogue.DATABASES)


@bp.route("/new", methods=["POST"])
def create() -> Response:
    _require_creator()
    app = names.check_app_name(forms.field("app", 64))
    chosen = request.form.getlist("with")
    if len(chosen) > len(catalogue.ENTRIES) or any(c not in catalogue.ENTRIES
                                                    for c in chosen):
        raise UsageError("choose entries from the list only")
    choice = catalogue.choose(chosen, forms.field("db", 16) or "sqlite")
    if context.store().get_app(app) is not None:
        raise Conflict(f"app {app} already exists; choose another name")
    page = render_template("builder/progress.html", app=app, choice=choice)
    head, _, tail = page.partition(OUTPUT_MARK)
    settings, actor = context.settings(), context.actor()
    lines: queue.Queue[object] = queue.Queue()
    cancelled = threading.Event()
    worker = threading.Thread(target=_build, args=(settings, actor, app, choice, lines,
                                                   cancelled), daemon=True)

    def generate() -> Iterator[str]:
        worker.start()
        try:
            yield head
            while True:
                item = lines.get()
                if item is _DONE:
                    break
                if isinstance(item, tuple):
                    yield _outcome(item)
                    continue
                yield f"{escape(context.shown(str(item)))}\n"
            yield tail
        finally:
            cancelled.set()   # the browser went away: the push is cancelled

    response = Response(stream_with_context(generate()), mimetype="text/html")
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _outcome(item: tuple[object, ...]) -> str:
    kind, text = item[0], str(item[1])
    if kind == "live":
        app = str(item[2])
        return (f'</pre><p class="ok">{escape(app)} is live: <a href="{escape(text)}">'
                f'{escape(text)}</a> · <a href="{url_for("apps.show", name=app)}">its '
                "page</a></p><pre hidden>")
    return f'</pre><p class="error">{escape(context.shown(text))}</p><pre hidden>'


def _build(settings: Settings, actor: Actor, app: str, choice: catalogue.Choice,
           lines: queue.Queue[object], cancelled: threading.Event) -> None:
    """Make, create, push; every line to `lines`, then the outcome, then _DONE."""
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="new-project-", dir=settings.staging_dir))
    store = Store(settings.db_path)
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch),
               "LANG": "C.UTF-8", "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_GLOBAL": os.devnull, **dict(settings.network_env)}
        project = scratch / app
        make.make(project, app, choice, lines.put, env=env,
                  identity=(actor.name, f"{actor.name}@{settings.domain}"))
        url = deploy.deploy_here(settings, store, actor, project, app, choice.database,
                                 lines.put, cancelled, commands.run)
        lines.put(("live", url, app))
    except OpusError as exc:
        lines.put(("error", exc.message))
    except Exception as exc:   # a bug: the page says so, the log has it
        logging.getLogger("opus.web").exception("new project %s failed", app)
        lines.put(("error", f"internal error ({exc.__class__.__name__}); the operator's "
                            "log has the details"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        lines.put(_DONE)
