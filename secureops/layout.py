"""Where things are, from a root-owned config file: never from the caller.

/etc/opus/secureops.json (written by `opus install --system`):
    {"home": "/var/lib/opus", "front_group": "opus-front",
     "log": "/var/log/opus/secureops.log"}
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/opus/secureops.json")
USER_PREFIX = "opus-"
KEYS = {"home", "front_group", "log"}


class Denied(Exception):
    """A request secureops refuses; the message says why (and is logged)."""


@dataclasses.dataclass(frozen=True)
class Layout:
    home: Path            # OPUS_HOME
    front_group: str      # the group the front's children serve as (reads static files)
    log: Path             # where every allow and deny is appended

    @property
    def apps(self) -> Path:
        return self.home / "apps"

    @property
    def conf_d(self) -> Path:
        return self.home / "supervisor" / "conf.d"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

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
    if not isinstance(data, dict) or set(data) != KEYS or \
            not all(isinstance(v, str) for v in data.values()):
        raise Denied(f"the config {path} must hold exactly {sorted(KEYS)}, as strings")
    home, log = Path(data["home"]), Path(data["log"])
    if not home.is_absolute() or not log.is_absolute() or ".." in home.parts + log.parts:
        raise Denied("home and log in the config must be absolute paths without '..'")
    return Layout(home, data["front_group"], log)
