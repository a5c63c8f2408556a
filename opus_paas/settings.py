"""Opus's own settings: defaults < config file (OPUS_HOME/opus.toml) < OPUS_* environment.

Built once by the edges (cli, sshd) and passed down; nothing reads the
environment after that.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opus_paas.errors import UsageError

# System mode (`opus install --system`): what root alone may write lives outside
# OPUS_HOME, which belongs to the opus user.
SYSTEM_CONFIG_DIR = Path("/etc/opus")
SYSTEM_LOGS_DIR = Path("/var/log/opus")
SECUREOPS = Path("/usr/local/sbin/opus-secureops")
# System mode: the interpreters Opus fetched and the wheels built against them, root's
# (secureops installs them) and readable by every app's user.
SYSTEM_PYTHONS_DIR = Path("/usr/local/lib/opus/pythons")
SYSTEM_WHEELS_DIR = Path("/usr/local/lib/opus/wheels")


def _default_home(euid: int) -> Path:
    # root's home (/root) is private to root, but the front Apache and the apps'
    # run user must read static files and slugs: root's default lives in /var/lib.
    if euid == 0:
        return Path("/var/lib/opus")
    return Path.home() / ".opus"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything configurable about one Opus installation."""

    home: Path
    # "embedded": everything runs as the invoking user (apps as run_user when root);
    # "system": Opus runs as system_user, each app as opus-<app>, root steps through
    # secureops (`opus install --system` sets it).
    mode: str = "embedded"
    system_user: str = "opus"
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 2222
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    domain: str = "localhost"
    # How clients reach the front's http port: "https" when TLS is terminated before it
    # (a balancer of the operator's). Apps see it in X-Forwarded-Proto; the dashboard's
    # session cookie is Secure over https. The front's own https port (below) always
    # says https.
    public_scheme: str = "http"
    # The front's https port (mod_ssl, HTTP/2), opened once a site has a certificate;
    # 0: 443 in system mode, 8443 embedded.
    https_port: int = 0
    # The ACME server certificates are ordered from (RFC 8555); "off": none is ordered
    # (operator certificates still serve).
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    # The contact address given to the ACME server (expiry notices); empty: none.
    acme_email: str = ""
    # A CA file the ACME server's own https certificate is checked against (a private
    # ACME server); empty: the system's trust store.
    acme_ca_bundle: str = ""
    # The dashboard (gunicorn) listens here; the front publishes it as opus.<domain>.
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8090
    # Sleeping apps (`opus ps:autosleep`): the waker (opus-waker) answers the front on
    # this loopback port for an app whose instance sleeps, and starts it.
    waker_port: int = 8091
    # The shortest idle period an app may sleep after, in seconds.
    autosleep_min_seconds: int = 60
    # How often the waker reads the front's access log to find idle apps, in seconds.
    autosleep_check_seconds: float = 30.0
    # How often the dashboard records every app's memory (the memory chart's points).
    memory_sample_seconds: float = 30.0
    # Each app owns two loopback ports (blue/green): base + 2*id and base + 2*id + 1.
    app_port_base: int = 20000
    # Each app's own Redis (`redis:create`) listens on loopback at base + the app's id,
    # holding at most redis_maxmemory (a number of bytes, or with kb, mb or gb); writes
    # past it are refused (noeviction).
    redis_port_base: int = 30000
    redis_maxmemory: str = "64mb"
    cache_dir: Path | None = None
    # Embedded mode: where the wheels built once per interpreter (mod_wsgi) are kept
    # (system mode: /usr/local/lib/opus/wheels, root's). Several Opus homes may share one.
    wheels_dir: Path | None = None
    # Embedded mode: where `pythons:install` and builds put the interpreters Opus fetches
    # (system mode: /usr/local/lib/opus/pythons). Several Opus homes may share one, with
    # one wheels_dir: mod_wsgi's wheel is built once per interpreter path.
    pythons_dir: Path | None = None
    # Interpreter for app virtualenvs when the app names no version; empty: the newest.
    python: str = ""
    # More interpreters builds may choose from (":"-separated absolute paths), besides
    # Debian's /usr/bin/python3.X and pyenv versions under /opt/pyenv or /usr/local/pyenv.
    pythons: str = ""
    # Where Opus fetches a Python an app asks for and the host lacks (uv python install):
    # a mirror of python-build-standalone's releases (checked against uv's own checksums),
    # and/or a list of downloads in uv's JSON format, each with its sha256 (for builds uv
    # does not know). Empty: uv's defaults.
    python_mirror: str = ""
    python_downloads: str = ""
    # The Unix user that app code runs as; empty: the invoking user, or
    # "nobody" when Opus runs as root (Apache will not serve as root).
    run_user: str = ""
    health_timeout: float = 30.0
    # A build or release command running longer than this is stopped.
    build_timeout: float = 900.0
    # A build's log keeps at most this many bytes of its output (and its last lines);
    # the client still sees all of it live.
    build_log_limit: int = 10 << 20
    keep_releases: int = 5
    # How many preview apps an app may have at once unless `previews:enable --limit` says.
    preview_limit: int = 3
    # A destroyed app's last backup is kept this many days (`backups:restore` brings it
    # into a new app).
    destroyed_backup_days: int = 7
    # A push to an app whose deploy is running waits this long for it, then is refused.
    deploy_wait_timeout: float = 600.0
    # The largest pack a push may send, in bytes (default 1 GiB).
    max_pack_bytes: int = 1 << 30
    # The largest single object (file) a push may hold, uncompressed (GitHub's limit).
    max_object_bytes: int = 100 << 20
    # A whole SSH session (waiting, receiving, building, deploying) is cut off after this.
    ssh_session_timeout: float = 3600.0
    # Connections served at once, all keys together; more are dropped at once.
    ssh_max_connections: int = 256
    # An SSH client that sends nothing for this long while Opus waits for it is cut off.
    ssh_read_timeout: float = 120.0
    # A connection must log in (banner, key exchange, authentication, a session opened)
    # within this many seconds from its first byte, however it trickles (LoginGraceTime).
    ssh_login_timeout: float = 10.0
    # Connections from one source address that have not logged in yet; more are closed
    # at once, before any SSH is spoken, so one address cannot fill ssh_max_connections.
    ssh_unauthenticated_per_source: int = 10
    # An authenticated connection must ask for a command within this many seconds.
    ssh_idle_timeout: float = 30.0
    # Connections one user may hold open at once, all their keys together.
    ssh_connections_per_user: int = 8
    # SSH keys one user may register.
    ssh_keys_per_user: int = 20
    git_bin: str = "/usr/bin/git"
    # Who may create apps (by apps:create or a first push): "all" users, or "admins".
    app_creators: str = "all"
    # The host's network set-up (proxies, package index, CA file) that builds need
    # to reach the package index; taken from Opus's environment, never from an app.
    network_env: tuple[tuple[str, str], ...] = ()
    apache_bin: str = "/usr/sbin/apache2"
    apache_modules: str = "/usr/lib/apache2/modules"
    # Docker Swarm (docs/scale-out.md): the manager's Docker socket, a unix socket path
    # (or unix:///path) or a tcp://host:port URL; empty: no swarm (nodes:* say how to
    # set it).
    swarm_manager: str = ""
    # The private registry nodes pull release images from (host:port), and the CA
    # file its certificate is signed by, which nodes:add installs on each node (in
    # /etc/docker/certs.d/REGISTRY/ca.crt); empty: none.
    swarm_registry: str = ""
    swarm_registry_ca: str = ""
    # nodes:remove waits this long for a drained node's tasks to run elsewhere.
    swarm_drain_timeout: float = 120.0
    # Swarm services listen on the nodes' own network (no routing mesh): each release
    # takes a block of 16 ports from this base (task slot N on base + N - 1), and the
    # tasks of app ID run as uid swarm_uid_base + ID on every node.
    swarm_port_base: int = 21000
    swarm_uid_base: int = 30000
    # A swarm deploy waits this long for every new task to run and pass its check.
    swarm_deploy_timeout: float = 120.0
    # Tests only: "1" lets a test stop Opus at a named point of a deploy (failpoints.py).
    failpoints: str = ""

    # ---- derived paths -------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.home / "opus.db"

    @property
    def db_backup_path(self) -> Path:
        """The last good copy of opus.db (SQLite's online backup)."""
        return self.home / "opus.db.backup"

    @property
    def repos_dir(self) -> Path:
        return self.home / "repos"

    @property
    def apps_dir(self) -> Path:
        return self.home / "apps"

    @property
    def system(self) -> bool:
        return self.mode == "system"

    @property
    def logs_dir(self) -> Path:
        """supervisord's and the front's logs (root writes them in system mode)."""
        return SYSTEM_LOGS_DIR if self.system else self.home / "logs"

    @property
    def build_logs_dir(self) -> Path:
        """The logs Opus itself writes for each app: builds and pushes."""
        return self.home / "builds"

    @property
    def front_dir(self) -> Path:
        return SYSTEM_CONFIG_DIR / "front" if self.system else self.home / "front"

    @property
    def supervisor_dir(self) -> Path:
        return SYSTEM_CONFIG_DIR / "supervisor" if self.system else self.home / "supervisor"

    @property
    def front_user(self) -> str:
        """System mode: the user the front's children serve as (the master is root)."""
        return f"{self.system_user}-front"

    @property
    def package_cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.home / "cache"

    @property
    def managed_pythons_dir(self) -> Path:
        """The interpreters Opus fetched (python-build-standalone installations)."""
        if self.system:
            return SYSTEM_PYTHONS_DIR
        return self.pythons_dir if self.pythons_dir is not None else self.home / "pythons"

    @property
    def wheelhouse_dir(self) -> Path:
        """Wheels built once per interpreter (mod_wsgi), which builds install from."""
        if self.system:
            return SYSTEM_WHEELS_DIR
        return self.wheels_dir if self.wheels_dir is not None else self.home / "wheels"

    @property
    def staging_dir(self) -> Path:
        """Where Opus prepares an interpreter or a wheel before secureops installs it."""
        return self.home / "staging"

    @property
    def locks_dir(self) -> Path:
        return self.home / "locks"

    @property
    def host_key_path(self) -> Path:
        return self.home / "ssh_host_key"

    @property
    def tools_dir(self) -> Path:
        """World-readable copies of the buildpacks and uv, usable by the run user."""
        return self.home / "tools"

    def app_run_user(self) -> str | None:
        """Embedded mode: the user every app's code runs as, or None for the invoking
        user. (System mode: each app's own, opus-<app>, made by secureops.)"""
        if self.system:
            return None
        if self.run_user:
            return self.run_user
        return "nobody" if os.geteuid() == 0 else None

    def app_domain(self, app: str) -> str:
        return f"{app}.{self.domain}"

    @property
    def dashboard_domain(self) -> str:
        return f"opus.{self.domain}"

    @property
    def tls_port(self) -> int:
        """The front's https port."""
        return self.https_port or (443 if self.system else 8443)

    @property
    def acme_enabled(self) -> bool:
        return self.acme_directory != "off"

    @property
    def acme_dir(self) -> Path:
        """The ACME account (its key 0600) and the challenge files the front serves."""
        return self.home / "acme"

    @property
    def dashboard_dir(self) -> Path:
        """The dashboard's secret key (0600)."""
        return self.home / "dashboard"


