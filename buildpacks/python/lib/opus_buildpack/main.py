"""The three buildpack entry points; ``bin/*`` call these and exit with their result."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from opus_buildpack import django, packages
from opus_buildpack.buildinfo import BuildInfo, read_build_info, render_release, write_build_info
from opus_buildpack.detect import is_python_app, not_detected_message, root_listing
from opus_buildpack.envdir import base_environment, flag_set, read_env_dir
from opus_buildpack.errors import BuildError
from opus_buildpack.output import Output
from opus_buildpack.python_version import choose_python, interpreter_version

NOT_MINE = 100
USAGE_ERROR = 2


def _usage(out: Output, usage: str) -> int:
    out.alert(f"Usage: {usage}")
    return USAGE_ERROR


def detect_main(argv: Sequence[str], out: Output | None = None) -> int:
    """Exit 0 and print ``Python`` for a Python app, else exit 100 saying how to fix it."""
    out = out or Output()
    if len(argv) != 1:
        return _usage(out, "bin/detect <build-dir>")
    listing = root_listing(Path(argv[0]))
    if is_python_app(listing):
        out.lines(["Python"])
        return 0
    out.alert(*not_detected_message(listing))
    return NOT_MINE


def release_main(argv: Sequence[str], out: Output | None = None) -> int:
    """Print the release YAML for a compiled build dir."""
    out = out or Output()
    if len(argv) != 1:
        return _usage(out, "bin/release <build-dir>")
    try:
        text = render_release(read_build_info(Path(argv[0])))
    except BuildError as error:
        out.alert(error.message, error.hints)
        return error.exit_code
    out.lines(text.splitlines())
    return 0


def compile_main(
    argv: Sequence[str], out: Output | None = None, environ: Mapping[str, str] = os.environ
) -> int:
    """Build the app in place; on a user-fixable failure print why and exit 1."""
    out = out or Output()
    if len(argv) not in (2, 3):
        return _usage(out, "bin/compile <build-dir> <cache-dir> [<env-dir>]")
    build = Path(argv[0]).resolve()
    cache = Path(argv[1]).resolve()
    env_dir = Path(argv[2]) if len(argv) == 3 else None
    if not build.is_dir():
        return _usage(out, "bin/compile <build-dir> <cache-dir> [<env-dir>] (no such build dir)")
    try:
        compile_app(build, cache, env_dir, out, environ)
    except BuildError as error:
        out.alert(error.message, error.hints)
        return error.exit_code
    return 0


def compile_app(
    build: Path, cache: Path, env_dir: Path | None, out: Output, environ: Mapping[str, str]
) -> BuildInfo:
    """The compile steps in order; raises BuildError for anything the user must fix."""
    out.step("Python app detected")
    config = read_env_dir(env_dir)
    if config.ignored:
        out.alert(f"Ignoring config vars during the build: {', '.join(config.ignored)}",
                  ["The platform sets these (or they are not valid names); unset them."])
    if not (build / "requirements.txt").is_file():
        raise BuildError(
            "No requirements.txt at the root of the repository.",
            ["Add one listing your dependencies, e.g. a line Django>=5.2,<5.3,",
             "then commit it and push again."],
        )
    app = find_django_app(build, out)
    base = base_environment(environ)
    python = choose_python(environ)
    uv = packages.find_uv()
    opus_dir = build / ".opus"
    packages.remove_path(opus_dir)  # never trust a .opus that was pushed
    opus_dir.mkdir()
    cache.mkdir(parents=True, exist_ok=True)
    uv_env = packages.uv_environment(base, config.env, cache)

    out.step(f"Creating virtualenv with {python}")
    venv_python = packages.create_venv(uv, python, opus_dir / "venv", build, out, uv_env)
    version = interpreter_version(venv_python)

    out.step("Installing requirements with uv")
    elapsed = packages.install_requirements(uv, venv_python, build, out, uv_env)
    out.detail(f"Installed dependencies in {elapsed:.1f} s")
    out.step(f"Installing {packages.MOD_WSGI_REQUIREMENT}")
    elapsed = packages.install_mod_wsgi(uv, venv_python, build, out, uv_env)
    out.detail(f"Installed mod_wsgi in {elapsed:.1f} s")
    packages.install_runtime(venv_python)

    info = BuildInfo(python=str(venv_python), python_version=version)
    if app is None:
        out.step("No manage.py found: skipping the Django steps")
    else:
        info = _django_steps(build, app, venv_python, info, config.env, base, out)
    write_build_info(build, info)
    return info


def find_django_app(build: Path, out: Output) -> django.DjangoApp | None:
    """Read manage.py, settings and WSGI module before anything is installed, to fail fast."""
    manage_py = django.find_manage_py(build)
    if manage_py is None:
        return None
    relative = manage_py.relative_to(build).as_posix()
    settings_module = django.parse_settings_module(
        manage_py.read_text(encoding="utf-8", errors="replace")
    )
    if settings_module is None:
        raise BuildError(
            f"Could not find DJANGO_SETTINGS_MODULE in {relative}.",
            ["Opus reads it from the line Django generates in manage.py:",
             '    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")',
             "Restore that line with your settings module."],
        )
    wsgi_module = django.find_wsgi_module(manage_py.parent, settings_module)
    out.detail(f"Django app: {relative}, settings {settings_module}")
    if wsgi_module is None:
        out.alert(f"No wsgi.py found beside {settings_module}; the app cannot be served yet.",
                  ["Add a wsgi.py next to your settings (django-admin startproject makes one)."])
    return django.DjangoApp(manage_py, relative, settings_module, wsgi_module)


def _django_steps(
    build: Path, app: django.DjangoApp, venv_python: Path, info: BuildInfo,
    app_env: Mapping[str, str], base: Mapping[str, str], out: Output,
) -> BuildInfo:
    static_root: str | None = None
    if flag_set(app_env, "DISABLE_COLLECTSTATIC"):
        out.step("Skipping collectstatic: DISABLE_COLLECTSTATIC is set")
    else:
        out.step("Running python manage.py collectstatic --noinput")
        root = build / ".opus" / "static"
        started = time.monotonic()
        django.collectstatic(
            venv_python, app.manage_py, out, app_env=app_env, base=base,
            settings_module=app.settings_module, static_root=root,
            debug=flag_set(app_env, "DEBUG_COLLECTSTATIC"),
        )
        out.detail(f"Collected static files in {time.monotonic() - started:.1f} s")
        static_root = str(root)
    return replace(
        info, framework="django", manage_py=app.relative, settings_module=app.settings_module,
        wsgi_module=app.wsgi_module, static_root=static_root,
    )
