"""Which package manager the app uses, decided from the files at its root (pure).

Exactly one of: pip (``requirements.txt``), uv (``uv.lock``), Poetry (``poetry.lock``),
Pipenv (``Pipfile.lock``), or a ``pyproject.toml`` with PEP 621 dependencies and no lock.
Anything else is an error that says which file to add or remove.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opus_buildpack.errors import BuildError


@dataclass(frozen=True)
class Manager:
    name: str                        # pip, uv, poetry, pipenv, pyproject
    files: tuple[str, ...]           # what the installed set is a function of
    label: str                       # for output: "pip", "Poetry", ...


MANAGERS = {
    "pip": Manager("pip", ("requirements.txt",), "pip (requirements.txt)"),
    "uv": Manager("uv", ("pyproject.toml", "uv.lock"), "uv (uv.lock)"),
    "poetry": Manager("poetry", ("pyproject.toml", "poetry.lock"), "Poetry (poetry.lock)"),
    "pipenv": Manager("pipenv", ("Pipfile", "Pipfile.lock"), "Pipenv (Pipfile.lock)"),
    "pyproject": Manager("pyproject", ("pyproject.toml",), "pyproject.toml dependencies"),
}
# The file that marks each manager, in the order they are named in messages.
MARKERS = (("requirements.txt", "pip"), ("uv.lock", "uv"), ("poetry.lock", "poetry"),
           ("Pipfile.lock", "pipenv"))


def read_pyproject(text: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise BuildError(f"pyproject.toml is not valid TOML: {error}.",
                         ["Fix the file (python -c 'import tomllib' can check it) and push again."]
                         ) from None


def _has_pep621_dependencies(pyproject: Mapping[str, object]) -> bool:
    project = pyproject.get("project")
    return isinstance(project, dict) and isinstance(project.get("dependencies"), list)


def _is_poetry_project(pyproject: Mapping[str, object]) -> bool:
    tool = pyproject.get("tool")
    return isinstance(tool, dict) and "poetry" in tool


def choose_manager(listing: Sequence[str], files: Mapping[str, str]) -> Manager:
    """The one package manager of an app whose root holds `listing`; `files` has the text
    of ``pyproject.toml`` when present."""
    names = set(listing)
    found = [manager for marker, manager in MARKERS if marker in names]
    if len(found) > 1:
        markers = [marker for marker, manager in MARKERS if manager in found]
        raise BuildError(
            f"Several package manager files were found: {', '.join(markers)}.",
            ["Opus installs with exactly one package manager. Keep the one you use",
             "and delete the others (git rm), then push again. (A requirements.txt",
             "exported from a lock file is not needed: Opus reads the lock.)"])
    if found:
        return MARKERS_BY_NAME[found[0]]
    if "Pipfile" in names:
        raise BuildError(
            "There is a Pipfile but no Pipfile.lock.",
            ["Opus installs exactly what the lock file says: run `pipenv lock`,",
             "commit Pipfile.lock and push again."])
    pyproject = read_pyproject(files["pyproject.toml"]) if "pyproject.toml" in files else {}
    if _is_poetry_project(pyproject):
        raise BuildError(
            "pyproject.toml is a Poetry project, but there is no poetry.lock.",
            ["Run `poetry lock`, commit poetry.lock and push again."])
    if _has_pep621_dependencies(pyproject):
        return MANAGERS["pyproject"]
    if "setup.py" in names or "setup.cfg" in names:
        only = "setup.py" if "setup.py" in names else "setup.cfg"
        raise BuildError(
            f"Only {only} declares this app's dependencies; Opus needs a package manager file.",
            ["Add a requirements.txt listing them (one per line, e.g. Django>=5.2,<5.3),",
             "or move them to [project] dependencies in pyproject.toml, then push again."])
    if "pyproject.toml" in names:
        raise BuildError(
            "pyproject.toml has no [project] dependencies, and there is no lock file.",
            ["List your dependencies under [project] dependencies = [...], or add a",
             "requirements.txt, uv.lock, poetry.lock or Pipfile.lock, then push again."])
    raise BuildError(
        "No package manager file was found at the repository root.",
        ["Add a requirements.txt listing your dependencies (e.g. a line Django>=5.2,<5.3),",
         "or a pyproject.toml with a uv.lock or poetry.lock, or a Pipfile.lock;",
         "commit it and push again."])


MARKERS_BY_NAME = {name: MANAGERS[name] for _marker, name in MARKERS}



def committed_venv(listing: Sequence[str], has_pyvenv_cfg: Mapping[str, bool]) -> str | None:
    """The first root directory that is a committed virtualenv, if any."""
    if "pyvenv.cfg" in listing:
        return "."
    for entry in listing:
        if entry.endswith("/") and has_pyvenv_cfg.get(entry.rstrip("/")):
            return entry.rstrip("/")
    return None
