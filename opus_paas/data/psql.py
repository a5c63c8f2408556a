"""`pg:psql`: psql on the app's database, run as the app's user (psql's `\\!` then
gives what `opus run` gives, nothing of Opus's), with the role's password in psql's
environment and the SQL of `-c` on its standard input (never in its arguments, which
`ps` shows everyone)."""

from __future__ import annotations

import subprocess
import threading
from urllib.parse import unquote, urlsplit

from opus_paas import access, privileged
from opus_paas.access import Actor
from opus_paas.data import credentials, postgres, server
from opus_paas.errors import UsageError
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.settings import Settings
from opus_paas.store import Store


def environment(settings: Settings, app: str, url: str) -> dict[str, str]:
    """libpq's variables for the app's role (from its DATABASE_URL)."""
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    host, _, port = hostport.rpartition(":")
    name = unquote(parts.path.lstrip("/"))
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
            "HOME": str(AppPaths.of(settings, app).home),
            "PGHOST": unquote(host), "PGPORT": port, "PGUSER": name, "PGDATABASE": name,
            "PGPASSWORD": credentials.password_of(url), "PGAPPNAME": "opus pg:psql"}


def run(settings: Settings, store: Store, actor: Actor, name: str, command: str | None,
        emit: Emit, cancelled: threading.Event,
        terminal: privileged.Terminal | None, local_terminal: bool = False) -> int:
    """psql on the app's database: interactive on the client's terminal (or, on the
    host, on this process's own: `local_terminal`), or running `command` (-c); its exit
    status."""
    app = access.app_for(store, actor, name)
    database = postgres.database_of(store, app)
    # SQL given with -c reaches psql on its standard input, never in its arguments
    # (every local user can read those in /proc).
    argv = [server.tool("psql"), "--no-psqlrc", "--set=ON_ERROR_STOP=1"]
    env = environment(settings, app.name, database.url)
    cwd = AppPaths.of(settings, app.name).home
    if command is None and local_terminal and not settings.system:
        # This process's own terminal; through sudo only `ssh -t` brings one.
        how = privileged.step(settings, app.name, argv, cwd, env)
        return subprocess.run(how.argv, cwd=how.cwd, env=how.env, check=False,
                              **how.identity).returncode
    if command is None:
        if terminal is None:
            raise UsageError("pg:psql without -c needs a terminal: `ssh -t … pg:psql "
                             f"{app.name}` (or run SQL with `pg:psql {app.name} -c 'SQL'`)")
        return privileged.run_in_terminal(settings, app.name, argv, cwd=cwd, env=env,
                                          terminal=terminal, timeout=settings.build_timeout,
                                          cancelled=cancelled)
    try:
        for line in privileged.stream(settings, app.name, argv, cwd=cwd, env=env,
                                      timeout=settings.build_timeout, cancelled=cancelled,
                                      input=command + "\n"):
            emit(line)
    except subprocess.CalledProcessError as exc:
        return exc.returncode if exc.returncode > 0 else 128 - exc.returncode
    return 0
