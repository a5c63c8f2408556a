"""`opus doctor`: what `opus up` would repair, one line each with its fix, and nothing
changed."""

from __future__ import annotations

from opus_paas import locks
from opus_paas import store as store_module
from opus_paas.control import leftovers
from opus_paas.control.context import Command, Context, arity
from opus_paas.data import redis
from opus_paas.front import httpd, sites
from opus_paas.run import programs, recovery
from opus_paas.settings import Settings
from opus_paas.store import Store
from opus_paas.supervisor import Supervisor


def findings(settings: Settings) -> list[str]:
    """Every problem found, one line each (empty: none)."""
    problem = store_module.database_problem(settings.db_path)
    if problem == "it is missing" and not settings.db_backup_path.exists():
        return [f"Opus has no database at {settings.db_path} yet; `opus up` makes one"]
    if problem is not None:
        fix = "`opus up` will restore its copy" if store_module.database_problem(
            settings.db_backup_path) is None else "no good copy is left: restore one yourself"
        return [f"opus.db {problem.removeprefix('it ')}; {fix} ({settings.db_backup_path})"]
    store = Store(settings.db_path)
    supervisor = Supervisor(settings)
    running = supervisor.is_running()
    lines = []
    if not running:
        lines.append("Opus is not running; `opus up` will start it")
        left = leftovers.left_over(settings, leftovers.scan())
        if left:
            shown = ", ".join(str(p.pid) for p in left[:8])
            lines.append(f"{len(left)} processes are left from an earlier run (pids {shown}); "
                         "`opus up` will end them")
    groups = {p["group"] for p in supervisor.processes()} if running else set()
    apps = store.list_apps()
    for app in apps:
        with locks.app_lock_if_free(settings, app.name) as free:
            if not free:
                lines.append(f"{app.name}: a deploy is under way; look again once it is done")
                continue
            found = recovery.diagnose_app(settings, store, app.name)
            lines += [f.line() for f in found]
            if running and not found:
                lines += [f"{app.name}: {difference}; `opus up` will start or stop it"
                          for difference in programs.program_differences(settings, store, app,
                                                                       groups)]
    if running:
        states = {p["name"]: p["statename"] for p in supervisor.processes()}
        lines += [f"{server.app}: its Redis ({redis.program_name(server.app)}) is not running; "
                  "`opus up` will start it" for server in store.list_redis_servers()
                  if states.get(redis.program_name(server.app)) != "RUNNING"]
    if not httpd.is_current(settings, sites.live_sites(settings, store, apps)):
        lines.append("the front's config does not match the apps and their domains; "
                     "`opus up` will render it again")
    return lines


def cmd_doctor(ctx: Context, args: list[str]) -> int:
    arity(ctx.usage, args, 0)
    lines = findings(ctx.settings)
    for line in lines:
        ctx.out(line)
    if not lines:
        ctx.out("No problems found: every app serves its recorded release, and Opus runs "
                "what its database says.")
    return 1 if lines else 0


COMMANDS = [
    Command("doctor", "opus doctor", "show what `opus up` would repair (changes nothing)",
            cmd_doctor, local_only=True),
]
