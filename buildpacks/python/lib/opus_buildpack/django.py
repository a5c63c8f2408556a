"""Django discovery (manage.py, settings, WSGI module) by reading files, and collectstatic.

Discovery never runs the app's code: ``manage.py`` is read as text. The settings module name
is validated here, so nothing odd from it reaches build.json or a command line.
"""

from __future__ import annotations

import keyword
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from opus_buildpack.errors import BuildError
from opus_buildpack.output import Output
from opus_buildpack.process import run_relayed

MAX_DEPTH = 3
SKIP_DIRS = frozenset(
    {".opus", ".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", "env",
     ".tox", ".nox", "site-packages", ".mypy_cache", ".pytest_cache"}
)
# Directory names that can appear in a release command without quoting.
SAFE_DIR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
# A directory relative to the build dir that may be recorded and used as a path.
SAFE_PATH = re.compile(r"(?:\.|[A-Za-z0-9_][A-Za-z0-9_-]*(?:/[A-Za-z0-9_][A-Za-z0-9_-]*)*)\Z")
DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
SETTINGS_PATTERNS = (
    re.compile(
        r"(?:\bos\.)?\benviron\s*\.\s*setdefault\s*\(\s*"
        rf"""(['"])DJANGO_SETTINGS_MODULE\1\s*,\s*(['"])(?P<module>{DOTTED})\2"""
    ),
    re.compile(
        r"(?:\bos\.)?\benviron\s*\[\s*"
        rf"""(['"])DJANGO_SETTINGS_MODULE\1\s*\]\s*=\s*(['"])(?P<module>{DOTTED})\2"""
    ),
)
MODULE_NAME = re.compile(rf"{DOTTED}\Z", re.ASCII)


@dataclass(frozen=True)
class DjangoApp:
    """What discovery found: manage.py (absolute and relative to the build dir) and modules."""

    manage_py: Path
    relative: str
    settings_module: str                # the one the build uses
    wsgi_module: str | None
    default_settings: str | None = None  # the one manage.py names, if the repo has it


def _skip(directory: Path, name: str) -> bool:
    return (
        name in SKIP_DIRS
        or not SAFE_DIR.match(name)
        or (directory / name / "pyvenv.cfg").exists()
    )


def find_manage_py(build: Path, max_depth: int = MAX_DEPTH) -> Path | None:
    """The shallowest ``manage.py`` at most ``max_depth`` directories below ``build``.

    Ties go to the alphabetically first path. VCS dirs, venvs, node_modules, ``.opus`` and
    symlinked dirs are not searched.
    """
    level = [build]
    for _depth in range(max_depth + 1):
        found = sorted(d / "manage.py" for d in level if (d / "manage.py").is_file())
        if found:
            return found[0]
        next_level: list[Path] = []
        for directory in level:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                continue
            next_level += [
                Path(e.path) for e in entries
                if e.is_dir(follow_symlinks=False) and not _skip(directory, e.name)
            ]
        level = next_level
    return None


def _strip_comments(text: str) -> str:
    return "\n".join("" if line.lstrip().startswith("#") else line for line in text.splitlines())


def parse_settings_module(manage_py_text: str) -> str | None:
    """The ``DJANGO_SETTINGS_MODULE`` that manage.py sets, or None; read, never executed."""
    text = _strip_comments(manage_py_text)
    matches = [m for pattern in SETTINGS_PATTERNS for m in pattern.finditer(text)]
    if not matches:
        return None
    module = min(matches, key=lambda m: m.start()).group("module")
    return module if MODULE_NAME.match(module) else None


def find_wsgi_module(
    app_root: Path, settings_module: str, is_file: Callable[[Path], bool] = Path.is_file
) -> str | None:
    """``<settings package>.wsgi`` if that file exists beside the settings, or None.

    For ``mysite.settings.production`` it tries ``mysite.settings.wsgi``, then ``mysite.wsgi``.
    """
    parts = settings_module.split(".")[:-1]
    while parts:
        package_dir = app_root.joinpath(*parts)
        if is_file(package_dir / "wsgi.py") or is_file(package_dir / "wsgi" / "__init__.py"):
            return ".".join([*parts, "wsgi"])
        parts.pop()
    return None


