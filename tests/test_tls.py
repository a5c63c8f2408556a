"""HTTPS end to end against a real ACME server: Debian's pebble on loopback validates
HTTP-01 challenges through the front of an Opus of this module's own (the session's
orders none), with every test name resolving to 127.0.0.1 through pebble's DNS.

Issue on domains:add, https with HTTP/2 and the app told https, a name without a
certificate kept off https, a renewal and a restart under wrk's https load, a failed
challenge that changes nothing, operator certificates (a chain, a mismatched key, an
expired one, hostile files), redirect and HSTS, the dashboard on https with Secure
cookies, and Chromium trusting pebble's root with no warning.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opus_paas import settings as settings_module
from opus_paas.tls import certs
from tests import pebble as pebble_module
from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    free_port,
    git,
    make_django_project,
    make_key,
    push_main,
    require_tool,
    start_opus,
    stop_opus,
)

APP = "shop"
NAME = "www.shop.test"            # ordered from pebble
BAD = "broken.shop.test"          # pebble's DNS points it where nothing answers
VIEW = '''\
from django.http import HttpResponse


def index(request):
    return HttpResponse("scheme=%s secure=%s" % (request.scheme, request.is_secure()))
'''


class Https:
    """This module's Opus with pebble: ports, and a client that trusts pebble's root."""

    def __init__(self, opus: Opus, pebble: pebble_module.Pebble, https_port: int) -> None:
        self.opus, self.pebble, self.https_port = opus, pebble, https_port

    def context(self, cafile: Path | None = None) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(cafile or self.pebble.root))

    def get(self, host: str, path: str = "/", cafile: Path | None = None,
            context: ssl.SSLContext | None = None
            ) -> tuple[int, dict[str, str], str, dict[str, object]]:
        """GET https://host/path through the front (SNI and Host: `host`): status,
        headers, body and the certificate the front presented (verified)."""
        conn = http.client.HTTPSConnection(host, self.https_port, timeout=30,
                                           context=context or self.context(cafile))
        conn._create_connection = (  # type: ignore[attr-defined]
            lambda _a, *args, **kw: socket.create_connection(("127.0.0.1", self.https_port),
                                                             *args, **kw))
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            peer: dict[str, object] = {}
            if isinstance(conn.sock, ssl.SSLSocket):
                peer = dict(conn.sock.getpeercert() or {})
            return (response.status, dict(response.headers),
                    response.read().decode("utf-8", "replace"), peer)
        finally:
            conn.close()

    def presented(self, host: str) -> x509.Certificate:
        """The certificate the front presents for SNI `host`, unverified."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def status(self, app: str = APP) -> dict[str, object]:
        return dict(json.loads(self.opus.cli("certs", app, "--json").stdout))

    def wait_for_cert(self, app: str, name: str, timeout: float = 60,
                      serial: object = None) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.status(app)
            if name in found["https"] and found["serial"] != serial:   # type: ignore[operator]
                return found
            assert time.monotonic() < deadline, found
            time.sleep(0.3)

    def settings(self) -> settings_module.Settings:
        return settings_module.load(self.opus.env)


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Https]:
    http_port, https_port = free_port(), free_port()
    pebble = pebble_module.start(tmp_path_factory.mktemp("pebble"), http_port)
    try:
        opus = start_opus(OPUS_HTTP_PORT=str(http_port), OPUS_HTTPS_PORT=str(https_port),
                          OPUS_ACME_DIRECTORY=pebble.directory,
                          OPUS_ACME_CA_BUNDLE=str(pebble.listener_ca),
                          OPUS_ACME_EMAIL="ops@example.com")
        try:
            yield Https(opus, pebble, https_port)
        finally:
            stop_opus(opus)
    finally:
        pebble.stop()


@pytest.fixture(scope="module")
def shop(https: Https, tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    key = make_key(tmp_path_factory.mktemp("tls-keys"), "admin")
    https.opus.cli("keys:add", "admin", str(key.public))
    project = make_django_project(tmp_path_factory.mktemp("tls") / APP)
    (project / "pages" / "views.py").write_text(VIEW)
    commit_all(project, "say the scheme")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{https.opus.ssh_port}/{APP}.git")
    push_main(project, https.opus, key)
    return key


def wrk_https(https: Https, host: str, seconds: int) -> tuple[threading.Thread, list[str]]:
    wrk = require_tool("wrk")
    report: list[str] = []

    def run() -> None:
        # wrk connects to the URL's host and sends it as SNI: the name must resolve here,
        # so it goes as "localhost" with the Host header naming the app (the front picks
        # the vhost by SNI, then checks Host against it: the fallback vhost would answer
        # 421). The name is covered by the certificate the tests add for it.
        result = subprocess.run([wrk, "-t2", "-c8", f"-d{seconds}s", "-H", f"Host: {host}",
                                 f"https://{host}:{https.https_port}/"],
                                capture_output=True, text=True, timeout=seconds + 60,
                                check=False)
        report.append(result.stdout + result.stderr)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, report


def wrk_failures(output: str) -> tuple[int, int, int]:
    requests = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                        output)
    assert requests, output
    return (int(requests.group(1)), int(non_2xx.group(1)) if non_2xx else 0,
            sum(int(n) for n in sockets.groups()) if sockets else 0)


