"""Where the parts Opus ships (buildpacks, hooks, web) live: checkout or installed."""

from __future__ import annotations

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
_INSTALLED = Path(__file__).resolve().parent / "_shipped"


def shipped(name: str) -> Path:
    """The directory of a shipped part ('buildpacks', 'hooks', 'web')."""
    for base in (_CHECKOUT, _INSTALLED):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"Opus's {name}/ is missing from this installation; reinstall opus")
