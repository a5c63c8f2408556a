"""Releases: the runtime environment of a slug, the release step, the `current` symlink."""

from __future__ import annotations

import json
import keyword
import os
import re
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

from opus_paas import names, output, privileged
from opus_paas.errors import BuildFailed, ServiceError
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.settings import Settings
from opus_paas.store import App

VERSION_DIR = re.compile(r"v([0-9]{1,9})")
# A directory inside a slug, as the buildpack records it (never absolute, never `..`).
SAFE_APP_ROOT = re.compile(r"\.|[A-Za-z0-9_][A-Za-z0-9_-]*(?:/[A-Za-z0-9_][A-Za-z0-9_-]*)*")
BUILD_JSON = ".opus/build.json"


def read_build_info(slug: Path) -> dict[str, object] | None:
    """The slug's ``.opus/build.json``, checked: None when it is not there. The run user
    wrote it, so it is read without following links, size-capped, and every field Opus
    uses is checked before it is trusted."""
    raw = privileged.read_run_user_file(slug, BUILD_JSON, 64 * 1024)
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise BuildFailed("the buildpack left no valid .opus/build.json; push to build again")
    types = info.get("process_types", {})
    valid = (
        isinstance(types, dict)
        and all(isinstance(k, str) and names.PROCESS_TYPE.fullmatch(k) and isinstance(v, str)
                for k, v in types.items())
        and SAFE_APP_ROOT.fullmatch(str(info.get("app_root", ".")))
        and all(info.get(k) is None or isinstance(info[k], str)
                for k in ("web_command", "wsgi_module", "wsgi_callable", "manage_py",
                          "settings_module", "default_settings_module", "static_root",
                          "framework"))
    )
    if not valid:
        raise BuildFailed("the buildpack's .opus/build.json has fields Opus cannot use; "
                          "push to build again")
    return info


def process_types(info: Mapping[str, object]) -> dict[str, str]:
    """The Procfile's types as the buildpack recorded them (checked by read_build_info)."""
    types = info.get("process_types") or {}
    return {str(k): str(v) for k, v in types.items()} if isinstance(types, dict) else {}


def live_build_info(settings: Settings, app: App) -> dict[str, object]:
    """build.json of the build the app serves now ({} when it has none)."""
    if app.live_version is None:
        return {}
    slug = AppPaths.of(settings, app.name).slug(app.live_slug or app.live_version)
    return read_build_info(slug) or {}


def app_root(slug: Path, info: Mapping[str, object]) -> Path:
    """Where the app's modules are: the buildpack's app_root, else manage.py's directory."""
    if info.get("app_root"):
        return slug / str(info["app_root"])
    manage_py = info.get("manage_py")
    return slug / Path(str(manage_py)).parent if manage_py else slug


SETTINGS_VAR = "DJANGO_SETTINGS_MODULE"
# A dotted name of identifiers (ASCII): nothing else can name a module of the release.
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", re.ASCII)


def settings_module(slug: Path, info: Mapping[str, object], config: Mapping[str, str],
                    app: str = "APP") -> str:
    """The Django settings module the release's processes load (under Opus's overlay):
    the DJANGO_SETTINGS_MODULE config var's when set, as on Heroku, once it is checked to
    be a plain file of the release (``a/b.py`` or ``a/b/__init__.py`` beside manage.py,
    no link followed); else the one manage.py names. BuildFailed says what to do."""
    configured = config.get(SETTINGS_VAR, "")
    if not configured:
        if "default_settings_module" in info:      # (builds before it: settings_module)
            default = info.get("default_settings_module")
        else:
            default = info.get("settings_module")
        if default:
            return str(default)
        raise BuildFailed(f"manage.py names no settings module this release has; set one: "
                          f"opus config:set {app} {SETTINGS_VAR}=mysite.settings")
    hint = (f"set {SETTINGS_VAR} to a settings module of the app's repository "
            f"(opus config:set {app} {SETTINGS_VAR}=mysite.settings.production), "
            f"or unset it (opus config:unset {app} {SETTINGS_VAR})")
    shown = configured if len(configured) <= 80 else configured[:77] + "..."
    if not MODULE_NAME.fullmatch(configured) or \
            any(keyword.iskeyword(part) for part in configured.split(".")):
        raise BuildFailed(f"the config var {SETTINGS_VAR} is not a Python module name "
                          f"({shown!r}); {hint}")
    root = app_root(slug, info).relative_to(slug)
    path = configured.replace(".", "/")
    candidates = [root / f"{path}.py", root / path / "__init__.py"]
    if not any(privileged.is_run_user_file(slug, str(c)) for c in candidates):
        shown_path = shown.replace(".", "/")
        raise BuildFailed(f"the config var {SETTINGS_VAR} names {shown}, which this "
                          f"release does not have as a plain file ({shown_path}.py or "
                          f"{shown_path}/__init__.py beside manage.py, no link); {hint} (with "
                          "--no-restart if only your next push has it); the running "
                          "release is unchanged")
    return configured


