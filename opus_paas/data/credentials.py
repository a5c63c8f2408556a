"""Names, passwords and URLs of the apps' databases (pure: no I/O).

A database and its role share one name, derived from the app's name and nothing else:
`app_` and the name with '-' as '_' (app names have no '_', so no two apps share one).
The server is only ever sent a SCRAM-SHA-256 verifier, never a password, so no
statement it logs or keeps can give a password away.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from urllib.parse import quote

from opus_paas import names
from opus_paas.errors import InvalidName

DATABASE_NAME = re.compile(r"app_[a-z](?:[a-z0-9_]{0,28}[a-z0-9])?")
SCRAM_ITERATIONS = 4096
PASSWORD_BYTES = 24


def database_name(app: str) -> str:
    """The database (and role) of `app`: `app_` + the name, '-' as '_'."""
    names.check_app_name(app)
    name = "app_" + app.replace("-", "_")
    if not DATABASE_NAME.fullmatch(name):
        raise InvalidName(f"no database name can be made from {app!r}")
    return name


def new_password() -> str:
    """A random password of URL-safe characters (nothing to quote in a URL)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def scram_verifier(password: str, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """What Postgres stores for `password` (RFC 5802/7677, as `pg_authid` holds it):
    `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def database_url(host: str, port: int, name: str, password: str) -> str:
    """DATABASE_URL for role and database `name`; a host that is a directory (a Unix
    socket's) goes %2F-encoded, as the settings overlay reads it."""
    if not DATABASE_NAME.fullmatch(name):
        raise InvalidName(f"invalid database name {name!r}")
    where = quote(host, safe="") if host.startswith("/") else host
    return f"postgres://{name}:{quote(password, safe='')}@{where}:{port}/{name}"


def password_of(url: str) -> str:
    """The password in a DATABASE_URL this module made."""
    userinfo = url.split("://", 1)[1].rpartition("@")[0]
    return userinfo.partition(":")[2]
