"""The supervisor programs of one app, rendered here (pure): `user=` is always the app's
user, the log always in the app's log directory, and every value escaped for
supervisor's config (which expands %(name)s and splits commands like a shell)."""

from __future__ import annotations

import re
import shlex

from secureops.checks import PROCESS_NUM, ProgramSpec
from secureops.layout import Denied, Layout

COMMENT = re.compile(r"\s[;#]")   # supervisor ends a value at an inline comment


def _ini(value: str, *, numbered: bool = False) -> str:
    if any(c in value for c in "\0\n\r"):
        raise Denied("a newline cannot go into a supervisor config")
    if COMMENT.search(value):
        raise Denied(f"{value[:60]!r}: a space before ';' or '#' would cut the value short in "
                     "supervisor's config")
    escaped = value.replace("%", "%%")
    # With numprocs, %(process_num)d is let through: each process learns its number.
    return escaped.replace(PROCESS_NUM.replace("%", "%%"), PROCESS_NUM) if numbered else escaped


def _env(environment: dict[str, str]) -> str:
    parts = []
    for key, value in sorted(environment.items()):
        if '"' in value or "\\" in value:
            raise Denied(f"environment {key}: a quote or backslash cannot go into supervisor's "
                         "environment line; pass it in the release's env file")
        parts.append(f'{key}="{_ini(value)}"')
    return ",".join(parts)


def programs(layout: Layout, app: str, specs: list[ProgramSpec], *, user: str | None) -> str:
    """conf.d/app-<app>.conf for these programs, each run as `user`: the app's own (or,
    in same-user mode, the shared one; None: supervisord's own, so no user= line)."""
    sections = [f"; Rendered by secureops for {app}; every program runs as "
                f"{user or 'supervisord' + chr(39) + 's own user'}."]
    for spec in specs:
        numbered = spec.numprocs > 0
        command = " ".join(shlex.quote(a) for a in spec.command)
        lines = [
            f"[program:{spec.name}]",
            f"command={_ini(command, numbered=numbered)}",
            f"directory={_ini(str(spec.directory))}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={spec.startsecs}",
            "startretries=5",
            f"stopsignal={spec.stopsignal}",
            f"stopwaitsecs={spec.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_ini(str(layout.logs / app / spec.log_name), numbered=numbered)}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=3",
        ]
        if user:
            lines.append(f"user={user}")
        if numbered:
            lines += [f"numprocs={spec.numprocs}", "numprocs_start=1",
                      f"process_name=%(program_name)s.{PROCESS_NUM}"]
        if spec.environment:
            lines.append(f"environment={_env(spec.environment)}")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"
