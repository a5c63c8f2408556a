"""opus-waker: puts idle apps to sleep and wakes them at their first request.

Two duties in one small server (the supervisor program `opus-waker`, the opus user's in
system mode):

- Every `autosleep_check_seconds` it reads what the front's access log gained (each
  line names the vhost) to learn each app's last request, and puts each app idle for
  its period to sleep (run/sleep.py), unless a deploy of it holds its lock.
- It listens on loopback `waker_port`, the hot-standby member of each sleeping app's
  balancer: the front sends it an app's requests while the app's instance is down. It
  takes the app from the Host the request names, checks the front's proof for that
  app (X-Opus-Wake: an HMAC under the front's token, which only the front's config
  holds), wakes the app (one wake for all the requests that arrive meanwhile), and
  hands the request to the instance, answering with its response.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import socketserver
import threading
import time
from pathlib import Path

from opus_paas import locks, names
from opus_paas.errors import OpusError
from opus_paas.front import httpd
from opus_paas.run import sleep
from opus_paas.settings import Settings
from opus_paas.store import App, Store
from opus_paas.supervisor import Supervisor

log = logging.getLogger("opus.waker")

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", sleep.WAKE_HEADER.lower()}
MAX_BODY = 64 << 20          # a held request's body, read before the app is awake
LOCK_POLL = 0.05
READ_LIMIT = 4 << 20         # what one check reads of the access log at most


def host_app(host: str | None, domains: dict[str, str]) -> str | None:
    """The app a Host header names (pure): its name without a port, lower-cased."""
    if not host:
        return None
    name = host.strip().lower()
    if name.startswith("["):
        return None
    name = name.rsplit(":", 1)[0] if ":" in name else name
    return domains.get(name.rstrip("."))


def domain_map(settings: Settings, store: Store) -> dict[str, str]:
    """Every host name an app answers to, to the app."""
    custom = store.list_domains()
    found = {}
    for app in store.list_apps():
        for domain in (settings.app_domain(app.name), *custom.get(app.id, [])):
            found[domain] = app.name
    return found


def idle_apps(now: float, started: float, last_seen: dict[str, float],
              sleepers: list[tuple[App, int, float]]) -> list[App]:
    """The apps idle for their period (pure): `sleepers` are (app, period, changed) of
    awake apps; an app's idle time counts from its last request, from when autosleep
    was set or it last woke, or from the waker's start, whichever is latest."""
    idle = []
    for app, period, changed in sleepers:
        last = max(last_seen.get(app.name, 0.0), changed, started)
        if now - last >= period:
            idle.append(app)
    return idle