_INT_FIELDS = {"ssh_port", "http_port", "https_port", "dashboard_port", "app_port_base",
               "redis_port_base", "waker_port", "autosleep_min_seconds",
               "keep_releases", "destroyed_backup_days", "max_pack_bytes", "max_object_bytes",
               "ssh_connections_per_user", "ssh_unauthenticated_per_source",
               "ssh_keys_per_user", "ssh_max_connections", "build_log_limit",
               "preview_limit", "swarm_port_base", "swarm_uid_base"}
_FLOAT_FIELDS = {"autosleep_check_seconds", "memory_sample_seconds", "swarm_drain_timeout",
                 "swarm_deploy_timeout", "health_timeout", "build_timeout", "deploy_wait_timeout",
                 "ssh_read_timeout", "ssh_idle_timeout", "ssh_login_timeout",
                 "ssh_session_timeout"}
# Limits below 1 would lock everyone out (or never time out): refused.
_POSITIVE_FIELDS = {"autosleep_min_seconds", "autosleep_check_seconds",
                    "memory_sample_seconds", "ssh_connections_per_user",
                    "ssh_unauthenticated_per_source", "ssh_keys_per_user",
                    "ssh_max_connections", "ssh_login_timeout",
                    "preview_limit", "swarm_drain_timeout", "swarm_deploy_timeout",
                    "swarm_port_base", "swarm_uid_base"}
