"""Where things are, from a root-owned config file: never from the caller.

/etc/opus/secureops.json (written by `opus install --system`):
    {"home": "/var/lib/opus", "conf_d": "/etc/opus/supervisor/conf.d",
     "front": "/etc/opus/front", "logs": "/var/log/opus",
     "front_user": "opus-front", "front_group": "opus-front", "opus_group": "opus",
     "log": "/var/log/opus/secureops.log",
     "pythons": "/usr/local/lib/opus/pythons", "wheels": "/usr/local/lib/opus/wheels"}
(the last two are optional: those are their defaults), and optionally
    "port_rules": "nftables" (the default: front-install keeps each loopback port Opus
    hands out to its owner, firewall.py) or "off" (secureops's own tests, which must not
    change the host's rules).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/opus/secureops.json")
USER_PREFIX = "opus-"
PATH_KEYS = {"home", "conf_d", "front", "logs", "log"}
NAME_KEYS = {"front_user", "front_group", "opus_group"}
KEYS = PATH_KEYS | NAME_KEYS
# The interpreters Opus fetched and the wheels built against them: read by every app's
# user, written by root alone.
OPTIONAL_PATH_KEYS = {"pythons", "wheels"}
PORT_RULES = ("nftables", "off")
PYTHONS = Path("/usr/local/lib/opus/pythons")
WHEELS = Path("/usr/local/lib/opus/wheels")
APACHE_BIN = "/usr/sbin/apache2"
APACHE_MODULES = "/usr/lib/apache2/modules"


class Denied(Exception):
    """A request secureops refuses; the message says why (and is logged)."""


@dataclasses.dataclass(frozen=True)
class Layout:
    home: Path            # OPUS_HOME: the apps' directories are in home/apps
    conf_d: Path          # supervisor's program files (root's alone in system mode)
    front: Path           # the front's config and runtime files (root's alone too)
    logs: Path            # supervisor's and the front's logs
    log: Path             # where every allow and deny is appended
    front_group: str      # the group the front's children serve as (reads static files)
    front_user: str = ""  # the user the front's children serve as ("": the master's own)
    opus_group: str = ""  # may read the logs (system mode)
    # Same-user mode (embedded Opus): the one user every app runs as ("": the caller).
    shared_user: str = ""
    apache_bin: str = APACHE_BIN
    apache_modules: str = APACHE_MODULES
    pythons: Path = PYTHONS      # interpreters Opus fetched, one directory each
    wheels: Path = WHEELS        # wheels built against them, one directory per interpreter
    port_rules: str = "nftables"  # system mode's loopback port rules, or "off"

    @property
    def staging(self) -> Path:
        """Where Opus prepares what the verbs above install (its own, in its home)."""
        return self.home / "staging"

    @property
    def static(self) -> Path:
        """The front's copies of the apps' static files (secureops/static.py): in the
        front's own directory, root's alone in system mode, never in an app's tree."""
        return self.front / "static"

    @property
    def apps(self) -> Path:
        return self.home / "apps"

    def app_dir(self, app: str) -> Path:
        return self.apps / app

    @staticmethod
    def user(app: str) -> str:
        return USER_PREFIX + app


def load(path: Path, *, must_be_root_owned: bool) -> Layout:
    """The layout in `path`. Under privilege the file (and its directory) must be owned
    by root and writable by no one else, or nothing is done."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise Denied(f"cannot read the config {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if must_be_root_owned:
            parent = os.stat(path.parent)
            for what, entry in ((path, info), (path.parent, parent)):
                if entry.st_uid != 0 or entry.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    raise Denied(f"{what} must be owned by root and writable by root only")
        raw = handle.read(64 * 1024)
    try:
        data = json.loads(raw)
    except ValueError:
        raise Denied(f"the config {path} is not JSON") from None
    optional = OPTIONAL_PATH_KEYS | {"port_rules"}
    if not isinstance(data, dict) or not KEYS <= set(data) <= KEYS | optional or \
            not all(isinstance(v, str) for v in data.values()):
        raise Denied(f"the config {path} must hold exactly {sorted(KEYS)} (and optionally "
                     f"{sorted(optional)}), as strings")
    if data.get("port_rules", PORT_RULES[0]) not in PORT_RULES:
        raise Denied(f"port_rules in the config {path} must be one of {', '.join(PORT_RULES)}")
    paths = {key: Path(data[key]) for key in (PATH_KEYS | OPTIONAL_PATH_KEYS) & set(data)}
    if not all(p.is_absolute() and ".." not in p.parts for p in paths.values()):
        raise Denied(f"{sorted(PATH_KEYS | OPTIONAL_PATH_KEYS)} in the config must be "
                     "absolute paths without '..'")
    return Layout(home=paths["home"], conf_d=paths["conf_d"], front=paths["front"],
                  logs=paths["logs"], log=paths["log"], front_group=data["front_group"],
                  front_user=data["front_user"], opus_group=data["opus_group"],
                  pythons=paths.get("pythons", PYTHONS), wheels=paths.get("wheels", WHEELS),
                  port_rules=data.get("port_rules", PORT_RULES[0]))
