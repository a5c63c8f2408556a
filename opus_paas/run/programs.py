"""The supervisor programs of an app's release: the web instance (mod_wsgi-express, or
the Procfile's own web:) and the other process types, their names, and their install
through secureops."""

from __future__ import annotations

import re
from pathlib import Path

from opus_paas import locks, privileged
from opus_paas.build import release
from opus_paas.errors import ServiceError
from opus_paas.front import sites
from opus_paas.layout import AppPaths
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.supervisor import PROCESS_NUM, Program, Supervisor

MAX_THREADS = 64   # per mod_wsgi daemon process (`ps:set APP web threads=T`)


def next_port(settings: Settings, app: App) -> int:
    blue, green = sites.ports(settings, app)
    return green if app.live_port == blue else blue


def web_program_name(app: str, version: int, port: int) -> str:
    """Release and port both: a restart or a rescale runs the same release on the other
    port, beside the old instance, under a name of its own."""
    return f"{app}-web-v{version}-p{port}"


WEB_PROGRAM = re.compile(r"([a-z][a-z0-9-]*)-web-v[0-9]+-p[0-9]+")


def program_owner(group: str) -> tuple[str, str] | None:
    """(app, process type) of a supervisor group Opus made, or None for its own. The
    suffix `-web-vN-pN` is matched whole: app `foo` never takes `foo-web`'s instance."""
    web = WEB_PROGRAM.fullmatch(group)
    if web:
        return web.group(1), "web"
    app, dot, kind = group.partition(".")
    return (app, kind) if dot and app and kind else None


def _environment(settings: Settings, paths: AppPaths, version: int) -> dict[str, str]:
    """What every process of a release starts with (the rest comes from its env file)."""
    return {
        "HOME": str(paths.home),
        "TMPDIR": str(paths.tmp),
        "LANG": "C.UTF-8",
        "OPUS_ENV_FILE": str(paths.env_file(version)),
        privileged.INSTANCE_MARKER: str(settings.home),
    }


def web_program(settings: Settings, app: str, version: int, port: int,
                slug_version: int | None = None, processes: int = 1,
                threads: int = 5) -> Program:
    """The supervisor program serving release `version` of `app` under mod_wsgi-express,
    from the slug built for release `slug_version` (its own by default)."""
    paths = AppPaths.of(settings, app)
    slug = paths.slug(version if slug_version is None else slug_version)
    server_root = paths.run / f"web-{port}"
    info = release.read_build_info(slug) or {}
    python = str(slug / ".opus" / "venv" / "bin" / "python")
    if info.get("web_command"):
        # The Procfile's own web: (an ASGI server, say), run as written on $PORT.
        command = [python, "-m", "opus_runtime.web", str(port), str(info["web_command"])]
    else:
        command = mod_wsgi_command(slug, port, server_root, processes, threads)
    # Every line it writes gets a timestamp, for `opus logs` (the script from Opus's own
    # tools: a release built before it existed gets it too).
    # Its state file (per program: a new release starts with no crashes) tells the health
    # check and `opus ps` when the instance died and when it comes back.
    command = [python, "-I", str(stamp_script(settings)), "--state",
               str(web_state_file(settings, app, version, port)), *command]
    return Program(
        name=web_program_name(app, version, port),
        command=command,
        directory=slug,
        log_file=paths.logs / "web.log",
        environment=_environment(settings, paths, version),
        startsecs=1,
        stopwaitsecs=15,
    )


def web_state_file(settings: Settings, app: str, version: int, port: int) -> Path:
    return AppPaths.of(settings, app).run / f"{web_program_name(app, version, port)}.json"


def stamp_script(settings: Settings) -> Path:
    return settings.tools_dir / "buildpacks" / "python" / "lib" / "runtime" / "opus_runtime" / \
        "stamp.py"


def type_program_name(app: str, kind: str) -> str:
    """`<app>.<type>`: app names have no dot, so no two apps' programs can meet."""
    return f"{app}.{kind}"


