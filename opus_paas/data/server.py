"""The Postgres server the apps' databases live on: a cluster of Opus's own under
OPUS_HOME (Debian's `postgresql`, run by Opus's supervisor on a Unix socket only), or
an existing server the operator gives by URL.

Who owns and runs Opus's cluster (Postgres refuses to run as root):
- embedded, as a plain user: that user, like the rest of Opus;
- embedded, as root: Debian's `postgres` user (the package makes it), never the apps'
  run user, which would then own every app's data files;
- system mode: the opus user. Opus is the cluster's superuser in every mode, so a user
  of the server's own would keep nothing from Opus; the apps' users never own or read
  its files (the data directory is 0700, the admin password 0600).

Opus connects as the superuser `opus_admin` with a password kept in
OPUS_HOME/postgres/admin.password; pg_hba lets each app's role reach the database of
its own name only (`sameuser`), with a password, and nobody over TCP.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pwd
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from opus_paas.errors import ServiceError, UsageError
from opus_paas.privileged import INSTANCE_MARKER
from opus_paas.settings import Settings
from opus_paas.store import Store

ADDON = "postgres"
ADMIN_ROLE = "opus_admin"
PG_ROOT = Path("/usr/lib/postgresql")
PROGRAM = "opus-postgres"
PORT = 5432
INSTALL_HINT = ("install Debian's PostgreSQL first: sudo apt-get install -y "
                "--no-install-recommends postgresql postgresql-client")
READY_TIMEOUT = 30.0

PG_HBA = """\
# Written by Opus. Unix socket only: Opus's superuser anywhere, each app's role its own
# database only (the database has the role's name), both with a password.
local   all        {admin}   scram-sha-256
local   sameuser   all       scram-sha-256
"""


@dataclasses.dataclass(frozen=True)
class Server:
    """Where the apps' databases live and how Opus reaches it as its admin."""

    kind: str             # embedded or external
    host: str             # a socket directory, or a host name
    port: int
    admin_user: str
    admin_password: str
    admin_database: str = "postgres"

    def connect_args(self, database: str | None = None) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": self.admin_user,
                "password": self.admin_password,
                "dbname": database or self.admin_database, "connect_timeout": 10}

    def environment(self, database: str | None = None) -> dict[str, str]:
        """libpq's variables for pg_dump and pg_restore as the admin (the password in
        the environment, which only Opus's own user can read, never in argv)."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.admin_user,
                "PGPASSWORD": self.admin_password,
                "PGDATABASE": database or self.admin_database,
                "PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


# ---- where things are -------------------------------------------------------------------

def home(settings: Settings) -> Path:
    return settings.home / "postgres"


def data_dir(settings: Settings) -> Path:
    return home(settings) / "data"


def socket_dir(settings: Settings) -> Path:
    return home(settings) / "run"


def password_file(settings: Settings) -> Path:
    return home(settings) / "admin.password"


def nodes_file(settings: Settings) -> Path:
    """The node addresses allowed and what the cluster listens on for them (nodes.py)."""
    return home(settings) / "nodes.json"


def tls_files(settings: Settings) -> tuple[Path, Path]:
    """The cluster's server certificate and key (from Opus's CA, for nodes)."""
    return home(settings) / "tls" / "server.crt", home(settings) / "tls" / "server.key"


def listening(settings: Settings) -> list[str]:
    """The addresses the cluster listens on for nodes (none: its Unix socket only)."""
    try:
        data = json.loads(nodes_file(settings).read_text())
        return [str(ipaddress.ip_address(str(a))) for a in data.get("listen", [])]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, AttributeError) as exc:
        raise ServiceError(f"{nodes_file(settings)} cannot be read ({exc}); remove it and "
                           "add the nodes again") from None


def is_local(address: str) -> bool:
    """Whether `address` is on one of this host's interfaces now (a bind to it works).
    An address gone (the nodes' network removed) is left out of listen_addresses:
    Postgres would not start at all if it could bind none of them."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps each major version in
    /usr/lib/postgresql/N/bin)."""
    found = sorted((p for p in PG_ROOT.glob("*/bin") if (p / "postgres").is_file()
                    and p.parent.name.isdigit()), key=lambda p: int(p.parent.name))
    if not found:
        raise UsageError(f"PostgreSQL is not installed; {INSTALL_HINT}")
    return found[-1]


def tool(name: str) -> str:
    return str(bin_dir() / name)


def cluster_user(settings: Settings) -> str | None:
    """Who runs Opus's cluster: None for Opus's own user, `postgres` when Opus runs as
    root in embedded mode (Postgres will not run as root)."""
    if os.geteuid() == 0 and not settings.system:
        return "postgres"
    return None


def cluster_ids(settings: Settings) -> tuple[int, int] | None:
    """The uid and gid of the cluster's files when they are not Opus's own user's."""
    return _ids(cluster_user(settings))


def _ids(user: str | None) -> tuple[int, int] | None:
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"user {user} does not exist; {INSTALL_HINT} (it makes the user)") \
            from None
    return entry.pw_uid, entry.pw_gid


def enabled(settings: Settings) -> bool:
    """Whether Opus's own cluster exists (the program runs whenever it does)."""
    return (data_dir(settings) / "PG_VERSION").is_file()


# ---- the server in use ------------------------------------------------------------------

