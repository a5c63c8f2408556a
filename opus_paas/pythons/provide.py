"""Providing a build's Python: before the buildpack runs, the version the app asks for is
fetched when the host lacks it, and mod_wsgi is built into the wheelhouse for the
interpreter the build will use (each once per host, under one lock, so two builds never
do the same work at once). `opus pythons:install` does the same ahead of any build.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from opus_paas import locks, output
from opus_paas.errors import BuildFailed, NotFound
from opus_paas.output import Emit
from opus_paas.pythons import fetch, report, versions, wheels
from opus_paas.settings import Settings


def prepare(settings: Settings, build: Path, env: Mapping[str, str], emit: Emit,
            cancelled: threading.Event | None = None) -> None:
    """Make the interpreter a build of `build` asks for ready, with mod_wsgi's wheel. A
    request the buildpack cannot read, or one for a version Opus does not fetch, is left
    for the buildpack to explain."""
    found = report.read(settings, env, build)
    if found.chosen is None and found.request is not None and \
            versions.fetchable(found.request.version):
        found = _fetch_for(settings, env, build, found.request, emit, cancelled)
    chosen = found.chosen
    if chosen is not None and not wheels.ready(settings, chosen, found.mod_wsgi):
        with _lock(settings, emit, cancelled):
            if not wheels.ready(settings, chosen, found.mod_wsgi):
                emit(output.step(f"Building {found.mod_wsgi} for Python {chosen.version} (once "
                                 "per interpreter on this host)"))
                try:
                    wheels.build(settings, chosen, found.mod_wsgi, emit, cancelled)
                except BuildFailed as exc:
                    if cancelled is not None and cancelled.is_set():
                        raise
                    # The build may still get it its own way (the app's package index).
                    for line in ("", output.alert(exc.message),
                                 output.alert("This build installs mod_wsgi itself instead."), ""):
                        emit(line)


def _fetch_for(settings: Settings, env: Mapping[str, str], build: Path,
               request: report.Request, emit: Emit,
               cancelled: threading.Event | None) -> report.Report:
    with _lock(settings, emit, cancelled):
        found = report.read(settings, env, build)     # another build may have fetched it
        if found.chosen is None:
            emit(output.step(f"Fetching Python {request.version}: {request.source} asks for it "
                             "and this host has none"))
            fetch.fetch(settings, request.version, emit, cancelled)
            found = report.read(settings, env, build)
    if found.chosen is None:
        raise BuildFailed(f"Python {request.version} was fetched, but the build cannot use it: "
                          f"{found.problem}")
    return found


def install(settings: Settings, env: Mapping[str, str], version: str,
            emit: Emit) -> report.Interpreter:
    """Fetch `version` ahead of any build (unless what the source would give is installed
    already) and build mod_wsgi for it; return it."""
    version = versions.check_version(version)
    with _lock(settings, emit, None):
        name = fetch.resolve(settings, version)
        if name is not None and (settings.managed_pythons_dir / name).is_dir():
            emit(f"{name} is installed already ({settings.managed_pythons_dir / name}).")
        else:
            emit(output.step(f"Fetching Python {version}"))
            name = fetch.fetch(settings, version, emit)
        found = report.read(settings, env)
        interpreter = find(found, settings, name)
        if not wheels.ready(settings, interpreter, found.mod_wsgi):
            emit(output.step(f"Building {found.mod_wsgi} for Python {interpreter.version}"))
            wheels.build(settings, interpreter, found.mod_wsgi, emit)
    return interpreter


def find(found: report.Report, settings: Settings, name: str) -> report.Interpreter:
    """The installed interpreter Opus fetched as `name`."""
    for interpreter in found.installed:
        if interpreter.install_name(settings.managed_pythons_dir) == name:
            return interpreter
    raise NotFound(f"{name} is not among the interpreters builds can run; `opus pythons` "
                   "lists them")


@contextlib.contextmanager
def _lock(settings: Settings, emit: Emit,
          cancelled: threading.Event | None) -> Iterator[None]:
    def waiting() -> None:
        emit(output.detail("Waiting for another build to finish fetching Python or building "
                           "mod_wsgi..."))
    with locks.tools_lock(settings, on_wait=waiting, cancelled=cancelled):
        yield
