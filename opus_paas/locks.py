"""One deploy per app at a time: an advisory lock per app name, held across a push's
receive, build and release (and by anything else that changes what an app runs).

flock(2) on locks/<app>.lock: the kernel drops the lock when its holder exits or
crashes, so a lock can never be left behind, and two threads of one process each
opening the file exclude each other as two processes do.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from opus_paas import names
from opus_paas.errors import Conflict, ProtocolError, ServiceError
from opus_paas.settings import Settings

POLL_SECONDS = 0.1
log = logging.getLogger("opus.locks")


class Held:
    """A held app lock, which may be handed to a thread that finishes the work (a push's
    drain, after the client has its answer): the next deploy waits for that thread."""

    def __init__(self, fd: int, app: str) -> None:
        self.fd = fd
        self.app = app
        self.handed_off = False

    def hand_off(self, work: Callable[[], object]) -> None:
        """Run `work` in a thread of its own, which keeps the lock until it is done."""
        def run() -> None:
            try:
                work()
            except Exception:
                log.exception("finishing the deploy of %s failed; `opus up` (or the next "
                              "deploy) ends it", self.app)
            finally:
                os.close(self.fd)
        self.handed_off = True
        threading.Thread(target=run, name=f"finish-{self.app}", daemon=True).start()


@contextlib.contextmanager
def app_lock(settings: Settings, app: str, *, on_wait: Callable[[], None] | None = None,
             cancelled: threading.Event | None = None,
             timeout: float | None = None) -> Iterator[Held]:
    """Hold the deploy lock of `app` for the duration of the `with` block (or, once
    handed off, until that work is done).

    If another holder has it, call `on_wait` once and wait up to `timeout` seconds
    (default: the deploy_wait_timeout setting); give up early when `cancelled` is set.
    """
    fd = _open_app_lock(settings, app)
    held = Held(fd, app)
    try:
        _acquire(fd, app, on_wait, cancelled,
                 settings.deploy_wait_timeout if timeout is None else timeout)
        yield held
    finally:
        if not held.handed_off:
            os.close(fd)   # closing the descriptor releases the lock


@contextlib.contextmanager
def app_lock_if_free(settings: Settings, app: str) -> Iterator[bool]:
    """Hold the app's lock if nobody holds it, and say whether it is held: recovery
    never waits for a deploy that is under way, and never touches it."""
    with _if_free(_open_app_lock(settings, app)) as free:
        yield free


@contextlib.contextmanager
def _if_free(fd: int) -> Iterator[bool]:
    """The lock on `fd` if nobody holds it, and whether it is held; `fd` is closed
    after (which releases it)."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _open_shared_lock(settings: Settings, name: str) -> int:
    """A lock file of state every app shares (`_NAME.lock`: no app name starts with _)."""
    settings.locks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(settings.locks_dir / f"_{name}.lock",
                   os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _open_app_lock(settings: Settings, app: str) -> int:
    names.check_app_name(app)
    settings.locks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(settings.locks_dir / f"{app}.lock",
                   os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


@contextlib.contextmanager
def host_lock(settings: Settings, timeout: float = 120.0) -> Iterator[None]:
    """Hold the lock on state every app shares (supervisor's conf.d, the front's config)
    for a short critical section. Not re-entrant: take it once per section."""
    fd = _open_shared_lock(settings, "host")
    try:
        try:
            _acquire(fd, "shared front and supervisor state", None, None, timeout)
        except Conflict:
            raise ServiceError(f"another change to the front or supervisor held its lock for "
                               f"{timeout:.0f} s; try again, and see `opus status`") from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def schedules_lock_if_free(settings: Settings) -> Iterator[bool]:
    """Hold the lock of the scheduled jobs (backups) if nobody holds it, and say whether
    it is held: two runs at once (opus-scheduler and `opus up`) would both find a
    backup due and take it twice."""
    with _if_free(_open_shared_lock(settings, "schedules")) as free:
        yield free


@contextlib.contextmanager
def registry_lock(settings: Settings, *, exclusive: bool, timeout: float = 600.0
                  ) -> Iterator[None]:
    """Held shared while a release image is sent to Opus's registry, exclusively while
    the registry collects its garbage (which must not see an upload half done)."""
    fd = _open_shared_lock(settings, "registry")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) |
                            fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    busy = "an image being sent" if exclusive else "its garbage collection"
                    raise ServiceError(f"the registry was busy for over {timeout:.0f} s "
                                       f"({busy}); try again") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def tools_lock(settings: Settings, *, on_wait: Callable[[], None] | None = None,
               cancelled: threading.Event | None = None) -> Iterator[None]:
    """Held while Opus fetches an interpreter or builds a wheel into the host's shared
    tools (long: a download, a compile), so two builds never do the same work at once."""
    fd = _open_shared_lock(settings, "tools")
    try:
        try:
            _acquire(fd, "tools", on_wait, cancelled, settings.build_timeout)
        except Conflict:
            raise ServiceError(f"another build fetched an interpreter or built a wheel for "
                               f"over {settings.build_timeout:.0f} s; push again") from None
        yield
    finally:
        os.close(fd)


def _acquire(fd: int, app: str, on_wait: Callable[[], None] | None,
             cancelled: threading.Event | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not waited and on_wait is not None:
            on_wait()
        waited = True
        if cancelled is not None and cancelled.is_set():
            raise ProtocolError("the client disconnected while waiting; nothing was changed")
        if time.monotonic() >= deadline:
            raise Conflict(f"the deploy of {app} is still running after {timeout:.0f} s; "
                           "push again once it has finished")
        time.sleep(POLL_SECONDS)
