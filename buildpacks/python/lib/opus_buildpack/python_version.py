"""Which interpreter the app's venv is built on.

The app may ask for a version (``.python-version``, ``runtime.txt`` or ``Pipfile.lock``);
it is chosen among the interpreters installed on the host that the build user can run:
Debian's ``/usr/bin/python3.X``, pyenv versions under a system-wide pyenv root, the
operator's list (``OPUS_PYTHONS``, colon-separated paths) and the interpreters Opus fetched
(``OPUS_MANAGED_PYTHONS``, a directory of python-build-standalone installations). Without a
request, the newest of the host's own (a fetched one only when the host has none), or
``OPUS_PYTHON`` when the operator set one. The buildpack downloads nothing: Opus fetches a
missing version before the build starts (``bin/interpreter`` tells it what is missing).

Reading the request is pure (:func:`requested_version`); discovery runs each candidate once.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from opus_buildpack.errors import BuildError

SYSTEM_BIN = Path("/usr/bin")
PYENV_ROOTS = (Path("/opt/pyenv"), Path("/usr/local/pyenv"))
VERSIONED_NAME = re.compile(r"python3\.(\d+)\Z")
VERSION = re.compile(r"3\.(\d{1,2})(?:\.(\d{1,3}))?\Z")
RUNTIME_TXT = re.compile(r"python-(3\.\d{1,2}(?:\.\d{1,3})?)\Z")
VERSION_FILES = (".python-version", "runtime.txt")
MANAGED = "OPUS_MANAGED_PYTHONS"     # where Opus keeps the interpreters it fetched
HOW_TO_ADD = ("Opus fetches Python 3.10 to 3.14 when an app asks for one (the operator "
              "can run `opus pythons:install 3.X` beforehand); for any other, the "
              "operator installs it (apt-get install python3.X-dev python3.X-venv, or a "
              "pyenv version under /opt/pyenv) or lists its path in OPUS_PYTHONS.")


@dataclass(frozen=True)
class Request:
    """A version the app asks for: ``(3, 12)`` or ``(3, 12, 1)``, and where it said so."""

    version: tuple[int, ...]
    source: str

    @property
    def text(self) -> str:
        return ".".join(map(str, self.version))


@dataclass(frozen=True)
class Interpreter:
    path: Path
    version: tuple[int, int, int]
    managed: bool = False           # fetched by Opus, not the host's own

    @property
    def text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def wheelhouse_key(self) -> str:
        """The directory of the host's wheelhouse that holds wheels built against this
        interpreter (mod_wsgi links its libpython by path, so the key is the path's)."""
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:16]
        return f"cp{self.version[0]}{self.version[1]}-{digest}"


# ---- what the app asks for (pure) ---------------------------------------------------
def parse_version(text: str) -> tuple[int, ...] | None:
    match = VERSION.match(text)
    if not match:
        return None
    return tuple(int(part) for part in text.split("."))


