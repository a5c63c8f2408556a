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
