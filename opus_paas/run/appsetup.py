"""app.json on an app's first deploy: config vars, add-ons, formation and the postdeploy
script, applied from inside the push (which holds the app's deploy lock: nothing here
takes it).

Only a deploy of an app with no release yet reads app.json. Config vars already set win
over app.json; a required variable without a value refuses the push before anything is
built, saying which `opus config:set` to run.
"""

from __future__ import annotations

import dataclasses
import secrets
import stat
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from dulwich.objects import Commit, Tree
from dulwich.repo import Repo

from opus_paas import output, privileged
from opus_paas.build import appjson
from opus_paas.build.appjson import AppJson, AppJsonError
from opus_paas.errors import BuildFailed, OpusError
from opus_paas.output import Emit
from opus_paas.settings import Settings
from opus_paas.store import App, Store


@dataclasses.dataclass(frozen=True)
class Provider:
    """How Opus provides one kind of add-on: `check` raises (saying what to do) when it
    cannot here, before anything is changed; `setup` makes it for the app and returns
    the config vars it brings (an add-on the app has already returns {})."""

    check: Callable[[Settings, Store, App], None]
    setup: Callable[[Settings, Store, App, Emit], dict[str, str]]


def _postgres_check(settings: Settings, store: Store, app: App) -> None:
    from opus_paas.data import server

    if store.addon(server.ADDON) is None:
        raise BuildFailed(f"app.json asks for heroku-postgresql and this host has no Postgres "
                          "yet: an admin enables it on the Opus host with `opus addons:enable "
                          f"postgres` (or `opus config:set {app.name} DATABASE_URL=…` names a "
                          "database of yours); then push again")


def _postgres_setup(settings: Settings, store: Store, app: App,
                    emit: Emit) -> dict[str, str]:
    from opus_paas.data import postgres

    if store.app_database(app) is not None:
        return {}
    if store.config(app).get("DATABASE_URL"):
        emit(output.detail("DATABASE_URL is set already; no Postgres database made"))
        return {}
    database = postgres.create(settings, store, app)
    emit(output.detail(f"Created the Postgres database {database.name} (DATABASE_URL)"))
    return {"DATABASE_URL": database.url}


def _redis_check(settings: Settings, store: Store, app: App) -> None:
    from opus_paas.data import redis

    if store.addon(redis.ADDON) is None:
        raise BuildFailed(f"app.json asks for heroku-redis and this host has no Redis yet: "
                          "an admin enables it on the Opus host with `opus addons:enable "
                          f"redis` (or `opus config:set {app.name} REDIS_URL=…` names a "
                          "server of yours); then push again")


def _redis_setup(settings: Settings, store: Store, app: App, emit: Emit) -> dict[str, str]:
    from opus_paas.data import redis

    if store.app_redis(app) is not None:
        return {}
    if store.config(app).get("REDIS_URL"):
        emit(output.detail("REDIS_URL is set already; no Redis server made"))
        return {}
    server = redis.create(settings, store, app)
    emit(output.detail(f"Started the app's Redis ({redis.program_name(app.name)}, REDIS_URL)"))
    return {"REDIS_URL": server.url}


# app.json's add-ons (appjson.ADDON_SERVICES names them) → how Opus provides each.
PROVIDERS: dict[str, Provider] = {
    appjson.POSTGRES: Provider(_postgres_check, _postgres_setup),
    appjson.REDIS: Provider(_redis_check, _redis_setup),
}


def is_first_deploy(store: Store, app: App) -> bool:
    """No release was ever recorded (a pending one that failed is forgotten)."""
    return app.live_version is None and not store.list_releases(app)


def read(repo: Repo, sha: bytes) -> AppJson | None:
    """The commit's app.json (at the top of its tree), or None when it has none."""
    commit = repo[sha]
    assert isinstance(commit, Commit)
    tree = repo[commit.tree]
    assert isinstance(tree, Tree)
    name = appjson.FILE.encode()
    if name not in tree:
        return None
    mode, blob_sha = tree[name]
    if not stat.S_ISREG(mode):
        raise AppJsonError(f"{appjson.FILE} is a link or a directory in this commit; "
                           "make it a plain file (or remove it)")
    return appjson.parse(repo[blob_sha].as_raw_string())