def _meaningful_lines(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def from_python_version_file(text: str) -> tuple[int, ...]:
    """The version in a ``.python-version``: one ``3.X`` or ``3.X.Y``, comments allowed."""
    lines = _meaningful_lines(text)
    if not lines:
        raise BuildError(
            "The .python-version file is empty.",
            ["Put the major.minor version to use on a line of its own, e.g. 3.11,",
             "or delete the file to use the newest Python on the host."])
    if len(lines) > 1:
        raise BuildError(
            f"The .python-version file names several versions ({', '.join(lines[:5])}).",
            ["Opus builds with one: keep a single line, e.g. 3.11."])
    version = parse_version(lines[0])
    if version is None:
        hint = ""
        if lines[0].startswith("python"):
            hint = f" (write just the version: {lines[0].removeprefix('python').lstrip('-')})"
        raise BuildError(
            f"The .python-version file says {lines[0][:40]!r}, which is not a Python "
            f"version{hint}.",
            ["Write major.minor (e.g. 3.11) or an exact version (e.g. 3.11.2),",
             "on a line of its own; lines starting with # are comments."])
    return version


def from_runtime_txt(text: str) -> tuple[int, ...]:
    """The version in a ``runtime.txt``: ``python-3.X.Y``."""
    content = text.strip()
    match = RUNTIME_TXT.match(content)
    if not match:
        raise BuildError(
            f"The runtime.txt file says {content[:40]!r}, which is not a Python version.",
            ["It must hold one line like python-3.11.2. Better, replace it with a",
             ".python-version file holding 3.11 (runtime.txt is deprecated)."])
    version = parse_version(match.group(1))
    assert version is not None
    return version


def from_pipfile_lock(text: str) -> tuple[int, ...] | None:
    """``_meta.requires.python_full_version`` or ``python_version``, if present and valid."""
    try:
        data = json.loads(text)
        requires = data["_meta"]["requires"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(requires, dict):
        return None
    for key in ("python_full_version", "python_version"):
        value = requires.get(key)
        if isinstance(value, str) and parse_version(value):
            return parse_version(value)
    return None


def misspelled_version_file(names: Iterable[str]) -> tuple[str, str] | None:
    """A root file that looks like a misspelled version file: (found, meant)."""
    present = set(names)
    for name in sorted(present):
        if name in VERSION_FILES or name.endswith("/"):
            continue
        close = difflib.get_close_matches(name.lower(), VERSION_FILES, n=1, cutoff=0.8)
        if close and close[0] not in present:
            return name, close[0]
    return None


def requested_version(files: Mapping[str, str], listing: Sequence[str]) -> Request | None:
    """What the app asks for, from the root files' contents (``files`` maps a name to
    its text, for the version files present). None when it asks for nothing."""
    misspelled = misspelled_version_file(listing)
    if misspelled:
        found, meant = misspelled
        raise BuildError(
            f"Found {found} at the repository root: Opus reads {meant}.",
            [f"Rename it: git mv {found} {meant}"])
    wanted: list[Request] = []
    if ".python-version" in files:
        wanted.append(Request(from_python_version_file(files[".python-version"]),
                              ".python-version"))
    if "runtime.txt" in files:
        wanted.append(Request(from_runtime_txt(files["runtime.txt"]), "runtime.txt"))
    if len(wanted) == 2 and wanted[0].version != wanted[1].version[:len(wanted[0].version)]:
        raise BuildError(
            f".python-version asks for Python {wanted[0].text} but runtime.txt for "
            f"{wanted[1].text}.",
            ["Keep one: delete runtime.txt (it is deprecated) and say the version",
             "in .python-version."])
    if wanted:
        return wanted[0]
    if "Pipfile.lock" in files:
        version = from_pipfile_lock(files["Pipfile.lock"])
        if version:
            return Request(version, "Pipfile.lock")
    return None


def choose(request: Request | None, installed: Sequence[Interpreter],
           default: Interpreter | None = None) -> Interpreter:
    """The interpreter for `request` among `installed`: exact for 3.X.Y, the newest 3.X.*
    for 3.X; with no request, `default` or the newest of the host's own (one Opus fetched
    for an app that asked for it does not become every other app's)."""
    if not installed:
        raise BuildError(
            "No Python interpreter is installed on this Opus host that the build can run.",
            [HOW_TO_ADD])
    if request is None:
        own = [i for i in installed if not i.managed] or list(installed)
        return default or max(own, key=lambda i: i.version)
    matching = [i for i in installed if i.version[:len(request.version)] == request.version]
    if matching:
        return max(matching, key=lambda i: i.version)
    names = ", ".join(f"{i.text} ({i.path})" for i in sorted(installed, key=lambda i: i.version))
    minors = sorted({f"{i.version[0]}.{i.version[1]}" for i in installed})
    raise BuildError(
        f"Python {request.text} (from {request.source}) is not installed on this Opus host.",
        [f"Installed: {names}.",
         f"Ask for one of those in {request.source} (e.g. {minors[-1]}).",
         HOW_TO_ADD])


# ---- what the host has ------------------------------------------------------------
def candidate_paths(environ: Mapping[str, str], system_bin: Path = SYSTEM_BIN,
                    pyenv_roots: Sequence[Path] = PYENV_ROOTS) -> list[Path]:
    """Interpreters worth asking, in order of preference for equal versions."""
    paths: list[Path] = []
    for item in environ.get("OPUS_PYTHONS", "").split(":"):
        if item.strip():
            paths.append(Path(item.strip()))
    chosen = environ.get("OPUS_PYTHON", "")
    if chosen:
        paths.append(Path(chosen))
    if system_bin.is_dir():
        paths += sorted(p for p in system_bin.iterdir() if VERSIONED_NAME.match(p.name))
    roots = list(pyenv_roots)
    if environ.get("PYENV_ROOT"):
        roots.insert(0, Path(environ["PYENV_ROOT"]))
    for root in roots:
        versions = root / "versions"
        try:
            entries = sorted(versions.iterdir())
        except OSError:
            continue
        paths += [e / "bin" / "python3" for e in entries if VERSION.match(e.name)]
    paths += managed_paths(environ)
    return list(dict.fromkeys(paths))


def managed_paths(environ: Mapping[str, str]) -> list[Path]:
    """The interpreters Opus fetched: ``bin/python3`` of each installation in
    ``OPUS_MANAGED_PYTHONS``."""
    root = environ.get(MANAGED, "")
    if not root.startswith("/"):
        return []
    try:
        entries = sorted(Path(root).iterdir())
    except OSError:
        return []
    return [e / "bin" / "python3" for e in entries if not e.name.startswith(".")]


def probe(path: Path, *, managed: bool = False) -> Interpreter | None:
    """The interpreter at `path` if the build user can run it, with its exact version."""
    if not path.is_absolute() or not os.access(path, os.X_OK) or not path.is_file():
        return None
    try:
        result = subprocess.run(
            [str(path), "-I", "-c", "import sys; print(*sys.version_info[:3])"],
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = result.stdout.split()
    if result.returncode != 0 or len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    major, minor, micro = (int(p) for p in parts)
    return Interpreter(path, (major, minor, micro), managed) if major == 3 else None


def installed_interpreters(environ: Mapping[str, str], **where: object) -> list[Interpreter]:
    """Every interpreter found that runs, first of each exact version only."""
    found: dict[tuple[int, int, int], Interpreter] = {}
    managed = set(managed_paths(environ))
    for path in candidate_paths(environ, **where):   # type: ignore[arg-type]
        interpreter = probe(path, managed=path in managed)
        if interpreter and interpreter.version not in found:
            found[interpreter.version] = interpreter
    return list(found.values())


def default_interpreter(environ: Mapping[str, str],
                        installed: Sequence[Interpreter]) -> Interpreter | None:
    """The operator's OPUS_PYTHON among `installed`, if set; an unusable one is an error."""
    chosen = environ.get("OPUS_PYTHON", "")
    if not chosen:
        return None
    for interpreter in installed:
        if str(interpreter.path) == chosen:
            return interpreter
    raise BuildError(
        f"OPUS_PYTHON={chosen} is not an interpreter the build can run.",
        ["The operator sets OPUS_PYTHON to an installed interpreter's absolute path,",
         "e.g. /usr/bin/python3.11, or unsets it to use the newest one."])
