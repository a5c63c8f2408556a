"""Certificates and keys for the front's https vhosts (stdlib only).

The front's master reads them as root, so nothing Opus hands in is written as given:
the PEM blocks are decoded and written out again here, the key must match the leaf
(OpenSSL's own check, `load_cert_chain`), and the leaf must be valid now. Each site's
pair lives in `<front>/certs/<site>/` (root's alone in system mode, 0600 files), with
`names.json`: the host names the leaf covers, which is all the front will serve with it.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import contextlib
import dataclasses
import json
import os
import re
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from secureops.checks import _exactly, _text, app_name
from secureops.layout import Denied, Layout

# The dashboard's site name: reserved, so no app can have it.
DASHBOARD_SITE = "opus"
# The first https vhost: what a name with no certificate of its own gets (a self-signed
# certificate for "invalid", never an app's).
FALLBACK_SITE = "_fallback"    # no app can be called so (names start with a letter)
PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,40})-----\r?\n([A-Za-z0-9+/=\r\n]{1,65536}?)"
                       r"-----END \1-----")
KEY_LABELS = frozenset({"PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"})
MAX_CHAIN = 8
MAX_PEM = 64 * 1024
OPENSSL = "/usr/bin/openssl"
CHAIN, KEY, NAMES = "chain.pem", "key.pem", "names.json"


@dataclasses.dataclass(frozen=True)
class CertSpec:
    site: str
    chain: str      # PEM, written here from the decoded blocks
    key: str


def site_name(value: Any) -> str:
    """An app's name, or the dashboard's."""
    text = _text(value, "site", 64)
    return text if text == DASHBOARD_SITE else app_name(text)


def _blocks(text: str, what: str) -> list[tuple[str, bytes]]:
    """Every PEM block in `text`, decoded; anything else in the text but whitespace or
    comment lines between blocks is refused."""
    found, end = [], 0
    for match in PEM_BLOCK.finditer(text):
        between = text[end:match.start()]
        if between.strip() and any(line.strip() and ":" not in line
                                   for line in between.splitlines()):
            raise Denied(f"{what}: text between PEM blocks")
        try:
            der = base64.b64decode("".join(match.group(2).split()), validate=True)
        except (binascii.Error, ValueError):
            raise Denied(f"{what}: a PEM block is not base64") from None
        found.append((match.group(1), der))
        end = match.end()
    if text[end:].strip():
        raise Denied(f"{what}: text after the last PEM block")
    return found


def _pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def check(spec: Any) -> CertSpec:
    """{"site", "chain", "key"}: the chain 1 to MAX_CHAIN certificates, the key one
    private key, each rewritten from its decoded blocks."""
    body = _exactly(spec, {"site", "chain", "key"}, set(), "the certificate spec")
    site = site_name(body["site"])
    chain_text = _text(body["chain"], "chain", MAX_PEM, lines=True)
    key_text = _text(body["key"], "key", MAX_PEM, lines=True)
    certs = _blocks(chain_text, "chain")
    if not 1 <= len(certs) <= MAX_CHAIN or any(label != "CERTIFICATE" for label, _ in certs):
        raise Denied(f"chain must be 1 to {MAX_CHAIN} PEM certificates, the site's first")
    keys = _blocks(key_text, "key")
    if len(keys) != 1 or keys[0][0] not in KEY_LABELS:
        raise Denied("key must be one unencrypted PEM private key")
    return CertSpec(site, "".join(_pem(label, der) for label, der in certs),
                    _pem(*keys[0]))


def leaf_facts(chain_path: Path) -> tuple[list[str], float]:
    """The DNS names the leaf covers and when it expires (epoch seconds), as OpenSSL
    decodes it."""
    try:
        decoded = ssl._ssl._test_decode_cert(str(chain_path))  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise Denied(f"the certificate cannot be decoded: {exc}") from None
    names = [value.lower() for kind, value in decoded.get("subjectAltName", ())
             if kind == "DNS"]
    not_after = calendar.timegm(time.strptime(decoded["notAfter"], "%b %d %H:%M:%S %Y GMT"))
    return names, float(not_after)


def verify_pair(chain_path: Path, key_path: Path) -> None:
    """OpenSSL's own check that the key belongs to the leaf (and both parse)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(chain_path), str(key_path))
    except ssl.SSLError as exc:
        reason = "the key does not match the certificate" if "MISMATCH" in str(exc).upper() \
            else f"OpenSSL refused the pair ({exc.reason or exc})"
        raise Denied(reason) from None


def covers(names: list[str], domain: str) -> bool:
    """Whether a certificate for `names` is valid for `domain` (one-label wildcards)."""
    head, _, rest = domain.partition(".")
    return domain in names or bool(rest and head and f"*.{rest}" in names)


def site_dir(layout: Layout, site: str) -> Path:
    return layout.front / "certs" / site


def installed_names(layout: Layout, site: str) -> list[str] | None:
    """The names the site's installed certificate covers, or None without one (or
    with one that is incomplete)."""
    directory = site_dir(layout, site)
    try:
        fd = os.open(directory / NAMES, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as handle:
        try:
            names = json.loads(handle.read(64 * 1024))
        except ValueError:
            return None
    if not (directory / CHAIN).is_file() or not (directory / KEY).is_file():
        return None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else None


def write_pair(directory: Path, cert: CertSpec, now: float) -> None:
    """Check the pair in a scratch directory beside `directory`, then put the files in
    place (key first: the chain never names a key that is not there yet)."""
    parent = directory.parent
    scratch = Path(tempfile.mkdtemp(prefix=".new-", dir=parent))
    try:
        for name, text in ((CHAIN, cert.chain), (KEY, cert.key)):
            fd = os.open(scratch / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
        verify_pair(scratch / CHAIN, scratch / KEY)
        names, not_after = leaf_facts(scratch / CHAIN)
        if not names:
            raise Denied("the certificate names no DNS host (subjectAltName)")
        if not_after <= now:
            raise Denied("the certificate has expired")
        fd = os.open(scratch / NAMES, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(names, out)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        info = os.lstat(directory)
        if not os.path.isdir(directory) or os.path.islink(directory) or \
                info.st_uid != os.geteuid():
            raise Denied(f"{directory} is not a plain directory of the caller's")
        for name in (KEY, CHAIN, NAMES):
            os.replace(scratch / name, directory / name)
    finally:
        for entry in scratch.iterdir():
            entry.unlink()
        scratch.rmdir()


def make_fallback(directory: Path) -> None:
    """A self-signed certificate for "invalid" (openssl), for names with none."""
    if installed_fallback(directory):
        return
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "3650", "-subj", "/CN=invalid",
                    "-keyout", str(directory / KEY), "-out", str(directory / CHAIN)],
                   check=True, env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                   stdin=subprocess.DEVNULL)
    os.chmod(directory / KEY, 0o600)


def installed_fallback(directory: Path) -> bool:
    return (directory / CHAIN).is_file() and (directory / KEY).is_file()
