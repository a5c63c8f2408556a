"""The one exception a build step raises to stop the build with a message for the user."""

from __future__ import annotations

from collections.abc import Sequence


class BuildError(Exception):
    """A failure the user can fix: ``message`` says what went wrong, ``hints`` what to do."""

    def __init__(self, message: str, hints: Sequence[str] = (), exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hints = tuple(hints)
        self.exit_code = exit_code
