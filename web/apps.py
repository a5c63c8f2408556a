"""The app list and an app's page: processes and scale, releases and rollback, config,
domains, builds, and charts of its traffic and memory."""

from __future__ import annotations

import time

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from opus_paas import access, apps, names
from opus_paas.build import release
from opus_paas.data import backups
from opus_paas.errors import NotFound, OpusError, UsageError
from opus_paas.front import sites
from opus_paas.run import metrics, ps
from opus_paas.run import restart as restart_module
from opus_paas.store import App
from opus_paas.tls import certs
from web import charts, context, forms
from web.status import app_status

bp = Blueprint("apps", __name__)

MAX_BUILD_OUTPUT = 2 << 20     # bytes of a build's output shown


@bp.route("/")
def index() -> str:
    rows = []
    listed = access.visible_apps(context.store(), context.actor())
    running = ps.visible_processes(context.settings(), context.store(), context.actor(), listed)
    parents = context.store().list_preview_parents()
    for app in listed:
        releases = context.store().list_releases(app)
        rows.append({
            "app": app,
            "status": app_status(app, running.get(app.name, []),
                                 context.store().is_asleep(app)),
            "scale": _scale_text(app),
            "url": apps.info(context.settings(), context.store(), app)["url"],
            "deployed": releases[0].created if releases else None,
            "preview_of": parents.get(app.id),
        })
    return render_template("apps/index.html", rows=rows,
                           may_create=access.may_create(context.settings(), context.actor()))


def _scale_text(app: App) -> str:
    counts = [f"web={app.web_processes}"]
    counts += [f"{kind}={count}" for kind, (count, _stopped)
               in sorted(context.store().formation(app).items())]
    return " ".join(counts)


@bp.route("/apps/<name>")
def show(name: str) -> str:
    app = context.get_app(name)
    settings, store = context.settings(), context.store()
    found = ps.processes(settings, store, context.actor(), app.name)
    try:
        info = release.live_build_info(settings, app) if app.live_version else {}
    except OpusError:
        info = {}          # its build is damaged or gone: the page shows the rest
    types = sorted(t for t in release.process_types(info) if t not in ("web", "release"))
    formation = store.formation(app)
    return render_template(
        "apps/show.html",
        app=app,
        info=apps.info(settings, store, app),
        status=app_status(app, found, store.is_asleep(app)),
        processes=found,
        types=[{"name": t, "count": formation.get(t, (0, False))[0]} for t in types],
        releases=store.list_releases(app),
        config=sorted(store.config(app).items()),
        domains=sites.app_domains(settings, store, app),
        custom_domains=store.domains(app),
        https=certs.describe(settings, certs.status(settings, store, app.name)),
        builds=store.list_builds(app)[:20],
        collaborators=store.collaborators(app),
        previews=[{"branch": b, "app": p, "url": apps.info(settings, store, p)["url"]}
                  for b, p in store.previews(app)],
        preview_limit=store.preview_limit(app),
        may_manage=access.may_manage(context.actor(), app),
        charts=_charts(app),
        max_web=ps.MAX_WEB_PROCESSES,
        max_type=ps.MAX_TYPE_PROCESSES,
    )


def _charts(app: App) -> list[charts.Chart]:
    now = time.time()
    settings = context.settings()
    minutes = metrics.traffic(settings, sites.app_domains(settings, context.store(), app), now)
    memory = context.store().memory_samples(app, now - metrics.WINDOW_MINUTES * 60)
    return [
        charts.line_chart("Requests per minute", "req/min", [m.requests for m in minutes]),
        charts.line_chart("Latency, median", "ms", [m.p50_ms for m in minutes]),
        charts.line_chart("Latency, 95th percentile", "ms", [m.p95_ms for m in minutes]),
        charts.line_chart("Memory", "MiB", metrics.memory_per_minute(memory, now)),
    ]


def _here(name: str) -> str:
    return url_for("apps.show", name=name)


@bp.route("/apps/<name>/scale", methods=["POST"])
def scale(name: str) -> BaseResponse:
    counts: dict[str, int] = {}
    for key, value in request.form.items():
        if key.startswith("scale-"):
            kind = names.check_process_type(key.removeprefix("scale-"))
            if not names.NUMBER.fullmatch(value):
                raise UsageError(f"{kind}: give a number of processes, such as 2")
            counts[kind] = int(value)
    if not counts:
        raise UsageError("say how many processes of which type to run")
    output, emit = forms.collector()
    app = ps.scale(context.settings(), context.store(), context.actor(), name, counts, emit)
    return forms.done(f"Scaled {app.name}: {_scale_text(app)}.", output, _here(name))


