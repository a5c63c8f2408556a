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


def test_printable_shows_terminal_controls_as_escapes_and_keeps_text() -> None:
    from opus_paas import redact

    hostile = ("\x1b]52;c;cHduZWQ=\x07\x1b]0;title\x1b\\\x1b[2J\x1b[H\x9b31m\x9d8;;x\x07"
               "\r\x00\x7f\x85")
    assert redact.printable(hostile) == (
        r"\x1b]52;c;cHduZWQ=\x07\x1b]0;title\x1b\\x1b[2J\x1b[H\x9b31m\x9d8;;x\x07"
        r"\x0d\x00\x7f\x85")
    kept = "tab\there\nnext line: é ✓ 日本 \u00a0"
    assert redact.printable(kept) == kept
    assert redact.shown("/srv/opus/x \x1b[31m", [("/srv/opus", "$OPUS_HOME")]) == \
        r"$OPUS_HOME/x \x1b[31m"


def test_a_capped_build_log_keeps_its_start_one_notice_and_its_end(tmp_path: Path) -> None:
    from opus_paas.run import buildlog

    path = tmp_path / "build.log"
    with path.open("w", encoding="utf-8") as handle:
        capped = buildlog.CappedLog(handle, 100)
        for number in range(1000):
            capped.write(f"line {number:04d}\n")     # 10 bytes each
        capped.close()
    text = path.read_text().splitlines()
    assert text[:10] == [f"line {n:04d}" for n in range(10)]
    assert text[10] == buildlog.truncated_notice(100).rstrip()
    assert "OPUS_BUILD_LOG_LIMIT" in text[10]
    assert text[-10:] == [f"line {n:04d}" for n in range(990, 1000)]
    assert len(text) == 22
    assert list(buildlog.lines(path, 3)) == ["line 0997", "line 0998", "line 0999"]
    assert list(buildlog.lines(path)) == text
    assert list(buildlog.lines(path, 0)) == []
    assert list(buildlog.lines(path, 500)) == text


def test_build_log_lines_are_read_in_pieces_from_the_end(tmp_path: Path) -> None:
    from opus_paas import privileged
    from opus_paas.run import buildlog

    path = tmp_path / "big.log"
    long_line = "y" * (3 * privileged.MAX_LINE + 5)
    path.write_text("".join(f"{n}\n" for n in range(200_000)) + long_line + "\nend")
    assert list(buildlog.lines(path, 2)) == [long_line[-5:], "end"]
    assert list(buildlog.lines(path, 7))[:2] == ["199998", "199999"]
    assert sum(1 for _ in buildlog.lines(path)) == 200_000 + 4 + 1