# ---- issue, serve, HTTP/2 -------------------------------------------------------------

def test_domains_add_gets_a_certificate_and_https_with_http2(https: Https, shop: SshKey) -> None:
    opus = https.opus
    assert https.status()["source"] is None           # shop.localhost gets none
    started = time.monotonic()
    opus.cli("domains:add", APP, NAME)
    found = https.wait_for_cert(APP, NAME)
    print(f"domains:add to a valid certificate: {time.monotonic() - started:.2f} s")
    assert found["source"] == "acme" and found["covers"] == [NAME]
    assert "Pebble Intermediate" in str(found["issuer"])

    status, headers, body, peer = https.get(NAME)
    assert (status, body) == (200, "scheme=https secure=True")
    assert ("DNS", NAME) in peer["subjectAltName"]    # type: ignore[operator]
    assert "Strict-Transport-Security" not in headers  # only with https:redirect on
    # http still serves, and says http.
    assert opus.get(NAME)[::2] == (200, "scheme=http secure=False")

    curl = require_tool("curl")
    for path in ("/", "/static/pages/site.css"):
        version = subprocess.run(
            [curl, "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
             "--cacert", str(https.pebble.root),
             "--resolve", f"{NAME}:{https.https_port}:127.0.0.1",
             f"https://{NAME}:{https.https_port}{path}"],
            capture_output=True, text=True, timeout=30, check=False)
        assert version.stdout == "2 200", (path, version.stdout, version.stderr)
    old_tls = subprocess.run(
        [curl, "-sS", "--tlsv1.1", "--tls-max", "1.1", "-o", "/dev/null", "--cacert",
         str(https.pebble.root), "--resolve", f"{NAME}:{https.https_port}:127.0.0.1",
         f"https://{NAME}:{https.https_port}/"], capture_output=True, text=True, timeout=30,
        check=False)
    assert old_tls.returncode != 0

    # A name without a certificate: never shop's certificate, never redirected.
    fallback = https.presented(f"{APP}.localhost")
    assert fallback.subject.rfc4514_string() == "CN=invalid"
    with pytest.raises(ssl.SSLCertVerificationError):
        https.get(f"{APP}.localhost")
    assert opus.get(f"{APP}.localhost")[0] == 200

    shown = opus.cli("certs", APP).stdout
    assert f"covers      {NAME}" in shown and "renews from" in shown, shown
    assert f"http only:    {APP}.localhost" in shown, shown
    key_dir = opus.home / "front" / "certs" / APP
    assert (key_dir / "key.pem").stat().st_mode & 0o777 == 0o600
    assert key_dir.stat().st_mode & 0o777 == 0o700


# ---- renewal and a restart under load -----------------------------------------------------

def h2load_https(https: Https, host: str, seconds: int) -> tuple[threading.Thread, list[str]]:
    """HTTP/2 load through the front's https port (SNI: `host`) for `seconds`."""
    h2load = require_tool("h2load")
    report: list[str] = []

    def run() -> None:
        # 8 streams at once, as the zero-downtime tests' wrk -c8 (more overruns an
        # instance's 20 workers: see docs/design-notes.md, HTTPS).
        result = subprocess.run([h2load, "-c8", "-t2", "-m1", f"-D{seconds}",
                                 f"--connect-to=127.0.0.1:{https.https_port}",
                                 f"https://{host}:{https.https_port}/"],
                                capture_output=True, text=True, timeout=seconds + 60,
                                check=False)
        report.append(result.stdout + result.stderr)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, report


def h2load_failures(output: str) -> tuple[int, int, int]:
    """(requests that succeeded, responses that were errors, streams that got no response:
    failed, errored or timed out, less the error responses)."""
    found = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", output)
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    assert found and statuses, output
    errors = int(statuses.group(3)) + int(statuses.group(4))
    unanswered = int(found.group(2)) - errors + int(found.group(4))
    return int(found.group(1)), errors, unanswered


