"""What every command gets (a Context) and how it is declared (a Command), apart from
the table itself: a capability keeps its commands in a module of its own, a list named
COMMANDS that the table takes in."""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from opus_paas import privileged
from opus_paas.access import Actor
from opus_paas.errors import UsageError
from opus_paas.settings import Settings
from opus_paas.store import Store

Output = Callable[[str], None]
STDIN_LIMIT = 64 * 1024
# Commands that get the client's terminal when it asks for one (`ssh -t`).
TERMINAL_COMMANDS = ("run", "pg:psql")


@dataclasses.dataclass
class Context:
    """One command's run: settings, who runs it, where its output goes."""

    settings: Settings
    actor: Actor
    out: Output
    read_stdin: Callable[[int], str]
    remote: bool = False          # over SSH
    json: bool = False
    app: str | None = None        # from --app
    # Set when the command should stop early (the SSH client went away).
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    # The client's terminal, when it asked for one (`ssh -t … run …`).
    terminal: privileged.Terminal | None = None
    # Where binary output goes (a backup's bytes), when the edge has such a stream.
    write_bytes: Callable[[bytes], object] | None = None
    # The running command's usage line (its Command's, set by commands.run): the one
    # text every usage error of the command shows.
    usage: str = ""

    @functools.cached_property
    def store(self) -> Store:
        store = Store(self.settings.db_path)
        store.init()
        return store

    def emit_json(self, value: Any) -> None:
        self.out(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    usage: str
    summary: str
    run: Callable[[Context, list[str]], int | None]   # the exit status; None: 0
    local_only: bool = False     # on the Opus host only (starting and stopping Opus)
    takes_app: bool = False      # its first argument is APP (filled in from --app)
    note: str = ""               # said with the usage on errors and `help COMMAND`

    @property
    def usage_line(self) -> str:
        """The usage, with its note: what a usage error shows."""
        return f"{self.usage}   {self.note}" if self.note else self.usage


def arity(usage: str, args: list[str], count: int | tuple[int, int]) -> None:
    low, high = (count, count) if isinstance(count, int) else count
    if not low <= len(args) <= high:
        raise UsageError(f"usage: {usage}")


def confirmed(usage: str, args: list[str]) -> tuple[str, str]:
    """`APP --confirm APP` of a command that deletes data: the app named and the name
    repeated (checked against the app by `require_repeated`)."""
    if len(args) != 3 or args[1] != "--confirm":
        raise UsageError(f"usage: {usage}")
    return args[0], args[2]


def require_repeated(name: str, repeated: str, what_goes: str) -> None:
    """Refuse unless the app's name was repeated: `what_goes` says what is lost."""
    if repeated != name:
        raise UsageError(f"{what_goes}; to go ahead, repeat its name: --confirm {name}")


def when(timestamp: float | None) -> str:
    """A moment as the commands' tables show it (UTC), or "-" for none."""
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))
