"""Benchmark: the front over https against plain http, and how long a new name waits for
its certificate, as ratios to baselines measured in the same run.

    .venv/bin/python bench/https.py [--runs N] [--scale K]

An Opus of its own with pebble (Let's Encrypt's test CA) on loopback, the tests' fixture
app pushed, a name added and its certificate ordered. Then, with h2load (-c8 -t2):
- handshakes: a new connection for every request of a static file the front serves
  itself, https (TLS 1.3, ECDSA P-256) against http;
- requests/s on kept-alive connections, to the app and to a static file: https over
  HTTP/1.1 and over HTTP/2 against http/1.1;
- `domains:add` until the name answers over https with a valid certificate, against
  `domains:add` until it answers over http (the same command and front reload, no order).

Prints Markdown tables; docs/performance.md keeps the latest ones.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import pebble as pebble_module
from tests.conftest import (
    Opus,
    free_port,
    git,
    make_django_project,
    make_key,
    start_opus,
    stop_opus,
)

STATIC = "/static/pages/site.css"


def h2load(url: str, *, connect: int, count: int, h1: bool, new_connections: bool) -> float:
    """Requests/s that succeeded, of `count` requests from 8 clients. With
    `new_connections` the front closes each connection after its one request and h2load
    connects again: a new TCP connection, and a full TLS handshake, per request. (A count,
    not h2load's timed mode: that mode does not reconnect when Apache ends a kept-alive
    connection after its 100th request, and stalls.)"""
    argv = ["h2load", "-t2", "-c8", f"-n{count}", f"--connect-to=127.0.0.1:{connect}"]
    if h1:
        argv.append("--h1")
    if new_connections:
        argv += ["-H", "Connection: close"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True,
                         timeout=600).stdout
    done = re.search(r"finished in ([\d.]+)(ms|s), [\d.]+ req/s", out)
    ok = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    assert done and ok, out
    assert int(ok.group(2)) + int(ok.group(3)) == 0, out
    elapsed = float(done.group(1)) / (1000 if done.group(2) == "ms" else 1)
    return int(ok.group(1)) / elapsed


def wait_until(check: object, timeout: float = 60) -> float:
    start = time.perf_counter()
    while not check():  # type: ignore[operator]
        if time.perf_counter() - start > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)
    return time.perf_counter() - start


def answers(opus: Opus, host: str, https_port: int | None, root: Path | None) -> bool:
    if https_port is None:
        request = urllib.request.Request(f"http://127.0.0.1:{opus.http_port}/",
                                         headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False
    context = ssl.create_default_context(cafile=str(root))
    try:
        import socket
        with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return tls.recv(12).startswith(b"HTTP/1.1 200")
    except (OSError, ssl.SSLError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=int, default=5, help="requests per run, x8000 "
                        "for static files, x2000 for new connections, x200 for the app")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="opus-bench-https-"))
    http_port, https_port = free_port(), free_port()
    ca = pebble_module.start(work / "pebble", http_port)
    opus = start_opus(OPUS_HTTP_PORT=str(http_port), OPUS_HTTPS_PORT=str(https_port),
                      OPUS_ACME_DIRECTORY=ca.directory,
                      OPUS_ACME_CA_BUNDLE=str(ca.listener_ca))
    results: dict[str, list[float]] = {}
    try:
        key = make_key(work, "bench")
        opus.cli("keys:add", "bench", str(key.public))
        project = make_django_project(work / "app")
        git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/bench.git")
        git(project, "push", "opus", "main", env=key.git_env(opus))
        for run in range(args.runs):
            plain, named = f"plain{run}.bench.test", f"www{run}.bench.test"
            opus.cli("certs:auto", "bench", "off")
            start = time.perf_counter()
            opus.cli("domains:add", "bench", plain)     # a new release, switched over
            wait_until(lambda p=plain: answers(opus, p, None, None))
            results.setdefault("plain", []).append(time.perf_counter() - start)
            opus.cli("certs:auto", "bench", "on", check=False)
            start = time.perf_counter()
            opus.cli("domains:add", "bench", named)
            wait_until(lambda n=named: answers(opus, n, https_port, ca.root))
            results.setdefault("cert", []).append(time.perf_counter() - start)
        name = "www0.bench.test"
        assert name in json.loads(opus.cli("certs", "bench", "--json").stdout)["https"]
        scale = args.scale
        for label, url, port, h1, fresh, count in (
                ("conn http", f"http://{name}:{http_port}{STATIC}", http_port, True, True,
                 2000),
                ("conn https", f"https://{name}:{https_port}{STATIC}", https_port, True, True,
                 2000),
                ("app http", f"http://{name}:{http_port}/", http_port, True, False, 200),
                ("app https h1", f"https://{name}:{https_port}/", https_port, True, False, 200),
                ("app https h2", f"https://{name}:{https_port}/", https_port, False, False,
                 200),
                ("static http", f"http://{name}:{http_port}{STATIC}", http_port, True, False,
                 8000),
                ("static https h1", f"https://{name}:{https_port}{STATIC}", https_port, True,
                 False, 8000),
                ("static https h2", f"https://{name}:{https_port}{STATIC}", https_port, False,
                 False, 8000)):
            results[label] = [h2load(url, connect=port, count=count * scale, h1=h1,
                                     new_connections=fresh) for _ in range(args.runs)]
    finally:
        stop_opus(opus)
        ca.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = {label: statistics.median(values) for label, values in results.items()}
    print(f"| a new connection per request (static file; h2load, {args.runs} runs) "
          "| connections/s | ratio to baseline |")
    print("|---|---|---|")
    print(f"| http (baseline) | {med['conn http']:.0f} | 1.00 |")
    print(f"| https: TLS 1.3 handshake each | {med['conn https']:.0f} | "
          f"{med['conn https'] / med['conn http']:.2f} |")
    print()
    print(f"| kept-alive connections (h2load -c8 -t2, {args.runs} runs) | requests/s "
          "| ratio to baseline |")
    print("|---|---|---|")
    for what in ("app", "static"):
        base = med[f"{what} http"]
        print(f"| {what}: http/1.1 (baseline) | {base:.0f} | 1.00 |")
        for proto in ("h1", "h2"):
            value = med[f"{what} https {proto}"]
            name_ = "HTTP/1.1" if proto == "h1" else "HTTP/2"
            print(f"| {what}: https, {name_} | {value:.0f} | {value / base:.2f} |")
    print()
    print(f"| a new name (median of {args.runs}) | seconds | ratio to baseline |")
    print("|---|---|---|")
    print(f"| `domains:add` until it answers over http (baseline) | {med['plain']:.2f} | 1.00 |")
    print(f"| `domains:add` until it answers over https, certificate from pebble | "
          f"{med['cert']:.2f} | {med['cert'] / med['plain']:.1f}x |")


if __name__ == "__main__":
    main()
