"""Detection: is this a Python app? Pure, apart from listing the repo root."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# The files Heroku's Python buildpack takes as a sign of a Python app.
MARKERS = (
    ".python-version", "app.py", "main.py", "manage.py", "pdm.lock", "Pipfile", "Pipfile.lock",
    "poetry.lock", "pyproject.toml", "requirements.txt", "runtime.txt", "setup.cfg",
    "setup.py", "uv.lock",
)
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
        "Opus looked at the root of the repository for one of: "
        + ", ".join(MARKERS) + ".\n"
        + found
    )
    hints = [
        "To fix this, do one of:",
        "  - add a requirements.txt at the root listing your dependencies (e.g. Django);",
        "  - commit your package manager file if it is missing or in .gitignore;",
        "  - move your project so that file is at the repository root.",
    ]
    return message, hints
