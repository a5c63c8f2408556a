"""Let's Encrypt's test CA (Debian's `pebble`) on loopback, for the HTTPS tests.

Pebble's HTTP-01 checks go to the port of the front's http listener; every name
resolves to 127.0.0.1 through `pebble-challtestsrv`'s DNS server (no real DNS), and a
name can be pointed elsewhere (`point`) to make its challenge fail. Pebble's root CA,
regenerated at each start, comes from its management interface; test clients trust it
explicitly. Its own https listener gets a certificate made here (`listener_ca`), which
Opus trusts through `acme_ca_bundle`.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port, require_tool


@dataclasses.dataclass
class Pebble:
    directory: str            # the ACME directory URL
    listener_ca: Path         # what Opus trusts pebble's own https listener by
    management: str
    dns_management: str
    processes: list[subprocess.Popen[bytes]]
    root: Path                # pebble's root CA (PEM), for the test clients

    def point(self, host: str, address: str) -> None:
        """Make `host` resolve to `address` for pebble."""
        body = json.dumps({"host": host, "addresses": [address]}).encode()
        urllib.request.urlopen(urllib.request.Request(
            f"{self.dns_management}/add-a", data=body), timeout=10).read()

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` and 127.0.0.1 (and its key), PEM files in `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def start(directory: Path, http_port: int, validity: int = 7 * 86400) -> Pebble:
    """Pebble and its DNS server, checking HTTP-01 challenges on `http_port`."""
    pebble, challtestsrv = require_tool("pebble"), require_tool("pebble-challtestsrv")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    cert, key = self_signed(directory, "localhost")
    cert.chmod(0o644)        # Opus (the opus user, in system mode) reads it
    acme_port, management_port, dns_port, dns_management = (free_port() for _ in range(4))
    config = directory / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{acme_port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(cert), "privateKey": str(key),
        "httpPort": http_port, "tlsPort": free_port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": False,
        "certificateValidityPeriod": validity,
    }}))
    with (directory / "pebble.log").open("wb") as log:
        processes = _start(pebble, challtestsrv, config, dns_port, dns_management, log)
    running = Pebble(
f"https://127.0.0.1:{acme_port}/dir", cert,
                     f"https://127.0.0.1:{management_port}",
                     f"http://127.0.0.1:{dns_management}", processes, directory / "root.pem")
    context = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 20
    while True:
        try:
            root = urllib.request.urlopen(f"{running.management}/roots/0",
                                          context=context, timeout=5).read()
            socket.create_connection(("127.0.0.1", dns_management), timeout=5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                running.stop()
                raise AssertionError("pebble did not start: " +
                                     (directory / "pebble.log").read_text()[-2000:]) from None
            time.sleep(0.1)
    running.root.write_bytes(root)
    running.root.chmod(0o644)
    return running


def _start(pebble: str, challtestsrv: str, config: Path, dns_port: int, dns_management: int,
           log: BinaryIO) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([challtestsrv, "-dns01", f"127.0.0.1:{dns_port}", "-http01", "",
                          "-https01", "", "-tlsalpn01", "", "-defaultIPv6", "",
                          "-management", f"127.0.0.1:{dns_management}"],
                         stdout=log, stderr=subprocess.STDOUT),
        # Never PEBBLE_VA_ALWAYS_VALID: the challenge is what is under test.
        subprocess.Popen([pebble, "-config", str(config), "-dnsserver",
                          f"127.0.0.1:{dns_port}", "-strict=false"],
                         stdout=log, stderr=subprocess.STDOUT,
                         env={"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1",
                              "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}),
    ]
