"""Files only Opus's own user reads (0600): secrets it makes once, and the logs of
builds and pushes (a build prints whatever it likes, credentials included)."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Literal, TextIO

HEX_TOKEN = re.compile(r"[0-9a-f]{32,128}")


def read_or_create(path: Path, nbytes: int = 16) -> str:
    """The hex secret in `path`; a new one (written 0600 through a temporary file, never
    through a planted symlink) when the file is missing or damaged."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if HEX_TOKEN.fullmatch(token) and len(token) == 2 * nbytes:
        return token
    return replace(path, nbytes)


def replace(path: Path, nbytes: int = 16) -> str:
    """A new hex secret in `path` (0600, written whole), whatever was there."""
    token = secrets.token_hex(nbytes)
    write_private(path, token + "\n")
    return token


def write_private(path: Path, text: str) -> None:
    """`path` holding exactly `text`, 0600, or left as it was: a fresh temporary file
    (never through a planted symlink) renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def open_private(path: Path, mode: Literal["w", "a"]) -> TextIO:
    """`path` opened to write ("w") or append ("a"), made 0600 when new, never through a
    planted symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if mode == "w" else
                                                        os.O_APPEND)
    return open(os.open(path, flags, 0o600), mode, encoding="utf-8")
