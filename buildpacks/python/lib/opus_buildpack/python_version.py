"""Which interpreter the app's venv is built on.

The platform chooses it and passes ``OPUS_PYTHON``; without it, the newest
``/usr/bin/python3.X`` is used. uv never downloads an interpreter.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from opus_buildpack.errors import BuildError

SYSTEM_BIN = Path("/usr/bin")
VERSIONED_NAME = re.compile(r"python3\.(\d+)\Z")


def newest_versioned(names: Iterable[str]) -> str | None:
    """The ``python3.X`` name with the highest X, or None; other names are ignored."""
    best: tuple[int, str] | None = None
    for name in names:
        match = VERSIONED_NAME.match(name)
        if match and (best is None or int(match.group(1)) > best[0]):
            best = (int(match.group(1)), name)
    return best[1] if best else None


def choose_python(environ: Mapping[str, str], system_bin: Path = SYSTEM_BIN) -> Path:
    """The interpreter to build with: ``OPUS_PYTHON``, else the newest system python3.X."""
    chosen = environ.get("OPUS_PYTHON", "")
    if chosen:
        path = Path(chosen)
        if not path.is_absolute() or not path.is_file():
            raise BuildError(
                f"OPUS_PYTHON={chosen} is not an absolute path to an existing interpreter.",
                ["Set OPUS_PYTHON to an installed interpreter, e.g. /usr/bin/python3.11,",
                 "or unset it to use the newest /usr/bin/python3.X."],
            )
        return path
    names = [p.name for p in system_bin.glob("python3.*") if p.is_file()]
    newest = newest_versioned(names)
    if newest is None:
        raise BuildError(
            f"No Python interpreter found: looked for {system_bin}/python3.X.",
            ["Install one (e.g. apt-get install python3.11-dev)",
             "or set OPUS_PYTHON to an interpreter's absolute path."],
        )
    return system_bin / newest


def interpreter_version(python: Path) -> str:
    """The full version (``3.11.2``) of an interpreter, by running it."""
    result = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise BuildError(f"Could not run {python}: {result.stderr.strip()}")
    return result.stdout.strip()
