"""The one home of every step that crosses a Unix user: running app code as the
app's run user, and handing an app's files to that user.

In embedded mode as an ordinary user nothing is switched. When Opus runs as
root, app code runs as the unprivileged run user (Apache will not serve as
root). System mode routes these same calls through secureops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import select
import signal
import stat
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypedDict

from opus_paas.errors import ServiceError
from opus_paas.settings import Settings, user_ids

REAP_POLL_SECONDS = 0.2
# Process groups of the steps `stream` is running now (see kill_running_steps).
_LIVE_GROUPS: set[int] = set()
_LIVE_LOCK = threading.Lock()


class Identity(TypedDict, total=False):
    """subprocess keyword arguments that switch the child's user."""

    user: int
    group: int
    extra_groups: list[int]


def _switch_to(settings: Settings) -> tuple[int, int] | None:
    """(uid, gid) to hand things to, or None when there is no one to switch to
    (the run user is the invoking user, or Opus is not root and cannot switch)."""
    ids = user_ids(settings.app_run_user())
    return ids if ids is not None and os.geteuid() == 0 else None


def subprocess_identity(settings: Settings) -> Identity:
    """Keyword arguments for subprocess that run a child as the app's run user
    (supplementary groups dropped)."""
    ids = _switch_to(settings)
    if ids is None:
        return {}
    uid, gid = ids
    return {"user": uid, "group": gid, "extra_groups": []}


def hand_over(settings: Settings, path: Path) -> None:
    """Give `path` (and everything below it) to the run user, never following a symlink."""
    ids = _switch_to(settings)
    if ids is None:
        return
    uid, gid = ids
    os.lchown(path, uid, gid)
    if not path.is_symlink() and path.is_dir():
        _chown_tree(path, uid, gid)


def hand_over_fd(settings: Settings, fd: int) -> None:
    """Give an open file to the run user."""
    ids = _switch_to(settings)
    if ids is not None:
        os.fchown(fd, *ids)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    top_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for _root, dirs, files, root_fd in os.fwalk(".", dir_fd=top_fd, follow_symlinks=False):
            for name in dirs + files:
                os.chown(name, uid, gid, dir_fd=root_fd, follow_symlinks=False)
    finally:
        os.close(top_fd)


def stream(
    settings: Settings,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    cancelled: threading.Event | None = None,
) -> Iterator[str]:
    """Run `argv` as the app's run user and yield its output line by line as it comes.

    The child gets its own process group. When it exits, after `timeout` seconds, or
    once `cancelled` is set, whatever is left of that group is killed, so a background
    process it started can neither outlive the step nor hold its output open. Raises
    CalledProcessError, or ServiceError when timed out or cancelled, once the output
    is exhausted if it failed.
    """
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, **subprocess_identity(settings),
    )
    with _LIVE_LOCK:
        _LIVE_GROUPS.add(proc.pid)
    timed_out = threading.Event()
    stop = cancelled if cancelled is not None else threading.Event()

    def reap() -> None:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if stop.is_set() or time.monotonic() >= deadline:
                timed_out.set()
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(min(REAP_POLL_SECONDS, max(deadline - time.monotonic(), 0.01)))
        _kill_group(proc.pid)

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    assert proc.stdout is not None
    try:
        yield from bounded_lines(proc.stdout.fileno())
    finally:
        proc.stdout.close()
        _kill_group(proc.pid)
        code = proc.wait()
        reaper.join()
        with _LIVE_LOCK:
            _LIVE_GROUPS.discard(proc.pid)
    if timed_out.is_set() and stop.is_set():
        raise ServiceError("the step was cancelled because the client disconnected")
    if timed_out.is_set():
        raise ServiceError(f"the step took longer than {timeout:.0f} s and was stopped")
    if code != 0:
        raise subprocess.CalledProcessError(code, list(argv))


@dataclasses.dataclass
class Terminal:
    """A pseudo-terminal a client asked for: its size, and how to talk to the client."""

    columns: int
    rows: int
    read_input: Callable[[], bytes]          # b"" once the client closes its input
    write_output: Callable[[bytes], object]


