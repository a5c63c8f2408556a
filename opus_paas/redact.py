"""No absolute server path reaches a client: every message leaving Opus for a client
passes through `redact`, which names server places symbolically."""

from __future__ import annotations

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