def runtime_env(settings: Settings, app: App, slug: Path, config: Mapping[str, str],
                info: Mapping[str, object], domains: list[str]) -> dict[str, str]:
    """The environment every process of this release runs with.

    Config vars come first; Opus's own variables (which point the settings
    overlay at the app's data, static files and host names) win.
    """
    paths = AppPaths.of(settings, app.name)
    env = dict(config)
    venv = slug / ".opus" / "venv"
    env.update({
        # As an activated virtualenv has them (a uwsgi.ini's virtualenv=$(VIRTUAL_ENV)).
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(paths.home),
        "TMPDIR": str(paths.tmp),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "OPUS_APP": app.name,
        "OPUS_APP_ROOT": str(app_root(slug, info)),
        "OPUS_ALLOWED_HOSTS": ",".join(domains),
        "OPUS_DATA_DIR": str(paths.data),
    })
    if info.get("static_root"):
        env["OPUS_STATIC_ROOT"] = str(info["static_root"])
    if info.get("framework") == "django":
        env["DJANGO_SETTINGS_MODULE"] = "opus_runtime.settings"
        env["OPUS_USER_SETTINGS_MODULE"] = settings_module(slug, info, config, app.name)
    if info.get("wsgi_module"):
        env["OPUS_WSGI_MODULE"] = str(info["wsgi_module"])
        env["OPUS_WSGI_CALLABLE"] = str(info.get("wsgi_callable") or "application")
    return env


def write_env_file(settings: Settings, app: str, version: int, env: Mapping[str, str]) -> None:
    """Write the snapshot the WSGI entry loads (no quoting through supervisor)."""
    path = AppPaths.of(settings, app).env_file(version)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(dict(env), out, indent=1, sort_keys=True)
    os.replace(tmp, path)
    privileged.hand_over(settings, app)


def run_release_command(settings: Settings, app: str, slug: Path, command: str,
                        env: Mapping[str, str], emit: Emit,
                        cancelled: threading.Event | None = None) -> None:
    """Run the release phase (e.g. migrate) as the app's user; failure rejects the push.
    The Procfile line is shell syntax, as on Heroku: bash runs it (pipes, `&&`, `$VAR`)."""
    argv = ["/bin/bash", "-c", command]
    emit(output.step(f"Running release command: {command}"))
    try:
        for line in privileged.stream(settings, app, argv, cwd=slug, env=env,
                                      timeout=settings.build_timeout, cancelled=cancelled):
            emit(output.detail(line))
    except ServiceError as exc:
        raise BuildFailed(f"the release command was stopped: {exc.message}") from None
    except subprocess.CalledProcessError as exc:
        code = exc.returncode
        how = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
        raise BuildFailed(f"the release command failed ({how}); fix it, or change "
                          "`release:` in your Procfile") from None
    except OSError as exc:
        raise BuildFailed(f"the release command could not start ({exc.strerror}); fix "
                          "`release:` in your Procfile") from None


def copy_static(settings: Settings, app: str, version: int, emit: Emit) -> None:
    """Copy the release's collected static files for the front (secureops: a copy the
    app cannot change; links and special files are skipped, and said)."""
    emit(output.step("Copying static files for the front"))
    try:
        notes = privileged.copy_static(settings, app, version, live=False)
    except ServiceError as exc:
        raise BuildFailed(f"the static files could not be copied for the front: "
                          f"{exc.message}") from None
    for note in notes:
        emit(output.alert(note) if note.startswith("skipped") else output.detail(note))


def point_current(settings: Settings, app: str, version: int) -> None:
    """Swap apps/<app>/current to releases/v<version> atomically (rename(2)), and the
    front's static files to that release's copy (made now if it has none yet)."""
    base = AppPaths.of(settings, app).dir
    tmp = base / ".current.new"
    tmp.unlink(missing_ok=True)
    os.symlink(Path("releases") / f"v{version}", tmp)
    os.replace(tmp, base / "current")
    privileged.copy_static(settings, app, version, live=True)


def static_pointed(settings: Settings, app: str) -> str | None:
    """The release whose static files the front serves ("v3"), None if none."""
    try:
        return os.readlink(AppPaths.of(settings, app).static / "current")
    except OSError:
        return None


def prune(settings: Settings, app: str, keep_versions: set[int], keep: int) -> list[int]:
    """Delete old slugs beyond the newest `keep`, never one in `keep_versions`."""
    releases = AppPaths.of(settings, app).releases
    names = [p.name for p in releases.iterdir()] if releases.is_dir() else []
    versions = sorted((int(m.group(1)) for m in map(VERSION_DIR.fullmatch, names) if m),
                      reverse=True)
    removed = []
    for version in versions[keep:]:
        if version not in keep_versions:
            privileged.remove_release(settings, app, version)
            removed.append(version)
    return removed