def test_renewal_and_a_restart_under_https_load_fail_no_request(https: Https,
                                                                shop: SshKey) -> None:
    before = https.wait_for_cert(APP, NAME)
    thread, report = h2load_https(https, NAME, seconds=10)
    time.sleep(1)
    restarted = https.opus.cli("ps:restart", APP).stdout
    assert "Switched through the front's balancer" in restarted, restarted
    # The clock moved to the renewal window of the certificate it has.
    assert isinstance(before["not_before"], float) and isinstance(before["not_after"], float)
    renewal = certs.renew_at(before["not_before"], before["not_after"])
    # The scheduler's job, in a process of its own, as the scheduler runs it.
    renewed = subprocess.run(
        [sys.executable, "-c", "import sys; from opus_paas import settings, store; "
         "from opus_paas.tls import certs; s = settings.load(); "
         "print(certs.run_due(s, store.Store(s.db_path), now=float(sys.argv[1])))",
         str(renewal + 1)], env=https.opus.env, capture_output=True, text=True, timeout=120,
        check=False)
    assert renewed.stdout.strip() == f"['{APP}']", renewed.stdout + renewed.stderr
    thread.join()
    succeeded, errors, unanswered = h2load_failures(report[0])
    # Not one error response: both vhosts' balancers were switched, and no request the
    # front took was dropped. The reload's GOAWAY may refuse a stream sent just as it
    # came (RFC 9113 clients retry those; h2load counts them): seen once in ~10,000.
    assert succeeded > 100 and errors == 0, report[0]
    assert unanswered <= max(2, succeeded // 1000), report[0]
    after = https.status()
    assert after["serial"] != before["serial"] and after["covers"] == [NAME]
    assert format(https.presented(NAME).serial_number, "x") == after["serial"]
    assert https.get(NAME)[::2] == (200, "scheme=https secure=True")


# ---- redirect and HSTS --------------------------------------------------------------------

def http_get(https: Https, host: str, path: str = "/") -> tuple[int, dict[str, str]]:
    """GET over plain http through the front, redirects not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", https.opus.http_port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.headers)
    finally:
        conn.close()


def test_redirect_and_hsts_only_for_names_with_a_certificate(https: Https,
                                                             shop: SshKey) -> None:
    said = https.opus.cli("https:redirect", APP, "on").stdout
    assert f"redirects to https for {NAME}" in said, said
    status, headers = http_get(https, NAME, "/some/page?x=1")
    assert status == 301
    assert headers["Location"] == f"https://{NAME}:{https.https_port}/some/page?x=1"
    # ACME's challenges are never redirected; a name without a certificate keeps http.
    assert http_get(https, NAME, "/.well-known/acme-challenge/nothing")[0] == 404
    assert http_get(https, f"{APP}.localhost")[0] == 200
    status, headers, _body, _peer = https.get(NAME)
    assert status == 200 and headers["Strict-Transport-Security"] == "max-age=31536000"
    https.opus.cli("https:redirect", APP, "off")
    assert http_get(https, NAME)[0] == 200
    assert "Strict-Transport-Security" not in https.get(NAME)[1]
    for bad in (["yes"], [], ["on", "now"], ["on;id"]):
        refused = https.opus.cli("https:redirect", APP, *bad, check=False)
        assert refused.returncode == 2 and "usage: opus https:redirect" in refused.stderr


# ---- a real browser ----------------------------------------------------------------------

def test_chromium_loads_the_app_over_https_with_no_warning(https: Https, shop: SshKey,
                                                           tmp_path: Path) -> None:
    chromium, chromedriver = "/usr/bin/chromium", "/usr/bin/chromedriver"
    require_tool(chromium)
    require_tool(chromedriver)
    certutil = require_tool("certutil")
    # Chromium trusts what its NSS database in $HOME trusts: pebble's root, nothing more.
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([certutil, "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
    subprocess.run([certutil, "-A", "-d", f"sql:{nssdb}", "-n", "pebble", "-t", "C,,",
                    "-i", str(https.pebble.root)], check=True)
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--no-proxy-server",
                 "--host-resolver-rules=MAP *.shop.test 127.0.0.1", "--window-size=900,500"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=chromedriver,
                                      env={**os.environ, "HOME": str(home)})
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"https://{NAME}:{https.https_port}/")
        body = driver.find_element("tag name", "body").text
        assert body == "scheme=https secure=True", (driver.title, body)
        # No interstitial: the page's own URL, and a secure context as the page sees it.
        assert driver.current_url == f"https://{NAME}:{https.https_port}/"
        assert driver.execute_script("return window.isSecureContext") is True
        shots = Path(__file__).parent / "artifacts" / "https"
        shots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shots / "app-over-https.png"))
        # The control: a name without a certificate gets Chromium's warning, not the app.
        driver.get(f"https://{APP}.localhost:{https.https_port}/")
        warned = driver.find_element("tag name", "body").text
        assert "scheme=" not in warned and "not private" in warned.lower(), warned
        driver.save_screenshot(str(shots / "no-certificate-warning.png"))
    finally:
        driver.quit()


# ---- a failed order -------------------------------------------------------------------------

def test_a_failed_challenge_changes_nothing_and_says_when_it_retries(https: Https,
                                                                   shop: SshKey) -> None:
    before = https.wait_for_cert(APP, NAME)
    https.pebble.point(BAD, "127.0.0.2")        # nothing of Opus's listens there
    https.opus.cli("domains:add", APP, BAD)
    deadline = time.monotonic() + 60
    while not (found := https.status())["last_error"]:
        assert time.monotonic() < deadline, found
        time.sleep(0.3)
    assert BAD in str(found["last_error"]) and "challenge failed" in str(found["last_error"])
    assert found["failures"] == 1 and found["serial"] == before["serial"]
    assert isinstance(found["retry_at"], float) and found["retry_at"] > time.time() + 200
    shown = https.opus.cli("certs", APP).stdout
    assert "Last order failed at" in shown and "Opus tries again at" in shown, shown
    assert f"http only:    {APP}.localhost, {BAD}" in shown, shown
    # What served before still does, over https and http.
    assert https.get(NAME)[::2] == (200, "scheme=https secure=True")
    assert http_get(https, BAD)[0] == 200
    # Asked again by hand: the same failure, said at once, exit status 1.
    again = https.opus.cli("certs:auto", APP, "on", check=False)
    assert again.returncode == 1 and "The order failed" in again.stdout, again.stdout
    assert "keeps serving as before" in again.stdout
    assert https.status()["failures"] == 1       # a try by hand restarts the count
    https.opus.cli("domains:remove", APP, BAD)


# ---- operator certificates ---------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, names: list[str] = (),  # type: ignore[assignment]
          days: tuple[int, int] = (-1, 30)) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + datetime.timedelta(days=days[0]))
               .not_valid_after(now + datetime.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*items: x509.Certificate | ec.EllipticCurvePrivateKey) -> str:
    out = []
    for item in items:
        if isinstance(item, x509.Certificate):
            out.append(item.public_bytes(serialization.Encoding.PEM).decode())
        else:
            out.append(item.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode())
    return "".join(out)


@pytest.fixture(scope="module")
def operator_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A root, an intermediate it signed, and a way to make leaves under it."""
    root_key, mid_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    root = _cert("Operator Root", root_key, "Operator Root", root_key, ca=True)
    mid = _cert("Operator Intermediate", mid_key, "Operator Root", root_key, ca=True)
    directory = tmp_path_factory.mktemp("operator-ca")
    (directory / "root.pem").write_text(_pem(root))
    return {"root": directory / "root.pem", "mid": mid, "mid_key": mid_key,
            "dir": directory}


def _leaf(ca: dict[str, object], names: list[str], days: tuple[int, int] = (-1, 30)
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    mid, mid_key = ca["mid"], ca["mid_key"]
    assert isinstance(mid, x509.Certificate) and isinstance(mid_key, ec.EllipticCurvePrivateKey)
    return _cert(names[0], key, "Operator Intermediate", mid_key, ca=False, names=names,
                 days=days), key


SECURE = "secure.shop.test"


def test_operator_certificates_are_checked_and_served_with_their_chain(
        https: Https, shop: SshKey, operator_ca: dict[str, object]) -> None:
    opus, directory = https.opus, operator_ca["dir"]
    assert isinstance(directory, Path) and isinstance(operator_ca["root"], Path)
    said = opus.cli("certs:auto", APP, "off").stdout
    assert "the one it has stays" in said, said
    opus.cli("domains:add", APP, SECURE)       # (no order for it: automatic is off)
    leaf, key = _leaf(operator_ca, [SECURE])
    mid = operator_ca["mid"]
    assert isinstance(mid, x509.Certificate)
    serial = https.status()["serial"]

    def add(chain: str, key_text: str) -> subprocess.CompletedProcess[str]:
        (directory / "chain.pem").write_text(chain)
        (directory / "key.pem").write_text(key_text)
        return opus.cli("certs:add", APP, str(directory / "chain.pem"),
                        str(directory / "key.pem"), check=False)

    other_key = ec.generate_private_key(ec.SECP256R1())
    expired, expired_key = _leaf(operator_ca, [SECURE], days=(-30, -1))
    stranger, stranger_key = _leaf(operator_ca, ["elsewhere.example.org"])
    encrypted = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret")).decode()
    refusals = {
        "the key does not match the certificate": (_pem(leaf, mid), _pem(other_key)),
        "expired on": (_pem(expired, mid), _pem(expired_key)),
        "none of shop's domains": (_pem(stranger, mid), _pem(stranger_key)),
        "the key is encrypted": (_pem(leaf, mid), encrypted),
        "holds no PEM certificate": ("not a certificate\n", _pem(key)),
        "holds no PEM private key": (_pem(leaf, mid), "-----BEGIN PRIVATE KEY-----\nAAAA\n"),
        "larger than 64 KiB": (_pem(leaf, mid) + "x" * 70000, _pem(key)),
    }
    for reason, (chain, key_text) in refusals.items():
        refused = add(chain, key_text)
        assert refused.returncode != 0 and reason in refused.stderr, (reason, refused.stderr)
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert https.status()["serial"] == serial, reason      # nothing changed
    missing = opus.cli("certs:add", APP, "/nonexistent.pem", str(directory / "key.pem"),
                       check=False)
    assert missing.returncode == 2 and "cannot read the certificate" in missing.stderr

    # The leaf, its intermediate and the key, in one stream on standard input (as over SSH).
    added = opus.cli("certs:add", APP, "-", input=_pem(leaf, mid, key))
    assert f"for {SECURE}" in added.stdout and "1 chain certificate" in added.stdout
    status, _headers, body, _peer = https.get(SECURE, cafile=operator_ca["root"])
    assert (status, body) == (200, "scheme=https secure=True")      # the chain was kept
    assert https.status()["source"] == "operator" and https.status()["auto"] is False
    # The app's other names are not on the operator's certificate: http only.
    assert https.presented(f"{APP}.localhost").subject.rfc4514_string() == "CN=invalid"
    assert http_get(https, f"{APP}.localhost")[0] == 200
    assert f"http only:    {APP}.localhost" in opus.cli("certs", APP).stdout

    removed = opus.cli("certs:remove", APP).stdout
    assert "served over http only" in removed
    # No site has a certificate now: the https port is closed again.
    with pytest.raises(ConnectionRefusedError):
        https.presented(SECURE)
    assert not (opus.home / "front" / "certs" / APP).exists()
    assert http_get(https, SECURE)[0] == 200


def test_the_dashboard_on_https_sets_secure_cookies(https: Https, shop: SshKey,
                                                    operator_ca: dict[str, object]) -> None:
    dashboard = "opus.localhost"
    leaf, key = _leaf(operator_ca, [dashboard])
    mid = operator_ca["mid"]
    assert isinstance(mid, x509.Certificate) and isinstance(operator_ca["root"], Path)
    https.opus.cli("certs:add", "opus", "-", input=_pem(leaf, mid, key))
    status, headers, body, _peer = https.get(dashboard, "/signin", cafile=operator_ca["root"])
    assert status == 200 and "Sign in" in body
    assert "Secure" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    status, headers = http_get(https, dashboard, "/signin")
    assert status == 301 and headers["Location"] == \
        f"https://{dashboard}:{https.https_port}/signin"
    shown = https.opus.cli("certs", "opus").stdout
    assert f"covers      {dashboard}" in shown, shown
    https.opus.cli("certs:remove", "opus")
    assert http_get(https, dashboard, "/signin")[0] == 200


def test_certificate_commands_refuse_strangers_and_bad_arguments(https: Https,
                                                                 shop: SshKey) -> None:
    opus = https.opus
    for argv, message in (
            (["certs:auto", APP, "maybe"], "usage: opus certs:auto"),
            (["certs:auto", "../etc", "on"], "invalid app name"),
            (["certs", "nosuchapp"], "nosuchapp"),
            (["certs:add", APP], "usage: opus certs:add"),
            (["certs:add", APP, "a", "b", "c"], "usage: opus certs:add"),
            (["certs:remove"], "usage: opus certs:remove"),
    ):
        refused = opus.cli(*argv, check=False)
        assert refused.returncode != 0 and message in refused.stderr.lower() + \
            refused.stderr, (argv, refused.stderr)
