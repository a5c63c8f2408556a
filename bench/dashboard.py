"""Benchmark: the dashboard's pages, its live logs and its memory, as ratios to
baselines measured in the same run.

    .venv/bin/python bench/dashboard.py [--runs N]

- pages: each page through the front (signed in) against the sign-in page, the
  dashboard's lightest (a template and a session, nothing else);
- live logs: from a line written to an app's log to its arrival in the browser's
  event stream, against `opus logs APP -t` on the host (the same follower underneath);
- memory: the dashboard's gunicorn against opus-sshd (both Python processes of Opus).

Prints a Markdown table; docs/performance.md keeps the latest one.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import secrets
import select
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opus_paas.run import metrics
from tests.conftest import Opus, git, make_django_project, make_key, start_opus, stop_opus

APP = "benchdash"
PASSWORD = "bench dashboard password"


class Browser:
    """A signed-in client of the dashboard through the front."""

    def __init__(self, opus: Opus) -> None:
        self.base = f"http://127.0.0.1:{opus.http_port}"
        self.host = "opus.localhost"
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
            urllib.request.ProxyHandler({}))

    def get(self, path: str) -> str:
        request = urllib.request.Request(self.base + path, headers={"Host": self.host})
        with self.opener.open(request, timeout=60) as response:
            return str(response.read().decode())

    def sign_in(self) -> None:
        page = self.get("/signin")
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found
        data = urllib.parse.urlencode({"user": "bench", "password": PASSWORD,
                                       "csrf_token": found.group(1)}).encode()
        request = urllib.request.Request(self.base + "/signin", data=data,
                                         headers={"Host": self.host})
        with self.opener.open(request, timeout=60) as response:
            assert "Apps" in response.read().decode()


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stamped(text: str) -> str:
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S.000000Z', time.gmtime())} {text}\n"


def sse_latency(opus: Opus, browser: Browser) -> float:
    request = urllib.request.Request(f"{browser.base}/apps/{APP}/logs/stream?ps=web",
                                     headers={"Host": browser.host})
    with browser.opener.open(request, timeout=60) as stream:
        assert stream.readline().startswith(b"retry:")
        stream.readline()
        time.sleep(1.0)          # the follower has taken the files' ends
        marker = secrets.token_hex(6)
        start = time.perf_counter()
        with (opus.home / "logs" / APP / "web.log").open("a") as out:
            out.write(stamped(marker))
        while marker.encode() not in stream.readline():
            pass
        return time.perf_counter() - start


def sse_latency_then_wait(opus: Opus, browser: Browser) -> float:
    """One measure; then the stream's slot is let go (the dashboard notices a closed
    stream at its next heartbeats) so runs do not hit the per-user cap."""
    seconds = sse_latency(opus, browser)
    time.sleep(5)
    return seconds


def cli_latency(opus: Opus) -> float:
    follower = subprocess.Popen([sys.executable, "-m", "opus_paas", "logs", APP, "-t", "-n",
                                 "0", "--ps", "web"], env=opus.env, stdout=subprocess.PIPE)
    try:
        time.sleep(1.5)          # started, and following
        marker = secrets.token_hex(6)
        assert follower.stdout is not None
        start = time.perf_counter()
        with (opus.home / "logs" / APP / "web.log").open("a") as out:
            out.write(stamped(marker))
        seen = b""
        while marker.encode() not in seen:
            select.select([follower.stdout], [], [], 5)
            seen += follower.stdout.readline()
        return time.perf_counter() - start
    finally:
        follower.kill()
        follower.wait()


def program_rss(opus: Opus, program: str) -> int:
    status = opus.cli("status").stdout
    found = re.search(rf"{program}\s+RUNNING\s+pid (\d+)", status)
    assert found, status
    return metrics.tree_rss([int(found.group(1))], metrics.process_table())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opus-bench-"))
    opus = start_opus()
    try:
        key = make_key(work, "bench")
        opus.cli("keys:add", "bench", str(key.public))
        opus.cli("users:passwd", "bench", input=PASSWORD + "\n")
        project = make_django_project(work / "project")
        git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
        git(project, "push", "-q", "opus", "main", env=key.git_env(opus))
        for _ in range(50):
            opus.get(opus.app_host(APP))          # some traffic for the charts
        browser = Browser(opus)
        browser.sign_in()
        pages = {
            "sign-in page (baseline)": "/signin",
            "app list": "/",
            "app page (processes, releases, charts)": f"/apps/{APP}",
            "logs page (last 200 lines)": f"/apps/{APP}/logs",
        }
        for path in pages.values():
            browser.get(path)                      # warm
        timed = {name: median_seconds(lambda p=path: browser.get(p), args.runs * 4)  # type: ignore[misc]
                 for name, path in pages.items()}
        base = timed["sign-in page (baseline)"]
        print("| page (through the front, signed in) | ms | ratio to baseline |")
        print("|---|---|---|")
        for name, seconds in timed.items():
            print(f"| {name} | {seconds * 1000:.1f} | {seconds / base:.2f} |")
        cli = statistics.median(cli_latency(opus) for _ in range(args.runs))
        sse = statistics.median(sse_latency_then_wait(opus, browser) for _ in range(args.runs))
        print()
        print("| a new log line, written to seen | ms | ratio to baseline |")
        print("|---|---|---|")
        print(f"| `opus logs -t` on the host (baseline) | {cli * 1000:.0f} | 1.00 |")
        print(f"| the dashboard's live logs (server-sent events via the front) | "
              f"{sse * 1000:.0f} | {sse / cli:.2f} |")
        sshd, dashboard = program_rss(opus, "opus-sshd"), program_rss(opus, "opus-dashboard")
        print()
        print("| resident memory | MiB | ratio to baseline |")
        print("|---|---|---|")
        print(f"| opus-sshd (baseline) | {sshd / (1 << 20):.1f} | 1.00 |")
        print(f"| opus-dashboard (gunicorn, one worker) | {dashboard / (1 << 20):.1f} | "
              f"{dashboard / sshd:.2f} |")
    finally:
        stop_opus(opus)


if __name__ == "__main__":
    main()
