"""Opus's receive-pack for a push made on this host as an Opus user (the dashboard's
New project page): `git push --receive-pack="python -m opus_paas.builder.receive
--user NAME" /APP.git main`. git runs it with its standard input and output as the
connection; it serves the push exactly as the SSH server does (opus_paas.control.sshd).

Who can run this can already write opus.db (it runs as Opus's own user), so `--user`
grants nothing new; the name and the path are checked all the same.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import uuid
from typing import cast

import paramiko
from dulwich.errors import GitProtocolError, HangupException

from opus_paas import names
from opus_paas import settings as settings_module
from opus_paas.control import sshd
from opus_paas.errors import NotFound, OpusError
from opus_paas.store import Store

USAGE = "usage: python -m opus_paas.builder.receive --user USER /APP.git"


class PipeChannel:
    """The little of paramiko.Channel the git server uses, over standard input and
    output (a read that waits past the timeout raises TimeoutError, as paramiko's)."""

    def __init__(self, read_fd: int, write_fd: int, error_fd: int) -> None:
        self.read_fd, self.write_fd, self.error_fd = read_fd, write_fd, error_fd
        self.timeout: float | None = None
        self.closed = False

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def fileno(self) -> int:
        return self.read_fd

    def recv(self, size: int) -> bytes:
        poller = select.poll()
        poller.register(self.read_fd, select.POLLIN)
        if not poller.poll(None if self.timeout is None else self.timeout * 1000):
            raise TimeoutError("no input")
        return os.read(self.read_fd, size)

    def sendall(self, data: bytes) -> None:
        _write_all(self.write_fd, data)

    def sendall_stderr(self, data: bytes) -> None:
        _write_all(self.error_fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "--user":
        print(USAGE, file=sys.stderr)
        return 2
    try:
        user_name = names.check_user_name(argv[1])
        app = names.app_from_repo_path(argv[2])
        settings = settings_module.load()
        store = Store(settings.db_path)
        user = store.get_user(user_name)
        if user is None:
            raise NotFound(f"no user {user_name}")
        channel = PipeChannel(sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno())
        status = sshd.serve_git_as(settings, store, user, "git-receive-pack", app,
                                   cast(paramiko.Channel, channel), threading.Event(),
                                   uuid.uuid4().hex[:8])
    except OpusError as exc:
        print(f"opus: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except (HangupException, GitProtocolError, BrokenPipeError):
        print("opus: the push ended early; nothing was changed", file=sys.stderr)
        return 1
    # The old instance is drained after the client has its answer, in a thread that
    # holds the app's lock: wait for it before going.
    for thread in threading.enumerate():
        if thread is not threading.current_thread():
            thread.join()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
