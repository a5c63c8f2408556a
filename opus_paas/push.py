"""What happens when a push reaches an app's deploy branch: build, release, deploy.

Runs inside the git server's update hook, before the ref moves: any failure
rejects the push and leaves the live release untouched.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from dulwich.repo import Repo

from opus_paas import build, deploy, privileged, procfile, release
from opus_paas.build import Emit
from opus_paas.errors import OpusError
from opus_paas.settings import Settings
from opus_paas.store import App, Store, User
from opus_paas.supervisor import Supervisor


def new_app_config() -> dict[str, str]:
    """Config every app starts with: a SECRET_KEY generated once and kept."""
    return {"SECRET_KEY": secrets.token_urlsafe(50)}


def ensure_app_dirs(settings: Settings, app: str) -> None:
    base = release.app_dir(settings, app)
    for path in (base, base / "releases", base / "run"):
        privileged.make_private_dir(settings, path, 0o755)
    privileged.make_private_dir(settings, release.data_dir(settings, app), 0o700)
    (settings.logs_dir / app).mkdir(parents=True, exist_ok=True)


def create_app(settings: Settings, store: Store, name: str, owner: User) -> App:
    app = store.create_app(name, owner, new_app_config())
    ensure_app_dirs(settings, name)
    return app


def deploy_commit(settings: Settings, store: Store, app: App, repo: Repo, sha: bytes,
                  emit: Emit) -> int:
    """Build `sha` and bring it live; return the new release version."""
    started = time.monotonic()
    ensure_app_dirs(settings, app.name)
    version = store.next_release_version(app)
    slug = release.slug_dir(settings, app.name, version)
    shutil.rmtree(slug, ignore_errors=True)   # left by a build that was cut off
    log_path = settings.logs_dir / app.name / f"build-v{version}.log"
    build_id = store.start_build(app, sha.decode(), log_path)
    ok = live = False
    with log_path.open("w", encoding="utf-8") as log:
        emit_and_log = _tee(emit, log.write)
        try:
            emit_and_log(f"-----> Building {app.name} from {sha.decode()[:7]}")
            for warning in build.export_tree(repo, sha, slug):
                emit_and_log(f" !     {warning}")
            privileged.hand_over(settings, slug)
            config = store.config(app)
            result = build.run_buildpack(settings, slug, release.app_dir(settings, app.name),
                                         config, emit_and_log)
            procfile_path = slug / "Procfile"
            types = dict(result.process_types)
            if procfile_path.is_file() and not procfile_path.is_symlink():
                types.update(procfile.parse(procfile_path.read_text()))
            env = release.runtime_env(settings, app, slug, config, result.info,
                                      [settings.app_domain(app.name)])
            release.write_env_file(settings, slug, env)
            if types.get("release"):
                release.run_release_command(settings, slug, types["release"], env, emit_and_log)
            deploy.deploy(settings, store, Supervisor(settings), app, version, emit_and_log)
            live = True
            store.add_release(app, version, sha.decode(), f"Deploy {sha.decode()[:7]}")
            emit_and_log(f"-----> Released v{version} in {time.monotonic() - started:.1f} s")
            emit_and_log(f"       http://{settings.app_domain(app.name)}:{settings.http_port}/")
            ok = True
        except OpusError as exc:
            emit_and_log("")
            emit_and_log(f" !     {exc.message}")
            emit_and_log("")
            raise
        finally:
            store.finish_build(build_id, ok)
            if not live:     # a live slug is never removed, whatever failed after
                shutil.rmtree(slug, ignore_errors=True)
    return version


def _tee(emit: Emit, write: Callable[[str], object]) -> Emit:
    def both(line: str) -> None:
        write(line + "\n")
        emit(line)
    return both


def repo_path(settings: Settings, app: str) -> Path:
    return settings.repos_dir / f"{app}.git"
