"""`opus up`, `opus down`, `opus status`: Opus's own supervisord and its programs."""

from __future__ import annotations

import dataclasses
import getpass
import os
import shutil
import socket
import stat
import sys
import time
from pathlib import Path

from opus_paas import locks, names, output, privileged
from opus_paas import store as store_module
from opus_paas.build import buildpack
from opus_paas.control import hostkey, leftovers, system
from opus_paas.data import redis
from opus_paas.data import server as pg_server
from opus_paas.errors import ServiceError, UsageError
from opus_paas.front import httpd, sites
from opus_paas.run import deploy, health, recovery
from opus_paas.settings import Settings, user_ids
from opus_paas.store import Store
from opus_paas.supervisor import Program, Supervisor
from opus_paas.swarm import registry


def settings_environment(settings: Settings) -> dict[str, str]:
    """OPUS_* variables that rebuild exactly these settings in a child process."""
    env = {"OPUS_HOME": str(settings.home), privileged.INSTANCE_MARKER: str(settings.home)}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.name not in ("home", "network_env") and value not in (None, ""):
            env["OPUS_" + field.name.upper()] = str(value)
    return env


def own_programs(settings: Settings) -> list[Program]:
    """Opus's SSH server, dashboard, scheduler and waker (as the opus user in system mode) and
    the front (its master root's in system mode, to bind port 80; its children
    unprivileged)."""
    env = settings_environment(settings)
    env.update(settings.network_env)
    env["HOME"] = str(settings.home if settings.system else Path.home())
    user = settings.system_user if settings.system else None
    return [
        Program(
            name="opus-sshd",
            command=guarded(settings, [system.python_for_programs(settings), "-m",
                                       "opus_paas.control.sshd"]),
            directory=settings.home,
            log_file=settings.logs_dir / "opus-sshd.log",
            environment=env,
            user=user,
        ),
        Program(
            name="opus-dashboard",
            command=guarded(settings, dashboard_command(settings)),
            directory=settings.home,
            log_file=settings.logs_dir / "opus-dashboard.log",
            environment=env,
            stopwaitsecs=5,
            user=user,
        ),
        Program(
            name="opus-scheduler",
            command=guarded(settings, [system.python_for_programs(settings), "-m",
                                       "opus_paas.control.scheduler"]),
            directory=settings.home,
            log_file=settings.logs_dir / "opus-scheduler.log",
            environment=env,
            stopwaitsecs=5,
            user=user,
        ),
        Program(
            name="opus-waker",
            command=guarded(settings, [system.python_for_programs(settings), "-m",
                                       "opus_paas.run.waker"]),
            directory=settings.home,
            log_file=settings.logs_dir / "opus-waker.log",
            environment=env,
            stopwaitsecs=5,
            user=user,
        ),
        Program(
            name="opus-front",
            command=guarded(settings, httpd.program_command(settings)),
            directory=settings.front_dir,
            log_file=settings.logs_dir / "front" / "opus-front.log",
            environment={privileged.INSTANCE_MARKER: str(settings.home)},
        ),
        # The front follows the swarm's tasks (swarm/follow.py), once a swarm is set.
        *[Program(name="opus-swarm-follow",
                  command=guarded(settings, [system.python_for_programs(settings), "-m",
                                             "opus_paas.swarm.follow"]),
                  directory=settings.home,
                  log_file=settings.logs_dir / "opus-swarm-follow.log",
                  environment=env, stopwaitsecs=5, user=user)
          for _ in [settings.swarm_manager] if settings.swarm_manager],
        # The apps' Postgres cluster, once `opus addons:enable postgres` made it.
        *[Program(**spec) for spec in [pg_server.program(settings)] if spec],
        # Swarm: the registry nodes pull release images from, once swarm_registry is set.
        *[Program(**spec) for spec in [registry.program(settings)] if spec],
    ]


def guarded(settings: Settings, command: list[str]) -> list[str]:
    """`command` under the process-tree guard: nothing it starts outlives it or
    supervisord (opus_runtime/guard.py)."""
    return [system.python_for_programs(settings), "-I", "-m", "opus_paas.guard", "--",
            *command]


def dashboard_command(settings: Settings) -> list[str]:
    """gunicorn serving web.wsgi:app: one process (the memory sampler and the sign-in
    throttle live in it), threads for the live-log streams."""
    return [
        system.python_for_programs(settings), "-m", "gunicorn",
        "--bind", f"{settings.dashboard_host}:{settings.dashboard_port}",
        "--workers", "1", "--worker-class", "gthread", "--threads", "32",
        "--graceful-timeout", "3", "--access-logfile", "-", "--error-logfile", "-",
        "web.wsgi:app",
    ]


def _check_git(settings: Settings) -> None:
    """C git does the git server's pack work."""
    if not os.access(settings.git_bin, os.X_OK):
        raise UsageError(f"git is not installed at {settings.git_bin}; install it "
                         "(apt-get install git) or set OPUS_GIT_BIN to its path")


