"""`opus pythons`, `opus pythons:install VERSION`, `opus pythons:remove VERSION`: the
interpreters builds can use, fetching one ahead of any build, removing one no release
uses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from opus_paas import access, locks, privileged
from opus_paas.build import buildpack, release
from opus_paas.control.context import Command, Context, arity
from opus_paas.errors import Conflict, NotFound, OpusError, UsageError
from opus_paas.layout import AppPaths
from opus_paas.pythons import fetch, provide, report, versions, wheels
from opus_paas.settings import Settings
from opus_paas.store import App


def _environment(settings: Settings) -> dict[str, str]:
    return buildpack.own_environment(settings)


def users(settings: Settings, apps: Iterable[App]) -> dict[str, dict[str, list[int]]]:
    """For each interpreter path: which of `apps` have kept releases built on it, and
    those releases (a rollback would need it)."""
    used: dict[str, dict[str, list[int]]] = {}
    for app, version, interpreter in _kept_builds(settings, apps):
        used.setdefault(interpreter, {}).setdefault(app, []).append(version)
    return used


def _kept_builds(settings: Settings, apps: Iterable[App]) -> Iterator[tuple[str, int, str]]:
    for app in apps:
        releases = AppPaths.of(settings, app.name).releases
        try:
            slugs = sorted(releases.iterdir())
        except OSError:
            continue
        for slug in slugs:
            match = release.VERSION_DIR.fullmatch(slug.name)
            if not match:
                continue
            try:
                info = release.read_build_info(slug) or {}
            except OpusError:
                continue
            if isinstance(info.get("interpreter"), str):
                yield app.name, int(match.group(1)), str(info["interpreter"])


def cmd_pythons(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 0)
    settings = ctx.settings
    found = report.read(settings, _environment(settings))
    # Names only the apps the caller may use: a developer learns nothing of the others.
    used = users(settings, access.visible_apps(ctx.store, ctx.actor))
    default = found.chosen.path if found.chosen else None
    rows = [{"version": i.version, "path": i.path, "fetched": i.managed,
             "name": i.install_name(settings.managed_pythons_dir),
             "default": i.path == default, "mod_wsgi": wheels.ready(settings, i, found.mod_wsgi),
             "wheelhouse": i.wheelhouse, "used_by": used.get(i.path, {})}
            for i in sorted(found.installed, key=lambda i: tuple(map(int, i.version.split("."))),
                            reverse=True)]
    if ctx.json:
        ctx.emit_json(rows)
        return
    ctx.out("Python interpreters builds can use (an app chooses one in .python-version):")
    for row in rows:
        kind = "fetched" if row["fetched"] else "host"
        notes = [*(["default"] if row["default"] else []),
                 "mod_wsgi built" if row["mod_wsgi"] else "mod_wsgi at the first build"]
        apps = row["used_by"]
        if isinstance(apps, dict) and apps:
            notes.append("used by " + ", ".join(
                f"{app} ({', '.join(f'v{v}' for v in sorted(kept))})"
                for app, kept in sorted(apps.items())))
        ctx.out(f"  {row['version']:<9} {kind:<8} {row['path']}  {'; '.join(notes)}")
    ctx.out(f"An app asking for 3.10 to 3.14 that the host lacks gets it fetched from "
            f"{fetch.source(settings)}.")


def cmd_pythons_install(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    access.require_admin(ctx.actor, "install interpreters")
    interpreter = provide.install(ctx.settings, _environment(ctx.settings), args[0], ctx.out)
    ctx.out(f"Python {interpreter.version} is ready ({interpreter.path}): apps that ask for "
            f"{args[0]} build on it.")


def cmd_pythons_remove(ctx: Context, args: list[str]) -> None:
    arity(ctx.usage, args, 1)
    access.require_admin(ctx.actor, "remove interpreters")
    settings = ctx.settings
    found = report.read(settings, _environment(settings))
    target = _fetched(found, settings, args[0])
    name = target.install_name(settings.managed_pythons_dir)
    assert name is not None
    apps = users(settings, ctx.store.list_apps()).get(target.path, {})
    if apps:
        listed = ", ".join(f"{app} ({', '.join(f'v{v}' for v in sorted(kept))})"
                           for app, kept in sorted(apps.items()))
        raise Conflict(f"Python {target.version} ({name}) is used by {listed}; push those "
                       "apps on another version (and let their old releases be pruned) or "
                       "destroy them first")
    with locks.tools_lock(settings):
        privileged.remove_python(settings, name)
        privileged.remove_wheels(settings, target.wheelhouse)
    ctx.out(f"Removed Python {target.version} ({name}) and the wheels built for it.")


def _fetched(found: report.Report, settings: Settings, given: str) -> report.Interpreter:
    """The interpreter Opus fetched that `given` names: its installation's name, or its
    exact version."""
    fetched = [i for i in found.installed if i.install_name(settings.managed_pythons_dir)]
    matching = [i for i in fetched
                if given in (i.version, i.install_name(settings.managed_pythons_dir))
                or i.version.startswith(given + ".")]
    if len(matching) == 1:
        return matching[0]
    if len(matching) > 1:
        raise UsageError(f"Opus fetched several Pythons {given} "
                         f"({', '.join(i.version for i in matching)}); give the exact one")
    if not versions.fetchable(given) and given not in {i.path for i in found.installed}:
        shown = given if len(given) <= 60 and given.isprintable() else repr(given[:60])
        raise UsageError(f"{shown} names no interpreter; give a version as `opus pythons` "
                         "lists it (e.g. 3.13.0)")
    if any(given == i.version for i in found.installed):
        raise UsageError(f"Python {given} here is the host's own, not one Opus fetched; "
                         "remove it the way it was installed")
    raise NotFound(f"Opus fetched no Python {given}; `opus pythons` lists the interpreters "
                   f"({', '.join(i.version for i in fetched) or 'none fetched'})")


COMMANDS: list[Command] = [
    Command("pythons", "opus pythons", "list the Python interpreters builds can use",
            cmd_pythons),
    Command("pythons:install", "opus pythons:install VERSION",
            "fetch a Python (3.10-3.14) ahead of the apps that ask for it", cmd_pythons_install),
    Command("pythons:remove", "opus pythons:remove VERSION|NAME",
            "remove a Python Opus fetched that no kept release uses", cmd_pythons_remove),
]
