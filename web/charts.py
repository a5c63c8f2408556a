"""Charts drawn as inline SVG on the server: no script, nothing fetched from elsewhere
(pure: series in, coordinates out)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

WIDTH, HEIGHT = 600, 120


@dataclasses.dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    lines: list[str]          # SVG polyline `points`, one per unbroken run of values
    dots: list[tuple[float, float]]   # lone values (no neighbour to draw a line to)
    top: float                # the value at the top edge
    latest: float | None
    empty: bool


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above `value` (for the top of the axis)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power + 1e-12:
            return float(step * power)
    return float(10 * power)


def line_chart(title: str, unit: str, values: Sequence[float | None]) -> Chart:
    """`values` spread evenly across the width; None leaves a gap."""
    known = [v for v in values if v is not None]
    top = nice_ceiling(max(known, default=0.0))
    step = WIDTH / max(len(values) - 1, 1)
    runs: list[list[tuple[float, float]]] = [[]]
    for index, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        y = HEIGHT - (value / top) * HEIGHT
        runs[-1].append((round(index * step, 1), round(y, 1)))
    lines = [" ".join(f"{x},{y}" for x, y in run) for run in runs if len(run) > 1]
    dots = [run[0] for run in runs if len(run) == 1]
    return Chart(title, unit, lines, dots, top, known[-1] if known else None, not known)
