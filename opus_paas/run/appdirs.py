"""An app's record, directories and Unix user, made and removed together: what creating
and destroying an app do underneath (opus_paas/apps.py, previews, a first push).
No authorization here: the callers have decided."""

from __future__ import annotations

import secrets
import shutil
import time

from opus_paas import privileged
from opus_paas.errors import ServiceError, UsageError
from opus_paas.layout import AppPaths
from opus_paas.settings import Settings
from opus_paas.store import App, Store, User

USER_DELETE_WAIT = 10.0   # seconds for an app's last processes to go


def new_app_config() -> dict[str, str]:
    """Config every app starts with: a SECRET_KEY generated once and kept."""
    return {"SECRET_KEY": secrets.token_urlsafe(50)}


def ensure_app_dirs(settings: Settings, app: str) -> None:
    """apps/<app>, its releases/ and env/ belong to Opus, so app code can never swap an
    entry that Opus later works on; the app's user (made here if missing) gets its own
    corners, handed over by secureops (each request through sudo costs about 0.1 s
    in system mode: only when something was made)."""
    paths = AppPaths.of(settings, app)
    base = paths.dir
    # Traversed (by the app's user, to its corners), never listed by others.
    created = [privileged.make_dir(base, 0o711, own=True)]
    for name in ("releases", "env", "build-env"):
        created.append(privileged.make_dir(base / name, 0o711, own=True))
    for path in (paths.run, paths.cache, paths.home, paths.data, paths.tmp):
        created.append(privileged.make_dir(path, 0o700, own=False))
    logs = paths.build_logs      # Opus's alone: builds print what they like
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    logs.chmod(0o700)
    if any(created):
        privileged.create_app_user(settings, app)
        privileged.hand_over(settings, app)


# System mode: each app's user is opus-<app>, and a Unix user name has at most 32
# characters.
MAX_SYSTEM_APP_NAME = 27


def create_app(settings: Settings, store: Store, name: str, owner: User) -> App:
    if settings.system and len(name) > MAX_SYSTEM_APP_NAME:
        raise UsageError(f"app names here have at most {MAX_SYSTEM_APP_NAME} characters (each "
                         f"app gets a Unix user, opus-<app>); choose a shorter name than {name}")
    app = store.create_app(name, owner, new_app_config())
    try:
        ensure_app_dirs(settings, name)
    except BaseException:
        store.delete_app(app)      # no record without its user and directories
        raise
    return app


def remove_files(settings: Settings, app: str) -> None:
    """Everything of an app's but its record: its directory, logs and supervisor
    programs (through secureops: its user owns much of it), its repository and build
    logs, and last its user (once nothing of the app is left)."""
    privileged.remove_app(settings, app)
    paths = AppPaths.of(settings, app)
    for path in (paths.repo, paths.build_logs):
        if path.exists():
            shutil.rmtree(path)
    # Its processes were just stopped; the last of them may take a moment to go.
    deadline = time.monotonic() + USER_DELETE_WAIT
    while True:
        try:
            privileged.delete_app_user(settings, app)
            return
        except ServiceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
