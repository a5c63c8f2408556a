"""Detection: is this a Python app? Pure, apart from listing the repo root."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

MARKERS = ("requirements.txt", "manage.py")
MAX_LISTED = 20


def is_python_app(root_names: Sequence[str]) -> bool:
    return any(marker in root_names for marker in MARKERS)


def root_listing(build: Path) -> list[str]:
    """Names at the repo root (directories with a trailing ``/``), without ``.git``."""
    try:
        entries = sorted(build.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    return [p.name + ("/" if p.is_dir() else "") for p in entries if p.name != ".git"]


def not_detected_message(listing: Sequence[str]) -> tuple[str, list[str]]:
    """The message and fixes shown when detection fails."""
    if not listing:
        found = "The repository root is empty."
    else:
        shown = ", ".join(listing[:MAX_LISTED])
        more = f" and {len(listing) - MAX_LISTED} more" if len(listing) > MAX_LISTED else ""
        found = f"Files at the repository root: {shown}{more}"
    message = (
        "No Python app detected.\n"
        "Opus looked for requirements.txt or manage.py at the root of the repository.\n"
        + found
    )
    hints = [
        "To fix this, do one of:",
        "  - add a requirements.txt at the root listing your dependencies (e.g. Django);",
        "  - commit requirements.txt or manage.py if it is missing or in .gitignore;",
        "  - move your project so requirements.txt is at the repository root.",
    ]
    return message, hints
