"""`opus apps:create APP --from SOURCE`: a new app whose first deploy is a git source
(see opus_paas/git/sources.py), deployed the way a push to its deploy branch is, so its
app.json applies. If that first deploy fails, the app is removed again (it had nothing
else) and the command can simply be run again."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from pathlib import Path

from dulwich.refs import Ref
from dulwich.repo import Repo

from opus_paas import access, apps, locks, names, output
from opus_paas.access import Actor
from opus_paas.build.appjson import AppJsonError
from opus_paas.data import postgres
from opus_paas.errors import Conflict, OpusError, UsageError
from opus_paas.git import gitserver, sources
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.repos import branch_ref
from opus_paas.run import appdirs, appsetup, push
from opus_paas.settings import Settings
from opus_paas.store import App, Store

USAGE = "opus apps:create APP [--from SOURCE]"


def parse_args(args: list[str]) -> tuple[str, str | None]:
    """APP and SOURCE (None: an empty app) from the command's words."""
    if len(args) == 1:
        return args[0], None
    if len(args) == 2 and args[1].startswith("--from="):
        return args[0], args[1].removeprefix("--from=")
    if len(args) == 3 and args[1] == "--from":
        return args[0], args[2]
    raise UsageError(f"usage: {USAGE} (SOURCE: an https:// git URL; admins: a local path "
                     "or file:// URL)")


def create_from(settings: Settings, store: Store, actor: Actor, name: str, text: str,
                emit: Emit, resolver: sources.Resolver = sources.system_resolver,
                cancelled: threading.Event | None = None) -> App:
    """Create `name` from the source `text` and deploy it; the new app, live."""
    names.check_app_name(name)
    if not access.may_create(settings, actor):
        access.require_admin(actor, "create apps here")
    source = sources.parse(text)
    address = sources.check_allowed(source, admin=actor.is_admin, resolver=resolver)
    if store.get_app(name) is not None:
        raise Conflict(f"app {name} already exists; choose another name")
    work = settings.home / "imports"
    work.mkdir(mode=0o700, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    try:
        emit(output.step(f"Fetching {source.shown}"))
        clone = scratch / "source"
        sources.clone(settings.git_bin, source, address, clone,
                      max_bytes=settings.max_pack_bytes, timeout=settings.build_timeout,
                      cancelled=cancelled)
        _check_app_json(clone, name)
        with locks.app_lock(settings, name):
            if store.get_app(name) is not None:
                raise Conflict(f"app {name} already exists; choose another name")
            app = appdirs.create_app(settings, store, name, apps.owner_for(store, actor))
            try:
                gitserver.init_repo(settings, name, app.deploy_branch)
                repo_dir = AppPaths.of(settings, name).repo
                sha = sources.admit(settings.git_bin, clone, repo_dir, source,
                                    max_bytes=settings.max_pack_bytes,
                                    max_object_bytes=settings.max_object_bytes,
                                    timeout=settings.build_timeout)
                deployed = _deploy(settings, store, app, repo_dir, sha, emit, cancelled)
            except BaseException:
                if _forget(settings, store, name):
                    emit(output.alert(f"{name} was not kept; fix what is said above and run the "
                                      "command again"))
                raise
            deployed.finish(emit)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return store.get_app(name) or app


def _check_app_json(clone: Path, name: str) -> None:
    """Refuse, before the app exists, a source whose app.json is invalid or requires
    a value (apps:create takes none: create, config:set, then push)."""
    repo = Repo(str(clone))
    try:
        spec = appsetup.read(repo, repo.head())
    finally:
        repo.close()
    if spec is None:
        return
    missing = [v.name for v in spec.env
               if v.required and v.value is None and not v.generate_secret
               and v.name != "SECRET_KEY"]
    if missing:
        raise AppJsonError(
            f"app.json requires {', '.join(missing)}, and apps:create --from takes no "
            f"values; instead: `opus apps:create {name}`, `opus config:set {name} "
            f"{' '.join(m + '=…' for m in missing)}`, then push the source to it")


def _deploy(settings: Settings, store: Store, app: App, repo_dir: Path, sha: bytes,
            emit: Emit, cancelled: threading.Event | None) -> push.Deployed:
    repo = Repo(str(repo_dir))
    try:
        ref = branch_ref(app.deploy_branch)
        move = push.BranchMove(ref.decode(), "0" * 40,
                               lambda: bool(repo.refs.add_if_new(Ref(ref), sha)))  # type: ignore[arg-type]
        return push.deploy_commit(settings, store, app, repo, sha, emit, branch=move,
                                  cancelled=cancelled)
    finally:
        repo.close()


def _forget(settings: Settings, store: Store, name: str) -> bool:
    """Remove an app whose first deploy failed (nothing of it ever went live): its
    files, database and record. False if a release of it is live (then it stays)."""
    app = store.get_app(name)
    if app is None or app.live_version is not None:
        return False
    with contextlib.suppress(OpusError):
        if store.app_database(app) is not None:
            postgres.drop(settings, store, app)
    appdirs.remove_files(settings, name)
    store.delete_app(app)
    return True
