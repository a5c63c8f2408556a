"""OpusError and its kinds: every error a user can cause, with an exit code.

Only the edges (cli, sshd, web) turn an OpusError into output.
"""

from __future__ import annotations


class OpusError(Exception):
    """An error with a message that says what to do, and a process exit code."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(OpusError):
    """The command line itself is wrong."""

    exit_code = 2


class InvalidName(OpusError):
    """A name (app, user, key, config key, ref) does not match its pattern."""

    exit_code = 2


class NotFound(OpusError):
    """The thing named does not exist (or the caller may not see it)."""

    exit_code = 3


class Forbidden(OpusError):
    """The caller may not do this."""

    exit_code = 4


class Conflict(OpusError):
    """The thing already exists, or the state does not allow the change."""

    exit_code = 5


class BuildFailed(OpusError):
    """The build, release step or health check failed; nothing was switched."""

    exit_code = 6


class ProtocolError(OpusError):
    """A client broke the wire protocol, stalled, or sent more than the limits allow."""

    exit_code = 8


class ServiceError(OpusError):
    """A part Opus drives (supervisord, Apache) did not do what was asked."""

    exit_code = 7


DISK_FULL_ERRNOS = (28, 122)      # ENOSPC, EDQUOT


def disk_full(exc: BaseException) -> ServiceError | None:
    """The error to report when `exc` says the disk (or a quota) is full: whatever was
    under way stopped before anything went live (None: `exc` is something else)."""
    full = (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS) or \
        "database or disk is full" in str(exc)
    if not full:
        return None
    return ServiceError("the disk that holds Opus's data is full, so this stopped before "
                        "anything changed; the live release keeps serving. Free some space "
                        "(or ask the operator to) and try again")