def _check_reachable(settings: Settings) -> None:
    """The run user (and the front's children) must traverse OPUS_HOME."""
    if settings.system or user_ids(settings.app_run_user()) is None or os.geteuid() != 0:
        return
    for parent in [settings.home, *settings.home.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            raise UsageError(
                f"OPUS_HOME {settings.home} is inside {parent}, which user "
                f"{settings.app_run_user()} cannot enter; set OPUS_HOME to a directory "
                "others can traverse, such as /var/lib/opus"
            )


def prepare_home(settings: Settings, report: list[str] | None = None) -> Store:
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.home.chmod(0o755)
    _check_git(settings)
    _check_reachable(settings)
    mine = [settings.repos_dir, settings.apps_dir, settings.locks_dir, settings.build_logs_dir]
    if not settings.system:    # system mode: root's (opus install --system made them)
        mine += [settings.front_dir, settings.logs_dir, settings.supervisor_dir]
    for path in mine:
        path.mkdir(parents=True, exist_ok=True)
    settings.repos_dir.chmod(0o700)
    settings.locks_dir.chmod(0o700)
    settings.build_logs_dir.chmod(0o700)     # build output can carry anything
    if not settings.system:
        settings.supervisor_dir.chmod(0o700)
    restored = store_module.restore_if_damaged(settings.db_path, settings.db_backup_path)
    if restored is not None and report is not None:
        report.append(restored)
    store = Store(settings.db_path)
    store.init()
    hostkey.load_or_create_host_key(settings.host_key_path)
    buildpack.install_tools(settings)
    if not settings.system:
        privileged.make_package_cache(settings)
    return store


def up(settings: Settings, *, system_mode: bool = False) -> list[str]:
    """Start (or bring back to the database's state) everything; return the next steps.
    `system_mode` (`opus up --system`, root): start supervisord as root, then do the
    rest as the opus user."""
    if system_mode:
        return system.up(settings, own_programs(settings))
    if settings.system and os.geteuid() == 0:
        raise UsageError("this is a system-mode Opus: start it with `opus up --system`")
    report: list[str] = []
    store = prepare_home(settings, report)
    supervisor = Supervisor(settings)
    if not settings.system and not supervisor.is_running():
        report += leftovers.end(settings)
        leftovers.forget_front_pid(settings)
    report += recovery.recover_all(settings, store)
    with locks.host_lock(settings):
        # A new balancer-manager token each start (the front reloads with it below).
        httpd.rotate_manager_token(settings)
        front_changed = httpd.write(settings, sites.live_sites(settings, store,
                                                                store.list_apps()))
    if settings.system:
        if not supervisor.is_running():
            raise UsageError("supervisord is not running; start Opus as root with "
                             "`opus up --system` (or systemctl start opus)")
        supervisor.apply()
    else:
        supervisor.conf_d.mkdir(parents=True, exist_ok=True)
        supervisor.write_programs("opus", own_programs(settings))
        if supervisor.is_running():
            supervisor.apply()
        else:
            supervisor.start()
    deploy.reconcile(settings, store, supervisor)
    report += redis.reconcile(settings, store, supervisor)
    if front_changed and supervisor.process_state("opus-front") == "RUNNING":
        # A front that kept running through a crash may still send traffic where an
        # unfinished deploy had switched it.
        supervisor.signal("opus-front", "USR1")
    for program in own_programs(settings):
        # The front may have given up before secureops installed its first config.
        supervisor.start_program(program.name)
    _wait_for_port(settings.ssh_host, settings.ssh_port, "opus-sshd", settings)
    _wait_for_port(settings.http_host, settings.http_port, "opus-front", settings)
    _wait_for_port(settings.dashboard_host, settings.dashboard_port, "opus-dashboard", settings)
    for program in own_programs(settings):
        supervisor.wait_until_running(program.name)
    report += health.wait_until_serving(settings, store, supervisor)
    host = "localhost" if settings.ssh_host in ("127.0.0.1", "::1") else settings.ssh_host
    return [
        *report,
        f"Opus is up (OPUS_HOME={settings.home}).",
        "",
        "Next steps:",
        "  1. Register your SSH key:",
        output.detail(f"{_opus_command()} keys:add {_user_name()} ~/.ssh/id_ed25519.pub"),
        "  2. In your Django project:",
        output.detail(f"git remote add opus ssh://git@{host}:{settings.ssh_port}/myapp.git"),
        output.detail("git push opus main"),
        f"  3. Open http://myapp.{settings.domain}:{settings.http_port}/",
        "",
        f"The dashboard: http://{settings.dashboard_domain}:{settings.http_port}/ "
        f"(set a password first: {_opus_command()} users:passwd {_user_name()})",
    ]


def _user_name() -> str:
    """A user name to suggest: the invoking one ($USER is empty in a fresh root shell)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        return "admin"
    return name if names.USER_NAME.fullmatch(name) else "admin"


def _opus_command() -> str:
    """How to call `opus` from here: the script beside this interpreter, if not on PATH."""
    script = Path(sys.executable).parent / "opus"
    if script.exists() and shutil.which("opus") != str(script):
        return str(script)
    return "opus"


def _wait_for_port(host: str, port: int, program: str, settings: Settings) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    setting = {"opus-sshd": "SSH", "opus-front": "HTTP", "opus-dashboard": "DASHBOARD"}[program]
    raise ServiceError(f"{program} did not start listening on {host}:{port}; see "
                       f"{settings.logs_dir} (is the port in use? set OPUS_{setting}_PORT)")


def down(settings: Settings) -> str:
    supervisor = Supervisor(settings)
    if not supervisor.is_running():
        return "Opus is not running."
    supervisor.shutdown()
    return "Opus stopped: every app and Opus process is down."


def status(settings: Settings) -> list[str]:
    supervisor = Supervisor(settings)
    if not supervisor.is_running():
        return ["Opus is not running; start it with `opus up`."]
    lines = [f"Opus is running (OPUS_HOME={settings.home})."]
    for info in supervisor.processes():
        lines.append(f"  {info['name']:<32} {info['statename']:<10} {info['description']}")
    return lines
