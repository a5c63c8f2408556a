"""Procfile parsing (pure)."""

from __future__ import annotations

from opus_paas import names
from opus_paas.errors import BuildFailed, InvalidName


def parse(text: str) -> dict[str, str]:
    """`type: command` lines → {type: command}; comments and blank lines are skipped."""
    types: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, command = stripped.partition(":")
        if not sep or not command.strip():
            raise BuildFailed(f"Procfile line {number} is not `type: command`: {stripped[:80]!r}")
        try:
            names.check_process_type(name.strip())
        except InvalidName as exc:
            raise BuildFailed(f"Procfile line {number}: {exc}") from None
        if name.strip() in types:
            raise BuildFailed(f"Procfile line {number}: process type {name.strip()!r} "
                              "appears twice; keep one")
        types[name.strip()] = command.strip()
    return types
