"""The front's balancer members by address: apps whose processes run on swarm nodes
get one member per web task (`node:port`); secureops lets only loopback and private
IPv4 addresses into the config; the balancer-manager switches members by URL. Then a
real Apache front over members in network namespaces: a switch between two member sets
under load loses nothing, and a killed member, or one whose host vanished, is skipped."""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opus_paas import privileged
from opus_paas.errors import ServiceError
from opus_paas.front import balancer, httpd, sites
from opus_paas.settings import Settings
from opus_paas.store import Store, SwarmMember
from secureops import front as secureops_front
from secureops import verbs
from secureops.layout import Denied, Layout
from tests.conftest import free_port, free_port_block, require_root, require_tool

FAST = "connectiontimeout=1 retry=2 disablereuse=on"


def _settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(home=tmp_path, http_port=18080, **changes)  # type: ignore[arg-type]


def _swarm_site(app: str = "a", members: tuple[tuple[str, int, bool], ...] = (
        ("10.0.0.5", 21000, True), ("10.0.0.6", 21001, False))) -> httpd.Site:
    return httpd.Site(app, (f"{app}.localhost",), 0,
                      nodes=tuple(httpd.Member(h, p, e) for h, p, e in members))


def _spec(tmp_path: Path, site_list: list[httpd.Site]) -> dict[str, Any]:
    return httpd.spec(_settings(tmp_path), site_list, "0" * 32)


def _render(tmp_path: Path, site_list: list[httpd.Site]) -> str:
    settings = _settings(tmp_path)
    return secureops_front.render(privileged.embedded_layout(settings),
                                  secureops_front.check(_spec(tmp_path, site_list)),
                                  same_user=True)


def _with_members(spec: dict[str, Any], members: object, **site: object) -> dict[str, Any]:
    return {**spec, "sites": [{**spec["sites"][0], "members": members, **site}]}


# ---- rendering ------------------------------------------------------------------------

def test_members_on_nodes_fail_fast_and_local_ones_stay_as_they_were(tmp_path: Path) -> None:
    local = httpd.Site("b", ("b.localhost",), 20003, members=(20002, 20003))
    text = _render(tmp_path, [_swarm_site(), local])
    vhost_a = text.split("ServerName a.localhost")[1].split("</VirtualHost>")[0]
    vhost_b = text.split("ServerName b.localhost")[1].split("</VirtualHost>")[0]
    assert f'BalancerMember "http://10.0.0.5:21000" {FAST}\n' in vhost_a
    assert f'BalancerMember "http://10.0.0.6:21001" {FAST} status=+D\n' in vhost_a
    assert "ProxyPassReverse / http://10.0.0.6:21001/" in vhost_a
    assert "127.0.0.1:2" not in vhost_a.split("<Location")[0]
    assert 'BalancerMember "http://127.0.0.1:20003" retry=0\n' in vhost_b
    assert 'BalancerMember "http://127.0.0.1:20002" retry=0 status=+D\n' in vhost_b
    assert "connectiontimeout" not in vhost_b
    # A local site's spec keeps its shape (an installed record stays current).
    spec = _spec(tmp_path, [local])
    assert spec["sites"][0]["port"] == 20003 and spec["sites"][0]["members"] == [20002, 20003]
    # Its https vhost has the same members, in a balancer of its own.
    tls_site = {**_spec(tmp_path, [_swarm_site()])["sites"][0],
                "tls": {"domains": ["a.localhost"], "redirect": True, "serial": "1f"}}
    text = secureops_front.render(
        privileged.embedded_layout(_settings(tmp_path)),
        secureops_front.check({**_spec(tmp_path, []), "sites": [tls_site]}), same_user=True)
    assert text.count(f'BalancerMember "http://10.0.0.5:21000" {FAST}\n') == 2
    assert text.count(f'BalancerMember "http://10.0.0.6:21001" {FAST} status=+D\n') == 2
    swarm = _spec(tmp_path, [_swarm_site()])["sites"][0]
    assert "port" not in swarm
    assert swarm["members"][1] == {"host": "10.0.0.6", "port": 21001, "enabled": False}


def test_a_loopback_member_of_a_swarm_site_is_rendered_as_local(tmp_path: Path) -> None:
    text = _render(tmp_path, [_swarm_site(members=(("127.0.0.1", 21000, True),
                                                   ("192.168.3.4", 21000, True)))])
    assert 'BalancerMember "http://127.0.0.1:21000" retry=0\n' in text
    assert f'BalancerMember "http://192.168.3.4:21000" {FAST}\n' in text