def run_in_terminal(settings: Settings, argv: Sequence[str], *, cwd: Path,
                    env: Mapping[str, str], terminal: Terminal, timeout: float,
                    cancelled: threading.Event) -> int:
    """Run `argv` as the run user on a new pseudo-terminal that is its controlling
    terminal, relaying the client's keystrokes in and the output out; return its exit
    status. Timing out or `cancelled` kills its process group, as `stream` does."""
    controller, child_end = os.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ,
                struct.pack("HHHH", terminal.rows, terminal.columns, 0, 0))
    try:
        # setsid(1) makes the child a session leader (no fork: it is not a group leader
        # yet) with the terminal as its controlling one; its pid is its group's.
        proc = subprocess.Popen(
            ["/usr/bin/setsid", "--ctty", *argv], cwd=cwd, env=dict(env), stdin=child_end,
            stdout=child_end, stderr=child_end, **subprocess_identity(settings))
    finally:
        os.close(child_end)
    with _LIVE_LOCK:
        _LIVE_GROUPS.add(proc.pid)

    def pump_input() -> None:
        while (data := terminal.read_input()) and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.write(controller, data)

    threading.Thread(target=pump_input, daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], REAP_POLL_SECONDS)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:   # EIO: every holder of the terminal has gone
                    data = b""
                if not data:
                    break
                terminal.write_output(data)
            elif proc.poll() is not None:
                break   # exited, and nothing more to say (a leftover child may hold on)
            if cancelled.is_set() or time.monotonic() > deadline:
                _kill_group(proc.pid)
                break
        return proc.wait()
    finally:
        _kill_group(proc.pid)
        proc.wait()
        os.close(controller)
        with _LIVE_LOCK:
            _LIVE_GROUPS.discard(proc.pid)


MAX_LINE = 8 * 1024   # longer lines come out in pieces: a step's output cannot fill memory


def bounded_lines(fd: int, max_line: int = MAX_LINE) -> Iterator[str]:
    """Lines read from `fd` as they come, none longer than `max_line` bytes."""
    pending = b""
    while chunk := os.read(fd, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            for start in range(0, max(len(line), 1), max_line):
                yield line[start:start + max_line].decode("utf-8", "replace")
        while len(pending) >= max_line:
            yield pending[:max_line].decode("utf-8", "replace")
            pending = pending[max_line:]
    if pending:
        yield pending.decode("utf-8", "replace")


def kill_running_steps() -> None:
    """Kill every step `stream` is running, with its process group: called when the
    process driving them is told to stop, so no build outlives it."""
    with _LIVE_LOCK:
        groups = list(_LIVE_GROUPS)
    for pgid in groups:
        _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def make_dir(settings: Settings, path: Path, mode: int, *, for_run_user: bool) -> None:
    """Create `path` if missing and set its mode and owner (the run user, or Opus
    itself) through a descriptor: a symlink planted in its place is refused, never
    followed."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        raise ServiceError(f"{path.name} in an app's directory is not a plain directory; "
                           "remove it and push again") from None
    try:
        os.fchmod(fd, mode)
        if os.geteuid() == 0:
            ids = _switch_to(settings) if for_run_user else None
            os.fchown(fd, *(ids or (os.geteuid(), os.getegid())))
    finally:
        os.close(fd)


def read_run_user_file(top: Path, relative: str, limit: int = 1 << 20) -> bytes | None:
    """Read a file the run user could have planted (e.g. in a slug): every component
    opened without following symlinks, regular files only, at most `limit` bytes.
    None if it is missing; ServiceError if it is anything but a small regular file."""
    parts = Path(relative).parts
    fds: list[int] = []
    try:
        fds.append(os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))
        for part in parts[:-1]:
            fds.append(os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                               dir_fd=fds[-1]))
        fds.append(os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                           dir_fd=fds[-1]))
        info = os.fstat(fds[-1])
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise ServiceError(f"{relative} is not a regular file of at most {limit} bytes")
        data = os.read(fds[-1], limit + 1)
        if len(data) > limit:
            raise ServiceError(f"{relative} is larger than {limit} bytes")
        return data
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ServiceError(f"{relative} could not be read safely ({exc.strerror}); "
                           "it must be a plain file, not a link") from None
    finally:
        for fd in reversed(fds):
            os.close(fd)