class AccessLog:
    """What the front's access log gained since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = self._size()

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def new_lines(self) -> list[str]:
        size = self._size()
        if size < self.position:       # rotated or truncated: from the start
            self.position = 0
        if size == self.position:
            return []
        start = max(self.position, size - READ_LIMIT)
        try:
            with self.path.open("rb") as handle:
                handle.seek(start)
                data = handle.read(size - start)
        except OSError:
            return []
        end = data.rfind(b"\n") + 1      # a line still being written waits
        self.position = start + end
        return data[:end].decode("utf-8", "replace").splitlines()


class Waker:
    """The waker's state: its settings and store, and each app's last request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.db_path)
        self.supervisor = Supervisor(settings)
        self.started = time.time()
        self.last_seen: dict[str, float] = {}
        self.log = AccessLog(settings.logs_dir / "front" / "access.log")

    # ---- putting idle apps to sleep --------------------------------------------------

    def check(self) -> list[str]:
        """Read the access log, then put each idle app to sleep; return those slept."""
        domains = domain_map(self.settings, self.store)
        for line in self.log.new_lines():
            parsed = httpd.parse_log_line(line)
            owner = domains.get(parsed.host) if parsed is not None else None
            if parsed is not None and owner:
                at = parsed.at.timestamp()
                self.last_seen[owner] = max(self.last_seen.get(owner, 0.0), at)
        by_id = {a.id: a for a in self.store.list_apps()}
        awake = [(by_id[i], s.period, s.changed) for i, s in self.store.list_sleepers().items()
                 if i in by_id and not s.asleep and by_id[i].live_port is not None
                 and not by_id[i].stopped]
        slept = []
        for app in idle_apps(time.time(), self.started, self.last_seen, awake):
            with locks.app_lock_if_free(self.settings, app.name) as free:
                if not free:
                    continue
                try:
                    if sleep.put_to_sleep(self.settings, self.store, self.supervisor, app):
                        slept.append(app.name)
                        log.info("%s is asleep (idle for its period)", app.name)
                except OpusError as exc:
                    log.warning("%s did not go to sleep: %s", app.name, exc.message)
        return slept

    def run_checks(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.autosleep_check_seconds):
            try:
                self.check()
            except Exception:
                log.exception("the idle check failed; trying again")

    # ---- waking ------------------------------------------------------------------------

    def ready(self, app_name: str) -> App | None:
        """Wake the app if it sleeps (waiting for a deploy or another request's wake
        that holds its lock), and return it awake; None if it does not serve."""
        deadline = time.monotonic() + self.settings.health_timeout + 30
        while time.monotonic() < deadline:
            app = self.store.get_app(app_name)
            if app is None or app.live_port is None:
                return None
            if not self.store.is_asleep(app):
                return app
            with locks.app_lock_if_free(self.settings, app.name) as free:
                if free:
                    started = time.monotonic()
                    if sleep.wake(self.settings, self.store, self.supervisor, app):
                        log.info("%s woke in %.2f s", app.name, time.monotonic() - started)
                    continue
            time.sleep(LOCK_POLL)
        return None


class Handler(http.server.BaseHTTPRequestHandler):
    """One request the front handed to the waker."""

    protocol_version = "HTTP/1.1"
    server: WakerServer

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)

    def _answer(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.send_header("X-Opus-Served-By", "waker")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
                if len(data) > MAX_BODY:
                    return None
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            return None
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        waker = self.server.waker
        app_name = host_app(self.headers.get("Host"), domain_map(waker.settings, waker.store))
        if app_name is None or not names.APP_NAME.fullmatch(app_name) or \
                not sleep.proof_matches(waker.settings, app_name,
                                        self.headers.get(sleep.WAKE_HEADER)):
            # Only the front, for the app its vhost names, may ask.
            self._answer(403, "Forbidden")
            return
        try:
            body = self._body()
        except ValueError:
            body = None
        if body is None:
            self._answer(413, "The request's body is too large to hold while the app wakes.")
            return
        try:
            app = waker.ready(app_name)
        except OpusError as exc:
            log.warning("%s did not wake: %s", app_name, exc.message)
            app = None
        if app is None or app.live_port is None:
            self._answer(503, f"{app_name} is not running; its owner can see why with "
                              f"`opus ps {app_name}`.")
            return
        self._forward(app.live_port, body)

    def _forward(self, port: int, body: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            response = None
            for attempt in range(10):       # the instance may be a moment from listening
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    break
                except ConnectionRefusedError:
                    conn.close()
                    time.sleep(0.1 * (attempt + 1))
            if response is None:
                self._answer(503, "The app did not answer after it woke.")
                return
            self.send_response_only(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Connection", "close")
            self.send_header("X-Opus-Waker", "held")    # answered through the waker
            self.close_connection = True
            length = response.getheader("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            while chunk := response.read(64 << 10):
                self.wfile.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            log.warning("forwarding to port %d failed: %s", port, exc)
            self.close_connection = True
        finally:
            conn.close()

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET


class WakerServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, waker: Waker) -> None:
        self.waker = waker
        super().__init__(("127.0.0.1", waker.settings.waker_port), Handler)


def main() -> None:
    from opus_paas import settings as settings_module
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = settings_module.load()
    waker = Waker(settings)
    server = WakerServer(waker)
    stop = threading.Event()
    threading.Thread(target=waker.run_checks, args=(stop,), name="idle-check",
                     daemon=True).start()
    log.info("the waker listens on 127.0.0.1:%d", settings.waker_port)
    try:
        server.serve_forever()
    finally:
        stop.set()


if __name__ == "__main__":
    main()
