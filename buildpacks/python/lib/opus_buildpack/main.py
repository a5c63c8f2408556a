"""The three buildpack entry points; ``bin/*`` call these and exit with their result."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from runtime.opus_runtime.overlay import OVERRIDE_NAMES

from opus_buildpack import django, envs, hooks, managers, packages, procfile, python_version
from opus_buildpack.buildinfo import BuildInfo, read_build_info, render_release, write_build_info
from opus_buildpack.detect import is_python_app, not_detected_message, root_listing
from opus_buildpack.envdir import base_environment, flag_set, read_env_dir
from opus_buildpack.errors import BuildError
from opus_buildpack.output import Output

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


def interpreter_main(
    argv: Sequence[str], out: Output | None = None, environ: Mapping[str, str] = os.environ
) -> int:
    """Print, as JSON, which interpreter a build of the build dir would use: what the app
    asks for, the one chosen (null when none installed fits) and every one installed.
    Opus runs this before compile to fetch a missing version; a request that cannot be
    read is only named here (``problem``): compile says what to do about it."""
    out = out or Output()
    if len(argv) > 1:
        return _usage(out, "bin/interpreter [<build-dir>]")
    installed = python_version.installed_interpreters(environ)
    report: dict[str, object] = {
        "request": None, "problem": None, "chosen": None,
        "installed": [_interpreter_json(i) for i in installed],
        "mod_wsgi": packages.MOD_WSGI_REQUIREMENT,
    }
    try:
        request = None
        if argv:
            build = Path(argv[0])
            listing = root_listing(build)
            files = read_root_files(build, VERSION_SOURCES)
            request = python_version.requested_version(files, listing)
        if request is not None:
            report["request"] = {"version": request.text, "source": request.source}
        chosen = python_version.choose(
            request, installed, python_version.default_interpreter(environ, installed))
        report["chosen"] = _interpreter_json(chosen)
    except BuildError as error:
        report["problem"] = error.message
    out.lines([json.dumps(report)])
    return 0


VERSION_SOURCES = (".python-version", "runtime.txt", "Pipfile.lock")


def _interpreter_json(interpreter: python_version.Interpreter) -> dict[str, object]:
    return {"path": str(interpreter.path), "version": interpreter.text,
            "managed": interpreter.managed, "wheelhouse": interpreter.wheelhouse_key}


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
    listing = root_listing(build)
    venv_dir = managers.committed_venv(
        listing, {e.rstrip("/"): (build / e / "pyvenv.cfg").exists() for e in listing
                  if e.endswith("/")})
    if venv_dir:
        where = "the repository root" if venv_dir == "." else f"{venv_dir}/"
        raise BuildError(
            f"A virtual environment is committed at {where}.",
            ["Opus makes the environment itself. Remove it from git and ignore it:",
             f"  git rm -r --cached {venv_dir} && echo '{venv_dir}/' >> .gitignore",
             "then commit and push again."])
    files = read_root_files(build, TEXT_FILES)
    request = python_version.requested_version(files, listing)
    manager = managers.choose_manager(listing, files)
    types = procfile.parse(files["Procfile"]) if "Procfile" in files else {}
    app = find_django_app(build, out, config.env)
    base = base_environment(environ)
    installed = python_version.installed_interpreters(environ)
    python = python_version.choose(
        request, installed, python_version.default_interpreter(environ, installed))
    _say_python(out, python, request)
    web = choose_web(build, app, types, out, config.env)

    app_env = {**config.env, **base}
    hooks.run_hook(build, "pre_compile", out, app_env)
    uv = packages.find_uv()
    opus_dir = build / ".opus"
    packages.remove_path(opus_dir)  # never trust a .opus that was pushed
    opus_dir.mkdir()
    cache.mkdir(parents=True, exist_ok=True)
    package_cache = Path(environ.get("OPUS_PACKAGE_CACHE") or cache)
    uv_env = packages.uv_environment(base, config.env, package_cache)
    store = envs.EnvStore(cache)
    venv_python, key, spec = _environment(build, store, manager, python, uv, uv_env,
                                          config.env, out, wheelhouse_dir(environ, python))

    info = BuildInfo(python=str(venv_python), python_version=python.text,
                     interpreter=str(python.path), app_root=web.app_root,
                     wsgi_module=web.module, wsgi_callable=web.callable,
                     web_command=web.command, process_types=types,
                     auto_migrate=not flag_off(config.env, "OPUS_AUTO_MIGRATE"))
    if app is None:
        out.step("No manage.py found: skipping the Django steps")
    else:
        info = _django_steps(build, app, venv_python, info, config.env, base, out)
    hooks.run_hook(build, "post_compile", out,
                   {**app_env, "VIRTUAL_ENV": str(venv_python.parent.parent),
                    "PATH": f"{venv_python.parent}:{base.get('PATH', '')}"})
    write_build_info(build, info)
    # Only a build that got this far counts as a use: environments of failed builds go
    # at the next prune, and never push out one a release still runs on.
    store.record_use(key, spec)
    return info


TEXT_FILES = (".python-version", "runtime.txt", "Pipfile.lock", "pyproject.toml", "Procfile")
MAX_TEXT = 1 << 20


def read_root_files(build: Path, names: Sequence[str]) -> dict[str, str]:
    """The text of each of `names` at the build's root that is a file. A link is followed
    only while it stays inside the build dir (Opus reads these before the tree is the
    app's: a chain of links must not show it another app's files or the host's)."""
    top = Path(os.path.realpath(build))
    found = {}
    for name in names:
        path = build / name
        if not os.path.lexists(path):
            continue
        real = Path(os.path.realpath(path))
        if real != top and top not in real.parents:
            raise BuildError(f"{name} is a link that leads outside the app's repository.",
                             [f"Replace {name} with the file itself (git rm {name}, add "
                              "the file, push again)."])
        if real.is_file():
            found[name] = read_small(real)
    return found


def read_small(path: Path) -> str:
    """A root file's text (at most 1 MiB: these are small by nature)."""
    with path.open("rb") as handle:
        data = handle.read(MAX_TEXT + 1)
    if len(data) > MAX_TEXT:
        raise BuildError(f"{path.name} is larger than 1 MiB.", [f"Shrink {path.name}."])
    return data.decode("utf-8", "replace")


def flag_off(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("0", "false", "no", "off")


def _say_python(out: Output, python: python_version.Interpreter,
                request: python_version.Request | None) -> None:
    if request is None:
        out.step(f"Using Python {python.text}, the newest on this host")
        out.detail(f"To choose one, commit a .python-version holding e.g. "
                   f"{python.version[0]}.{python.version[1]}")
        return
    out.step(f"Using Python {python.text} ({python.path}), as {request.source} asks")
    if request.source == "runtime.txt":
        minor = ".".join(map(str, request.version[:2]))
        out.alert("runtime.txt is deprecated.",
                  [f"Replace it with a .python-version file holding {minor}:",
                   f"  git rm runtime.txt && echo {minor} > .python-version"])


def wheelhouse_dir(environ: Mapping[str, str],
                   python: python_version.Interpreter) -> Path | None:
    """The host's wheels built against `python` (mod_wsgi), which Opus builds once per
    interpreter; None when the platform keeps no wheelhouse."""
    root = environ.get(WHEELHOUSE, "")
    return Path(root) / python.wheelhouse_key if root.startswith("/") else None


WHEELHOUSE = "OPUS_WHEELHOUSE"


def _environment(build: Path, store: envs.EnvStore, manager: managers.Manager,
                 python: python_version.Interpreter, uv: str, uv_env: Mapping[str, str],
                 config: Mapping[str, str], out: Output,
                 wheelhouse: Path | None = None) -> tuple[Path, str, envs.EnvSpec]:
    """The app's environment: the last build's when its inputs are unchanged, else a new
    one; returns the python of ``BUILD/.opus/venv`` (linked to it), its key and spec."""
    cache = store.root.parent
    tooling = {"mod_wsgi": packages.MOD_WSGI_REQUIREMENT,
               "runtime": envs.tree_digest(packages.RUNTIME_PACKAGE)}
    spec = envs.describe(build, str(python.path), python.text, manager.name, manager.files,
                         tooling, config)
    started = time.monotonic()
    if not spec.not_reusable and store.is_complete(spec.key()):
        key = spec.key()
        out.step(f"Reusing the environment of an earlier build ({manager.label}, "
                 f"Python {python.text} unchanged)")
    else:
        previous = store.last()
        if previous is not None or spec.not_reusable:
            out.step(f"Discarding cache since: {envs.discard_reason(previous, spec)}")
        key, path = store.prepare(spec)
        out.step(f"Creating virtualenv with Python {python.text}")
        venv_python = packages.create_venv(uv, python.path, path, build, out, uv_env)
        out.step(f"Installing dependencies with {manager.label}, using uv")
        packages.install_dependencies(manager.name, uv, venv_python, build, cache, out,
                                      uv_env)
        out.step(f"Installing {packages.MOD_WSGI_REQUIREMENT}")
        packages.install_mod_wsgi(uv, venv_python, build, out, uv_env, wheelhouse)
        packages.install_runtime(venv_python)
        store.mark_complete(key, spec)
    venv_python = envs.link_into_build(build / ".opus", store.path(key))
    out.detail(f"Dependencies ready in {time.monotonic() - started:.1f} s")
    return venv_python, key, spec


@dataclass(frozen=True)
class Web:
    """How the app's web process runs: a WSGI module served under mod_wsgi, or the
    Procfile's own command."""

    app_root: str = "."
    module: str | None = None
    callable: str | None = None
    command: str | None = None


REPO_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\Z")


def repo_reader(build: Path) -> Callable[[str], str | None]:
    """Reads a small file the Procfile names (a uwsgi ini), relative to the repository
    root: a plain path, no link followed on the way, else None."""
    def read(path: str) -> str | None:
        relative = path.removeprefix("./")
        if not REPO_FILE.match(relative) or ".." in relative.split("/"):
            return None
        here = build
        for part in relative.split("/"):
            here = here / part
            if here.is_symlink():
                return None
        return read_small(here) if here.is_file() else None
    return read


def choose_web(build: Path, app: django.DjangoApp | None, types: Mapping[str, str],
               out: Output, app_env: Mapping[str, str] | None = None) -> Web:
    """The Procfile's WSGI server target, else Django's WSGI_APPLICATION, else a wsgi.py."""
    app_root = "." if app is None else app.manage_py.parent.relative_to(build).as_posix()
    command = types.get("web")
    if command:
        target = procfile.wsgi_target(command, repo_reader(build), app_env or {})
        if target is not None:
            root = target.chdir.strip("/") if target.chdir else app_root
            if django.SAFE_PATH.match(root) and \
                    django.module_file(build / root, target.module) is not None:
                out.step(f"Serving {target.module}:{target.callable} under mod_wsgi "
                         f"(the Procfile's web: runs {target.server} on it)")
                if target.ignored:
                    out.detail(f"Its {', '.join(target.ignored)} options are Opus's own "
                               "business: config vars (opus config:set), static files "
                               "served by the front, the release's virtualenv")
                return Web(root, target.module, target.callable)
            out.alert(f"The Procfile's web: runs {target.server} on {target.module}, which "
                      "is not a module in the repository; running the command as written.",
                      ["To have Opus serve it under mod_wsgi, point it at your wsgi module."])
        else:
            out.step("The Procfile's web: command runs as written, listening on $PORT")
        return Web(app_root, command=command)
    if app is not None:
        found = _django_wsgi(build, app)
        if found:
            return Web(app_root, *found)
    for candidate in sorted(build.glob("*/wsgi.py")):
        module = f"{candidate.parent.name}.wsgi"
        if django.MODULE_NAME.match(module):
            out.step(f"Serving {module}:application under mod_wsgi (found "
                     f"{candidate.relative_to(build)})")
            return Web(".", module, "application")
    out.alert("Nothing to serve was found: no Procfile web: line and no wsgi.py.",
              ["Add a Procfile with a web: line (e.g. web: gunicorn mysite.wsgi),",
               "or a wsgi.py defining `application`."])
    return Web(app_root)


def _django_wsgi(build: Path, app: django.DjangoApp) -> tuple[str, str] | None:
    root = app.manage_py.parent
    settings = django.settings_file(root, app.settings_module)
    if settings is not None:
        declared = django.parse_wsgi_application(read_small(settings))
        if declared and django.module_file(root, declared[0]) is not None:
            return declared
    return (app.wsgi_module, "application") if app.wsgi_module else None


def find_django_app(build: Path, out: Output,
                    app_env: Mapping[str, str] | None = None) -> django.DjangoApp | None:
    """Read manage.py, settings and WSGI module before anything is installed, to fail fast.
    A DJANGO_SETTINGS_MODULE config var chooses the settings module (as on Heroku, where
    manage.py's line is only a default), when the repository has it."""
    manage_py = django.find_manage_py(build)
    if manage_py is None:
        return None
    relative = manage_py.relative_to(build).as_posix()
    named = django.parse_settings_module(
        manage_py.read_text(encoding="utf-8", errors="replace")
    )
    if named is not None and django.settings_file(manage_py.parent, named) is None:
        named_missing = named
        named = None
    else:
        named_missing = None
    configured = (app_env or {}).get(SETTINGS_VAR, "")
    if configured:
        settings_module = configured_settings(manage_py, relative, configured, named)
        source = f" (the {SETTINGS_VAR} config var)"
    elif named is not None:
        settings_module, source = named, ""
    elif named_missing is not None:
        path = named_missing.replace(".", "/")
        raise BuildError(
            f"{relative} names the settings module {named_missing}, but there is no "
            f"{path}.py beside it.",
            ["Fix DJANGO_SETTINGS_MODULE in manage.py, or commit the settings file,",
             "or name a settings module the repository has in a config var:",
             f"  opus config:set APP {SETTINGS_VAR}=mysite.settings"])
    else:
        raise BuildError(
            f"Could not find DJANGO_SETTINGS_MODULE in {relative}.",
            ["Opus reads it from the line Django generates in manage.py:",
             '    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")',
             "Restore that line with your settings module, or set it as a config var:",
             f"  opus config:set APP {SETTINGS_VAR}=mysite.settings"],
        )
    wsgi_module = django.find_wsgi_module(manage_py.parent, settings_module)
    out.detail(f"Django app: {relative}, settings {settings_module}{source}")
    return django.DjangoApp(manage_py, relative, settings_module, wsgi_module, named)


SETTINGS_VAR = "DJANGO_SETTINGS_MODULE"


def configured_settings(manage_py: Path, relative: str, configured: str,
                        named: str | None) -> str:
    """The config var's settings module, if it is a module name and a plain file of the
    repository beside manage.py (no link followed); else a BuildError saying what to do."""
    shown = configured if len(configured) <= 80 else configured[:77] + "..."
    instead = [f"  opus config:set APP {SETTINGS_VAR}=mysite.settings.production",
               f"or unset it, to use the one {relative} names ({named}):" if named else
               "or unset it:",
               f"  opus config:unset APP {SETTINGS_VAR}"]
    if not django.MODULE_NAME.match(configured):
        raise BuildError(
            f"The config var {SETTINGS_VAR} is not a Python module name: {shown!r}.",
            ["Set it to the dotted name of a settings module in your repository:", *instead])
    if django.module_in_tree(manage_py.parent, configured) is None:
        path = shown.replace(".", "/")
        raise BuildError(
            f"The config var {SETTINGS_VAR} names {shown}, which this push does not "
            f"have: no {path}.py (or {path}/__init__.py) beside {relative}, as a plain file "
            "(links are not followed). Nothing was deployed; the running release is "
            "unchanged.",
            ["Commit that settings module and push again, or name one the repository has",
             "(add --no-restart when only the next push has it):", *instead])
    return configured


def _django_steps(
    build: Path, app: django.DjangoApp, venv_python: Path, info: BuildInfo,
    app_env: Mapping[str, str], base: Mapping[str, str], out: Output,
) -> BuildInfo:
    disabled = {n.strip().upper() for n in app_env.get("OPUS_DISABLE_OVERRIDES", "").split(",")}
    applied = [name for name in OVERRIDE_NAMES if name not in disabled]
    out.step(f"Production settings put over {app.settings_module}: {', '.join(applied)}")
    out.detail("Turn one off with: opus config:set APP OPUS_DISABLE_OVERRIDES=NAME[,NAME]")
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
        info, framework="django", manage_py=app.relative,
        settings_module=app.settings_module, default_settings_module=app.default_settings,
        static_root=static_root,
    )
