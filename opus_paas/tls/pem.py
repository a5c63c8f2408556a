"""Certificates and keys in PEM (pure): what a chain and a key hold, whether they belong
together, and new keys. Opus checks here, to say what is wrong; secureops checks again
before root writes anything."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from opus_paas.errors import UsageError

MAX_PEM = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a leaf certificate says."""

    names: tuple[str, ...]     # its DNS subjectAltNames, lower-case
    not_before: float
    not_after: float
    serial: str
    issuer: str


@dataclasses.dataclass(frozen=True)
class Pair:
    """A checked chain (leaf first) and key, as PEM, and the leaf's facts."""

    chain: str
    key: str
    facts: Facts


def new_key() -> str:
    """A fresh ECDSA P-256 key (fast handshakes, accepted by every ACME CA), PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def facts(cert: x509.Certificate) -> Facts:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = tuple(n.lower() for n in names.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    return Facts(dns, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
                 format(cert.serial_number, "x"), cert.issuer.rfc4514_string())


def _public(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def check_pair(chain_pem: str, key_pem: str, now: float) -> Pair:
    """The chain and key, checked: PEM that parses, an unencrypted key, a certificate
    that is that key's, valid now, naming at least one host. The chain comes back with
    that leaf first, its other certificates after it in the order given. UsageError says
    what is wrong and what to do."""
    if len(chain_pem) > MAX_PEM or len(key_pem) > MAX_PEM:
        raise UsageError(f"a certificate or key file is larger than {MAX_PEM // 1024} KiB")
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError:
        raise UsageError("the certificate file holds no PEM certificate (-----BEGIN "
                         "CERTIFICATE-----); give the PEM chain, your site's first") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except TypeError:
        raise UsageError("the key is encrypted; decrypt it first (openssl pkey -in KEY "
                         "-out plain.key) and give that") from None
    except ValueError:
        raise UsageError("the key file holds no PEM private key (-----BEGIN PRIVATE "
                         "KEY-----)") from None
    mine = [c for c in certs if _public(c.public_key()) == _public(key.public_key())]
    if not mine:
        raise UsageError("the key does not match the certificate: give the key the "
                         "certificate was issued for")
    leaf = mine[0]
    told = facts(leaf)
    if told.not_after <= now:
        when = datetime.datetime.fromtimestamp(told.not_after, datetime.UTC)
        raise UsageError(f"the certificate expired on {when:%Y-%m-%d %H:%M} UTC; renew it "
                         "and add the new one")
    if not told.names:
        raise UsageError("the certificate names no host (no DNS subjectAltName)")
    ordered = [leaf, *[c for c in certs if c is not leaf]]
    chain = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii")
                    for c in ordered)
    plain = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode("ascii")
    return Pair(chain, plain, told)


