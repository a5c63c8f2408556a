"""Build and command output in one style, as the buildpack prints it.

``-----> Step`` for steps, seven spaces for detail, `` !     `` for errors and
warnings. The buildpack (buildpacks/python/lib/opus_buildpack/output.py) keeps the same
three prefixes on its own: it runs as the app's user with its own interpreter and imports
nothing from opus_paas.
"""

from __future__ import annotations

from collections.abc import Callable

# Where a command or a build writes its lines, one at a time, as they come.
Emit = Callable[[str], None]

STEP = "-----> "
DETAIL = "       "
ALERT = " !     "


def step(text: str) -> str:
    """A step header line."""
    return STEP + text


def detail(text: str) -> str:
    """A detail line, under a step."""
    return DETAIL + text


def alert(text: str) -> str:
    """An error or warning line."""
    return ALERT + text
