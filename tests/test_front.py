"""The front's Apache config: rendered from state, tested by Apache before it goes live."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from opus_paas import front
from opus_paas.errors import ServiceError
from opus_paas.settings import Settings
from tests.conftest import require_tool


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, http_port=18080)


def test_render_has_one_vhost_per_site_and_a_default(tmp_path: Path) -> None:
    sites = [front.Site("b", ("b.localhost",), 20002, tmp_path / "b" / "static"),
             front.Site("a", ("a.localhost", "a.example.com"), 20000, tmp_path / "a" / "static")]
    text = front.render(_settings(tmp_path), sites)
    assert text.count("<VirtualHost ") == 3
    assert text.index("ServerName _default_") < text.index("ServerName a.localhost")
    assert text.index("ServerName a.localhost") < text.index("ServerName b.localhost")
    assert "ServerAlias a.example.com" in text
    assert "ProxyPass / http://127.0.0.1:20000/ retry=0" in text
    assert "ProxyPass /static/ !" in text
    assert "inet_http_server" not in text


@pytest.mark.parametrize("bad", ['/tmp/x"\nLoadModule evil', "relative/static", "/tmp/a\\b"])
def test_paths_that_would_break_the_config_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ServiceError):
        front.render(_settings(tmp_path), [front.Site("a", ("a.localhost",), 1, Path(bad))])


def test_rendered_config_passes_apaches_own_test(tmp_path: Path) -> None:
    apache = require_tool("/usr/sbin/apache2")
    settings = _settings(tmp_path)
    site = front.Site("a", ("a.localhost",), 20000, tmp_path / "a" / "static")
    assert front.write(settings, [site]) is True
    assert front.write(settings, [site]) is False     # unchanged: no reload needed
    result = subprocess.run([apache, "-t", "-f", str(tmp_path / "front" / "httpd.conf")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_a_config_failing_apaches_test_never_goes_live(tmp_path: Path) -> None:
    require_tool("/usr/sbin/apache2")
    good = _settings(tmp_path)
    front.write(good, [])
    live = (tmp_path / "front" / "httpd.conf").read_text()
    broken = Settings(home=tmp_path, http_port=18080, apache_modules=str(tmp_path / "nowhere"))
    with pytest.raises(ServiceError, match="failed Apache's test"):
        front.write(broken, [front.Site("a", ("a.localhost",), 1, tmp_path / "s")])
    assert (tmp_path / "front" / "httpd.conf").read_text() == live