# Settings renamed since: their former names are still read.
_FORMER_NAMES = {"ssh_connections_per_key": "ssh_connections_per_user"}
_PATH_FIELDS = {"cache_dir", "wheels_dir", "pythons_dir"}
_FIELDS = {f.name for f in dataclasses.fields(Settings)} - {"home", "network_env"}
NETWORK_VARS = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL",
)


_CHOICES = {"app_creators": ("all", "admins"), "public_scheme": ("http", "https"),
            "mode": ("embedded", "system")}


# A memory size as Redis takes it: bytes, or with a unit (1kb = 1024 bytes).
MEMORY_SIZE = re.compile(r"([0-9]{1,12})(b|kb|mb|gb)?")
# The swarm manager's socket and the registry's address (no spaces, options or quotes).
SWARM_MANAGER = re.compile(r"(?:unix://)?/[A-Za-z0-9._/-]{1,200}|"
                           r"tcp://[A-Za-z0-9.-]{1,253}:[0-9]{1,5}")
SWARM_REGISTRY = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,252})(?::[0-9]{1,5})?")
_URL_FIELDS = {"python_mirror": ("http://", "https://", "file://"),
               "python_downloads": ("http://", "https://", "file://", "/")}


def _coerce(name: str, value: Any, source: str) -> Any:
    if name in _CHOICES and str(value) not in _CHOICES[name]:
        raise UsageError(f"{source}: {name} = {value!r} is not valid; use one of "
                         f"{', '.join(_CHOICES[name])}")
    if name in _URL_FIELDS and value and not (str(value).startswith(_URL_FIELDS[name]) and
                                    str(value).isprintable() and " " not in str(value)):
        raise UsageError(f"{source}: {name} = {value!r} is not valid; give a URL starting "
                         f"with {' or '.join(_URL_FIELDS[name])}")
    if name == "swarm_manager" and value and not SWARM_MANAGER.fullmatch(str(value)):
        raise UsageError(f"{source}: {name} = {value!r} is not valid; give the manager's "
                         "Docker socket: an absolute path, unix:///path or tcp://host:port")
    if name == "swarm_registry" and value and not SWARM_REGISTRY.fullmatch(str(value)):
        raise UsageError(f"{source}: {name} = {value!r} is not valid; give host:port, "
                         "e.g. 10.0.0.1:5000")
    if name == "swarm_registry_ca" and value and not str(value).startswith("/"):
        raise UsageError(f"{source}: {name} = {value!r} is not valid; give an absolute path")
    if name == "redis_maxmemory" and not MEMORY_SIZE.fullmatch(str(value).strip().lower()):
        raise UsageError(f"{source}: {name} = {value!r} is not valid; give a size such as "
                         "64mb (a number of bytes, or with kb, mb or gb)")
    try:
        if name in _POSITIVE_FIELDS:
            return _positive(name, float(value) if name in _FLOAT_FIELDS else int(value),
                             source)
        if name in _INT_FIELDS:
            return int(value)
        if name in _FLOAT_FIELDS:
            return float(value)
        if name in _PATH_FIELDS:
            return Path(str(value)).absolute()
        return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{source}: {name} = {value!r} is not valid; give a number") from None