def current(settings: Settings, store: Store) -> Server:
    """The server apps' databases go to; UsageError when none was enabled."""
    config = store.addon(ADDON)
    if config is None:
        raise UsageError("Postgres is not enabled on this Opus; the operator enables it "
                         "with `opus addons:enable postgres`")
    if config.get("kind") == "external":
        return parse_admin_url(str(config["url"]))
    try:
        password = password_file(settings).read_text().strip()
    except OSError as exc:
        raise ServiceError(f"Opus's Postgres admin password is missing ({exc.strerror}); "
                           "run `opus addons:enable postgres` again") from None
    return Server("embedded", str(socket_dir(settings)), PORT, ADMIN_ROLE, password)


def parse_admin_url(url: str) -> Server:
    """An existing server's admin URL: postgres://USER:PASSWORD@HOST[:PORT]/DATABASE
    (HOST may be a socket directory, %2F-encoded)."""
    usage = ("give the server as postgres://USER:PASSWORD@HOST[:PORT]/DATABASE, USER a role "
             "that may create roles and databases")
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostport = rest.partition("/")[0].rpartition("@")
    if scheme not in ("postgres", "postgresql") or not sep or not at or not userinfo or \
            any(ord(c) < 32 for c in url):
        raise UsageError(f"that is not a Postgres admin URL; {usage}")
    user, _, password = userinfo.partition(":")
    host, port = hostport, ""
    if ":" in hostport and not hostport.startswith("["):
        host, _, port = hostport.rpartition(":")
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise UsageError(f"the port in that URL is not a port; {usage}")
    database = unquote(rest.partition("/")[2].partition("?")[0]) or "postgres"
    if not host:
        raise UsageError(f"that URL names no host; {usage}")
    return Server("external", unquote(host).strip("[]"), int(port or PORT), unquote(user),
                  unquote(password), database)


def wait_ready(server: Server, timeout: float = READY_TIMEOUT) -> None:
    """Until the server takes Opus's connection (it is starting), or ServiceError."""
    import psycopg  # (see postgres.py: imported where it is used)

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(**server.connect_args()) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise ServiceError(f"the Postgres server did not answer: {_first_line(exc)}"
                                   f"; see `opus status` and {PROGRAM}'s log") from None
            time.sleep(0.2)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---- Opus's own cluster -----------------------------------------------------------------

def init_cluster(settings: Settings) -> bool:
    """Make Opus's cluster (initdb) unless it exists; True if it was made now."""
    if enabled(settings):
        return False
    binaries = bin_dir()
    ids = _ids(cluster_user(settings))
    base = home(settings)
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    base.chmod(0o755)
    for path, mode in ((data_dir(settings), 0o700), (socket_dir(settings), 0o755)):
        path.mkdir(mode=mode, exist_ok=True)
        path.chmod(mode)
        if ids is not None:
            os.chown(path, *ids)
    password = secrets.token_urlsafe(32)
    fd = os.open(password_file(settings), os.O_WRONLY | os.O_CREAT | os.O_TRUNC |
                 os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    identity: dict[str, Any] = {} if ids is None else \
        {"user": ids[0], "group": ids[1], "extra_groups": []}
    # initdb reads the password from a file: one only the cluster's user may read.
    pwfile = base / f".pwfile.{os.getpid()}"
    pwfile.unlink(missing_ok=True)
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
        if ids is not None:
            os.fchown(out.fileno(), *ids)
    try:
        done = subprocess.run(
            [str(binaries / "initdb"), "-D", str(data_dir(settings)), "-U", ADMIN_ROLE,
             f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
             "--locale=C.UTF-8", "--no-instructions"],
            capture_output=True, text=True, check=False, cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, **identity)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise ServiceError("initdb failed: " + (done.stderr or done.stdout).strip()[-400:])
    hba = data_dir(settings) / "pg_hba.conf"
    hba.write_text(PG_HBA.format(admin=ADMIN_ROLE))
    if ids is not None:
        os.chown(hba, *ids)
    return True


def server_options(settings: Settings, listen: list[str] | None = None) -> list[str]:
    """The cluster's settings, on its command line (pure): a Unix socket every app's user
    may open, logs to standard output (supervisor's log, Opus's to read); no TCP unless
    nodes were allowed (`listen`: the host's addresses on their side), and then TLS with
    the certificate from Opus's CA (pg_hba takes nothing else from them)."""
    options = {
        "listen_addresses": ",".join(listen or []),
        "port": str(PORT),
        "unix_socket_directories": str(socket_dir(settings)),
        "unix_socket_permissions": "0777",
        "password_encryption": "scram-sha-256",
        "logging_collector": "off",
        "log_line_prefix": "%m [%p] %q%u@%d ",
        "log_connections": "off",
    }
    if listen:
        cert, key = tls_files(settings)
        options.update({"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key),
                        "ssl_min_protocol_version": "TLSv1.2"})
    return [arg for key, value in options.items() for arg in ("-c", f"{key}={value}")]


def program(settings: Settings) -> dict[str, Any] | None:
    """The supervisor program of Opus's cluster, as supervisor.Program's fields, if
    there is a cluster (`opus up` adds it to Opus's own programs)."""
    if not enabled(settings):
        return None
    return {
        "name": PROGRAM,
        "command": [tool("postgres"), "-D", str(data_dir(settings)),
                    *server_options(settings, [a for a in listening(settings)
                                               if is_local(a)])],
        "directory": home(settings),
        "log_file": settings.logs_dir / f"{PROGRAM}.log",
        # The marker lets `opus up` find a server left running by a killed supervisord.
        "environment": {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin",
                        INSTANCE_MARKER: str(settings.home)},
        "user": settings.system_user if settings.system else cluster_user(settings),
        "startsecs": 2,
        "stopsignal": "INT",        # fast shutdown: roll back open transactions, stop
        "stopwaitsecs": 30,
    }
