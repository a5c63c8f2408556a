"""The dashboard's inline SVG charts and an app's one-word status (pure)."""

from __future__ import annotations

from opus_paas.store import App
from web import charts
from web.status import app_status


def test_values_become_points_with_gaps_and_lone_dots() -> None:
    chart = charts.line_chart("Latency", "ms", [None, 10.0, 20.0, None, 5.0, None])
    assert chart.top == 20 and chart.latest == 5.0 and not chart.empty
    assert chart.lines == ["120.0,60.0 240.0,0.0"]
    assert chart.dots == [(480.0, 90.0)]


def test_an_empty_chart_says_so() -> None:
    chart = charts.line_chart("Memory", "MiB", [None] * 60)
    assert chart.empty and chart.latest is None and chart.lines == [] and chart.dots == []


def test_the_axis_top_is_a_round_number() -> None:
    assert [charts.nice_ceiling(v) for v in (0, 0.3, 1, 1.1, 3, 7, 42, 500)] == \
        [1, 0.5, 1, 2, 5, 10, 50, 500]


def app(**changes: object) -> App:
    base = {"id": 1, "name": "shop", "owner": "dev", "live_version": 3, "live_port": 20000}
    return App(**{**base, **changes})  # type: ignore[arg-type]


def web(state: str) -> dict[str, object]:
    return {"type": "web", "state": state}


def test_status_words() -> None:
    assert app_status(app(live_version=None), []) == "not deployed"
    assert app_status(app(stopped=True), []) == "stopped"
    assert app_status(app(), [web("RUNNING")]) == "running"
    assert app_status(app(), [web("RUNNING"), {"type": "worker", "state": "CRASHED"}]) == \
        "crashed"
    assert app_status(app(), [web("STARTING")]) == "starting"
    assert app_status(app(), []) == "down"
