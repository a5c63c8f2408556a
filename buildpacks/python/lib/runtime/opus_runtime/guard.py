"""Keeps a process tree together: nothing a command starts outlives it, its wrapper, or
the supervisor above them.

Usage: ``python guard.py [--grace SECONDS] [--terminal] -- COMMAND [ARGS…]`` (stdlib
only). Opus's own programs and secureops's steps run under it; the apps' wrappers
(stamp, supervise) use its functions:

- the wrapper is a child subreaper (``PR_SET_CHILD_SUBREAPER``): whatever of the
  command's tree is orphaned (the children of an Apache master killed with SIGKILL, a
  helper that daemonized) is re-parented to it, so it finds and ends them;
- the wrapper and its command get SIGTERM when their parent dies
  (``PR_SET_PDEATHSIG``): a SIGKILL of supervisord ends every program instead of
  leaving it running, holding its port;
- a wrapper whose parent died sends SIGKILL to what is left after a grace (nobody
  else is left to), and a wrapper whose command ended ends what the command left;
- the command starts with every signal at its default action and none blocked
  (``prepare_child``), as under a login shell: Python ignores SIGPIPE and SIGXFSZ and
  subprocess restores only those, while an ignored signal (``nohup``'s SIGHUP) or a
  blocked one would pass through every exec to the app (``yes | migrate`` never ends
  when ``yes`` ignores SIGPIPE).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE = 3.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH)


# Loaded once, here: a preexec_fn (between fork and exec) must not load libraries.
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.signal.restype = ctypes.c_void_p
_LIBC.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
_LIBC.sigprocmask.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_EMPTY_SIGSET = ctypes.create_string_buffer(128)     # a sigset_t with no signal in it
_SIG_SETMASK = 2
_UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP)


def _prctl(option: int, value: int) -> None:
    if _LIBC.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def dies_with_parent() -> None:
    """SIGTERM when the parent dies: for a command's preexec_fn (after any change of
    user, which would clear it)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def default_signals() -> None:
    """Every signal to its default action (SIG_DFL) and an empty blocked mask, for the
    process that is about to exec a command: handlers go at exec anyway, but ignored
    signals and the mask would be inherited. Safe between fork and exec (libc calls
    only; the C library's own real-time signals refuse the change, which is right)."""
    for signum in range(1, signal.NSIG):
        if signum not in _UNCATCHABLE:
            _LIBC.signal(signum, None)          # NULL is SIG_DFL
    _LIBC.sigprocmask(_SIG_SETMASK, ctypes.addressof(_EMPTY_SIGSET), None)


def prepare_child() -> None:
    """The preexec_fn of every command a wrapper starts: default signals, nothing
    blocked, SIGTERM when the parent dies."""
    default_signals()
    dies_with_parent()


def adopt_orphans() -> int:
    """Make this process the subreaper of its command's tree and let it die with its
    parent; return that parent's pid (parent_died tells later whether it is gone)."""
    parent = os.getppid()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    dies_with_parent()
    if os.getppid() != parent:      # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return parent


def parent_died(parent: int) -> bool:
    return os.getppid() != parent


def _children_table() -> dict[int, list[tuple[int, str]]]:
    """{ppid: [(pid, state)]} for every process (state 'Z': a zombie)."""
    table: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table.setdefault(int(fields[1]), []).append((int(entry), fields[0]))
    return table


def descendants(root: int | None = None) -> list[tuple[int, str]]:
    """(pid, state) of every process below `root` (this one by default)."""
    table = _children_table()
    found: list[tuple[int, str]] = []
    todo = [os.getpid() if root is None else root]
    while todo:
        for pid, state in table.get(todo.pop(), []):
            found.append((pid, state))
            todo.append(pid)
    return found


def _reap() -> None:
    """Collect children that have exited (adopted orphans leave zombies here)."""
    for pid, state in descendants():
        if state == "Z":
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def _signal_all(signum: int) -> list[int]:
    alive = [pid for pid, state in descendants() if state != "Z"]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
    return alive


def end_descendants(grace: float = GRACE) -> int:
    """End everything below this process: SIGTERM, then SIGKILL what is left after
    `grace` seconds; return how many processes there were."""
    ended = _signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        if not any(state != "Z" for _pid, state in descendants()):
            return len(ended)
        time.sleep(0.05)
    for _round in range(20):
        if not _signal_all(signal.SIGKILL):
            break
        time.sleep(0.05)
        _reap()
    return len(ended)


def kill_all_after(grace: float) -> None:
    """SIGKILL everything below this process in `grace` seconds (a wrapper whose
    supervisor died: nobody else will)."""
    def kill() -> None:
        _signal_all(signal.SIGKILL)
    timer = threading.Timer(grace, kill)
    timer.daemon = True
    timer.start()


# On a terminal these come from the terminal to the whole foreground group, the command
# included: passed on again they would reach it twice (and TSTP would stop the guard).
FROM_TERMINAL = (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH, signal.SIGTSTP,
                 signal.SIGTTIN, signal.SIGTTOU)


def run(argv: list[str], grace: float = GRACE, *, terminal: bool = False) -> int:
    """Run `argv` guarded; its exit status (128+N for a signal N). On a `terminal`
    (the command shares the guard's controlling one), what the terminal sends is left
    to reach the command by itself."""
    parent = adopt_orphans()
    escalated = False
    child = subprocess.Popen(argv, preexec_fn=prepare_child)

    def forward(signum: int, _frame: object) -> None:
        nonlocal escalated
        if child.poll() is None:
            child.send_signal(signum)
        if parent_died(parent) and not escalated:
            escalated = True
            kill_all_after(grace)

    def untouched(_signum: int, _frame: object) -> None:
        """A handler, not SIG_IGN: nothing the command execs inherits it."""

    for signum in FORWARDED:
        signal.signal(signum, forward)
    if terminal:
        for signum in FROM_TERMINAL:
            signal.signal(signum, untouched)
    code = child.wait()
    end_descendants(grace)
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    grace, terminal = GRACE, False
    while argv[:1] in (["--grace"], ["--terminal"]):
        if argv[0] == "--terminal":
            terminal, argv = True, argv[1:]
        elif len(argv) > 1:
            grace, argv = float(argv[1]), argv[2:]
        else:
            break
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python guard.py [--grace SECONDS] [--terminal] -- COMMAND [ARGS…]",
              file=sys.stderr)
        return 2
    return run(argv, grace, terminal=terminal)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
