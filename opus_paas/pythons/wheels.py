"""mod_wsgi, built once per interpreter into the host's wheelhouse, which every build
installs it from (read-only to builds: root's in system mode).

mod_wsgi links its interpreter's libpython by path, so a wheel belongs to one
interpreter (the wheelhouse has a directory per interpreter path, its key). Opus builds
it as itself in a scratch environment with a cache of its own (a cache another
interpreter's build shared could hand back that one's wheel); uv keeps the wheel it
builds from the sdist in that cache, and secureops copies it into the wheelhouse.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from opus_paas import output, privileged
from opus_paas.errors import BuildFailed, ServiceError
from opus_paas.output import Emit
from opus_paas.pythons import process
from opus_paas.pythons.fetch import fresh_dir, uv_binary, uv_environment
from opus_paas.pythons.report import Interpreter
from opus_paas.settings import Settings

SHOWN_ON_FAILURE = 15


def wheel_glob(requirement: str) -> str:
    """File names of `requirement`'s wheels (mod_wsgi==6.1.1: mod_wsgi-6.1.1-*.whl)."""
    name, _, version = requirement.partition("==")
    return f"{name}-{version}-*.whl"


def ready(settings: Settings, interpreter: Interpreter, requirement: str) -> bool:
    """Whether the wheelhouse has `requirement` built for `interpreter`."""
    directory = settings.wheelhouse_dir / interpreter.wheelhouse
    return any(directory.glob(wheel_glob(requirement)))


def build(settings: Settings, interpreter: Interpreter, requirement: str, emit: Emit,
          cancelled: threading.Event | None = None) -> None:
    """Build `requirement` against `interpreter` and put the wheel in the wheelhouse."""
    started = time.monotonic()
    staging = fresh_dir(settings.staging_dir / "wheels")
    work, out = staging / ".work", staging / interpreter.wheelhouse
    work.mkdir(mode=0o700)
    out.mkdir(mode=0o700)
    env = {**uv_environment(settings, work), "UV_CACHE_DIR": str(work / "cache"),
           "UV_PYTHON_DOWNLOADS": "never", "UV_LINK_MODE": "copy"}
    uv = str(uv_binary(settings))
    venv_python = work / "venv" / "bin" / "python"
    try:
        for argv in ([uv, "venv", "--quiet", "--no-project", "--python", interpreter.path,
                      str(work / "venv")],
                     [uv, "pip", "install", "--python", str(venv_python), requirement]):
            _run(argv, env, work, settings, cancelled, requirement, interpreter, emit)
        wheel = _built_wheel(work / "cache", requirement, interpreter)
        shutil.copyfile(wheel, out / wheel.name)
        privileged.install_wheels(settings, interpreter.wheelhouse)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    emit(output.detail(f"Built in {time.monotonic() - started:.1f} s; builds on Python "
                     f"{interpreter.version} install it from the wheelhouse"))


def _run(argv: list[str], env: dict[str, str], cwd: Path, settings: Settings,
         cancelled: threading.Event | None, requirement: str, interpreter: Interpreter,
         emit: Emit) -> None:
    try:
        code, lines = process.run(argv, env=env, cwd=cwd, timeout=settings.build_timeout,
                                  cancelled=cancelled)
    except ServiceError as exc:
        raise BuildFailed(f"building {requirement} was stopped: {exc.message}") from None
    if code != 0:
        for line in lines[-SHOWN_ON_FAILURE:]:
            emit(output.detail(line))
        raise BuildFailed(
            f"{requirement} could not be built for Python {interpreter.version} (see above). "
            "It compiles against Apache: the Opus host needs apache2-dev (apxs), a C "
            "compiler (build-essential) and the interpreter's headers (python3.X-dev for "
            "Debian's); the operator installs them, then push again.")


def _built_wheel(cache: Path, requirement: str, interpreter: Interpreter) -> Path:
    tag = interpreter.wheelhouse.partition("-")[0]          # cp313
    found = [p for p in cache.rglob(wheel_glob(requirement))
             if p.is_file() and not p.is_symlink() and f"-{tag}-" in p.name]
    if not found:
        raise BuildFailed(f"uv built {requirement} for Python {interpreter.version} but kept "
                          "no wheel of it in its cache; this uv may store its builds "
                          "elsewhere: report it with `uv --version`")
    return found[0]
