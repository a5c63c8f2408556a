"""An app's databases and backups: what the app's database is, its backups with their
download links, a capture button, and restore, which asks for the app's name typed."""

from __future__ import annotations

from flask import Blueprint, render_template, request, send_file
from werkzeug.wrappers import Response as BaseResponse

from opus_paas.data import backups, postgres, schedule
from opus_paas.errors import OpusError, UsageError
from web import context, forms

bp = Blueprint("databases", __name__)


def _here(name: str) -> str:
    return f"/apps/{name}/data"


@bp.route("/apps/<name>/data")
def show(name: str) -> str:
    app = context.get_app(name)
    settings, store = context.settings(), context.store()
    database = store.app_database(app)
    details, problem = None, ""
    if database is not None:
        try:
            details = postgres.info(settings, store, app)
        except OpusError as exc:
            problem = exc.message        # the server is down: the page shows the rest
    policy = store.backup_policy(app)
    return render_template(
        "databases/show.html", app=app, kind=backups.kind_of(store, app), database=database,
        details=details, problem=context.shown(problem),
        size_text=backups.size_text,
        backups=[b for b in store.list_backups(app) if b.status == "done"],
        schedule=schedule.describe(policy.minute_of_day if policy else None),
        keep=policy.keep if policy else backups.DEFAULT_KEEP)


@bp.route("/apps/<name>/data/capture", methods=["POST"])
def capture(name: str) -> BaseResponse:
    found = backups.capture_now(context.settings(), context.store(), context.actor(), name)
    return forms.done(f"Backed up {name}: backup {found.id} ({found.kind}, "
                      f"{backups.size_text(found.size)}).", [], _here(name))


@bp.route("/apps/<name>/data/restore", methods=["POST"])
def restore(name: str) -> BaseResponse:
    app = context.get_app(name)
    backup_id = backups.parse_id(forms.field("backup", 20))
    if forms.field("confirm", 64) != app.name:
        raise UsageError(f"restoring replaces {app.name}'s data (it is backed up first); "
                         "to go ahead, type the app's name in the box")
    output, emit = forms.collector()
    chosen, replaced = backups.restore(context.settings(), context.store(), context.actor(),
                                       app.name, backup_id, emit)
    return forms.done(f"Restored backup {chosen.id} into {app.name}."
                      + (f" The data it replaced is backup {replaced.id}." if replaced
                         else ""), output, _here(app.name))


@bp.route("/apps/<name>/data/download")
def download(name: str) -> BaseResponse:
    backup_id = backups.parse_id(request.args.get("backup", "")[:20])
    found, file = backups.download(context.settings(), context.store(), context.actor(),
                                   name, backup_id)
    return send_file(file, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"{found.app}-{found.id}.{found.kind}")