def type_programs(settings: Settings, store: Store, app: App, version: int,
                  slug_version: int | None = None) -> list[Program]:
    """Supervisor programs for the release's Procfile types other than web and release,
    each at its scale (none while scaled to 0 or stopped). Each process runs under
    `opus_runtime.supervise`, which restarts it with backoff when it dies."""
    paths = AppPaths.of(settings, app.name)
    slug = paths.slug(version if slug_version is None else slug_version)
    types = release.process_types(release.read_build_info(slug) or {})
    formation = store.formation(app)
    run = paths.run
    programs = []
    for kind, command in sorted(types.items()):
        count, stopped = formation.get(kind, (0, False))
        if kind in ("web", "release") or count <= 0 or stopped:
            continue
        number = "%" + PROCESS_NUM
        programs.append(Program(
            name=type_program_name(app.name, kind),
            command=[str(slug / ".opus" / "venv" / "bin" / "python"), "-m",
                     "opus_runtime.supervise", str(run / f"{kind}.{number}.json"),
                     f"{kind}.{number}", str(command)],
            directory=slug,
            log_file=paths.logs / f"{kind}.{number}.log",
            environment=_environment(settings, paths, version),
            startsecs=1,
            stopwaitsecs=15,
            numprocs=count,
        ))
    return programs


def mod_wsgi_command(slug: Path, port: int, server_root: Path, processes: int,
                     threads: int) -> list[str]:
    return [
        str(slug / ".opus" / "venv" / "bin" / "mod_wsgi-express"), "start-server",
        "--application-type", "module", "opus_runtime.wsgi",
        "--host", "127.0.0.1", "--port", str(port),
        "--server-root", str(server_root),
        "--working-directory", str(slug),
        "--locale", "C.UTF-8",
        "--log-to-terminal", "--access-log",
        "--processes", str(processes), "--threads", str(threads),
    ]


def set_programs(settings: Settings, supervisor: Supervisor, app: str,
                 programs: list[Program]) -> None:
    """Make `programs` the app's whole set in supervisor (others' deploys may be
    applying theirs at the same moment: one at a time)."""
    with locks.host_lock(settings):
        install_programs(settings, app, programs)
        supervisor.apply()


def install_programs(settings: Settings, app: str, programs: list[Program]) -> None:
    """secureops renders conf.d/app-<app>.conf from these (the user is its to choose)."""
    logs = AppPaths.of(settings, app).logs
    specs = []
    for program in programs:
        if program.log_file.parent != logs:
            raise ServiceError(f"{program.name} logs outside {app}'s log directory")
        spec: dict[str, object] = {
            "name": program.name, "command": program.command,
            "directory": str(program.directory), "log_name": program.log_file.name,
            "environment": program.environment, "stopsignal": program.stopsignal,
            "stopwaitsecs": program.stopwaitsecs, "startsecs": program.startsecs}
        if program.numprocs:
            spec["numprocs"] = program.numprocs
        specs.append(spec)
    privileged.install_programs(settings, app, specs)


def live_program(settings: Settings, app: App) -> Program | None:
    """The program serving `app` now, if any."""
    if app.live_version is None or app.live_port is None:
        return None
    return web_program(settings, app.name, app.live_version, app.live_port, app.live_slug,
                       app.web_processes, app.web_threads)


def expected_programs(settings: Settings, store: Store, app: App) -> list[Program]:
    """The programs the database says the app runs: its live release's web instance
    (not while it sleeps) and its other process types at their scale (none while
    stopped)."""
    live = None if app.stopped else live_program(settings, app)
    if live is None:
        return []
    others = type_programs(settings, store, app, app.live_version or 0, app.live_slug)
    return others if store.is_asleep(app) else [live, *others]


def program_differences(settings: Settings, store: Store, app: App,
                        running_groups: set[str]) -> list[str]:
    """How supervisor's groups of `app` differ from what the database says (pure but
    for reading the release's build info)."""
    expected = {p.name for p in expected_programs(settings, store, app)}
    mine = {g for g in running_groups if (program_owner(g) or ("", ""))[0] == app.name}
    return [*(f"{name} should run and does not" for name in sorted(expected - mine)),
            *(f"{name} runs, but is not the live release's" for name in sorted(mine - expected))]
