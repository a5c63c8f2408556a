"""The platform's settings overrides as pure functions of the environment (no Django needed).

``build_overrides(environ, user_settings)`` returns the names :mod:`opus_runtime.settings`
puts over the app's own settings. ``OPUS_DISABLE_OVERRIDES=DATABASES,ALLOWED_HOSTS`` skips
the named ones.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
ENGINES = {
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "pgsql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
}
OVERRIDE_NAMES = (
    "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "SECRET_KEY", "DEBUG", "DATABASES", "STATIC_URL",
    "STATIC_ROOT", "MEDIA_ROOT", "MEDIA_URL", "SECURE_PROXY_SSL_HEADER", "LOGGING",
)


class OverlayError(ValueError):
    """A config var the overlay cannot use; the message says which and how to fix it."""


def parse_bool(value: str) -> bool:
    """``1``, ``true``, ``yes``, ``on`` (any case, surrounding spaces ignored) are true."""
    return value.strip().lower() in TRUE_WORDS


def split_list(value: str) -> list[str]:
    """A comma-separated list, items stripped, empty items dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def is_host_pattern(host: str) -> bool:
    """True for ALLOWED_HOSTS wildcards (``*``, ``.example.com``), which are not origins."""
    return "*" in host or host.startswith(".")


def csrf_origins(hosts: Iterable[str]) -> list[str]:
    """``http://h`` and ``https://h`` for every allowed host that is not a wildcard."""
    exact = [host for host in hosts if not is_host_pattern(host)]
    return [f"{scheme}://{host}" for host in exact for scheme in ("http", "https")]


def parse_database_url(url: str) -> dict[str, Any]:
    """A Django ``DATABASES`` entry from ``sqlite:////abs/path``, ``postgres://``,
    ``postgresql://`` or ``mysql://user:pass@host:port/name?option=value``."""
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise OverlayError("DATABASE_URL contains control characters; set it again without them.")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise OverlayError("DATABASE_URL must look like scheme://..., e.g. postgres://u:p@host/db.")
    if scheme == "sqlite":
        return _sqlite(rest)
    if scheme not in ENGINES:
        raise OverlayError(
            f"DATABASE_URL scheme {scheme!r} is not supported; use sqlite, postgres or mysql."
        )
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    host = hostport
    port = ""
    if hostport.startswith("["):  # IPv6 literal
        host, _, after = hostport[1:].partition("]")
        port = after[1:] if after.startswith(":") else ""
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise OverlayError(f"DATABASE_URL has an invalid port {port!r}; use a number 1-65535.")
    name = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not name:
        raise OverlayError("DATABASE_URL has no database name; add it after the host: .../name.")
    entry: dict[str, Any] = {
        "ENGINE": ENGINES[scheme],
        "NAME": name,
        "USER": unquote(user),
        "PASSWORD": unquote(password),
        "HOST": unquote(host),  # %2F-encoded for a Unix socket directory
        "PORT": port,
    }
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if options:
        entry["OPTIONS"] = options
    return entry


def _sqlite(rest: str) -> dict[str, Any]:
    path = unquote(rest.split("?", 1)[0])
    if path in ("", ":memory:", "/:memory:"):
        name = ":memory:"
    elif path.startswith("//"):  # sqlite:////abs/path -> rest "//abs/path"
        name = path[1:]
    else:
        raise OverlayError(
            "DATABASE_URL for SQLite needs an absolute path with four slashes: "
            "sqlite:////var/lib/app/db.sqlite3"
        )
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": name}


# What a project says about how it uses its database, not where the database is: kept
# when the connection comes from DATABASE_URL or the app's data (cookiecutter-django's
# ATOMIC_REQUESTS = True, CONN_MAX_AGE = 60, ...).
KEPT_DATABASE_OPTIONS = ("ATOMIC_REQUESTS", "AUTOCOMMIT", "CONN_MAX_AGE",
                         "CONN_HEALTH_CHECKS", "TIME_ZONE")


def kept_options(entry: object) -> dict[str, Any]:
    """The options of the user's ``DATABASES["default"]`` that the overlay keeps."""
    if not isinstance(entry, Mapping):
        return {}
    return {name: copy.deepcopy(entry[name]) for name in KEPT_DATABASE_OPTIONS
            if name in entry}


def logging_config() -> dict[str, Any]:
    """Django's and the root logger's records to stdout at INFO, where the platform reads them."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "plain",
            }
        },
        "root": {"handlers": ["stdout"], "level": "INFO"},
        "loggers": {"django": {"handlers": ["stdout"], "level": "INFO", "propagate": False}},
    }


def build_overrides(environ: Mapping[str, str], user: Mapping[str, Any]) -> dict[str, Any]:
    """The settings to put over the app's ``user`` settings, driven by ``environ``."""
    o: dict[str, Any] = {}
    hosts_value = environ.get("OPUS_ALLOWED_HOSTS")
    if hosts_value is not None:
        hosts = split_list(hosts_value)
        o["ALLOWED_HOSTS"] = hosts
        existing = [str(x) for x in user.get("CSRF_TRUSTED_ORIGINS", [])]
        o["CSRF_TRUSTED_ORIGINS"] = list(dict.fromkeys([*existing, *csrf_origins(hosts)]))
    if environ.get("SECRET_KEY"):
        o["SECRET_KEY"] = environ["SECRET_KEY"]
    o["DEBUG"] = parse_bool(environ.get("DEBUG", ""))
    data_dir = environ.get("OPUS_DATA_DIR", "")
    database_url = environ.get("DATABASE_URL", "")
    if database_url or data_dir:
        databases = copy.deepcopy(dict(user.get("DATABASES", {})))
        if database_url:
            connection = parse_database_url(database_url)
        else:
            connection = {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": f"{data_dir.rstrip('/')}/db.sqlite3",
            }
        databases["default"] = {**kept_options(databases.get("default")), **connection}
        o["DATABASES"] = databases
    o["STATIC_URL"] = "/static/"
    if environ.get("OPUS_STATIC_ROOT"):
        o["STATIC_ROOT"] = environ["OPUS_STATIC_ROOT"]
    if data_dir:
        o["MEDIA_ROOT"] = f"{data_dir.rstrip('/')}/media"
        o["MEDIA_URL"] = "/media/"
    o["SECURE_PROXY_SSL_HEADER"] = ("HTTP_X_FORWARDED_PROTO", "https")
    o["LOGGING"] = logging_config()
    disabled = {name.upper() for name in split_list(environ.get("OPUS_DISABLE_OVERRIDES", ""))}
    return {name: value for name, value in o.items() if name not in disabled}
