"""Switching an app's traffic between its two web instances through the front's
balancer-manager, without a graceful restart (which resets connections).

Each app's vhost has a balancer with two members, its blue and green ports; the front's
config marks the one not serving as disabled. A deploy enables the new member, disables
the old one (requests already on it finish there) and waits until the old one has no
request left before it is stopped. The manager answers only on its own loopback ports
(httpd.manager_ports: in system mode nftables lets only root and the opus user connect
to them; on the front's public port it refuses, whatever Host says), only with the
front's token (new at every `opus up`), and (Apache's rule) only to a POST whose Referer
is the manager's page.

An app on swarm nodes has a member per task, `http://NODE:PORT`: the same calls take
that URL wherever they take a local port.

Parsing the manager's page is pure (`parse_page`); `BalancerManager` does the HTTP.
"""

from __future__ import annotations

import dataclasses
import html
import http.client
import re
import socket
import ssl
import time
import urllib.parse

from opus_paas.errors import ServiceError

MANAGER_PATH = "/.opus/balancer"
SETTLE_SECONDS = 0.5
MANAGER_HEADER = "X-Opus-Token"
ROW = re.compile(r"<tr>\s*(<td>.*?)</tr>", re.S)
CELL = re.compile(r"<td>(.*?)</td>", re.S)
LINK = re.compile(r'<a href="([^"]*)">')
MEMBER_URL = re.compile(r"http://(?:[0-9]{1,3}\.){3}[0-9]{1,3}:[0-9]{1,5}")
# A member: a local instance's port (on 127.0.0.1), or a member URL (http://HOST:PORT).
MemberRef = int | str


def balancer_name(app: str) -> str:
    return f"app-{app}"


def member_url(member: MemberRef) -> str:
    """A member's name in the balancer: a local port's URL, or the URL given."""
    if isinstance(member, int):
        return f"http://127.0.0.1:{member}"
    if not MEMBER_URL.fullmatch(member):
        raise ServiceError(f"{member[:60]!r} is not a balancer member: give a port or "
                           "http://ADDRESS:PORT")
    return member


@dataclasses.dataclass(frozen=True)
class Member:
    url: str
    status: str          # Apache's words: "Init Ok", "Init Dis", "Init Err", …
    busy: int            # requests in flight on it

    @property
    def enabled(self) -> bool:
        return "Dis" not in self.status.split() and "Stop" not in self.status.split()


def parse_page(page: str, balancer: str) -> tuple[str | None, dict[str, Member]]:
    """The nonce and the members of `balancer` on a balancer-manager page."""
    nonce = None
    members: dict[str, Member] = {}
    for row in ROW.finditer(page):
        cells = CELL.findall(row.group(1))
        link = LINK.search(cells[0]) if cells else None
        if not link or len(cells) < 8:
            continue
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(html.unescape(link.group(1))).query)
        if query.get("b") != [balancer] or "w" not in query:
            continue
        nonce = query.get("nonce", [None])[0]
        busy = cells[7].strip()
        members[query["w"][0]] = Member(query["w"][0], cells[5].strip(),
                                        int(busy) if busy.isdigit() else 0)
    return nonce, members


def _loopback_tls(host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    """An https connection to the front on loopback with `host` as its SNI name. The
    certificate is not checked: this is the front itself, and the token is the proof."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    conn._create_connection = (  # type: ignore[attr-defined]
        lambda _address, *args, **kwargs: socket.create_connection(("127.0.0.1", port),
                                                                   *args, **kwargs))
    return conn


class BalancerManager:
    """The front's balancer-manager for one app, reached on its loopback port (`port`):
    in its http vhost, and in its https vhost too when it has one (`tls`: the manager's
    https port and a name that vhost serves). Each vhost has a balancer of its own;
    every change is made in both."""

    def __init__(self, port: int, host: str, app: str, token: str, timeout: float = 5.0,
                 tls: tuple[int, str] | None = None):
        self.port, self.host, self.token, self.timeout = port, host, token, timeout
        self.balancer = balancer_name(app)
        self.tls = False          # this view speaks https (the https vhost's own)
        self.https: BalancerManager | None = None
        if tls is not None:
            self.https = BalancerManager(tls[0], tls[1], app, token, timeout)
            self.https.tls = True

    def _views(self) -> list[BalancerManager]:
        return [self] if self.https is None else [self, self.https]

    def _request(self, method: str, body: str | None = None) -> tuple[int, str]:
        scheme = "https" if self.tls else "http"
        conn = (_loopback_tls(self.host, self.port, self.timeout) if self.tls else
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout))
        headers = {"Host": self.host, MANAGER_HEADER: self.token}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Referer"] = f"{scheme}://{self.host}{MANAGER_PATH}"
        try:
            conn.request(method, MANAGER_PATH, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise ServiceError(f"the front's balancer-manager did not answer "
                               f"({exc.__class__.__name__}); is the front running?") from None
        finally:
            conn.close()

    def members(self) -> tuple[str, dict[str, Member]]:
        """The nonce and members of the http vhost's balancer (the https one's must be
        there too)."""
        if self.https is not None:
            self.https._members()
        return self._members()

    def _members(self) -> tuple[str, dict[str, Member]]:
        status, page = self._request("GET")
        nonce, members = parse_page(page, self.balancer)
        if status != 200 or nonce is None or not members:
            raise ServiceError(f"the front has no balancer for this app yet (HTTP {status})")
        return nonce, members

    def set_enabled(self, member: MemberRef, enabled: bool) -> None:
        """Enable or disable one member (a local port or a member URL) in every vhost."""
        url = member_url(member)
        for view in self._views():
            view._set_enabled(url, enabled)

    def _set_enabled(self, url: str, enabled: bool) -> None:
        nonce, members = self._members()
        if url not in members:
            raise ServiceError(f"the front's balancer has no member {url}")
        form = urllib.parse.urlencode({"b": self.balancer, "w": url, "nonce": nonce,
                                       "w_status_D": "0" if enabled else "1"})
        self._request("POST", form)
        if self._members()[1][url].enabled != enabled:
            raise ServiceError(f"the front's balancer did not take the change to {url}")

    def switch(self, new: MemberRef, old: MemberRef | None) -> None:
        """Send new requests to member `new` only; the old member finishes what it has
        (each a local port or a member URL)."""
        self.set_enabled(new, True)
        if old is not None and member_url(old) != member_url(new):
            self.set_enabled(old, False)

    def wait_drained(self, member: MemberRef, timeout: float) -> bool:
        """Wait until no request is in flight on the member (a local port or a member
        URL), in every vhost; False on timeout."""
        deadline = time.monotonic() + timeout
        url = member_url(member)
        return all(view._wait_drained(url, deadline) for view in self._views())

    def _wait_drained(self, url: str, deadline: float) -> bool:
        while True:
            member = self._members()[1].get(url)
            if member is None or member.busy == 0:
                # A front child that picked the member just before the switch counts
                # its request a moment later: look once more.
                time.sleep(SETTLE_SECONDS)
                again = self._members()[1].get(url)
                if again is None or again.busy == 0:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