def test_the_rendered_members_pass_apaches_own_test(tmp_path: Path) -> None:
    apache = require_tool("/usr/sbin/apache2")
    settings = _settings(tmp_path)
    site_list = [_swarm_site(members=tuple((f"10.1.{i // 200}.{i % 200 + 1}", 21000 + i,
                                            i % 3 == 0) for i in range(256))),
                 httpd.Site("b", ("b.localhost",), 20002)]
    assert httpd.write(settings, site_list) is True
    assert httpd.is_current(settings, site_list)
    assert not httpd.is_current(settings, [_swarm_site(), site_list[1]])
    result = subprocess.run([apache, "-t", "-f", str(tmp_path / "front" / "httpd.conf")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "front" / "httpd.conf").read_text().count(FAST) == 256


# ---- validation (secureops) -----------------------------------------------------------

@pytest.mark.parametrize("host", [
    "8.8.8.8", "1.1.1.1", "100.64.0.1", "169.254.169.254", "172.32.0.1", "172.15.255.255",
    "192.169.0.1", "11.0.0.1", "127.0.0.2", "127.1.0.1", "0.0.0.0", "255.255.255.255",
    "224.0.0.1", "::1", "fd00::1", "::ffff:10.0.0.1", "[10.0.0.1]", "10.0.0.1%eth0",
    "node1", "localhost", "internal.example", "127.0.0.1 \n Include /etc/passwd",
    "10.0.0.1\n", " 10.0.0.1", "10.0.0.1 ", "010.0.0.1", "10.1", "10.0.0", "10.0.0.256",
    "10.0.0.1:80", "10.0.0.1/8", "0x0a000001", "10.0.0.1\"", "", 167772161, None,
    ["10.0.0.1"], {"host": "10.0.0.1"}, True,
])
def test_hostile_member_hosts_are_refused(tmp_path: Path, host: object) -> None:
    spec = _spec(tmp_path, [_swarm_site()])
    with pytest.raises(Denied, match=r"must be 127\.0\.0\.1 or a private IPv4 address"):
        secureops_front.check(_with_members(spec, [
            {"host": "10.0.0.5", "port": 21000, "enabled": True},
            {"host": host, "port": 21000, "enabled": True}]))


@pytest.mark.parametrize("host", ["10.0.0.1", "10.255.255.254", "172.16.0.1",
                                  "172.31.255.254", "192.168.0.1", "192.168.255.254",
                                  "127.0.0.1"])
def test_loopback_and_private_addresses_are_members(tmp_path: Path, host: str) -> None:
    spec = _spec(tmp_path, [_swarm_site()])
    checked = secureops_front.check(_with_members(
        spec, [{"host": host, "port": 21000, "enabled": True}]))
    assert checked.sites[0].members == (secureops_front.Member(host, 21000, True),)


def test_member_hosts_at_the_ranges_edges_and_at_random() -> None:
    """Accepted exactly when the address is 127.0.0.1 or inside 10/8, 172.16/12 or
    192.168/16 (the reference below is integer arithmetic, not the checker's code)."""
    import ipaddress
    import random

    def expected(value: int) -> bool:
        return (value == 0x7F000001 or value >> 24 == 10 or value >> 20 == 0xAC1
                or value >> 16 == 0xC0A8)

    edges = ["9.255.255.255", "10.0.0.0", "10.255.255.255", "11.0.0.0", "172.15.255.255",
             "172.16.0.0", "172.31.255.255", "172.32.0.0", "192.167.255.255",
             "192.168.0.0", "192.168.255.255", "192.169.0.0", "127.0.0.0", "127.0.0.1",
             "127.0.0.2", "126.255.255.255"]
    rng = random.Random(23)
    samples = edges + [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(3000)]
    samples += [f"{rng.choice((10, 172, 192))}.{rng.randrange(256)}.{rng.randrange(256)}."
                f"{rng.randrange(256)}" for _ in range(3000)]
    for text in samples:
        try:
            secureops_front.member_host(text, "a")
            accepted = True
        except Denied:
            accepted = False
        assert accepted == expected(int(ipaddress.IPv4Address(text))), text


@pytest.mark.parametrize("port", [0, 1, 80, 1023, 65536, 70000, -1, "21000", "21000\n",
                                  21000.0, True, None])
def test_member_ports_out_of_range_are_refused(tmp_path: Path, port: object) -> None:
    spec = _spec(tmp_path, [_swarm_site()])
    with pytest.raises(Denied, match="a member's port must be a whole number from 1024"):
        secureops_front.check(_with_members(
            spec, [{"host": "10.0.0.5", "port": port, "enabled": True}]))


def test_one_to_256_members(tmp_path: Path) -> None:
    spec = _spec(tmp_path, [_swarm_site()])

    def members(n: int) -> list[dict[str, object]]:
        return [{"host": f"10.0.{i // 250}.{i % 250 + 1}", "port": 21000, "enabled": True}
                for i in range(n)]

    assert len(secureops_front.check(_with_members(spec, members(256))).sites[0].members) == 256
    with pytest.raises(Denied, match="1 to 256 members"):
        secureops_front.check(_with_members(spec, members(257)))
    with pytest.raises(Denied, match="1 to 256 members"):
        secureops_front.check(_with_members(spec, []))
    with pytest.raises(Denied, match="1 to 256 members"):
        secureops_front.check(_with_members(spec, {"host": "10.0.0.5"}))


@pytest.mark.parametrize(("members", "site", "said"), [
    ([{"host": "10.0.0.5", "port": 21000}], {}, "missing keys \\['enabled'\\]"),
    ([{"host": "10.0.0.5", "port": 21000, "enabled": True, "options": "retry=0"}], {},
     "unknown keys \\['options'\\]"),
    ([{"host": "10.0.0.5", "port": 21000, "enabled": "yes"}], {}, "enabled must be true"),
    ([{"host": "10.0.0.5", "port": 21000, "enabled": 1}], {}, "enabled must be true"),
    ([{"host": "10.0.0.5", "port": 21000, "enabled": True}, 21001], {}, "JSON object"),
    ([{"host": "10.0.0.5", "port": 21000, "enabled": True}], {"port": 21000},
     "a member must be a whole number"),
    ([21000], {}, "a member \\(host, port, enabled\\) must be a JSON object"),
    ([{"host": "10.0.0.5", "port": 21000, "enabled": True},
      {"host": "10.0.0.5", "port": 21000, "enabled": False}], {}, "given twice"),
    ([{"host": "10.0.0.5", "port": 21000, "enabled": True}], {"sleeps": True},
     "cannot sleep"),
])
def test_malformed_members_are_refused(tmp_path: Path, members: object,
                                       site: dict[str, object], said: str) -> None:
    spec = {**_spec(tmp_path, [_swarm_site()]), "waker_port": 20999}
    with pytest.raises(Denied, match=said):
        secureops_front.check(_with_members(spec, members, **site))


def test_two_apps_never_share_a_member(tmp_path: Path) -> None:
    spec = _spec(tmp_path, [_swarm_site("a"), _swarm_site("b", (("10.0.0.5", 21000, True),))])
    with pytest.raises(Denied, match="a port is given to two apps"):
        secureops_front.check(spec)
    # The same port on another node, or on loopback for a local app, is another member.
    secureops_front.check(_spec(tmp_path, [
        _swarm_site("a"), _swarm_site("b", (("10.0.0.7", 21000, True),)),
        httpd.Site("c", ("c.localhost",), 21000)]))
    # A loopback member may not take the front's own ports.
    with pytest.raises(Denied, match="front's or the dashboard's"):
        secureops_front.check(_spec(tmp_path, [
            _swarm_site("a", (("127.0.0.1", 18080, True),))]))
    # On a node, the front's port number is just a port.
    secureops_front.check(_spec(tmp_path, [_swarm_site("a", (("10.0.0.9", 18080, True),))]))


def test_port_rules_guard_only_loopback_members(tmp_path: Path) -> None:
    """An app whose members are all on nodes has no loopback port to guard (and its user
    is not even looked up); a loopback member is guarded as a local port."""
    layout = Layout(home=tmp_path, conf_d=tmp_path, front=tmp_path, logs=tmp_path,
                    log=tmp_path / "log", front_group="root", front_user="root",
                    opus_group="root")
    spec = secureops_front.check(_spec(tmp_path, [_swarm_site("nosuchuser")]))
    guards = verbs.port_guards(layout, spec)
    assert not [g for g in guards if g.what.startswith("app ")]
    spec = secureops_front.check(_spec(tmp_path, [
        _swarm_site("nosuchuser", (("127.0.0.1", 21000, True), ("10.0.0.5", 21001, True)))]))
    with pytest.raises(Denied, match="nosuchuser"):
        verbs.port_guards(layout, spec)


# ---- the swarm app's site (pure) and the front's sites from the store ----------------

def _member(version: int, slot: int, host: str, port: int, enabled: bool,
            ptype: str = "web") -> SwarmMember:
    return SwarmMember("a", version, ptype, slot, f"node-{host}", host, port, enabled)


def test_a_swarm_site_has_its_web_tasks_as_members(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(tmp_path / "opus.db")
    store.init()
    owner = store.create_user("owner", "admin")
    app = store.create_app("a", owner, {})
    members = [_member(1, 1, "10.0.0.5", 21000, True), _member(1, 2, "10.0.0.6", 21001, True),
               _member(1, 1, "10.0.0.5", 21016, True, ptype="worker"),
               _member(2, 1, "10.0.0.6", 21016, False)]
    site = sites.swarm_site(settings, app, ["a.example.com"], members)
    assert site is not None and site.domains == ("a.localhost", "a.example.com")
    assert site.nodes == (httpd.Member("10.0.0.6", 21016, False),
                          httpd.Member("10.0.0.5", 21000, True),
                          httpd.Member("10.0.0.6", 21001, True))
    assert sites.swarm_site(settings, app, [], [members[2]]) is None
    # One address recorded twice (a stale row): once, enabled if either is.
    twice = sites.swarm_site(settings, app, [], [_member(1, 1, "10.0.0.5", 21000, False),
                                                 _member(2, 1, "10.0.0.5", 21000, True)])
    assert twice is not None and twice.nodes == (httpd.Member("10.0.0.5", 21000, True),)
    # More than the front takes: the enabled ones first.
    many = [_member(1, i, f"10.0.{i // 200}.{i % 200 + 1}", 21000, i >= 290)
            for i in range(300)]
    capped = sites.swarm_site(settings, app, [], many)
    assert capped is not None and len(capped.nodes) == sites.MAX_MEMBERS
    assert sum(m.enabled for m in capped.nodes) == 10

    # From the store: a swarm app gets its members; a local app without a live release
    # (and the swarm app once it is local again) has no site.
    store.create_app("b", owner, {})
    store.set_scheduler(app, "swarm")
    store.set_swarm_members(app, 1, "web", members[:2])
    found = {s.app: s for s in sites.live_sites(settings, store, store.list_apps())}
    assert found["a"].nodes == (httpd.Member("10.0.0.5", 21000, True),
                                httpd.Member("10.0.0.6", 21001, True))
    assert "b" not in found
    store.set_scheduler(app, "local")
    assert "a" not in {s.app for s in sites.live_sites(settings, store, store.list_apps())}


# ---- the balancer-manager takes member URLs -------------------------------------------

def test_member_urls() -> None:
    assert balancer.member_url(20002) == "http://127.0.0.1:20002"
    assert balancer.member_url("http://10.0.0.5:21000") == "http://10.0.0.5:21000"
    for hostile in ("10.0.0.5:21000", "http://10.0.0.5", "http://node1:21000",
                    "http://10.0.0.5:21000/x", "http://10.0.0.5:21000\n", "https://10.0.0.5:1"):
        with pytest.raises(ServiceError, match="not a balancer member"):
            balancer.member_url(hostile)
    page = ('<table><tr>\n<td><a href="/.opus/balancer?b=app-a&amp;w=http://10.0.0.5:21000'
            '&amp;nonce=n-1">http://10.0.0.5:21000</a></td><td></td><td></td><td>1</td>'
            '<td>0</td><td>Init Dis </td><td>6</td><td>3</td><td>0</td><td>1K</td><td>1</td>'
            '</tr></table>')
    nonce, members = balancer.parse_page(page, "app-a")
    assert nonce == "n-1" and not members["http://10.0.0.5:21000"].enabled
    assert members["http://10.0.0.5:21000"].busy == 3


# ---- a real front over members in network namespaces ----------------------------------

# A member: answers its own name after a short while (so requests are in flight).
SERVER = r"""
import http.server, socketserver, sys, time
name = sys.argv[3].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        time.sleep(0.01)
        self.send_response(200)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):  # without HTTPServer's reverse lookup of the address (no DNS)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "member", self.server_address[1]
Server((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""


CLIENT_TIMEOUT = 8


class Load:
    """Clients sending requests to the front all the time, each on a new connection;
    every answer counted by who served it (a failure as its status, or 'error')."""

    def __init__(self, port: int, host: str, clients: int = 4):
        self.port, self.host = port, host
        self.answers: list[tuple[float, str, float]] = []   # (when, who, seconds)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True)
                        for _ in range(clients)]

    def _client(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=CLIENT_TIMEOUT)
            try:
                conn.request("GET", "/", headers={"Host": self.host})
                response = conn.getresponse()
                body = response.read().decode()
                who = body if response.status == 200 else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException):
                who = "error"
            finally:
                conn.close()
            with self.lock:
                self.answers.append((started, who, time.monotonic() - started))

    def since(self, when: float) -> list[tuple[float, str, float]]:
        with self.lock:
            return [a for a in self.answers if a[0] >= when]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def _failures(answers: list[tuple[float, str, float]]) -> list[str]:
    return [who for _, who, _ in answers if not who.startswith("m")]


@pytest.fixture
def spaces() -> Iterator[Any]:
    require_root("network namespaces need root")
    require_tool("ip")
    from tests.netns import namespaces
    with namespaces(5) as net:
        yield net


def test_a_real_front_switches_member_sets_and_skips_dead_members(
        tmp_path: Path, spaces: Any) -> None:
    apache = require_tool("/usr/sbin/apache2")
    port = 21000
    servers = {}
    for i, space in enumerate(spaces.spaces, start=1):
        servers[i] = space.popen([sys.executable, "-c", SERVER, space.address, str(port),
                                  f"m{i}"])
    url = {i: f"http://{s.address}:{port}" for i, s in enumerate(spaces.spaces, start=1)}
    blue, green = (1, 2), (3, 4, 5)

    def site(enabled: tuple[int, ...]) -> httpd.Site:
        return httpd.Site("a", ("a.localhost",), 0, nodes=tuple(
            httpd.Member(s.address, port, i in enabled)
            for i, s in enumerate(spaces.spaces, start=1)))

    base = free_port_block(4)
    settings = Settings(home=tmp_path, http_port=free_port(), app_port_base=base,
                        dashboard_port=free_port())
    assert httpd.write(settings, [site(blue)])
    front = subprocess.Popen([apache, "-f", str(tmp_path / "front" / "httpd.conf"),
                              "-DFOREGROUND"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        manager = sites.manager(settings, "a")
        assert manager.https is None and manager.host == "a.localhost"
        deadline = time.monotonic() + 15
        while True:
            try:
                _nonce, members = manager.members()
                if all(space_ready(spaces.spaces)):
                    break
            except ServiceError:
                pass
            assert time.monotonic() < deadline, "the front or the members never answered"
            time.sleep(0.2)
        assert {u for u, m in members.items() if m.enabled} == {url[1], url[2]}
        assert set(members) == set(url.values())
        timings["front and members up"] = time.monotonic() - began

        with Load(settings.http_port, "a.localhost") as load:
            time.sleep(1.5)
            before = load.since(0)
            assert before and {who for _, who, _ in before} == {"m1", "m2"}, \
                Counter(who for _, who, _ in before)

            # Blue to green under load, through the balancer-manager (no reload).
            started = time.monotonic()
            for i in green:
                manager.set_enabled(url[i], True)
            for i in blue:
                manager.set_enabled(url[i], False)
            assert all(manager.wait_drained(url[i], 10) for i in blue)
            timings["switch and drain"] = time.monotonic() - started
            switched = time.monotonic()
            time.sleep(1.5)
            after = load.since(switched)
            assert after and {who for _, who, _ in after} == {"m3", "m4", "m5"}, \
                Counter(who for _, who, _ in after)
            assert _failures(load.since(0)) == []

            # A member killed mid-load (its address answers with a reset): skipped.
            killed = time.monotonic()
            servers[3].kill()
            servers[3].wait(timeout=10)
            time.sleep(3)
            # A member whose host vanished (packets lost: connect times out): skipped
            # after one second, retried every two.
            vanished = time.monotonic()
            spaces.spaces[3].link(False)
            time.sleep(5)
            # Switch back to blue (a rollback), the dead members disabled too.
            rolling = time.monotonic()
            manager.switch(url[1], url[3])
            manager.switch(url[2], url[4])
            manager.set_enabled(url[5], False)
            back = time.monotonic()
            time.sleep(1)
        # (Leaving the block waits for every client's last answer, or its timeout.)
        timings["load done"] = time.monotonic() - began
        total = load.since(0)
        timings["requests"] = len(total)
        assert len(total) > 100

        def between(start: float, stop: float) -> list[tuple[float, str, float]]:
            return [a for a in total if start <= a[0] < stop]

        def seen(answers: list[tuple[float, str, float]]) -> Counter[str]:
            return Counter(who for _, who, _ in answers)

        # The switch lost nothing.
        assert _failures(between(0, killed - 0.2)) == [], seen(between(0, killed - 0.2))
        # The kill: only requests in flight on it failed (at most one per client), and
        # from half a second on, it got none.
        kill = between(killed - 0.2, vanished - 0.2)
        timings["failed: in flight on the killed member"] = len(_failures(kill))
        assert len(_failures(kill)) <= 4, seen(kill)
        assert set(seen(between(killed + 0.5, vanished - 0.2))) == {"m4", "m5"}
        # The vanished host: requests in flight on it wait for an answer that never
        # comes (ProxyTimeout: the clients gave up first); new ones wait at most the
        # connect timeout, then go to the member left.
        gone = between(vanished - 0.2, rolling)
        lost = [a for a in gone if a[1] == "error" and a[2] >= CLIENT_TIMEOUT - 1]
        timings["failed: in flight on the vanished host"] = len(lost)
        assert len(lost) <= 4 and len(_failures(gone)) == len(lost), seen(gone)
        after = [a for a in gone if a[0] >= vanished + 0.2]
        timings["slowest request after the host vanished"] = max(a[2] for a in after)
        assert set(seen(after)) <= {"m4", "m5"} and seen(after)["m5"] > len(after) / 2
        assert timings["slowest request after the host vanished"] < 3
        # The rollback: blue again.
        assert set(seen(between(back + 0.3, time.monotonic()))) == {"m1", "m2"}
    finally:
        # The vanished host comes back without its server: the front's requests stuck
        # on it end (the front stops at once instead of waiting for them).
        for server in servers.values():
            if server.poll() is None:
                server.kill()
                server.wait(timeout=10)
        spaces.spaces[3].link(True)
        stopping = time.monotonic()
        front.terminate()
        front.wait(timeout=15)
        timings["front stopped"] = time.monotonic() - stopping
        print(f"\nfront members timings: {timings}")


def space_ready(spaces_list: list[Any]) -> list[bool]:
    """Each member answers (straight, not through the front)."""
    ready = []
    for space in spaces_list:
        conn = http.client.HTTPConnection(space.address, 21000, timeout=2)
        try:
            conn.request("GET", "/")
            ready.append(conn.getresponse().status == 200)
        except OSError:
            ready.append(False)
        finally:
            conn.close()
    return ready


def test_netns_helper_tears_down_and_sweeps_what_a_killed_run_left() -> None:
    require_root("network namespaces need root")
    require_tool("ip")
    from tests import netns

    def names() -> str:
        return netns._ip("netns", "list").stdout + netns._ip("link").stdout

    with netns.namespaces(2) as net:
        first, second = net.spaces
        assert first.address != second.address and net.gateway.startswith("10.78.")
        assert first.run("ip", "-4", "-o", "addr").stdout.count(first.address) == 1
        child = first.popen(["sleep", "60"])
        deadline = time.monotonic() + 5
        while child.pid not in first.pids():             # `ip netns exec` execs it
            assert time.monotonic() < deadline, first.pids()
            time.sleep(0.05)
    assert child.wait(timeout=10) != 0                  # killed by the teardown
    assert net.run not in names()
    # A run whose owner died before its teardown: the next run's sweep removes it.
    gone = subprocess.Popen(["true"])
    gone.wait()
    run = "0badc0"
    stale = f"{netns.PREFIX}{gone.pid}-{run}-1"
    netns._ip("netns", "add", stale)
    netns._ip("link", "add", f"onb{run}", "type", "bridge")
    try:
        assert run in netns.sweep_stale()
        assert stale not in names() and f"onb{run}" not in names()
    finally:
        netns._ip("netns", "del", stale, check=False)
        netns._ip("link", "del", f"onb{run}", check=False)
