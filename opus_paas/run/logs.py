"""An app's logs: its processes' output and the front's access log, merged in time order,
the last lines or followed live, Heroku's way: `TIME app[web.1]: text`.

Supervisor writes each process's output to logs/<app>/<type>[.<n>].log (and rotates it
to ….log.1 …); every line carries the time it was written (`opus_runtime.stamp`). A
follower notices a rotation and goes on in the new file.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from opus_paas import names, privileged, redact
from opus_paas.errors import NotFound
from opus_paas.front import httpd
from opus_paas.layout import AppPaths
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.swarm import appview

FOLLOW_POLL_SECONDS = 0.3
# How often a follower asks whether its reader may still read (see `follow`).
ACCESS_CHECK_SECONDS = 2.0
MAX_LINES = 10_000
READ_LIMIT = 1 << 20   # bytes a follower reads per file per round


def log_files(settings: Settings, app: str, process_type: str | None) -> list[Path]:
    """The log of each process type of `app` (or of `process_type` only)."""
    directory = AppPaths.of(settings, app).logs
    if process_type is not None:
        names.check_process_type(process_type)
        found = sorted(p for p in (directory / f"{process_type}.log",
                                   *directory.glob(f"{process_type}.[0-9]*.log"))
                       if p.is_file())
        if not found:
            raise NotFound(f"no {process_type} log for {app} yet; `opus ps {app}` lists its "
                           "process types")
        return found
    if not directory.is_dir():
        return []
    # The app's Redis writes its own unstamped lines: shown with `--ps redis` only, so the
    # merged view stays in time order.
    return sorted(p for p in directory.glob("*.log")
                  if p.is_file() and p.name not in ("pushes.log", "redis.log")
                  and not p.name.startswith("build-"))


STAMPED = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (.*)", re.S)
ACCESS_TAIL_BYTES = 4 << 20    # how far back in the front's shared access log to look


@dataclasses.dataclass(frozen=True)
class Entry:
    """One log line: when (ISO 8601 UTC, "" if unknown), from which process, what."""

    at: str
    source: str      # web.1, worker.2, front
    text: str

    def render(self, app: str) -> str:
        owner = "opus" if self.source == "front" else app
        return f"{self.at or '-'} {owner}[{self.source}]: {self.text}"


def process_name(path: Path) -> str:
    """web.log → web.1 (one instance serves); worker.2.log → worker.2."""
    return path.stem if "." in path.stem else f"{path.stem}.1"


def process_entries(lines: Iterable[str], source: str, at: str = "") -> list[Entry]:
    """Entries of a process's log lines (pure). A line without its own timestamp (a
    traceback's continuation) takes the one before it."""
    found = []
    for line in lines:
        stamped = STAMPED.fullmatch(line)
        if stamped:
            at, line = stamped.group(1), stamped.group(2)
        found.append(Entry(at, source, line))
    return found


def access_entries(lines: Iterable[str], hosts: Iterable[str]) -> list[Entry]:
    """The front's access log lines for an app's vhost (`hosts`: its ServerName), with
    their time in the same form as the processes' (pure)."""
    return [Entry(line.at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "front",
                  f"{line.client} {line.rest}") for line in httpd.log_lines_for(lines, hosts)]


def merged(groups: Iterable[list[Entry]]) -> list[Entry]:
    """All entries in time order; a stable sort keeps each source's own order."""
    return sorted((e for group in groups for e in group), key=lambda e: e.at)


def tail(paths: list[Path], count: int, access_log: Path | None = None,
         hosts: Iterable[str] = ()) -> list[Entry]:
    """The last `count` entries over the processes' logs `paths` and (if given) the
    front's access log, merged in time order."""
    count = max(0, min(count, MAX_LINES))
    if not count:
        return []
    groups = []
    for path in paths:
        with path.open("rb") as handle:
            kept: deque[str] = deque(privileged.bounded_lines(handle.fileno()), maxlen=count)
        groups.append(process_entries(kept, process_name(path)))
    if access_log is not None and access_log.is_file():
        groups.append(access_entries(last_lines(access_log, ACCESS_TAIL_BYTES), hosts)[-count:])
    return merged(groups)[-count:]


def last_lines(path: Path, size: int) -> list[str]:
    """The whole lines in the last `size` bytes of `path`."""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        data = handle.read(size)
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[1:] if len(data) == size else lines   # the first may be cut


def follow(paths: list[Path], stop: threading.Event, access_log: Path | None = None,
           hosts: Iterable[str] = (),
           allowed: Callable[[], bool] | None = None) -> Iterator[Entry]:
    """Entries appended from now on, each round's in time order, until `stop` is set
    or, asked every ACCESS_CHECK_SECONDS, `allowed()` is false."""
    watched = [*paths, *([access_log] if access_log is not None else [])]
    positions = {path: _end(path) for path in watched}
    last_at = {path: "" for path in watched}
    checked = time.monotonic()
    while not stop.is_set():
        if allowed is not None and time.monotonic() - checked >= ACCESS_CHECK_SECONDS:
            if not allowed():
                return
            checked = time.monotonic()
        groups = []
        for path in watched:
            positions[path], new = _read_new(path, positions[path])
            if path == access_log:
                groups.append(access_entries(new, hosts))
            else:
                entries = process_entries(new, process_name(path), last_at[path])
                if entries:
                    last_at[path] = entries[-1].at
                groups.append(entries)
        yield from merged(groups)
        stop.wait(FOLLOW_POLL_SECONDS)