def _positive(name: str, value: float, source: str) -> float:
    if not 1 <= value < 1e9:   # NaN and inf fail too
        raise UsageError(f"{source}: {name} = {value!r} is not valid; give a number of "
                         "at least 1")
    return value


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from defaults, OPUS_HOME/opus.toml, then OPUS_* variables."""
    env = os.environ if environ is None else environ
    home = Path(env.get("OPUS_HOME") or _default_home(os.geteuid())).absolute()
    values: dict[str, Any] = {}
    config_file = home / "opus.toml"
    text = _read_config(config_file)
    if text is not None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{config_file}: {exc}; fix the file or remove it") from None
        for key, value in data.items():
            key = _FORMER_NAMES.get(key, key)
            if key not in _FIELDS:
                raise UsageError(
                    f"{config_file}: unknown setting {key!r}; known: {', '.join(sorted(_FIELDS))}"
                )
            values[key] = _coerce(key, value, str(config_file))
    if os.geteuid() == 0:
        values.update(_root_decides(home))
    for former, name in _FORMER_NAMES.items():
        raw = env.get("OPUS_" + former.upper())
        if raw:
            values[name] = _coerce(name, raw, "OPUS_" + former.upper())
    for name in _FIELDS:
        raw = env.get("OPUS_" + name.upper())
        if raw:
            values[name] = _coerce(name, raw, "OPUS_" + name.upper())
    network = tuple((name, env[name]) for name in NETWORK_VARS if env.get(name))
    return Settings(home=home, network_env=network, **values)


# What root never takes from opus.toml, which the opus user writes (root's own OPUS_*
# variables still count): whether a home is a system-mode one, who Opus runs as, which
# Apache root starts.
ROOT_DECIDES = {"mode", "system_user", "apache_bin", "apache_modules"}
SYSTEM_LAYOUT = SYSTEM_CONFIG_DIR / "secureops.json"


def _read_config(path: Path) -> str | None:
    """opus.toml's text: a regular file (never through a link), at most 64 KiB."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}; it must be a plain file") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise UsageError(f"{path} is not a regular file; replace it with one")
        return handle.read(64 * 1024).decode("utf-8", "replace")


