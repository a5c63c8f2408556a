"""The charts' numbers: requests read from the front's access log, per minute, and
memory summed over a process tree (pure parts; the browser test shows them drawn)."""

from __future__ import annotations

import os

from opus_paas.run import metrics

NOW = 1_764_553_200.0 + 30          # 2025-12-01T01:40:30Z: half a minute in


def line(host: str, when: str, request: str, status: int, micros: int) -> str:
    return f'{host} 127.0.0.1 [{when}] "{request}" {status} 24 {micros} "-"'


def test_requests_are_read_for_the_apps_hosts_only() -> None:
    lines = [
        line("shop.localhost", "01/Dec/2025:01:40:05 +0000", "GET / HTTP/1.1", 200, 1500),
        line("www.shop.test", "01/Dec/2025:01:40:06 +0000", "GET /a HTTP/1.1", 503, 2500),
        line("other.localhost", "01/Dec/2025:01:40:07 +0000", "GET / HTTP/1.1", 200, 900),
        # A request line that tries to look like the end of a log line.
        line("shop.localhost", "01/Dec/2025:01:40:08 +0000",
             'GET /\\" 200 1 1 \\"x HTTP/1.1', 404, 700),
        "garbage",
        line("shop.localhost", "not a time", "GET / HTTP/1.1", 200, 1),
    ]
    found = metrics.parse_requests(lines, ["shop.localhost", "www.shop.test"])
    assert [(r.status, r.millis) for r in found] == [(200, 1.5), (503, 2.5), (404, 0.7)]
    assert found[0].at == NOW - 25


def test_requests_per_minute_with_percentiles() -> None:
    requests = [metrics.Request(NOW - 1, 200, float(ms)) for ms in range(1, 101)]
    requests += [metrics.Request(NOW - 61, 500, 10.0), metrics.Request(NOW - 3600, 200, 1.0)]
    minutes = metrics.per_minute(requests, NOW)
    assert len(minutes) == 60 and minutes[-1].start == NOW - 30
    last, before = minutes[-1], minutes[-2]
    assert (last.requests, last.errors, last.p50_ms) == (100, 0, 50.5)
    assert 94 < (last.p95_ms or 0) < 96
    assert (before.requests, before.errors, before.p50_ms, before.p95_ms) == (1, 1, 10.0, 10.0)
    assert all(m.requests == 0 and m.p50_ms is None for m in minutes[:-2])  # an hour ago: out


def test_memory_per_minute_averages_and_leaves_gaps() -> None:
    mib = 1 << 20
    values = metrics.memory_per_minute([(NOW - 5, 100 * mib), (NOW - 1, 200 * mib),
                                        (NOW - 600, 50 * mib), (NOW - 7200, mib)], NOW)
    assert values[-1] == 150 and values[-11] == 50
    assert sum(v is None for v in values) == 58


def test_a_process_tree_is_summed_once() -> None:
    table = {1: (0, 1), 10: (1, 100), 11: (10, 20), 12: (10, 30), 13: (11, 4), 20: (1, 999)}
    assert metrics.tree_rss([10], table) == 154
    assert metrics.tree_rss([10, 11, 404], table) == 154      # no process counted twice
    assert metrics.tree_rss([], table) == 0


def test_this_process_is_in_the_process_table() -> None:
    table = metrics.process_table()
    parent, rss = table[os.getpid()]
    assert parent == os.getppid() and rss > 1 << 20


def test_supervisor_groups_map_to_their_apps() -> None:
    processes = [
        {"group": "shop-web-v3-p20010", "pid": 100},
        {"group": "shop-web-web-v1-p20012", "pid": 101},     # the app named shop-web
        {"group": "shop.worker", "pid": 102},
        {"group": "opus-sshd", "pid": 103},
        {"group": "shop.clock", "pid": 0},                   # stopped: no pid
    ]
    assert metrics.app_roots(processes) == {"shop": [100, 102], "shop-web": [101]}
