"""Memory and CPU limits of an app's process types (`opus ps:resize APP TYPE memory=512M
cpus=1`), parsed, checked and shown (pure: no I/O). Swarm services get them as
`--limit-memory` and `--limit-cpu` (swarm/services.py); on one host they are recorded only."""

from __future__ import annotations

import re
from collections.abc import Sequence

from opus_paas.errors import UsageError
from opus_paas.store import Limits

KEYS = ("memory", "cpus")
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MEMORY = re.compile(r"([0-9]{1,10})([KMG])", re.IGNORECASE)
CPUS = re.compile(r"([0-9]{1,4})(?:\.([0-9]{1,2}))?")
# Docker refuses a memory limit under 6 MiB; more than 4 TiB is a typo.
MIN_MEMORY = 6 << 20
MAX_MEMORY = 4 << 40
MIN_CPUS = 0.01
MAX_CPUS = 512.0
UNSET = "none"
USAGE_HINT = "memory=SIZE (such as 512M or 2G) and cpus=N (such as 1 or 0.5); none removes one"


def _shown(value: str) -> str:
    return repr(value[:24] + ("…" if len(value) > 24 else ""))


def parse_memory(value: str) -> int | None:
    """`512M` → bytes (K, M and G are powers of 1024, as Docker counts); `none` → None."""
    if value.lower() == UNSET:
        return None
    match = MEMORY.fullmatch(value)
    if not match:
        raise UsageError(f"memory takes a size such as 512M or 2G (K, M or G), not "
                         f"{_shown(value)}")
    size = int(match.group(1)) * UNITS[match.group(2).upper()]
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise UsageError(f"memory takes 6M to 4096G, not {_shown(value)}")
    return size


def parse_cpus(value: str) -> float | None:
    """`1`, `0.5`, `2.25` → CPUs (at most two decimals); `none` → None."""
    if value.lower() == UNSET:
        return None
    match = CPUS.fullmatch(value)
    if not match:
        raise UsageError(f"cpus takes a number such as 1 or 0.5 (two decimals at most), not "
                         f"{_shown(value)}")
    cpus = int(match.group(1)) + int((match.group(2) or "0").ljust(2, "0")) / 100
    if not MIN_CPUS <= cpus <= MAX_CPUS:
        raise UsageError(f"cpus takes 0.01 to {MAX_CPUS:g}, not {_shown(value)}")
    return cpus


def parse(pairs: Sequence[str], current: Limits | None = None) -> Limits:
    """`memory=512M cpus=1` (either or both) applied over `current`: a key not given
    keeps its value, `KEY=none` removes that limit."""
    if not pairs:
        raise UsageError(f"say what to set: {USAGE_HINT}")
    seen: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in KEYS:
            raise UsageError(f"{_shown(pair)} is not one of {USAGE_HINT}")
        if key in seen:
            raise UsageError(f"{key} is given twice")
        seen[key] = value
    memory = current.memory_bytes if current else None
    cpus = current.cpus if current else None
    if "memory" in seen:
        memory = parse_memory(seen["memory"])
    if "cpus" in seen:
        cpus = parse_cpus(seen["cpus"])
    return Limits(memory_bytes=memory, cpus=cpus)


def memory_text(size: int) -> str:
    """Bytes in the largest unit that divides them: 536870912 → 512M."""
    for unit in ("G", "M", "K"):
        if size % UNITS[unit] == 0:
            return f"{size // UNITS[unit]}{unit}"
    return str(size)


def cpus_text(cpus: float) -> str:
    return f"{cpus:.2f}".rstrip("0").rstrip(".")


def describe(limits: Limits | None) -> str:
    """`memory=512M cpus=1`, or `no limits`."""
    if limits is None:
        return "no limits"
    parts = []
    if limits.memory_bytes is not None:
        parts.append(f"memory={memory_text(limits.memory_bytes)}")
    if limits.cpus is not None:
        parts.append(f"cpus={cpus_text(limits.cpus)}")
    return " ".join(parts) or "no limits"