def _root_decides(home: Path) -> dict[str, str]:
    """Root's own answer for ROOT_DECIDES: from the root-owned secureops config when it
    names this home (the same directory, however spelled: system mode), else embedded
    mode with the defaults, in a home root must own (it would run what is in it)."""
    answer = {"mode": "embedded", "system_user": "opus", "apache_bin": Settings.apache_bin,
              "apache_modules": Settings.apache_modules}
    try:
        fd = os.open(SYSTEM_LAYOUT, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return answer
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != 0 or info.st_mode & 0o022:
            return answer
        try:
            layout = json.loads(handle.read(64 * 1024))
        except ValueError:
            return answer
    if isinstance(layout, dict) and isinstance(layout.get("home"), str) and \
            isinstance(layout.get("opus_group"), str) and _same_dir(layout["home"], home):
        answer.update(mode="system", system_user=layout["opus_group"])
    return answer


def _same_dir(one: str, other: Path) -> bool:
    try:
        a, b = os.stat(one), os.stat(other)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_root_home(settings: Settings) -> None:
    """Root in embedded mode runs what its home holds (supervisor's config, the front's):
    a home another user owns is refused."""
    if os.geteuid() != 0 or settings.system:
        return
    for path in (settings.home, settings.home / "opus.toml", settings.supervisor_dir):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if info.st_uid != 0 or stat.S_ISLNK(info.st_mode):
            raise UsageError(f"{path} is not root's; root runs Opus only from a home of its "
                             "own (a system-mode home is started with `opus up --system`)")


def user_ids(name: str | None) -> tuple[int, int] | None:
    """(uid, gid) of a Unix user, or None for the invoking user."""
    if name is None:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UsageError(
            f"run user {name!r} does not exist; create it or set OPUS_RUN_USER"
        ) from None
    return entry.pw_uid, entry.pw_gid
