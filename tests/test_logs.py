"""Merging an app's logs (pure parts): stamped process lines, the front's access log."""

from __future__ import annotations

from pathlib import Path

from opus_paas.run import logs


def test_process_lines_keep_their_time_and_continuations_take_the_last() -> None:
    entries = logs.process_entries(
        ["2026-11-30T10:00:00.000001Z Traceback (most recent call last):",
         "  File x, line 1", "2026-11-30T10:00:01.000000Z done"], "worker.2")
    assert [(e.at, e.text) for e in entries] == [
        ("2026-11-30T10:00:00.000001Z", "Traceback (most recent call last):"),
        ("2026-11-30T10:00:00.000001Z", "  File x, line 1"),
        ("2026-11-30T10:00:01.000000Z", "done")]
    assert entries[0].render("shop") == \
        "2026-11-30T10:00:00.000001Z shop[worker.2]: Traceback (most recent call last):"
    assert logs.process_entries(["no stamp"], "web.1")[0].render("a") == "- a[web.1]: no stamp"


def test_access_lines_of_the_apps_vhost_only_in_utc() -> None:
    lines = ['shop.localhost 127.0.0.1 [30/Nov/2026:11:00:00 +0100] "GET / HTTP/1.1" 200 5 '
             '812 "-"',
             'other.localhost 127.0.0.1 [30/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 1 "-"',
             "garbage", 'shop.localhost 1.2.3.4 [not a date] "GET /"']
    entries = logs.access_entries(lines, ["shop.localhost"])
    assert entries == [logs.Entry("2026-11-30T10:00:00.000000Z", "front",
                                  '127.0.0.1 "GET / HTTP/1.1" 200 5 812 "-"')]
    assert entries[0].render("shop").startswith("2026-11-30T10:00:00.000000Z opus[front]: ")


def test_merged_in_time_order_and_tail_counts(tmp_path: Path) -> None:
    (tmp_path / "web.log").write_text("2026-11-30T10:00:02.000000Z b\n"
                                      "2026-11-30T10:00:04.000000Z d\n")
    (tmp_path / "worker.1.log").write_text("2026-11-30T10:00:01.000000Z a\n"
                                           "2026-11-30T10:00:03.000000Z c\n")
    access = tmp_path / "access.log"
    access.write_text('shop.localhost 127.0.0.1 [30/Nov/2026:10:00:05 +0000] "GET /" 200\n')
    paths = [tmp_path / "web.log", tmp_path / "worker.1.log"]
    shown = [e.text for e in logs.tail(paths, 10, access, ["shop.localhost"])]
    assert shown == ["a", "b", "c", "d", '127.0.0.1 "GET /" 200']
    assert [e.text for e in logs.tail(paths, 2)] == ["c", "d"]
    assert logs.tail(paths, 0) == []
