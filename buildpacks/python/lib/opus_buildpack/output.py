"""Build output in one style, flushed line by line because it streams live to ``git push``.

``-----> Step`` for steps, seven spaces for detail, `` !     `` for errors and warnings with a
blank line around them. The ``format_*`` functions are pure; :class:`Output` writes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

STEP = "-----> "
DETAIL = "       "
ALERT = " !     "


def format_step(message: str) -> list[str]:
    """Lines for a step header."""
    return [STEP + message]


def format_detail(text: str) -> list[str]:
    """Lines for detail text; every line of a multi-line text is indented."""
    return [(DETAIL + line).rstrip() for line in (text.splitlines() or [""])]


def format_alert(message: str, hints: Sequence[str] = ()) -> list[str]:
    """Lines for an error or warning: the message, then hints, set off by blank lines."""
    lines = [""]
    lines += [(ALERT + line).rstrip() for line in message.splitlines()]
    if hints:
        lines.append(ALERT.rstrip())
        lines += [(ALERT + line).rstrip() for hint in hints for line in hint.splitlines()]
    lines.append("")
    return lines


class Output:
    """Writes formatted build output to ``stream``, flushing after every line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.stream.write(line + "\n")
            self.stream.flush()

    def step(self, message: str) -> None:
        self.lines(format_step(message))

    def detail(self, text: str) -> None:
        self.lines(format_detail(text))

    def alert(self, message: str, hints: Sequence[str] = ()) -> None:
        """An error or a warning; both use the `` !     `` prefix."""
        self.lines(format_alert(message, hints))
