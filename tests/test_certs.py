"""The pure parts of HTTPS: when a certificate is due, how long a failed order backs
off, which names may be ordered, what the front is asked to serve over https, the
checks of an operator's certificate, and what secureops renders from it all."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from opus_paas.errors import UsageError
from opus_paas.front import tls as front_tls
from opus_paas.store import TlsSite
from opus_paas.tls import certs, pem
from secureops import certs as secureops_certs
from secureops import front as secureops_front
from secureops.layout import Layout

DAY = 86400.0
NOW = 1_800_000_000.0


def acme_site(**changes: object) -> TlsSite:
    values: dict[str, object] = {"source": "acme", "domains": ("www.shop.test",),
                                 "not_before": NOW - 10 * DAY, "not_after": NOW + 80 * DAY,
                                 "serial": "ab"}
    values.update(changes)
    return TlsSite("shop", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("life", "left", "due"), [
    (90 * DAY, 31 * DAY, False), (90 * DAY, 29 * DAY, True),      # Let's Encrypt's 90 days
    (6 * DAY, 2.1 * DAY, False), (6 * DAY, 1.9 * DAY, True),      # short-lived: a third left
    (60.0, 21.0, False), (60.0, 19.0, True),
])
def test_renewal_is_30_days_before_expiry_or_a_third_of_a_short_life(
        life: float, left: float, due: bool) -> None:
    not_after = NOW + left
    state = acme_site(not_before=not_after - life, not_after=not_after)
    assert (certs.why_order(state, ["www.shop.test"], NOW) == "renewal due") is due


def test_what_is_due_and_why() -> None:
    wanted = ["www.shop.test"]
    assert certs.why_order(TlsSite("shop"), wanted, NOW) == "no certificate yet"
    assert certs.why_order(TlsSite("shop"), [], NOW) is None           # nothing orderable
    assert certs.why_order(TlsSite("shop", auto=False), wanted, NOW) is None
    assert certs.why_order(acme_site(source="operator"), wanted, NOW) is None
    assert certs.why_order(acme_site(), wanted, NOW) is None
    assert certs.why_order(acme_site(), [*wanted, "new.shop.test"], NOW) == \
        "not covered yet: new.shop.test"
    assert certs.why_order(acme_site(domains=("*.shop.test",)), wanted, NOW) is None
    backing_off = TlsSite("shop", failures=2, retry_at=NOW + 60)
    assert certs.due(backing_off, wanted, NOW) is None
    assert certs.due(backing_off, wanted, NOW + 61) == "no certificate yet"


def test_failed_orders_back_off_to_a_day() -> None:
    assert [certs.retry_delay(n) for n in range(1, 6)] == [300, 600, 1200, 2400, 4800]
    assert certs.retry_delay(20) == DAY
    assert certs.retry_delay(0) == 300


@pytest.mark.parametrize(("name", "orderable"), [
    ("www.example.com", True), ("shop.test", True), ("localhost", False),
    ("shop.localhost", False), ("a.b.localhost", False), ("127.0.0.1", False),
    ("localhost.example.com", True),
])
def test_names_a_ca_could_check(name: str, orderable: bool) -> None:
    assert certs.orderable(name) is orderable


@pytest.mark.parametrize(("names", "domain", "covered"), [
    (["www.shop.test"], "www.shop.test", True),
    (["*.shop.test"], "www.shop.test", True),
    (["*.shop.test"], "a.b.shop.test", False),         # one label only
    (["*.shop.test"], "shop.test", False),
    (["www.shop.test"], "shop.test", False),
    ([], "shop.test", False),
])
def test_what_a_certificate_covers(names: list[str], domain: str, covered: bool) -> None:
    assert front_tls.covers(names, domain) is covered
    assert secureops_certs.covers(names, domain) is covered     # the same rule on both sides


def test_the_front_is_asked_https_only_for_covered_names() -> None:
    domains = ["shop.localhost", "www.shop.test"]
    assert front_tls.site_tls(None, domains) is None
    assert front_tls.site_tls(TlsSite("shop"), domains) is None
    assert front_tls.site_tls(acme_site(), domains) == \
        {"domains": ["www.shop.test"], "redirect": False, "serial": "ab"}
    assert front_tls.site_tls(acme_site(domains=("other.test",)), domains) is None


# ---- operator certificates --------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make(names: list[str], *, issuer: tuple[str, object] | None = None,
         days: tuple[int, int] = (-1, 30), key: object = None) -> tuple[x509.Certificate, object]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signer_name, signer_key = issuer or (names[0] if names else "x", key)
    builder = (x509.CertificateBuilder().subject_name(_name(names[0] if names else "x"))
               .issuer_name(_name(signer_name)).public_key(key.public_key())  # type: ignore[attr-defined]
               .serial_number(x509.random_serial_number())
               .not_valid_before(now + datetime.timedelta(days=days[0]))
               .not_valid_after(now + datetime.timedelta(days=days[1])))
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key  # type: ignore[arg-type]


def text(item: object) -> str:
    if isinstance(item, x509.Certificate):
        return item.public_bytes(serialization.Encoding.PEM).decode()
    return item.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined,no-any-return]
                              serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption()).decode()


def test_an_operator_chain_is_put_leaf_first_and_kept_whole() -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca, _ = make(["Operator CA"], key=ca_key)
    leaf, key = make(["www.shop.test", "Shop.Test"], issuer=("Operator CA", ca_key))
    pair = pem.check_pair(text(ca) + text(leaf), text(key), time.time())
    assert pair.chain.index(text(leaf).strip()) == 0 and text(ca).strip() in pair.chain
    assert pair.facts.names == ("www.shop.test", "shop.test")
    assert pair.key.startswith("-----BEGIN PRIVATE KEY-----")     # PKCS#8, as given or not
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_leaf, _ = make(["rsa.shop.test"], key=rsa_key)
    checked = pem.check_pair(text(rsa_leaf), text(rsa_key), time.time())
    assert checked.facts.names == ("rsa.shop.test",)


def test_an_operator_pair_that_would_not_serve_is_refused_saying_why() -> None:
    leaf, key = make(["www.shop.test"])
    other, other_key = make(["www.shop.test"])
    expired, expired_key = make(["www.shop.test"], days=(-30, -1))
    nameless, nameless_key = make([])
    encrypted = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")).decode()

    cases = {
        "does not match": (text(leaf), text(other_key)),
        "expired on": (text(expired), text(expired_key)),
        "names no host": (text(nameless), text(nameless_key)),
        "is encrypted": (text(leaf), encrypted),
        "holds no PEM certificate": ("", text(key)),
        "holds no PEM private key": (text(leaf), "garbage"),
        "larger than 64 KiB": (text(leaf) + " " * 70000, text(key)),
    }
    for said, (chain, key_text) in cases.items():
        with pytest.raises(UsageError, match=said):
            pem.check_pair(chain, key_text, time.time())
    assert other


# ---- what secureops renders -------------------------------------------------------------

LAYOUT = Layout(home=Path("/var/lib/opus"), conf_d=Path("/etc/opus/supervisor/conf.d"),
                front=Path("/etc/opus/front"), logs=Path("/var/log/opus"),
                log=Path("/var/log/opus/secureops.log"), front_group="opus-front")


def spec(**site_tls: object) -> secureops_front.FrontSpec:
    return secureops_front.check({
        "listen_host": "127.0.0.1", "listen_port": 80, "scheme": "http", "https_port": 443,
        "manager_port": 19998, "manager_tls_port": 19999,
        "dashboard": {"domain": "opus.example.com", "host": "127.0.0.1", "port": 8090,
                      "tls": None},
        "token": "0" * 32,
        "sites": [{"app": "shop", "domains": ["shop.example.com", "www.shop.test"],
                   "port": 20001, "members": [20000, 20001],
                   "tls": {"domains": ["www.shop.test"], "redirect": False, "serial": "ab",
                           **site_tls}}]})


def test_secureops_serves_https_only_for_what_the_installed_certificate_covers() -> None:
    asked = spec(redirect=True)
    none = secureops_front.with_installed_certs(asked, lambda _site: None)
    assert not secureops_front.any_tls(none)
    rendered = secureops_front.render(LAYOUT, none, same_user=True)
    assert "mod_ssl" not in rendered and ":443" not in rendered
    assert "RewriteRule" not in rendered          # no redirect without a certificate
    kept = secureops_front.with_installed_certs(asked, lambda site: ["www.shop.test"])
    rendered = secureops_front.render(LAYOUT, kept, same_user=True)
    assert "Listen 127.0.0.1:443 https" in rendered
    assert 'SSLCertificateFile "/etc/opus/front/certs/shop/chain.pem"' in rendered
    assert 'SSLCertificateFile "/etc/opus/front/certs/_fallback/chain.pem"' in rendered
    assert rendered.index("certs/_fallback") < rendered.index("certs/shop")   # first: default
    assert "RewriteCond %{HTTP_HOST} ^(www\\.shop\\.test)(:[0-9]+)?$ [NC]" in rendered
    assert "RewriteRule ^ https://%1%{REQUEST_URI} [R=301,L]" in rendered   # port 443: none
    assert rendered.count('RequestHeader set X-Forwarded-Proto "https"') == 1
    assert 'Alias /.well-known/acme-challenge/ "/var/lib/opus/acme/challenges/"' in rendered
    assert rendered.count('ProxyPass "/.well-known/acme-challenge/" !') == 3   # before proxying