def before_build(settings: Settings, store: Store, app: App, spec: AppJson,
                 emit: Emit) -> None:
    """Set app.json's config vars and make its add-ons, unless a required variable has
    no value (then nothing changes and the push is refused)."""
    emit(output.step("Setting up from app.json (the app's first deploy)"))
    for note in spec.notes:
        emit(output.detail(note))
    config = store.config(app)
    missing = [v for v in spec.env if v.name not in config and v.value is None
               and not v.generate_secret and v.required]
    if missing:
        for var in missing:
            emit(output.detail(f"{var.name} is required" +
                               (f": {var.description}" if var.description else "")))
        wanted = " ".join(f"{v.name}=…" for v in missing)
        raise BuildFailed(f"app.json requires {', '.join(v.name for v in missing)}, which "
                          f"{'has' if len(missing) == 1 else 'have'} no value: run `opus "
                          f"config:set {app.name} {wanted}`, then push again (nothing is "
                          "lost)")
    for addon in spec.addons:
        PROVIDERS[addon.provider].check(settings, store, app)
    updates: dict[str, str] = {}
    for var in spec.env:
        if var.name in config:
            emit(output.detail(f"{var.name} is set already; kept"))
        elif var.generate_secret:
            updates[var.name] = secrets.token_urlsafe(50)
            emit(output.detail(f"{var.name}: generated a secret"))
        elif var.value is not None:
            updates[var.name] = var.value
            emit(output.detail(f"{var.name}: set from app.json"))
    if updates:
        store.replace_config(app, {**store.config(app), **updates})
    for addon in spec.addons:
        added = PROVIDERS[addon.provider].setup(settings, store, app, emit)
        if added:
            store.replace_config(app, {**store.config(app), **added})


def apply_formation(store: Store, app: App, spec: AppJson, types: Mapping[str, str],
                    own_web_command: bool, emit: Emit) -> App:
    """Record app.json's scale before the first release starts, so it starts at that
    scale (no second switch); returns the app as recorded now."""
    others: dict[str, int] = {}
    for kind, quantity in spec.formation:
        if kind == "web":
            if quantity != 1 and own_web_command:
                emit(output.alert(f"formation web={quantity} left out: web runs the Procfile's "
                                  "command as written (scale it with that server's own option)"))
                continue
            store.set_scale(app, quantity)
        elif kind not in types:
            emit(output.alert(f"formation {kind}={quantity} left out: the Procfile has no {kind}"))
            continue
        else:
            others[kind] = quantity
        emit(output.detail(f"Scale {kind}={quantity} (app.json's formation)"))
    if others:
        store.set_formation(app, others)
    return store.get_app(app.name) or app


def run_postdeploy(settings: Settings, app: App, slug: Path, command: str,
                   env: Mapping[str, str], emit: Emit,
                   cancelled: threading.Event | None = None) -> bool:
    """Run app.json's postdeploy script once, as the app's user, in the live release;
    its failure is reported, and the release stays live. True if it succeeded."""
    emit(output.step(f"Running app.json's postdeploy script: {command}"))
    try:
        for line in privileged.stream(settings, app.name, ["/bin/bash", "-c", command],
                                      cwd=slug, env=env, timeout=settings.build_timeout,
                                      cancelled=cancelled):
            emit(output.detail(line))
    except subprocess.CalledProcessError as exc:
        code = exc.returncode
        how = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
        why = f"failed ({how})"
    except OpusError as exc:
        why = f"was stopped: {exc.message}"
    except OSError as exc:
        why = f"could not start ({exc.strerror})"
    else:
        return True
    emit(output.alert(f"The postdeploy script {why}. The release stays live and the script is "
                      f"not run again; run it by hand: opus run {app.name} -- bash -c '…'"))
    return False
