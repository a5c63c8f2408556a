"""Start a release's web instance, check its health, switch the front to it, stop the old one.

Each app owns two loopback ports; a deploy starts the new release on the one
that is not live, so old and new run side by side until the switch.
Reconcile makes supervisor and the front match the database (after `opus up`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import logging
import pwd
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from opus_paas import failpoints, locks, output, privileged
from opus_paas.build import release
from opus_paas.errors import BuildFailed, ServiceError
from opus_paas.front import balancer, httpd
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.run import checks
from opus_paas.run.supervisor import PROCESS_NUM, Program, Supervisor
from opus_paas.settings import Settings
from opus_paas.store import App, Store

log = logging.getLogger("opus.deploy")

DRAIN_SECONDS = 1.0    # after a graceful reload of the front
DRAIN_TIMEOUT = 30.0   # for the requests on an old instance after a balancer switch
MAX_THREADS = 64   # per mod_wsgi daemon process (`ps:set APP web threads=T`)


def ports(settings: Settings, app: App) -> tuple[int, int]:
    base = settings.app_port_base + 2 * app.id
    return base, base + 1


def next_port(settings: Settings, app: App) -> int:
    blue, green = ports(settings, app)
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
        environment={
            "HOME": str(paths.home),
            "TMPDIR": str(paths.tmp),
            "LANG": "C.UTF-8",
            "OPUS_ENV_FILE": str(paths.env_file(version)),
            privileged.INSTANCE_MARKER: str(settings.home),
        },
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
            environment={
                "HOME": str(paths.home),
                "TMPDIR": str(paths.tmp),
                "LANG": "C.UTF-8",
                "OPUS_ENV_FILE": str(paths.env_file(version)),
                privileged.INSTANCE_MARKER: str(settings.home),
            },
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


def check_health(settings: Settings, host: str, port: int, program: str,
                 supervisor: Supervisor, check: checks.Check | None = None,
                 state_file: Path | None = None) -> None:
    """Wait until the app's check passes on the new instance (by default a GET of / with
    the app's Host answering below 500), or raise BuildFailed with what it last saw."""
    check = check or checks.Check()
    timeout = check.timeout if check.timeout is not None else settings.health_timeout
    deadline = time.monotonic() + timeout
    last, failures = "no answer", 0
    while time.monotonic() < deadline:
        state = supervisor.process_state(program)
        if state in ("FATAL", "EXITED", "ABSENT"):
            raise BuildFailed(f"the new web process did not stay up ({state}); "
                              "see `opus logs` for its output")
        died = _died(state_file)
        if died is not None:
            raise BuildFailed(f"the new web process exited (status {died}) before it "
                              "answered; see `opus logs APP --ps web` for its output")
        try:
            if check.disabled:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", check.path, headers={"Host": host})
            response = conn.getresponse()
            body = response.read(300).decode("utf-8", "replace")
            conn.close()
            if response.status < 500:
                return
            excerpt = " ".join(body.split())[:200]
            last = f"HTTP {response.status}" + (f": {excerpt}" if excerpt else "")
            failures += 1
            if check.attempts and failures >= check.attempts:
                raise BuildFailed(f"the new release failed its health check (GET {check.path}) "
                                  f"{failures} times (last: {last}); the old release keeps "
                                  "serving")
        except (OSError, http.client.HTTPException) as exc:
            last = exc.__class__.__name__
        time.sleep(0.2)
    what = "accept a connection" if check.disabled else f"pass its health check (GET {check.path})"
    state = supervisor.process_state(program)
    if state != "RUNNING":    # it never got going: say so, not only "connection refused"
        last += f"; the web process is {state}, see `opus logs APP --ps web`"
    raise BuildFailed(f"the new release did not {what} within {timeout:.0f} s "
                      f"(last: {last}); the old release keeps serving")


def listening_uids(table: str, port: int) -> set[int]:
    """The uids of the sockets listening on `port` in a /proc/net/tcp{,6} table (pure)."""
    found = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[3] == "0A" and \
                fields[1].rpartition(":")[2].upper() == f"{port:04X}":
            found.add(int(fields[7]))
    return found


