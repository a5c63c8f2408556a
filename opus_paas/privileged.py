"""The one home of every step that crosses a Unix user, and the only caller of secureops.

Every such step is a secureops request (verbs in secureops/verbs.py):
- system mode: `sudo -n opus-secureops VERB [APP]`, the spec on standard input; each
  app has a user of its own;
- embedded mode: the same request handled in-process in same-user mode, which runs
  every check; apps run as the invoking user, or as the run user (`nobody`) when Opus
  runs as root (Apache will not serve as root).
A build step (`run`) is checked the same way; in embedded mode Opus then starts it
itself, so its output streams and it can be given a terminal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import grp
import io
import json
import os
import re
import select
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypedDict

from opus_paas import guard
from opus_paas.errors import ServiceError
from opus_paas.settings import SECUREOPS, Settings, user_ids
from secureops import checks as secureops_checks
from secureops import cli as secureops_cli
from secureops.layout import Denied, Layout

REAP_POLL_SECONDS = 0.05    # a step that ends is seen ending within this (each step waits it)
# In the environment of every process Opus starts (programs, steps): its home.
INSTANCE_MARKER = "OPUS_INSTANCE"
SUDO = "/usr/bin/sudo"
# The steps running now, each with whether it runs through sudo (see kill_running_steps).
_LIVE_STEPS: dict[subprocess.Popen[bytes], bool] = {}
# How long output is still read after a step ended and its group was killed: a process
# that left the group (setsid) may hold the pipe open; the push must not wait for it.
DRAIN_AFTER_EXIT = 1.0
# How long a step whose output has ended is given to exit before its group is killed.
EXIT_AFTER_OUTPUT = 5.0
_LIVE_LOCK = threading.Lock()


class Identity(TypedDict, total=False):
    """subprocess keyword arguments that switch the child's user."""

    user: int
    group: int
    extra_groups: list[int]


# ---- secureops requests -----------------------------------------------------------------

def embedded_layout(settings: Settings) -> Layout:
    """secureops's layout for embedded Opus (same-user mode), from Opus's settings."""
    run_user = settings.app_run_user() if os.geteuid() == 0 else None
    ids = user_ids(run_user)
    gid = ids[1] if ids else os.getegid()
    return Layout(home=settings.home, conf_d=settings.supervisor_dir / "conf.d",
                  front=settings.front_dir, logs=settings.logs_dir,
                  log=settings.logs_dir / "secureops.log",
                  front_group=grp.getgrgid(gid).gr_name, shared_user=run_user or "",
                  apache_bin=settings.apache_bin, apache_modules=settings.apache_modules,
                  pythons=settings.managed_pythons_dir, wheels=settings.wheelhouse_dir)


