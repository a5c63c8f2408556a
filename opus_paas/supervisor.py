"""Opus's own supervisord: its config, program sections, and an XML-RPC client."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from opus_paas.errors import ServiceError
from opus_paas.settings import Settings

PROCESS_NUM = "(process_num)d"   # supervisor's expansion, after a %
CLEAN_ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def _ini(value: str) -> str:
    """Escape a value for supervisor's config, which expands %(name)s."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"newline in a supervisor config value: {value!r}")
    return value.replace("%", "%%")


def _env(environment: dict[str, str]) -> str:
    parts = []
    for key, value in sorted(environment.items()):
        if '"' in value or "\\" in value:
            raise ValueError(f"quote or backslash in supervisor environment value {key}")
        parts.append(f'{key}="{_ini(value)}"')
    return ",".join(parts)


@dataclasses.dataclass(frozen=True)
class Program:
    """One supervisor program, rendered to one [program:name] section."""

    name: str
    command: list[str]
    directory: Path
    log_file: Path
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    user: str | None = None
    startsecs: int = 1
    stopsignal: str = "TERM"
    stopwaitsecs: int = 10
    numprocs: int = 0        # 0: one process named as the program; N: NAME.1 … NAME.N

    def _expanded(self, value: str) -> str:
        """`value` escaped for supervisor; with numprocs, %(process_num)d is let through
        (the one expansion Opus uses: each process learns its own number)."""
        escaped = _ini(value)
        return escaped.replace(f"%%{PROCESS_NUM}", f"%{PROCESS_NUM}") if self.numprocs \
            else escaped

    def render(self) -> str:
        # supervisor splits `command` with shlex; quote each argument for it.
        command = self._expanded(" ".join(shlex.quote(a) for a in self.command))
        lines = [
            f"[program:{self.name}]",
            f"command={command}",
            f"directory={_ini(str(self.directory))}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={self.startsecs}",
            "startretries=5",
            f"stopsignal={self.stopsignal}",
            f"stopwaitsecs={self.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={self._expanded(str(self.log_file))}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=3",
        ]
        if self.numprocs:
            lines += [f"numprocs={self.numprocs}", "numprocs_start=1",
                      f"process_name=%(program_name)s.%{PROCESS_NUM}"]
        if self.user:
            lines.append(f"user={_ini(self.user)}")
        if self.environment:
            lines.append(f"environment={_env(self.environment)}")
        return "\n".join(lines) + "\n"


def render_main_config(settings: Settings) -> str:
    """supervisord.conf: a private unix socket (never inet_http_server), conf.d include.
    In system mode supervisord is root's and the socket the opus user's: Opus starts and
    stops programs, but only root (and secureops) writes what they run."""
    sup = settings.supervisor_dir
    owner = [f"chown={settings.system_user}:{settings.system_user}"] if settings.system else []
    return "\n".join([
        "[unix_http_server]",
        f"file={_ini(str(sup / 'supervisor.sock'))}",
        "chmod=0700",
        *owner,
        "",
        "[supervisord]",
        f"logfile={_ini(str(settings.logs_dir / 'supervisord.log'))}",
        f"pidfile={_ini(str(sup / 'supervisord.pid'))}",
        f"childlogdir={_ini(str(settings.logs_dir))}",
        "logfile_maxbytes=10MB",
        "logfile_backups=3",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_ini(str(sup / 'supervisor.sock'))}",
        "",
        "[include]",
        f"files = {_ini(str(sup / 'conf.d'))}/*.conf",
        "",
    ])