def check_listener(settings: Settings, app: str, port: int) -> None:
    """System mode: what answered on the app's port must be the app's own process. Any
    app could bind another's idle port before its deploy and take its traffic."""
    if not settings.system:
        return
    tables = ""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            tables += Path(name).read_text()
    owners = listening_uids(tables, port)
    try:
        expected = pwd.getpwnam(f"opus-{app}").pw_uid
    except KeyError:
        raise BuildFailed(f"{app} has no user of its own; push again") from None
    if owners != {expected}:
        raise BuildFailed(f"port {port}, where the new release should answer, is held by "
                          "another user's process; the old release keeps serving (ask the "
                          "operator to look at what listens there)")


def read_process_state(path: Path) -> dict[str, object]:
    """What a process's wrapper (stamp or supervise) last wrote; the app's user writes it,
    so it is read without following links and anything odd reads as nothing."""
    try:
        raw = privileged.read_run_user_file(path.parent, path.name, 4096)
        state = json.loads(raw or b"{}")
    except (ServiceError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _died(state_file: Path | None) -> object | None:
    """The exit status of an instance that died, if it did."""
    if state_file is None:
        return None
    state = read_process_state(state_file)
    return state.get("exit_status", "?") if state.get("state") == "crashed" else None


def app_domains(settings: Settings, store: Store, app: App) -> list[str]:
    """The host names an app answers to: <app>.<domain>, then its custom domains."""
    return [settings.app_domain(app.name), *store.domains(app)]


def site_for(settings: Settings, app: App, custom: list[str],
             sleeps: bool = False) -> httpd.Site | None:
    if app.live_port is None:
        return None
    return httpd.Site(
        app=app.name,
        domains=(settings.app_domain(app.name), *custom),
        port=app.live_port,
        members=ports(settings, app),
        sleeps=sleeps,
    )


def live_sites(settings: Settings, store: Store, apps: list[App]) -> list[httpd.Site]:
    """The front's sites: every app that has a live release, with its domains (and the
    waker as the hot standby of those that may sleep)."""
    custom = store.all_domains()
    sleepers = store.sleepers()
    return [s for s in (site_for(settings, a, custom.get(a.id, []), a.id in sleepers)
                        for a in apps)
            if s is not None]


def refresh_front(settings: Settings, store: Store, supervisor: Supervisor,
                  pending: App | None = None) -> None:
    """Render the front from the database (with `pending` in place of its stored row),
    test it, and reload gracefully if it changed. Raises before anything goes live if
    Apache rejects the config."""
    with locks.host_lock(settings):
        _refresh_front(settings, store, supervisor, pending)


def _refresh_front(settings: Settings, store: Store, supervisor: Supervisor,
                   pending: App | None = None) -> None:
    apps = [pending if pending and a.id == pending.id else a for a in store.list_apps()]
    changed = httpd.write(settings, live_sites(settings, store, apps))
    if changed and supervisor.process_state("opus-front") == "RUNNING":
        supervisor.signal("opus-front", "USR1")


def set_programs(settings: Settings, supervisor: Supervisor, app: str,
                 programs: list[Program]) -> None:
    """Make `programs` the app's whole set in supervisor (others' deploys may be
    applying theirs at the same moment: one at a time)."""
    with locks.host_lock(settings):
        _install_programs(settings, app, programs)
        supervisor.apply()


def _install_programs(settings: Settings, app: str, programs: list[Program]) -> None:
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


def wait_until_serving(settings: Settings, store: Store, supervisor: Supervisor) -> list[str]:
    """Wait (one health timeout in all) until every app's live instance answers its
    health check, as after a deploy; return a line for each that does not."""
    deadline = time.monotonic() + settings.health_timeout
    report = []
    for app in store.list_apps():
        live = None if app.stopped else live_program(settings, app)
        if live is None or app.live_port is None or store.is_asleep(app):
            continue
        check = dataclasses.replace(checks.from_json(app.health_check),
                                    timeout=max(1.0, deadline - time.monotonic()))
        try:
            check_health(settings, settings.app_domain(app.name), app.live_port, live.name,
                         supervisor, check)
        except BuildFailed:
            report.append(f"{app.name} is not answering yet (release v{app.live_version}); "
                          f"see `opus logs {app.name}` and `opus ps {app.name}`")
    return report


@dataclasses.dataclass
class Switched:
    """A deploy whose traffic has switched and whose new release is recorded live: what
    is left is to let the old instance's requests finish, stop it, and run the other
    process types with the new release. A push does this after it returns, still
    holding the app's lock; whatever stops it half-way, recovery ends it (reconcile)."""

    settings: Settings
    store: Store
    supervisor: Supervisor
    app: App
    version: int
    slug_version: int
    new: Program
    manager: balancer.BalancerManager | None
    old_port: int | None

    def finish(self, emit: Emit) -> None:
        """Drain and stop the old instance, start the other process types anew, and
        keep a copy of the database as it is after this deploy."""
        failpoints.reached(self.settings, "deploy.draining")
        if self.manager is not None and self.old_port is not None:
            # Requests already on the old instance finish there before it stops.
            if not _drained(self.manager, self.old_port):
                emit(output.detail("The old instance still had requests after "
                                   f"{DRAIN_TIMEOUT:.0f} s; stopping it anyway"))
        else:
            # A graceful reload lets each front child finish its request on the old
            # config; give them a moment before the old instance goes away.
            time.sleep(DRAIN_SECONDS)
        # The other process types follow the release (a new one starts their backoff
        # afresh).
        set_programs(self.settings, self.supervisor, self.app.name,
                     [self.new, *type_programs(self.settings, self.store, self.app,
                                               self.version, self.slug_version)])
        self.store.backup(self.settings.db_backup_path)


def deploy(settings: Settings, store: Store, supervisor: Supervisor, app: App,
           version: int, emit: Emit, *, record: Callable[[int], None],
           slug_version: int | None = None, running: App | None = None) -> Switched:
    """Bring release `version` live; on any failure before the switch is recorded, the
    old release keeps serving and the new instance goes.

    `record(port)` writes that the release serves on `port`, in the same host-lock
    section as the front's switch (docs/design-notes.md: a deploy's order of record).
    `running` is the app as its live instance was started, when `app` already carries
    new settings for the new one (a rescale): the old instance's program must stay
    exactly as it is, or supervisor would restart it in the middle of the switch.
    Returns what is left to do once traffic has switched (Switched.finish)."""
    port = next_port(settings, app)
    slug_version = version if slug_version is None else slug_version
    new = web_program(settings, app.name, version, port, slug_version, app.web_processes,
                      app.web_threads)
    # A sleeping app's instance is not running: the new one is its wake.
    old = None if app.stopped or store.is_asleep(app) else \
        live_program(settings, running or app)
    workers = [] if app.stopped or app.live_version is None else \
        type_programs(settings, store, app, app.live_version, app.live_slug)
    # A new instance starts with no crash behind it (an earlier one of the same name
    # may have left its state).
    web_state_file(settings, app.name, version, port).unlink(missing_ok=True)
    emit(output.step(f"Starting v{version} on its own port"))
    set_programs(settings, supervisor, app.name, [p for p in (old, new) if p] + workers)
    switched = False
    manager = _manager(settings, app)
    pending = dataclasses.replace(app, live_version=version, live_port=port)
    try:
        failpoints.reached(settings, "deploy.started")
        check = checks.from_json(app.health_check)
        check_health(settings, settings.app_domain(app.name), port, new.name, supervisor, check,
                     web_state_file(settings, app.name, version, port))
        check_listener(settings, app.name, port)
        failpoints.reached(settings, "deploy.healthy")
        emit(output.detail("Health check passed; switching traffic") if not check.disabled else
             output.detail("Accepting connections (health check disabled); switching traffic"))
        # One lock from the front's render to the database row: another app's deploy
        # rendering in between would otherwise put this app's old port back.
        with locks.host_lock(settings):
            # The front is switched first: if that fails, nothing else has changed and
            # the old release keeps serving.
            if manager is not None and _switch_members(settings, store, manager, pending,
                                                       app.live_port):
                emit(output.detail("Switched through the front's balancer"))
            else:
                manager = None
                _refresh_front(settings, store, supervisor, pending=pending)
            switched = True
            failpoints.reached(settings, "deploy.switched")
            record(port)
            store.set_asleep(app, False)    # (if it may sleep: awake, idle from now)
    except BaseException:
        # Whatever stopped the deploy (a failed check, the client gone, a bug), the new
        # instance goes and the old one keeps serving.
        if switched:
            _switch_back(settings, store, supervisor, manager, app, port)
        set_programs(settings, supervisor, app.name, ([old] if old else []) + workers)
        raise
    try:
        release.point_current(settings, app.name, slug_version)
    except (OSError, ServiceError) as exc:   # the record says what is live; recovery
        # points it again
        log.warning("%s: current not pointed at v%d (%s)", app.name, slug_version, exc)
    failpoints.reached(settings, "deploy.recorded")
    return Switched(settings, store, supervisor, store.get_app(app.name) or pending, version,
                    slug_version, new, manager, app.live_port)


def _manager(settings: Settings, app: App) -> balancer.BalancerManager | None:
    """The app's balancer-manager, when the front already serves the app (a first deploy
    adds its vhost with a graceful reload instead)."""
    if app.live_port is None:
        return None
    return balancer.BalancerManager(httpd.manager_ports(settings)[0],
                                    settings.app_domain(app.name),
                                    app.name, httpd.manager_token(settings),
                                    tls=httpd.tls_vhost(settings, app.name))


def _switch_members(settings: Settings, store: Store, manager: balancer.BalancerManager,
                    pending: App, old_port: int | None) -> bool:
    """Flip the app's balancer to `pending`'s port, and write the front's config to match
    (without a reload, so the next one keeps this state). False when a switch is not
    enough (the front's config has other changes to load, or no balancer for the app
    yet): the caller reloads the front instead."""
    assert pending.live_port is not None
    if not httpd.is_current(settings, live_sites(settings, store, store.list_apps())):
        return False     # something else changed too (a domain, say): that needs a reload
    try:
        manager.members()
    except ServiceError:
        return False
    apps = [pending if a.id == pending.id else a for a in store.list_apps()]
    httpd.write(settings, live_sites(settings, store, apps))
    try:
        manager.switch(pending.live_port, old_port)
    except ServiceError:
        # Half a switch (the new member enabled, the old one not yet disabled) must not
        # stay: the new instance is about to be stopped.
        if old_port is not None:
            with contextlib.suppress(ServiceError):
                manager.switch(old_port, pending.live_port)
        httpd.write(settings, live_sites(settings, store, store.list_apps()))
        raise
    return True


def _switch_back(settings: Settings, store: Store, supervisor: Supervisor,
                 manager: balancer.BalancerManager | None, app: App, new_port: int) -> None:
    """Undo a switch: the old member serves again, the front's config as the database
    says."""
    if manager is not None and app.live_port is not None:
        try:
            with locks.host_lock(settings):
                manager.switch(app.live_port, new_port)
                httpd.write(settings, live_sites(settings, store, store.list_apps()))
            return
        except ServiceError:
            pass
    refresh_front(settings, store, supervisor)


def _drained(manager: balancer.BalancerManager, port: int) -> bool:
    try:
        return manager.wait_drained(port, DRAIN_TIMEOUT)
    except ServiceError:
        time.sleep(DRAIN_SECONDS)
        return False


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


def reconcile(settings: Settings, store: Store, supervisor: Supervisor,
              only: str | None = None) -> None:
    """Make supervisor's app programs (every app's, or `only` this one's) and the front
    match the database; the front is reloaded if its config changed."""
    with locks.host_lock(settings):
        for app in store.list_apps():
            if only is None or app.name == only:
                _install_programs(settings, app.name, expected_programs(settings, store, app))
        supervisor.apply()
        _refresh_front(settings, store, supervisor)
