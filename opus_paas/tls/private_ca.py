"""Opus's own certificate authority, for what nodes reach on the Opus host (Postgres,
the private registry): made once under OPUS_HOME/ca (key 0600, certificate 0644), and
`issue` for server certificates naming IP addresses and DNS names.

Nodes trust this CA alone for Opus's services (`sslmode=verify-full`, the registry's
`certs.d`); it never signs anything a browser sees (the front's certificates are ACME's
or the operator's). Names and hosts are checked before anything is signed: a host is an
IP literal or a plain DNS name, never a wildcard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opus_paas.errors import InvalidName, ServiceError
from opus_paas.settings import Settings

CA_NAME = "Opus private CA"
CA_DAYS = 3650
SERVER_DAYS = 397
# Where a node's containers find the CA certificate (the service mounts it read-only).
CA_IN_CONTAINER = "/etc/opus/ca.crt"
NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
MAX_HOSTS = 64


@dataclasses.dataclass(frozen=True)
class Issued:
    """A server certificate (PEM, leaf then nothing: nodes hold the CA) and its key."""

    cert: str
    key: str


def ca_dir(settings: Settings) -> Path:
    return settings.home / "ca"


def ca_cert_path(settings: Settings) -> Path:
    return ca_dir(settings) / "ca.crt"


def ca_key_path(settings: Settings) -> Path:
    return ca_dir(settings) / "ca.key"


# ---- checks (pure) ----------------------------------------------------------------------

def check_name(name: str) -> str:
    """A certificate's name (what it is for: `postgres`, `registry`)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidName(f"invalid certificate name {name!r}: use lower-case letters, "
                          "digits and '-', starting with a letter")
    return name


def check_host(host: str) -> x509.GeneralName:
    """An IP literal or a DNS name (letters, digits, '-', dots; no wildcard), as the
    subjectAltName entry it becomes."""
    if not isinstance(host, str) or not host or len(host) > 253 or not host.isascii() or \
            "%" in host:
        raise InvalidName(f"invalid host {host!r}: give an IP address or a DNS name")
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified or address.is_multicast:
            raise InvalidName(f"{host} is not an address a server can be reached at")
        return x509.IPAddress(address)
    labels = host.split(".")
    if host != host.lower() or not all(DNS_LABEL.fullmatch(label) for label in labels) \
            or labels[-1].isdigit():
        raise InvalidName(f"invalid host {host!r}: give an IP address or a DNS name "
                          "(lower-case letters, digits, '-' and dots, no wildcard)")
    return x509.DNSName(host)


def sans(hosts: list[str]) -> list[x509.GeneralName]:
    if not hosts:
        raise InvalidName("a server certificate needs at least one host")
    if len(hosts) > MAX_HOSTS:
        raise InvalidName(f"at most {MAX_HOSTS} hosts in one certificate")
    found: list[x509.GeneralName] = []
    for host in hosts:
        entry = check_host(host)
        if entry not in found:
            found.append(entry)
    return found


# ---- the CA -----------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    directory = ca_dir(settings)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None
               ) -> None:
    """A new file of `mode` (and `owner`), never written through a link, renamed into
    place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        if owner is not None:
            os.fchown(out.fileno(), *owner)
        out.write(data)
    os.replace(temporary, path)


def ensure(settings: Settings) -> Path:
    """Make the CA unless it exists; the path of its certificate."""
    with _locked(settings):
        if ca_cert_path(settings).is_file() and ca_key_path(settings).is_file():
            return ca_cert_path(settings)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                str(settings.home)[:64])])
        now = datetime.datetime.now(datetime.UTC)
        public = key.public_key()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(public).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                               critical=False)
                .sign(key, hashes.SHA256()))
        write_file(ca_key_path(settings), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)
        write_file(ca_cert_path(settings), cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return ca_cert_path(settings)


def _load(settings: Settings) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_path(settings).read_bytes())
        key = serialization.load_pem_private_key(ca_key_path(settings).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ServiceError(f"Opus's CA in {ca_dir(settings)} cannot be read ({exc}); "
                           "move the directory aside to make a new one (nodes then need "
                           "the new ca.crt)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ServiceError(f"Opus's CA key in {ca_dir(settings)} is not an EC key")
    return cert, key


def issue(settings: Settings, name: str, hosts: list[str],
          days: int = SERVER_DAYS) -> Issued:
    """A server certificate for `hosts` (IP literals and DNS names), signed by Opus's CA
    (made now if missing). Nothing is written: the caller installs the pair where its
    server reads it (`install`)."""
    check_name(name)
    alt_names = sans(hosts)
    ensure(settings)
    ca_cert, ca_key = _load(settings)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(),
                  key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode())


def install(issued: Issued, cert_path: Path, key_path: Path,
            owner: tuple[int, int] | None = None) -> None:
    """Write the pair: the key 0600 (owned by `owner`, the server's user, when given),
    the certificate 0644; each renamed into place, never written through a link."""
    write_file(key_path, issued.key.encode(), 0o600, owner)
    write_file(cert_path, issued.cert.encode(), 0o644, owner)


def hosts_of(cert_pem: str) -> list[str]:
    """The subjectAltNames of a certificate, IPs and DNS names, as text (pure)."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(value) for value in names.get_values_for_type(x509.IPAddress)] + \
        list(names.get_values_for_type(x509.DNSName))


def expires(cert_pem: str) -> float:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return cert.not_valid_after_utc.timestamp()