class Supervisor:
    """A client of Opus's supervisord over its unix socket."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.socket = settings.supervisor_dir / "supervisor.sock"
        self.conf = settings.supervisor_dir / "supervisord.conf"
        self.conf_d = settings.supervisor_dir / "conf.d"

    @contextlib.contextmanager
    def _proxy(self) -> Iterator[Any]:
        """supervisord's XML-RPC interface, its connection closed after (Opus's servers
        ask often and live long)."""
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        try:
            yield xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor
        finally:
            transport.close()

    def is_running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with self._proxy() as proxy:
                return bool(proxy.getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return False

    def start(self) -> None:
        """Start supervisord (it daemonizes) and wait until it answers."""
        self.settings.supervisor_dir.mkdir(parents=True, exist_ok=True)
        self.conf_d.mkdir(exist_ok=True)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.conf, render_main_config(self.settings))
        # A clean environment: nothing of the operator's shell reaches the apps;
        # each program's section says what it needs.
        # -I and cwd /: nothing of the caller's directory or environment is imported
        # (it runs as root in system mode).
        result = subprocess.run(
            [sys.executable, "-I", "-m", "supervisor.supervisord", "-c", str(self.conf)],
            capture_output=True, text=True, check=False, env=CLEAN_ENVIRONMENT, cwd="/",
        )
        if result.returncode != 0:
            raise ServiceError(
                "supervisord did not start: " + (result.stderr or result.stdout).strip()
                + f"; see {self.settings.logs_dir / 'supervisord.log'}"
            )
        self._wait(self.is_running, 15, "supervisord did not answer on its socket")

    def shutdown(self) -> None:
        """Stop every program, then supervisord itself, and wait until it is gone."""
        pid_file = self.settings.supervisor_dir / "supervisord.pid"
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        try:
            with self._proxy() as proxy:
                # Every program told to stop at once: supervisord's own shutdown stops
                # them one at a time, each app's instances and workers after the last.
                proxy.stopAllProcesses(False)
                proxy.shutdown()
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return
        if pid is not None:
            self._wait(lambda: not _pid_alive(pid), 60, "supervisord did not exit")

    def write_programs(self, group_file: str, programs: list[Program]) -> None:
        """Write conf.d/<group_file>.conf with exactly these programs (none: remove it)."""
        path = self.conf_d / f"{group_file}.conf"
        if programs:
            _write_atomic(path, "\n".join(p.render() for p in programs))
        else:
            path.unlink(missing_ok=True)

    def apply(self) -> None:
        """Make the running programs match conf.d: add new ones, stop removed ones."""
        with self._proxy() as proxy:
            added, changed, removed = proxy.reloadConfig()[0]
            for name in removed + changed:
                self._stop_group(proxy, name)
                proxy.removeProcessGroup(name)
            for name in changed + added:
                proxy.addProcessGroup(name)

    def _stop_group(self, proxy: Any, name: str) -> None:
        try:
            proxy.stopProcessGroup(name)
        except xmlrpc.client.Fault as fault:
            if "BAD_NAME" not in fault.faultString:
                raise

    def process_state(self, name: str) -> str:
        if not self.socket.exists():
            return "ABSENT"     # (and no socket is left open by a failed connect)
        try:
            with self._proxy() as proxy:
                return str(proxy.getProcessInfo(name)["statename"])
        except xmlrpc.client.Fault:
            return "ABSENT"
        except (OSError, xmlrpc.client.ProtocolError):   # supervisord is not running
            return "ABSENT"

    def wait_until_running(self, name: str, seconds: float = 20) -> None:
        """Wait until supervisor counts `name` as RUNNING (it stayed up for startsecs)."""
        self._wait(lambda: self.process_state(name) == "RUNNING", seconds,
                   f"{name} did not reach RUNNING; see {self.settings.logs_dir}")

    def processes(self) -> list[dict[str, Any]]:
        with self._proxy() as proxy:
            return list(proxy.getAllProcessInfo())

    def restart_group(self, name: str) -> None:
        """Stop then start every process of program group `name`."""
        with self._proxy() as proxy:
            self._stop_group(proxy, name)
            proxy.startProcessGroup(name)

    def start_program(self, name: str) -> None:
        """Start `name` if it is not running (say, it gave up before its config was
        there)."""
        if self.process_state(name) not in ("RUNNING", "STARTING"):
            with self._proxy() as proxy:
                try:
                    proxy.startProcess(name, False)
                except xmlrpc.client.Fault as fault:
                    if "ALREADY_STARTED" not in fault.faultString:
                        raise

    def signal(self, name: str, sig: str) -> None:
        with self._proxy() as proxy:
            proxy.signalProcess(name, sig)

    @staticmethod
    def _wait(predicate: Any, seconds: float, message: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise ServiceError(message)


def _pid_alive(pid: int) -> bool:
    """Whether `pid` still runs. A zombie has exited: supervisord daemonizes, so its
    parent is init, which may reap it seconds later (a container's init does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True     # no /proc to ask: kill(0) said it is there
    return state != "Z"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