@dataclasses.dataclass(frozen=True)
class AppLogs:
    """Where an app's entries come from, and how a client is shown them: the same for
    `opus logs` and the dashboard."""

    paths: list[Path]
    access_log: Path | None
    hosts: list[str]
    redactions: list[tuple[str, str]]

    def shown(self, entry: Entry) -> Entry:
        """`entry` with no absolute server path and no terminal control in it."""
        return dataclasses.replace(entry, text=redact.shown(entry.text, self.redactions))

    def tail(self, count: int) -> list[Entry]:
        return [self.shown(e) for e in tail(self.paths, count, self.access_log, self.hosts)]

    def follow(self, stop: threading.Event,
               allowed: Callable[[], bool] | None = None) -> Iterator[Entry]:
        if not self.paths:
            raise NotFound("no logs yet; they start with the first deploy")
        for entry in follow(self.paths, stop, self.access_log, self.hosts, allowed):
            yield self.shown(entry)


def app_logs(settings: Settings, app: App, process_type: str | None) -> AppLogs:
    """`app`'s logs (of one process type, or all of them and the front's lines)."""
    slug = (None if app.live_version is None else
            AppPaths.of(settings, app.name).slug(app.live_slug or app.live_version))
    # The front's lines come along unless one process type was asked for.
    access_log = None if process_type else settings.logs_dir / "front" / "access.log"
    if appview.on_swarm(Store(settings.db_path), app):
        return SwarmAppLogs(paths=_files_if_any(settings, app.name, process_type),
                            access_log=access_log, hosts=[settings.app_domain(app.name)],
                            redactions=redact.replacements(settings, slug),
                            settings=settings, app=app.name, process_type=process_type)
    return AppLogs(
        paths=log_files(settings, app.name, process_type),
        access_log=access_log,
        hosts=[settings.app_domain(app.name)],
        redactions=redact.replacements(settings, slug),
    )


# ---- a swarm app: its services' lines from the manager (swarm/appview.py) ----------------

def _files_if_any(settings: Settings, app: str, process_type: str | None) -> list[Path]:
    try:
        return log_files(settings, app, process_type)
    except NotFound:
        return []


@dataclasses.dataclass(frozen=True)
class SwarmAppLogs(AppLogs):
    """A swarm app's logs: its tasks' lines (`TYPE.SLOT@NODE`), merged in time order with
    what it wrote on this host before it moved, and the front's lines."""

    settings: Settings | None = None
    app: str = ""
    process_type: str | None = None

    def _entries(self, lines: Iterable[appview.LogLine]) -> list[Entry]:
        return [Entry(line.at, line.source, line.text) for line in lines]

    def tail(self, count: int) -> list[Entry]:
        assert self.settings is not None
        count = max(0, min(count, MAX_LINES))
        swarm = self._entries(appview.log_lines(self.settings, self.app, self.process_type,
                                                count))
        here = tail(self.paths, count, self.access_log, self.hosts)
        return [self.shown(e) for e in merged([here, swarm])[-count:]] if count else []

    def follow(self, stop: threading.Event,
               allowed: Callable[[], bool] | None = None) -> Iterator[Entry]:
        assert self.settings is not None
        watched = [*self.paths, *([self.access_log] if self.access_log is not None else [])]
        positions = {path: _end(path) for path in watched}
        checked = time.monotonic()
        rounds = appview.follow(self.settings, self.app, self.process_type, stop)
        try:
            for batch in rounds:
                if allowed is not None and time.monotonic() - checked >= ACCESS_CHECK_SECONDS:
                    if not allowed():
                        return
                    checked = time.monotonic()
                groups = [self._entries(batch)]
                for path in watched:
                    positions[path], new = _read_new(path, positions[path])
                    groups.append(access_entries(new, self.hosts) if path == self.access_log
                                  else process_entries(new, process_name(path)))
                yield from (self.shown(e) for e in merged(groups))
        finally:
            rounds.close()


def _end(path: Path) -> tuple[int, int]:
    """(inode, offset) at the file's end now."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return (0, 0)
    return (info.st_ino, info.st_size)


def _read_new(path: Path, position: tuple[int, int]) -> tuple[tuple[int, int], list[str]]:
    inode, offset = position
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return position, []
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_ino != inode or info.st_size < offset:
            offset = 0        # rotated or truncated: the new file from its start
        handle.seek(offset)
        data = handle.read(READ_LIMIT)
    # Only whole lines; a half-written last line waits for the next round, unless it
    # is already longer than any line should be.
    complete = data[: data.rfind(b"\n") + 1] if len(data) < READ_LIMIT else data
    lines = complete.decode("utf-8", "replace").splitlines()
    return (info.st_ino, offset + len(complete)), lines
