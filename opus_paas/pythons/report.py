"""Which Python a build will use, in the buildpack's own words: its `bin/interpreter`
reads what the app asks for and finds what the host has (interpreter choice lives in the
buildpack), and Opus acts on the answer (fetches what is missing, builds mod_wsgi).

Opus runs it as itself, on a slug that is still its own, with the build's environment.
Parsing the answer is pure (:func:`parse`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from opus_paas import names
from opus_paas.errors import ServiceError
from opus_paas.settings import Settings

TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class Interpreter:
    path: str
    version: str                # 3.13.0
    managed: bool               # fetched by Opus
    wheelhouse: str             # its directory in the wheelhouse (mod_wsgi's wheel)

    def install_name(self, managed_dir: Path) -> str | None:
        """The name of the installation Opus fetched that this runs from, if any."""
        parts = Path(self.path).relative_to(managed_dir).parts \
            if Path(self.path).is_relative_to(managed_dir) else ()
        return parts[0] if parts and names.PYTHON_INSTALL.fullmatch(parts[0]) else None


@dataclasses.dataclass(frozen=True)
class Request:
    version: str                # 3.13 or 3.13.1
    source: str                 # .python-version, runtime.txt, Pipfile.lock


@dataclasses.dataclass(frozen=True)
class Report:
    request: Request | None
    problem: str | None         # why none fits, or why the request cannot be read
    chosen: Interpreter | None
    installed: list[Interpreter]
    mod_wsgi: str               # the requirement builds install (mod_wsgi==6.1.1)


def parse(text: str) -> Report:
    """The report `bin/interpreter` printed, every field checked."""
    try:
        data = json.loads(text)
        request = data["request"]
        report = Report(
            request=None if request is None else Request(
                _string(request["version"], names.PYTHON_VERSION.pattern),
                _string(request["source"], r"\.python-version|runtime\.txt|Pipfile\.lock")),
            problem=None if data["problem"] is None else _string(data["problem"], r".{1,2000}"),
            chosen=None if data["chosen"] is None else _interpreter(data["chosen"]),
            installed=[_interpreter(item) for item in data["installed"]],
            mod_wsgi=_string(data["mod_wsgi"], r"mod_wsgi==[0-9][0-9A-Za-z.]{0,30}"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ServiceError(f"the buildpack's bin/interpreter gave an answer Opus cannot "
                           f"read ({exc}); reinstall Opus (`opus up` copies it again)") from None
    return report


def _string(value: Any, pattern: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(pattern, value, re.S):
        raise ValueError(f"unexpected value {str(value)[:60]!r}")
    return value


def _interpreter(data: Any) -> Interpreter:
    if not isinstance(data, dict) or not isinstance(data.get("managed"), bool):
        raise ValueError("an interpreter is not an object with `managed`")
    return Interpreter(
        path=_string(data["path"], r"/[^\0\n]{1,4000}"),
        version=_string(data["version"], r"3\.[0-9]{1,2}\.[0-9]{1,3}"),
        managed=data["managed"],
        wheelhouse=_string(data["wheelhouse"], r"cp3[0-9]{1,2}-[0-9a-f]{16}"),
    )


def read(settings: Settings, env: Mapping[str, str], build: Path | None = None) -> Report:
    """Ask the buildpack (Opus's copy in OPUS_HOME/tools) about `build`, or about the host
    alone when there is no build."""
    script = settings.tools_dir / "buildpacks" / "python" / "bin" / "interpreter"
    if not script.is_file():
        raise ServiceError(f"{script} is missing; run `opus up` (it installs Opus's tools)")
    argv = [sys.executable, "-I", str(script), *([str(build)] if build is not None else [])]
    try:
        done = subprocess.run(argv, env=dict(env), cwd=str(build or "/"), capture_output=True,
                              text=True, timeout=TIMEOUT, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ServiceError(f"finding the host's interpreters took longer than {TIMEOUT:.0f} s; "
                           "check the interpreters in OPUS_PYTHONS") from None
    if done.returncode != 0:
        raise ServiceError(f"the buildpack's bin/interpreter failed: "
                           f"{(done.stderr or done.stdout).strip()[-400:]}")
    return parse(done.stdout)
