"""Content-addressed environments: a code-only rebuild reuses the last one.

An environment (the venv with the app's packages, mod_wsgi and the runtime) is a function
of the interpreter, the package manager, its dependency files and the build's own tooling.
:func:`describe` names those inputs (an :class:`EnvSpec`); the environment lives at
``CACHE/envs/<key>``, never changes once complete, and the build's ``.opus/venv`` is a
symlink to it, so a rebuild with the same inputs takes no time at all and a rollback to a
kept release finds its environment where it left it. Venvs cannot move (their scripts
name their own path), which is why they are built in place and linked, not copied.

The pure part (spec, key, why an environment cannot be reused) is separate from the
store (:class:`EnvStore`), which only reads and writes ``CACHE/envs``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

LAYOUT = "1"              # bump when what goes into an environment changes
KEEP = 10                 # environments kept per cache: twice the releases Opus keeps
COMPLETE = ".opus-env.json"
INCLUDE = re.compile(r"\s*(?:-r|-c|--requirement|--constraint)[\s=]+(\S+)")
LOCAL = re.compile(r"\s*(?:-e|--editable)\b|\s*(?:\.{1,2}|~)?/|\s*\.\s*$|.*\bfile:")
# Config vars that change what gets installed (which index, which credentials).
INDEX_VARS = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_INDEX",
              "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_FIND_LINKS", "PIP_FIND_LINKS")


@dataclass(frozen=True)
class EnvSpec:
    python: str
    python_version: str
    manager: str
    files: dict[str, str] = field(default_factory=dict)     # name -> sha256 of its bytes
    tooling: dict[str, str] = field(default_factory=dict)   # mod_wsgi, runtime, layout
    settings: dict[str, str] = field(default_factory=dict)  # index config vars
    not_reusable: str | None = None                         # why it must be rebuilt

    def key(self) -> str:
        data = asdict(self)
        data.pop("not_reusable")
        digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        return digest[:32]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_digest(top: Path) -> str:
    """One digest of every file under `top` (names and contents), caches left out."""
    hasher = hashlib.sha256()
    for path in sorted(top.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            hasher.update(path.relative_to(top).as_posix().encode() + b"\0")
            hasher.update(path.read_bytes())
    return hasher.hexdigest()


def requirement_files(
    build: Path, first: str, limit: int = 20
) -> tuple[dict[str, str], str | None]:
    """The requirements file and those it includes (``-r``/``-c``), hashed; and why the
    environment depends on the app's code, if a line installs a local path."""
    files: dict[str, str] = {}
    pending = [first]
    while pending and len(files) < limit:
        name = pending.pop()
        path = build / name
        if name in files or not path.is_file():
            continue
        data = path.read_bytes()
        files[name] = digest(data)
        for line in data.decode("utf-8", "replace").splitlines():
            line = line.split(" #", 1)[0]
            if line.lstrip().startswith("#") or not line.strip():
                continue
            include = INCLUDE.match(line)
            if include:
                pending.append(os.path.normpath(Path(name).parent / include.group(1)))
            elif LOCAL.match(line):
                return files, f"{name} installs a local path ({line.strip()[:60]}), " \
                    "which changes with the code"
    return files, None


def describe(build: Path, python: str, python_version: str, manager: str,
             manager_files: tuple[str, ...], tooling: Mapping[str, str],
             config: Mapping[str, str]) -> EnvSpec:
    """What the environment for this build is made of."""
    files: dict[str, str] = {}
    not_reusable = None
    for name in manager_files:
        if name == "requirements.txt":
            found, not_reusable = requirement_files(build, name)
            files.update(found)
        elif (build / name).is_file():
            files[name] = digest((build / name).read_bytes())
    settings = {name: config[name] for name in INDEX_VARS if name in config}
    return EnvSpec(python, python_version, manager, files, {"layout": LAYOUT, **tooling},
                   settings, not_reusable)


def discard_reason(previous: Mapping[str, object] | None, spec: EnvSpec) -> str:
    """Why the last build's environment does not fit this one (pure)."""
    if spec.not_reusable:
        return spec.not_reusable
    if not previous:
        return "there is no earlier build to reuse"
    if previous.get("python_version") != spec.python_version:
        return (f"the Python version changed from {previous.get('python_version')} "
                f"to {spec.python_version}")
    if previous.get("python") != spec.python:
        return f"the interpreter changed from {previous.get('python')} to {spec.python}"
    if previous.get("manager") != spec.manager:
        return f"the package manager changed from {previous.get('manager')} to {spec.manager}"
    before = previous.get("files")
    before = before if isinstance(before, dict) else {}
    changed = sorted(name for name in {*before, *spec.files}
                     if before.get(name) != spec.files.get(name))
    if changed:
        return f"{', '.join(changed)} changed"
    if previous.get("settings") != spec.settings:
        return "the package index settings changed"
    return "the build's own tooling changed"


class EnvStore:
    """``CACHE/envs``: one directory per environment key, plus which were used last."""

    def __init__(self, cache: Path) -> None:
        self.root = cache / "envs"

    def path(self, key: str) -> Path:
        return self.root / key

    def is_complete(self, key: str) -> bool:
        marker = self.path(key) / COMPLETE
        return marker.is_file() and not marker.is_symlink()

    def prepare(self, spec: EnvSpec) -> tuple[str, Path]:
        """A fresh, empty place for `spec`'s environment (anything half-built removed)."""
        key = spec.key() if not spec.not_reusable else f"once-{secrets.token_hex(8)}"
        path = self.path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        return key, path

    def mark_complete(self, key: str, spec: EnvSpec) -> None:
        (self.path(key) / COMPLETE).write_text(json.dumps(asdict(spec), indent=1) + "\n")

    def last(self) -> dict[str, object] | None:
        try:
            data = json.loads((self.root / "last.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def record_use(self, key: str, spec: EnvSpec) -> list[str]:
        """Remember `key` as the newest; remove environments beyond the newest `KEEP`;
        return the removed keys."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            used = json.loads((self.root / "used.json").read_text())
            used = [k for k in used if isinstance(k, str)] if isinstance(used, list) else []
        except (OSError, ValueError):
            used = []
        used = [key, *[k for k in used if k != key]]
        kept = set(used[:KEEP])
        _write(self.root / "used.json", json.dumps(used[:KEEP]))
        _write(self.root / "last.json", json.dumps(asdict(spec), indent=1))
        removed = []
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink() and entry.name not in kept:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


def link_into_build(opus_dir: Path, env_path: Path) -> Path:
    """Point ``BUILD/.opus/venv`` at the environment; returns the venv's python."""
    link = opus_dir / "venv"
    link.symlink_to(env_path, target_is_directory=True)
    return link / "bin" / "python"