@bp.route("/apps/<name>/restart", methods=["POST"])
def restart(name: str) -> BaseResponse:
    output, emit = forms.collector()
    ps.restart(context.settings(), context.store(), context.actor(), name, emit)
    return forms.done(f"Restarted {name}.", output, _here(name))


@bp.route("/apps/<name>/rollback", methods=["POST"])
def rollback(name: str) -> BaseResponse:
    text = forms.field("version", 16).removeprefix("v")
    if not names.NUMBER.fullmatch(text):
        raise UsageError("choose a release to roll back to, such as v3")
    output, emit = forms.collector()
    version = restart_module.rollback(context.settings(), context.store(), context.actor(),
                                      name, int(text), emit)
    return forms.done(f"Rolled {name} back to v{text}; v{version} is live.", output,
                      _here(name))


@bp.route("/apps/<name>/config", methods=["POST"])
def config_set(name: str) -> BaseResponse:
    key, value = forms.field("key", 200), forms.field("value", 64 * 1024)
    output, emit = forms.collector()
    version = restart_module.change_config(context.settings(), context.store(),
                                           context.actor(), name, {key: value}, [],
                                           restart=True, emit=emit)
    return forms.done(_released(f"Set {key}", version), output, _here(name))


@bp.route("/apps/<name>/config/unset", methods=["POST"])
def config_unset(name: str) -> BaseResponse:
    key = forms.field("key", 200)
    output, emit = forms.collector()
    version = restart_module.change_config(context.settings(), context.store(),
                                           context.actor(), name, {}, [key], restart=True,
                                           emit=emit)
    return forms.done(_released(f"Unset {key}", version), output, _here(name))


@bp.route("/apps/<name>/domains", methods=["POST"])
def domains_add(name: str) -> BaseResponse:
    return _change_domain(name, add=True)


@bp.route("/apps/<name>/domains/remove", methods=["POST"])
def domains_remove(name: str) -> BaseResponse:
    return _change_domain(name, add=False)


def _change_domain(name: str, *, add: bool) -> BaseResponse:
    domain = forms.field("domain", 253).strip().lower()
    output, emit = forms.collector()
    version = restart_module.change_domain(context.settings(), context.store(),
                                           context.actor(), name, domain, add=add, emit=emit)
    return forms.done(_released(f"{'Added' if add else 'Removed'} {domain}", version), output,
                      _here(name))


def _released(what: str, version: int | None) -> str:
    return f"{what}; v{version} is live." if version else f"{what}; the next deploy takes it."


@bp.route("/apps/<name>/access", methods=["POST"])
def access_add(name: str) -> BaseResponse:
    app, user = access.add_collaborator(context.store(), context.actor(), name,
                                        forms.field("user", 64).strip())
    return forms.done(f"{user.name} may now push to and manage the config of {app.name}.",
                      [], _here(name))


@bp.route("/apps/<name>/access/remove", methods=["POST"])
def access_remove(name: str) -> BaseResponse:
    app, user = access.remove_collaborator(context.store(), context.actor(), name,
                                           forms.field("user", 64))
    return forms.done(f"{user.name} may no longer use {app.name}.", [], _here(name))


@bp.route("/apps/<name>/destroy", methods=["POST"])
def destroy(name: str) -> BaseResponse:
    app = context.get_app(name, manage=True)
    if forms.field("confirm", 64) != app.name:
        raise UsageError(f"destroying {app.name} deletes its code, releases and data for "
                         "good; to go ahead, type its name in the box")
    kept = apps.destroy(context.settings(), context.store(), context.actor(), app.name,
                        app.name)
    flash(backups.destroyed_message(app.name, kept), "info")
    return redirect(url_for("apps.index"), code=303)


@bp.route("/apps/<name>/builds/<int:build_id>")
def build_output(name: str, build_id: int) -> str:
    app = context.get_app(name)
    found = [b for b in context.store().list_builds(app) if b.id == build_id]
    if not found:
        raise NotFound(f"{app.name} has no build {build_id}")
    try:
        with found[0].log_path.open("rb") as handle:
            text = handle.read(MAX_BUILD_OUTPUT).decode("utf-8", "replace")
    except FileNotFoundError:
        text = "(the output of this build is gone)"
    return render_template("apps/build.html", app=app, build=found[0],
                           lines=[context.shown(line) for line in text.splitlines()])

