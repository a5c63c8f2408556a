"""No absolute server path reaches a client: every message leaving Opus for a client
passes through `redact`, which names server places symbolically. Output an app or its
build wrote passes through `printable` too: it reaches the user's terminal, whose control
sequences it must not carry."""

from __future__ import annotations

import re
from pathlib import Path

from opus_paas.settings import Settings


def replacements(settings: Settings, slug: Path | None = None) -> list[tuple[str, str]]:
    """(path, shown-as) pairs, most specific first: the slug a build runs in reads as
    /app, as it would on Heroku."""
    pairs = [] if slug is None else [(str(slug), "/app")]
    pairs += [(str(settings.package_cache), "$OPUS_CACHE"), (str(settings.home), "$OPUS_HOME")]
    return pairs


def redact(text: str, pairs: list[tuple[str, str]]) -> str:
    for path, shown in pairs:
        text = text.replace(path, shown)
    return text


# C0 controls but tab and newline, DEL, and the C1 controls (U+0080-U+009F, which some
# terminals take as 8-bit CSI/OSC/DCS): what lets app output move a user's cursor, set
# their terminal's title or write their clipboard (OSC 52).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str) -> str:
    """`text` safe to show on a terminal: each control character (ESC, BEL, CR, …, and
    the C1 range) written as a visible escape such as `\\x1b`; tabs, newlines and all
    other text (UTF-8 letters, emoji) kept."""
    return _CONTROLS.sub(_escaped, text)


def shown(text: str, pairs: list[tuple[str, str]]) -> str:
    """One line of app or build output as a client sees it: no server path, no
    terminal control."""
    return printable(redact(text, pairs))
