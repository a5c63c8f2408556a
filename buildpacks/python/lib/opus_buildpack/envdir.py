"""The app's config vars, read from the env dir: one file per variable, name = file name.

App config is untrusted input to the build, so names that change how programs are found or
loaded (``PATH``, ``LD_*``, ``PYTHONPATH``, ...) and the platform's own ``OPUS_*`` names are
never taken from it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
BLOCKED_NAMES = frozenset(
    {
        "PATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PYTHONHOME",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        # Also blocked by Heroku's buildpack: they redirect git and the C toolchain.
        "GIT_DIR",
        "CPATH",
        "CPPATH",
        "LIBRARY_PATH",
    }
)
BLOCKED_PREFIXES = ("LD_", "OPUS_")
# The platform's names an app may set: its switches for the build's Django steps.
APP_SWITCHES = frozenset({"OPUS_AUTO_MIGRATE", "OPUS_DISABLE_OVERRIDES"})


def is_blocked(name: str) -> bool:
    """True if ``name`` must never be taken from app config."""
    if name in APP_SWITCHES:
        return False
    return name in BLOCKED_NAMES or name.startswith(BLOCKED_PREFIXES)


@dataclass(frozen=True)
class AppConfig:
    """Config vars accepted from the env dir, and the names that were refused."""

    env: dict[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()


def filter_config(raw: Mapping[str, str]) -> AppConfig:
    """Keep valid, allowed names whose values can go into an environment."""
    env: dict[str, str] = {}
    ignored: list[str] = []
    for name in sorted(raw):
        value = raw[name]
        if not ENV_NAME.match(name) or is_blocked(name) or "\0" in value:
            ignored.append(name)
        else:
            env[name] = value
    return AppConfig(env=env, ignored=tuple(ignored))


def read_env_dir(env_dir: Path | None) -> AppConfig:
    """Read and filter the env dir; a missing or empty dir means no config."""
    raw: dict[str, str] = {}
    if env_dir is None or not env_dir.is_dir():
        return AppConfig()
    for entry in env_dir.iterdir():
        # Only regular files: a symlink or directory is not a config var.
        if not stat.S_ISREG(entry.lstat().st_mode):
            continue
        raw[entry.name] = entry.read_bytes().decode("utf-8", errors="surrogateescape")
    return filter_config(raw)


def flag_set(env: Mapping[str, str], name: str) -> bool:
    """A flag like ``DISABLE_COLLECTSTATIC`` is on when set, non-empty and not ``0``."""
    value = env.get(name, "").strip()
    return value not in ("", "0")


# What Opus passes from the host for reaching the package index (proxies, CA file).
NETWORK_VARS = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL",
)


def base_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables of the caller's clean environment that child processes need."""
    keep = ("PATH", "HOME", "TMPDIR", "LANG", *NETWORK_VARS)   # TMPDIR: the app's own
    return {name: environ[name] for name in keep if name in environ}
