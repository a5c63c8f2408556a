"""Daily backup schedules (pure: no I/O). Times are UTC."""

from __future__ import annotations

import re

from opus_paas.errors import UsageError

DAY = 86400.0
TIME = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def parse_time(text: str) -> int:
    """'03:00' → the minute of the day (180); anything but HH:MM is refused."""
    match = TIME.fullmatch(text)
    if match is None:
        shown = text if len(text) <= 20 and text.isprintable() else repr(text[:20])
        raise UsageError(f"{shown} is not a time of day; give HH:MM in UTC, e.g. 03:00")
    return int(match.group(1)) * 60 + int(match.group(2))


def describe(minute: int | None) -> str:
    if minute is None:
        return "no schedule"
    return f"daily at {minute // 60:02d}:{minute % 60:02d} UTC"


def last_occurrence(minute: int, now: float) -> float:
    """The latest time at or before `now` that the schedule names."""
    midnight = now - now % DAY
    at = midnight + minute * 60
    return at if at <= now else at - DAY


def next_occurrence(minute: int, now: float) -> float:
    return last_occurrence(minute, now) + DAY


def is_due(minute: int, since: float, last_backup: float | None, now: float) -> bool:
    """Whether a scheduled backup is owed: the schedule's latest time has passed since
    it was set and since the last scheduled backup."""
    return last_occurrence(minute, now) > max(since, last_backup or 0.0)