def collectstatic_command(python: Path, *, debug: bool) -> list[str]:
    command = [str(python), "manage.py", "collectstatic", "--noinput"]
    return [*command, "--traceback"] if debug else command


def collectstatic_environment(
    app_env: Mapping[str, str], base: Mapping[str, str], *, settings_module: str,
    static_root: Path, data_dir: Path,
) -> dict[str, str]:
    """App config, then the platform's settings overlay and the base PATH/HOME/LANG."""
    env = dict(app_env)
    env.update(
        DJANGO_SETTINGS_MODULE="opus_runtime.settings",
        OPUS_USER_SETTINGS_MODULE=settings_module,
        OPUS_STATIC_ROOT=str(static_root),
        OPUS_DATA_DIR=str(data_dir),
    )
    env.update(base)
    return env


def collectstatic(
    python: Path, manage_py: Path, out: Output, *, app_env: Mapping[str, str],
    base: Mapping[str, str], settings_module: str, static_root: Path, debug: bool,
) -> None:
    """Run ``manage.py collectstatic`` into ``static_root``, relaying its output."""
    with tempfile.TemporaryDirectory(prefix="opus-collectstatic-") as data_dir:
        env = collectstatic_environment(
            app_env, base, settings_module=settings_module, static_root=static_root,
            data_dir=Path(data_dir),
        )
        command = collectstatic_command(python, debug=debug)
        code = run_relayed(command, out, env=env, cwd=manage_py.parent)
    if code != 0:
        hints = [
            "Fix the error shown above, or skip this step by setting the config var",
            "DISABLE_COLLECTSTATIC=1. To see a full traceback, set DEBUG_COLLECTSTATIC=1.",
        ]
        raise BuildError("python manage.py collectstatic --noinput failed.", hints)


WSGI_APPLICATION = re.compile(
    rf"""^WSGI_APPLICATION\s*=\s*(['"])(?P<path>{DOTTED})\1""", re.MULTILINE)


def settings_file(app_root: Path, settings_module: str) -> Path | None:
    """The file defining `settings_module` under `app_root`, if it is there."""
    base = app_root.joinpath(*settings_module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def parse_wsgi_application(settings_text: str) -> tuple[str, str] | None:
    """``WSGI_APPLICATION = "mysite.wsgi.application"`` → (``mysite.wsgi``, ``application``)."""
    match = WSGI_APPLICATION.search(settings_text)
    if not match or "." not in match.group("path"):
        return None
    module, _, name = match.group("path").rpartition(".")
    return module, name


def module_in_tree(root: Path, module: str) -> Path | None:
    """The source of `module` under `root` as a regular file reached through real
    directories only (``a/b.py`` or ``a/b/__init__.py``; no link followed on the way),
    or None. `module` must be a dotted name of identifiers, none a keyword."""
    if not MODULE_NAME.match(module) or any(keyword.iskeyword(p) for p in module.split(".")):
        return None
    *packages, last = module.split(".")
    here = root
    for name in packages:
        here = here / name
        if not _is(here, stat.S_ISDIR):
            return None
    if _is(here / f"{last}.py", stat.S_ISREG):
        return here / f"{last}.py"
    package = here / last / "__init__.py"
    return package if _is(here / last, stat.S_ISDIR) and _is(package, stat.S_ISREG) else None


def _is(path: Path, kind: Callable[[int], bool]) -> bool:
    try:
        return kind(path.lstat().st_mode)
    except OSError:
        return False


def module_file(root: Path, module: str) -> Path | None:
    """The source of `module` under `root` (``a/b.py`` or ``a/b/__init__.py``), if any."""
    if not MODULE_NAME.match(module):
        return None
    return settings_file(root, module)
