"""The front's Apache config: rendered from state, tested by Apache before it goes live."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from opus_paas import privileged
from opus_paas.errors import ServiceError
from opus_paas.front import httpd
from opus_paas.settings import Settings
from secureops import front as secureops_front
from secureops.layout import Denied
from tests.conftest import require_tool


def _settings(tmp_path: Path, **changes: object) -> Settings:
    return Settings(home=tmp_path, http_port=18080, **changes)  # type: ignore[arg-type]


def _render(settings: Settings, sites: list[httpd.Site], token: str = "0" * 32) -> str:
    """What secureops renders for this spec (same-user mode: no User line)."""
    spec = httpd.spec(settings, sites, token)
    return secureops_front.render(privileged.embedded_layout(settings),
                                  secureops_front.check(spec), same_user=True)


def test_render_has_one_vhost_per_site_and_a_default(tmp_path: Path) -> None:
    sites = [httpd.Site("b", ("b.localhost",), 20002),
             httpd.Site("a", ("a.localhost", "a.example.com"), 20004)]
    text = _render(_settings(tmp_path), sites)
    assert text.count("<VirtualHost ") == 4      # the default, the dashboard, a and b
    assert text.index("ServerName _default_") < text.index("ServerName a.localhost")
    assert 'ServerName opus.localhost\n' in text
    assert 'ProxyPass / "http://127.0.0.1:8090/" flushpackets=on' in text
    # The front's calls to the balancer-manager stay out of the apps' traffic.
    assert "opus env=!opus_internal" in text
    assert text.index("ServerName a.localhost") < text.index("ServerName b.localhost")
    assert "ServerAlias a.example.com" in text
    assert "ProxyPass / balancer://app-a/" in text
    assert 'BalancerMember "http://127.0.0.1:20004" retry=0\n' in text
    assert "ProxyPass /static/ !" in text
    # From secureops's copy of the live release's static files, never the app's tree.
    assert f'Alias /static/ "{tmp_path}/front/static/a/current/"' in text
    assert f"{tmp_path}/apps" not in text
    assert "inet_http_server" not in text


@pytest.mark.parametrize("host", ['127.0.0.1/" evil', "a b", "x\nListen 80", ""])
def test_a_dashboard_host_that_would_break_the_config_is_refused(tmp_path: Path,
                                                                 host: str) -> None:
    settings = _settings(tmp_path, dashboard_host=host)
    with pytest.raises(ServiceError, match="the dashboard's host"):
        httpd.write(settings, [])
    assert not (tmp_path / "front" / "httpd.conf").exists()


@pytest.mark.parametrize("bad", ['x"\nLoadModule evil', "a\\b"])
def test_a_home_that_would_break_the_config_is_refused(tmp_path: Path, bad: str) -> None:
    settings = Settings(home=tmp_path / bad, http_port=18080)
    with pytest.raises(ServiceError, match="cannot go into the Apache config"):
        httpd.write(settings, [httpd.Site("a", ("a.localhost",), 20002)])


def test_rendered_config_passes_apaches_own_test(tmp_path: Path) -> None:
    apache = require_tool("/usr/sbin/apache2")
    settings = _settings(tmp_path)
    site = httpd.Site("a", ("a.localhost",), 20002)
    assert httpd.write(settings, [site]) is True
    assert httpd.write(settings, [site]) is False     # unchanged: no reload needed
    assert httpd.is_current(settings, [site])
    assert not httpd.is_current(settings, [httpd.Site("a", ("a.localhost",), 20004)])
    result = subprocess.run([apache, "-t", "-f", str(tmp_path / "front" / "httpd.conf")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_a_config_failing_apaches_test_never_goes_live(tmp_path: Path) -> None:
    require_tool("/usr/sbin/apache2")
    good = _settings(tmp_path)
    httpd.write(good, [])
    live = (tmp_path / "front" / "httpd.conf").read_text()
    broken = _settings(tmp_path, apache_modules=str(tmp_path / "nowhere"))
    with pytest.raises(ServiceError, match="failed Apache's test"):
        httpd.write(broken, [httpd.Site("a", ("a.localhost",), 20002)])
    assert (tmp_path / "front" / "httpd.conf").read_text() == live
    assert not httpd.is_current(broken, [httpd.Site("a", ("a.localhost",), 20002)])


def test_both_members_are_rendered_and_only_the_live_one_is_enabled(tmp_path: Path) -> None:
    site = httpd.Site("a", ("a.localhost",), 20003, members=(20002, 20003))
    text = _render(_settings(tmp_path), [site], "f" * 32)
    assert 'BalancerMember "http://127.0.0.1:20002" retry=0 status=+D\n' in text
    assert 'BalancerMember "http://127.0.0.1:20003" retry=0\n' in text
    # The manager: loopback only, with the token, and never proxied to the app.
    assert "%{HTTP:X-Opus-Token} == '" + "f" * 32 + "'" in text
    assert text.index('ProxyPass "/.opus/balancer" !') < text.index("ProxyPass / balancer://")
    for hostile in ("", "f' || true || '", "F" * 32, "f" * 31):
        with pytest.raises(Denied, match="token"):
            _render(_settings(tmp_path), [site], hostile)


def test_the_manager_token_is_made_once_and_kept_private(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    token = httpd.manager_token(settings)
    assert httpd.TOKEN.fullmatch(token) and httpd.manager_token(settings) == token
    assert (tmp_path / "front.token").stat().st_mode & 0o077 == 0
    (tmp_path / "front.token").write_text("not a token\n")
    assert httpd.manager_token(settings) != token       # a damaged one is replaced


def test_parse_balancer_manager_page() -> None:
    from opus_paas.front import balancer

    row = ('<tr>\n<td><a href="/.opus/balancer?b=app-a&amp;w=http://127.0.0.1:{port}&amp;'
           'nonce=abc-1">http://127.0.0.1:{port}</a></td><td></td><td></td><td>1.00</td>'
           '<td>0</td><td>{status} </td><td>6</td><td>{busy}</td><td>0</td><td>1K</td>'
           '<td>1</td></tr>')
    page = "<table>" + row.format(port=1, status="Init Ok", busy=2) + \
        row.format(port=2, status="Init Dis", busy=0) + \
        row.replace("app-a", "app-b").format(port=3, status="Init Ok", busy=0) + "</table>"
    nonce, members = balancer.parse_page(page, "app-a")
    assert nonce == "abc-1"
    assert set(members) == {"http://127.0.0.1:1", "http://127.0.0.1:2"}
    assert members["http://127.0.0.1:1"].enabled and members["http://127.0.0.1:1"].busy == 2
    assert not members["http://127.0.0.1:2"].enabled
    assert balancer.parse_page("<html>nothing</html>", "app-a") == (None, {})


def test_the_manager_answers_only_on_its_own_port(tmp_path: Path) -> None:
    """Each app vhost listens on the manager's loopback port too, and the manager checks
    the port the connection came in on (not the Host header's: UseCanonicalName On and
    the physical port), loopback and the token."""
    settings = _settings(tmp_path, app_port_base=30000)
    site = httpd.Site("a", ("a.localhost",), 30003, members=(30002, 30003))
    assert httpd.manager_ports(settings) == (30000, 30001)
    text = _render(settings, [site], "f" * 32)
    assert "Listen 127.0.0.1:30000\n" in text
    assert "<VirtualHost 127.0.0.1:18080 127.0.0.1:30000>\n    ServerName a.localhost" in text
    location = text.split('<Location "/.opus/balancer">')[1].split("</Location>")[0]
    assert "UseCanonicalName On" in location and "UseCanonicalPhysicalPort On" in location
    assert ("Require expr \"%{SERVER_PORT} == '30000' && %{REMOTE_ADDR} == '127.0.0.1' && "
            "%{HTTP:X-Opus-Token} == '" + "f" * 32 + "'\"") in location
    # The dashboard's vhost is not on the manager's port.
    assert "<VirtualHost 127.0.0.1:18080>\n    ServerName opus.localhost" in text
    spec = httpd.spec(settings, [site], "f" * 32)
    for hostile in ({"manager_port": 30002}, {"manager_port": 18080},
                    {"manager_tls_port": 30000}, {"manager_port": 8090},
                    {"manager_port": "30000\nListen 1"}, {"manager_port": 80}):
        with pytest.raises(Denied):
            secureops_front.check({**spec, **hostile})


def test_the_front_record_keeps_no_token_and_a_new_token_rerenders(tmp_path: Path) -> None:
    require_tool("/usr/sbin/apache2")
    settings = _settings(tmp_path)
    site = httpd.Site("a", ("a.localhost",), 20002)
    assert httpd.write(settings, [site]) is True
    token = httpd.manager_token(settings)
    record = tmp_path / "front.json"
    assert token not in record.read_text()
    assert record.stat().st_mode & 0o777 == 0o600
    assert httpd.is_current(settings, [site])
    assert f"== '{token}'" in (tmp_path / "front" / "httpd.conf").read_text()
    # A new token (each `opus up`) is a new config.
    fresh = httpd.rotate_manager_token(settings)
    assert fresh != token and httpd.manager_token(settings) == fresh
    assert (tmp_path / "front.token").stat().st_mode & 0o777 == 0o600
    assert not httpd.is_current(settings, [site])
    assert httpd.write(settings, [site]) is True
    assert f"== '{fresh}'" in (tmp_path / "front" / "httpd.conf").read_text()
    assert fresh not in record.read_text() and record.stat().st_mode & 0o777 == 0o600


def test_a_sleeping_site_sends_to_its_own_waker_url_only(tmp_path: Path) -> None:
    """A sleeping app's balancer has the waker as its hot standby and tells it, with a
    proof under the front's token, which app it is; an app that may not sleep never
    reaches the waker. Then the real front: with the apps' instances down, the sleeping
    app's request reaches the waker carrying its own proof (a client's forged one is
    replaced), the other app's does not."""
    import http.server
    import threading
    import time
    import urllib.error
    import urllib.request

    from opus_paas.run import sleep
    from tests.conftest import free_port, free_port_block

    apache = require_tool("/usr/sbin/apache2")
    base = free_port_block(8)
    settings = Settings(home=tmp_path, http_port=free_port(), app_port_base=base,
                        waker_port=free_port(), dashboard_port=free_port())
    sites = [httpd.Site("a", ("a.localhost",), base + 3, (base + 2, base + 3), sleeps=True),
             httpd.Site("b", ("b.localhost",), base + 5, (base + 4, base + 5))]
    token = httpd.manager_token(settings)
    text = _render(settings, sites, token)
    vhost_a = text.split("ServerName a.localhost")[1].split("</VirtualHost>")[0]
    vhost_b = text.split("ServerName b.localhost")[1].split("</VirtualHost>")[0]
    waker = f'BalancerMember "http://127.0.0.1:{settings.waker_port}" retry=0 status=+H'
    assert vhost_a.count(waker) == 1 and text.count(waker) == 1
    assert f'RequestHeader set X-Opus-Wake "{sleep.wake_proof(token, "a")}"' in vhost_a
    assert "X-Opus-Wake" not in vhost_b and "retry=1" not in vhost_b
    assert f'BalancerMember "http://127.0.0.1:{base + 3}" retry=1\n' in vhost_a
    spec = httpd.spec(settings, sites, token)
    for hostile in ({"waker_port": base + 2}, {"waker_port": settings.http_port},
                    {"waker_port": 80}, {"waker_port": "1\nListen 1"}, {"waker_port": 0}):
        with pytest.raises(Denied):
            secureops_front.check({**spec, **hostile})
    with pytest.raises(Denied, match="sleeps must be"):
        secureops_front.check({**spec, "sites": [{**spec["sites"][0], "sleeps": "yes"}]})

    seen: list[tuple[str | None, str | None]] = []

    class Waker(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.headers.get("Host"), self.headers.get("X-Opus-Wake")))
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"awake")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", settings.waker_port), Waker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assert httpd.write(settings, sites)
    front = subprocess.Popen([apache, "-f", str(tmp_path / "front" / "httpd.conf"),
                              "-DFOREGROUND"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        def get(host: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{settings.http_port}/",
                headers={"Host": host, "X-Opus-Wake": sleep.wake_proof(token, "b")})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code
            except urllib.error.URLError:
                return 0
        deadline = time.monotonic() + 10
        while get("a.localhost") != 200:
            assert time.monotonic() < deadline, "the front never answered"
            time.sleep(0.2)
        assert [get("a.localhost") for _ in range(5)] == [200] * 5
        assert get("b.localhost") == 503
        assert set(seen) == {("a.localhost", sleep.wake_proof(token, "a"))}
    finally:
        front.terminate()
        front.wait(timeout=15)
        server.shutdown()
        server.server_close()