def secureops(settings: Settings, verb: str, app: str | None = None,
              spec: object | None = None) -> list[str]:
    """One secureops request; ServiceError with its reason if it is refused or fails.
    Returns what the verb said when done (its notes, one a line)."""
    argv = [verb] if app is None else [verb, app]
    text = "" if spec is None else json.dumps(spec) + "\n"
    if settings.system:
        done = subprocess.run([SUDO, "-n", str(SECUREOPS), *argv], input=text,
                              capture_output=True, text=True, check=False,
                              env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        status, message = done.returncode, done.stderr.strip()
    else:
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        status, message = secureops_cli.request(embedded_layout(settings), argv,
                                                io.StringIO(text), f"uid {os.getuid()}",
                                                same_user=True)
    if status != 0:
        reason = message.removeprefix("secureops: ").replace(str(settings.home), "$OPUS_HOME")
        raise ServiceError(f"{verb} was not done: {reason or f'exit status {status}'}")
    return message.splitlines()


def create_app_user(settings: Settings, app: str) -> None:
    secureops(settings, "user-create", app)


def delete_app_user(settings: Settings, app: str) -> None:
    secureops(settings, "user-delete", app)


def hand_over(settings: Settings, app: str) -> None:
    """Give what Opus made in the app's trees (a slug, an env file, the app's own
    directories) to the app's user, never following a symlink."""
    secureops(settings, "hand-over", app)


def remove_release(settings: Settings, app: str, version: int) -> None:
    """Remove release `version`'s slug and env file (the app's user owns them)."""
    secureops(settings, "release-remove", app, {"version": version})


def copy_static(settings: Settings, app: str, version: int, *, live: bool) -> list[str]:
    """Have secureops copy release `version`'s static files to where the front serves
    them (a copy the app cannot change; made once per release), and with `live` make it
    the one served. Returns what the copy said (entries skipped, its size)."""
    return secureops(settings, "static-install", app, {"version": version, "live": live})


def remove_app(settings: Settings, app: str) -> None:
    """Remove the app's directory, its logs and its supervisor programs."""
    secureops(settings, "app-remove", app)


def install_programs(settings: Settings, app: str, programs: list[dict[str, Any]]) -> None:
    """Make these the app's supervisor programs (rendered by secureops; none: removed)."""
    if programs:
        secureops(settings, "programs-install", app, {"programs": programs})
    else:
        secureops(settings, "programs-remove", app)


def install_redis(settings: Settings, app: str, port: int, maxmemory: int,
                  password_sha256: str) -> bool:
    """Have secureops write the app's Redis config (the password's SHA-256 only) and
    supervisor program; True if the config changed (the server must restart)."""
    notes = secureops(settings, "redis-install", app,
                      {"port": port, "maxmemory": maxmemory,
                       "password_sha256": password_sha256})
    return "changed" in notes


def remove_redis(settings: Settings, app: str, *, data: bool) -> None:
    """Remove the app's Redis program; with `data`, its directory too (stopped first)."""
    secureops(settings, "redis-remove", app, {"data": data})


def install_front(settings: Settings, spec: dict[str, Any]) -> None:
    """Render, test and install the front's whole config (secureops's front-install)."""
    secureops(settings, "front-install", None, spec)


def install_python(settings: Settings, name: str) -> None:
    """Copy the interpreter Opus staged (staging/pythons/NAME) to where builds find it,
    root's and world-readable in system mode."""
    secureops(settings, "python-install", None, {"name": name})


def remove_python(settings: Settings, name: str) -> None:
    secureops(settings, "python-remove", None, {"name": name})


def install_wheels(settings: Settings, key: str) -> None:
    """Copy the wheels Opus staged (staging/wheels/KEY) into the wheelhouse."""
    secureops(settings, "wheels-install", None, {"key": key})


def remove_wheels(settings: Settings, key: str) -> None:
    secureops(settings, "wheels-remove", None, {"key": key})


def install_cert(settings: Settings, site: str, chain_pem: str, key_pem: str) -> None:
    """Give secureops a site's certificate chain and key (checked, rewritten and kept
    where root trusts them, 0600); the front uses them from its next render."""
    secureops(settings, "cert-install", None, {"site": site, "chain": chain_pem,
                                                "key": key_pem})


def remove_cert(settings: Settings, site: str) -> None:
    secureops(settings, "cert-remove", None, {"site": site})


def _switch_to(settings: Settings) -> tuple[int, int] | None:
    """Embedded mode: (uid, gid) app code runs as, or None when no switch is needed
    (the run user is the invoking user, or Opus is not root and cannot switch)."""
    ids = user_ids(settings.app_run_user())
    return ids if ids is not None and os.geteuid() == 0 else None


def subprocess_identity(settings: Settings) -> Identity:
    """Keyword arguments for subprocess that run a child as the embedded run user
    (supplementary groups dropped)."""
    ids = _switch_to(settings)
    if ids is None:
        return {}
    uid, gid = ids
    return {"user": uid, "group": gid, "extra_groups": []}


@dataclasses.dataclass(frozen=True)
class Step:
    """How to start a step as the app's user: the argv to run, with what environment
    and standard input, and how to stop it."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    spec: str | None            # written to its standard input (system mode)
    identity: Identity
    through_sudo: bool


def step(settings: Settings, app: str, argv: Sequence[str], cwd: Path,
         env: Mapping[str, str], *, reads_input: bool = False) -> Step:
    """A build or release step (or `opus run`) as `app`'s user, checked by secureops's
    own rules first. In system mode it goes through secureops's `run` verb (`run-input`
    when the step reads what is written after the spec: `reads_input`)."""
    # OPUS_INSTANCE marks every process of this Opus, so `opus up` finds what a crash
    # left of an earlier run (control/leftovers.py).
    env = {**env, INSTANCE_MARKER: str(settings.home)}
    spec = {"argv": list(argv), "cwd": str(cwd), "env": dict(env)}
    layout = embedded_layout(settings) if not settings.system else None
    try:
        secureops_checks.app_name(app)
        if layout is not None:
            secureops_checks.run(layout, app, spec)
    except Denied as exc:
        raise ServiceError(f"the step was refused: {exc}") from None
    if settings.system:
        verb = "run-input" if reads_input else "run"
        return Step([SUDO, "-n", str(SECUREOPS), verb, app], settings.home,
                    {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                     INSTANCE_MARKER: str(settings.home)}, json.dumps(spec) + "\n", {}, True)
    return Step(list(argv), cwd, dict(env), None, subprocess_identity(settings), False)


def command_argv(settings: Settings, argv: list[str], path: str) -> list[str]:
    """`argv` with its program found on `path` (the release's venv first). In system
    mode Opus may not look into the app's files: /usr/bin/env finds it, as the app."""
    if not argv or "/" in argv[0]:
        return argv
    if settings.system:
        return ["/usr/bin/env", "--", *argv]
    return [shutil.which(argv[0], path=path) or argv[0], *argv[1:]]


def run_step(settings: Settings, app: str, argv: Sequence[str], *, cwd: Path,
             env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a short step as the app's user and collect its output."""
    how = step(settings, app, argv, cwd, env)
    return subprocess.run(how.argv, cwd=how.cwd, env=how.env, input=how.spec or "",
                          capture_output=True, text=True, check=False,
                          preexec_fn=guard.default_signals, **how.identity)


def run_bytes(settings: Settings, app: str, argv: Sequence[str], *, cwd: Path,
              env: Mapping[str, str], data: bytes = b"", timeout: float,
              limit: int) -> tuple[bytes, str]:
    """Run a step as the app's user with `data` on its standard input; its standard
    output, bytes as they are (an archive, at most `limit` bytes), and what it said on
    stderr. ServiceError when it fails, times out or says more than `limit`."""
    how = step(settings, app, argv, cwd, env, reads_input=True)
    with tempfile.TemporaryFile() as said:
        proc = subprocess.Popen(how.argv, cwd=how.cwd, env=how.env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=said,
                                preexec_fn=guard.default_signals, **how.identity)
        assert proc.stdin is not None and proc.stdout is not None
        threading.Thread(target=_write_and_close,
                         args=(proc.stdin, (how.spec or "").encode() + data),
                         daemon=True).start()
        timer = threading.Timer(timeout, proc.terminate)   # (sudo passes SIGTERM on)
        timer.start()
        try:
            out = proc.stdout.read(limit + 1)
            if len(out) > limit:
                proc.terminate()
            proc.stdout.close()
            code = proc.wait()
        finally:
            timer.cancel()
        said.seek(0)
        text = said.read(1 << 20).decode(errors="replace")
    if len(out) > limit:
        raise ServiceError(f"the step gave more than {limit} bytes and was stopped")
    if code != 0:
        stopped = f" (stopped after {timeout:.0f} s)" if code < 0 else ""
        raise ServiceError(f"the step failed (exit status {code}){stopped}: "
                           f"{text.strip()[-600:]}")
    return out, text


def stream(
    settings: Settings,
    app: str,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    cancelled: threading.Event | None = None,
    input: str | None = None,
) -> Iterator[str]:
    """Run `argv` as the app's run user and yield its output line by line as it comes;
    `input`, if given, is its standard input (what must stay out of its arguments,
    which every local user can read in /proc).

    The child gets its own process group. When it exits, after `timeout` seconds, or
    once `cancelled` is set, whatever is left of that group is killed, so a background
    process it started can neither outlive the step nor hold its output open. Raises
    CalledProcessError, or ServiceError when timed out or cancelled, once the output
    is exhausted if it failed.
    """
    how = step(settings, app, argv, cwd, env, reads_input=input is not None)
    written = (how.spec or "") + (input or "")
    # The step dies with the thread that started it (a SIGKILL of the SSH server); what
    # it started goes to the server's guard, which ends it (opus_runtime/guard.py).
    proc = subprocess.Popen(
        how.argv, cwd=how.cwd, env=how.env,
        stdin=subprocess.PIPE if written else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=guard.prepare_child, **how.identity,
    )
    if written and proc.stdin is not None:
        # From a thread: a step may answer before it has read all of its input.
        threading.Thread(target=_write_and_close, args=(proc.stdin, written.encode()),
                         daemon=True).start()
    with _LIVE_LOCK:
        _LIVE_STEPS[proc] = how.through_sudo
    timed_out = threading.Event()
    ended = threading.Event()
    stop = cancelled if cancelled is not None else threading.Event()

    def reap() -> None:
        deadline = time.monotonic() + timeout
        while True:
            with _LIVE_LOCK:      # (reaping and signalling under one lock: no pid reuse)
                running = proc.poll() is None
            if not running:
                break
            if stop.is_set() or time.monotonic() >= deadline:
                timed_out.set()
                break
            time.sleep(REAP_POLL_SECONDS)
        _stop(proc)
        ended.set()

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    assert proc.stdout is not None
    try:
        yield from bounded_lines(proc.stdout.fileno(), until=ended)
        # The output ended: the step is exiting. Its status is its own, not that of the
        # SIGKILL below, which would otherwise reach it between its last write and its
        # exit (a release command failed as "killed by signal 9" after it had succeeded).
        ended.wait(EXIT_AFTER_OUTPUT)
    finally:
        proc.stdout.close()
        _stop(proc)
        code = proc.wait()
        reaper.join()
        with _LIVE_LOCK:
            _LIVE_STEPS.pop(proc, None)
    if timed_out.is_set() and stop.is_set():
        raise ServiceError("the step was cancelled because the client disconnected")
    if timed_out.is_set():
        raise ServiceError(f"the step took longer than {timeout:.0f} s and was stopped")
    if code != 0:
        raise subprocess.CalledProcessError(code, list(argv))


def _write_and_close(pipe: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, OSError, ValueError):
        pipe.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.close()


@dataclasses.dataclass
class Terminal:
    """A pseudo-terminal a client asked for: its size, and how to talk to the client."""

    columns: int
    rows: int
    read_input: Callable[[], bytes]          # b"" once the client closes its input
    write_output: Callable[[bytes], object]
    term: str = "dumb"                       # TERM for the step: the client's terminal type


TERM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")


def terminal_type(requested: bytes) -> str:
    """The TERM a step gets for a client's pty request: the client's own terminal type if
    it is a plain name (xterm-256color, screen.linux), else "dumb"."""
    text = requested.decode("ascii", "replace")
    return text if TERM_NAME.fullmatch(text) else "dumb"


def run_in_terminal(settings: Settings, app: str, argv: Sequence[str], *, cwd: Path,
                    env: Mapping[str, str], terminal: Terminal, timeout: float,
                    cancelled: threading.Event) -> int:
    """Run `argv` as the app's user on a new pseudo-terminal that is its controlling
    terminal, relaying the client's keystrokes in and the output out; return its exit
    status. Timing out or `cancelled` kills its process group, as `stream` does. In
    system mode secureops opens the terminal (`run-terminal`) and relays through sudo."""
    how = step(settings, app, argv, cwd, {**env, "TERM": terminal.term})   # checked as any is
    if settings.system:
        spec = {**json.loads(how.spec or "{}"), "rows": terminal.rows,
                "columns": terminal.columns}
        proc = subprocess.Popen(
            [SUDO, "-n", str(SECUREOPS), "run-terminal", app], cwd=how.cwd, env=how.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        assert proc.stdin is not None and proc.stdout is not None
        os.write(proc.stdin.fileno(), (json.dumps(spec) + "\n").encode())
        read_from, write_to = proc.stdout.fileno(), proc.stdin.fileno()
    else:
        controller, child_end = os.openpty()
        fcntl.ioctl(child_end, termios.TIOCSWINSZ,
                    struct.pack("HHHH", terminal.rows, terminal.columns, 0, 0))
        try:
            # setsid(1) makes the child a session leader (no fork: it is not a group
            # leader yet) with the terminal as its controlling one; its pid is its group's.
            proc = subprocess.Popen(
                ["/usr/bin/setsid", "--ctty", *argv], cwd=cwd, env=how.env, stdin=child_end,
                stdout=child_end, stderr=child_end, preexec_fn=guard.default_signals,
                **subprocess_identity(settings))
        finally:
            os.close(child_end)
        read_from = write_to = controller
    with _LIVE_LOCK:
        _LIVE_STEPS[proc] = settings.system
    try:
        return _relay_terminal(proc, read_from, write_to, terminal, timeout, cancelled)
    finally:
        _stop(proc)
        proc.wait()
        if not settings.system:
            os.close(read_from)
        with _LIVE_LOCK:
            _LIVE_STEPS.pop(proc, None)


def _relay_terminal(proc: subprocess.Popen[bytes], read_from: int, write_to: int,
                    terminal: Terminal, timeout: float, cancelled: threading.Event) -> int:
    def pump_input() -> None:
        while (data := terminal.read_input()) and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.write(write_to, data)

    threading.Thread(target=pump_input, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([read_from], [], [], REAP_POLL_SECONDS)
        if ready:
            try:
                data = os.read(read_from, 65536)
            except OSError:   # EIO: every holder of the terminal has gone
                data = b""
            if not data:
                break
            terminal.write_output(data)
        elif proc.poll() is not None:
            break   # exited, and nothing more to say (a leftover child may hold on)
        if cancelled.is_set() or time.monotonic() > deadline:
            _stop(proc)
            break
    return proc.wait()


MAX_LINE = 8 * 1024   # longer lines come out in pieces: a step's output cannot fill memory


def bounded_lines(fd: int, max_line: int = MAX_LINE,
                  until: threading.Event | None = None) -> Iterator[str]:
    """Lines read from `fd` as they come, none longer than `max_line` bytes. With
    `until`: reading also ends DRAIN_AFTER_EXIT seconds after it is set, even if some
    process still holds the other end open."""
    pending = b""
    ended_at: float | None = None
    while True:
        if until is not None:
            ready, _, _ = select.select([fd], [], [], REAP_POLL_SECONDS)
            if not ready:
                if until.is_set():
                    ended_at = ended_at or time.monotonic()
                    if time.monotonic() - ended_at >= DRAIN_AFTER_EXIT:
                        break
                continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
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
        steps = list(_LIVE_STEPS)
    for proc in steps:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill a step's process group, unless it was reaped already (its pid could be
    someone else's by now). A step run through sudo belongs to the app's user, whom
    Opus may not signal: sudo relays SIGTERM to secureops, which kills the group."""
    with _LIVE_LOCK:
        if proc.returncode is not None and _LIVE_STEPS.get(proc, False):
            return          # sudo is gone: secureops killed the group before it ended
        through_sudo = _LIVE_STEPS.get(proc, False)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if through_sudo:
                proc.send_signal(signal.SIGTERM)
            else:
                # The group can outlive its leader (a background child): killpg is
                # still right after the leader was reaped, and the group id cannot be
                # given out again while any member lives.
                os.killpg(proc.pid, signal.SIGKILL)


def make_dir(path: Path, mode: int, *, own: bool) -> bool:
    """Create `path` at `mode` if missing; True if it was. A directory of Opus's `own`
    gets its mode again each time; one that is the app's (handed over, see hand_over)
    is left as it is. A symlink planted in its place is refused, never followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = False
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
        own = created = True       # made just now: Opus's until handed over
    refused = ServiceError(f"{path.name} in an app's directory is not a plain directory; "
                           "remove it and push again")
    if not own:     # the app's already (maybe not even readable by Opus): only look
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise refused
        return created
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        raise refused from None
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return created


def make_package_cache(settings: Settings) -> None:
    """Embedded mode: the package cache every build shares, the run user's. (System
    mode has none: each app's builds keep their packages in its own cache, so no app's
    build can plant what another installs.)"""
    path = settings.package_cache
    make_dir(path, 0o755, own=True)
    ids = _switch_to(settings)
    if ids is not None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, *ids)
        finally:
            os.close(fd)


def is_run_user_file(top: Path, relative: str) -> bool:
    """True if `relative` under `top` (a tree the run user could have changed) is a
    regular file reached through real directories: no component is a link. Nothing is
    read (O_PATH), so a file the run user made unreadable still counts."""
    parts = Path(relative).parts
    if not parts or any(part in ("", ".", "..", "/") for part in parts):
        return False
    fds: list[int] = []
    flags = os.O_PATH | os.O_NOFOLLOW
    try:
        fds.append(os.open(top, flags | os.O_DIRECTORY))
        for part in parts[:-1]:
            fds.append(os.open(part, flags | os.O_DIRECTORY, dir_fd=fds[-1]))
        return stat.S_ISREG(os.stat(parts[-1], dir_fd=fds[-1], follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        for fd in reversed(fds):
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
