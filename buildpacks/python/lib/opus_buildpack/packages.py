"""The app's venv and its packages, installed with uv into ``BUILD/.opus/venv``.

uv's cache lives in ``CACHE/uv``, shared across builds so rebuilds are fast. Packages are
hardlinked out of it (``UV_LINK_MODE=hardlink``; uv copies instead where the cache is on
another filesystem): installing Django's ~8,000 files drops from 2.3 s to a fraction.
The venv's files then share inodes with the cache, so whoever may write the cache may
change every app's packages: the cache must be writable only by the build user.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from opus_buildpack.errors import BuildError
from opus_buildpack.output import Output
from opus_buildpack.process import run_captured, run_relayed

MOD_WSGI_REQUIREMENT = "mod_wsgi==6.1.1"
RUNTIME_PACKAGE = Path(__file__).resolve().parent.parent / "runtime" / "opus_runtime"
# The build fixes these; app config may not change them.
UV_FIXED = (
    "UV_CACHE_DIR", "UV_LINK_MODE", "UV_NO_PROGRESS", "UV_PYTHON_DOWNLOADS", "UV_SYSTEM_CERTS",
    "UV_NATIVE_TLS",
)


def find_uv() -> str:
    """The uv binary on PATH."""
    uv = shutil.which("uv")
    if uv is None:
        raise BuildError(
            "uv was not found on PATH; the build uses it to create the venv and install packages.",
            ["Install uv on the Opus host (pip install uv) and make sure the directory",
             "holding it is on the PATH that Opus gives to builds."],
        )
    return uv


def uv_environment(
    base: Mapping[str, str], app_env: Mapping[str, str], cache_dir: Path
) -> dict[str, str]:
    """Environment for uv: app config (e.g. ``UV_INDEX_URL``), then the build's fixed values."""
    env = {name: value for name, value in app_env.items() if name not in UV_FIXED}
    env.update(base)
    env.update(
        UV_CACHE_DIR=str(cache_dir / "uv"),
        UV_LINK_MODE="hardlink",
        UV_NO_PROGRESS="1",
        UV_PYTHON_DOWNLOADS="never",
        # Trust the host's CA store (admins add proxy CAs there), not uv's bundled roots.
        # UV_SYSTEM_CERTS is uv >= 0.11's name; older uv reads UV_NATIVE_TLS. With both
        # set, newer uv does not warn about the old name.
        UV_SYSTEM_CERTS="1",
        UV_NATIVE_TLS="1",
    )
    return env


def venv_command(uv: str, python: Path, venv: Path) -> list[str]:
    return [uv, "venv", "--no-project", "--clear", "--python", str(python), str(venv)]


def install_command(uv: str, venv_python: Path, *requirements: str) -> list[str]:
    return [uv, "pip", "install", "--python", str(venv_python), *requirements]


def create_venv(
    uv: str, python: Path, venv: Path, build: Path, out: Output, env: Mapping[str, str]
) -> Path:
    """Create the venv; returns its python."""
    if run_relayed(venv_command(uv, python, venv), out, env=env, cwd=build) != 0:
        raise BuildError(f"Could not create a virtualenv with {python}.",
                         ["Check that the interpreter works and the build dir is writable."])
    return venv / "bin" / "python"


POETRY = ("poetry==2.5.1", "poetry-plugin-export==1.10.1")
PIPENV = ("pipenv==2026.10.3",)
OUT_OF_SYNC_HINTS = {
    "uv": ["Run `uv lock`, commit uv.lock and push again."],
    "poetry": ["Run `poetry lock`, commit poetry.lock and push again."],
    "pipenv": ["Run `pipenv lock`, commit Pipfile.lock and push again."],
}


def install_dependencies(
    manager: str, uv: str, venv_python: Path, build: Path, cache: Path, out: Output,
    env: Mapping[str, str],
) -> None:
    """Install the app's packages into the venv the way its package manager says,
    with uv doing the installing."""
    if manager == "pip":
        _install(uv, venv_python, ["-r", "requirements.txt"], build, out, env,
                 "the packages in requirements.txt", "uv pip install -r requirements.txt")
    elif manager == "pyproject":
        _install(uv, venv_python, ["-r", "pyproject.toml"], build, out, env,
                 "the dependencies in pyproject.toml", "uv pip install -r pyproject.toml")
    elif manager == "uv":
        _check_lock("uv", [uv, "lock", "--check", "--python", str(venv_python)], build, out,
                    env)
        sync_env = {**env, "UV_PROJECT_ENVIRONMENT": str(venv_python.parent.parent)}
        command = [uv, "sync", "--locked", "--no-default-groups", "--no-install-project",
                   "--python", str(venv_python)]
        if run_relayed(command, out, env=sync_env, cwd=build) != 0:
            raise BuildError("Could not install the packages in uv.lock (see above).",
                             ["Try the same locally: uv sync --locked --no-default-groups"])
    elif manager in ("poetry", "pipenv"):
        tool = install_tool(manager, uv, venv_python, cache, out, env)
        tool_env = _tool_environment(manager, env, cache, build)
        if manager == "poetry":
            check = [str(tool / "poetry"), "check", "--lock"]
            export = [str(tool / "poetry"), "export", "--only", "main", "--format",
                      "requirements.txt"]
        else:
            check = [str(tool / "pipenv"), "verify"]
            export = [str(tool / "pipenv"), "requirements", "--hash"]
        _check_lock(manager, check, build, out, tool_env)
        code, lines = run_captured(export, env=tool_env, cwd=build)
        if code != 0:
            for line in lines:
                out.detail(line)
            raise BuildError(f"Could not read the {manager} lock file (see above).",
                             OUT_OF_SYNC_HINTS[manager])
        exported = cache / f"{manager}-requirements.txt"
        exported.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _install(uv, venv_python, ["-r", str(exported)], build, out, env,
                 f"the packages in the {manager} lock file", f"{manager} install")
    else:
        raise BuildError(f"Unknown package manager {manager}.")


def _install(uv: str, venv_python: Path, args: list[str], build: Path, out: Output,
             env: Mapping[str, str], what: str, locally: str) -> None:
    if run_relayed(install_command(uv, venv_python, *args), out, env=env, cwd=build) != 0:
        raise BuildError(
            f"Could not install {what} (see uv's output above).",
            ["Check each requirement's name and version on PyPI, and try the same",
             f"install locally: {locally}"])


def _check_lock(manager: str, command: list[str], build: Path, out: Output,
                env: Mapping[str, str]) -> None:
    """Fail with the manager's own words when the lock file does not match."""
    code, lines = run_captured(command, env=env, cwd=build)
    if code != 0:
        for line in lines[-10:]:
            out.detail(line)
        lock = {"uv": "uv.lock", "poetry": "poetry.lock", "pipenv": "Pipfile.lock"}[manager]
        source = "Pipfile" if manager == "pipenv" else "pyproject.toml"
        raise BuildError(f"{lock} is out of date with {source}.", OUT_OF_SYNC_HINTS[manager])


def _tool_environment(manager: str, env: Mapping[str, str], cache: Path,
                      build: Path) -> dict[str, str]:
    tool_env = dict(env)
    if manager == "poetry":
        tool_env.update(POETRY_VIRTUALENVS_CREATE="false", POETRY_NO_INTERACTION="1",
                        POETRY_CACHE_DIR=str(cache / "poetry"))
    else:
        tool_env.update(PIPENV_IGNORE_VIRTUALENVS="1", PIPENV_NOSPIN="1", PIPENV_YES="1",
                        PIPENV_VERBOSITY="-1", PIPENV_PIPFILE=str(build / "Pipfile"),
                        WORKON_HOME=str(cache / "pipenv"))
    return tool_env


def install_tool(manager: str, uv: str, python: Path, cache: Path, out: Output,
                 env: Mapping[str, str]) -> Path:
    """Poetry or Pipenv in a venv of its own under CACHE/tools (once per cache); returns
    its bin directory. It reads and exports the lock file; uv installs."""
    pins = POETRY if manager == "poetry" else PIPENV
    name = pins[0].replace("==", "-")
    home = cache / "tools" / name
    ready = home / ".ready"
    if ready.is_file():
        return home / "bin"
    out.step(f"Installing {pins[0]} to read the lock file (once per app)")
    remove_path(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    if run_relayed([uv, "venv", "--no-project", "--python", str(python), str(home)], out,
                   env=env, cwd=cache) != 0 or \
            run_relayed(install_command(uv, home / "bin" / "python", *pins), out, env=env,
                        cwd=cache) != 0:
        raise BuildError(f"Could not install {pins[0]}.",
                         ["Check that the Opus host can reach the package index."])
    ready.write_text("")
    return home / "bin"


def install_mod_wsgi(
    uv: str, venv_python: Path, build: Path, out: Output, env: Mapping[str, str],
    wheelhouse: Path | None = None,
) -> float:
    """Install mod_wsgi, which serves the app with the venv's own Python.

    From the host's wheelhouse first: Opus builds the wheel once per interpreter (read-only
    to builds), so a new app does not compile it again. Else from uv's cache, offline: that
    reuses the wheel built earlier even when the index's responses cannot be revalidated
    (a proxy that strips ETags makes uv treat the sdist as new and compile it again,
    ~15 s). Else it compiles.
    """
    started = time.monotonic()
    if wheelhouse is not None and any(wheelhouse.glob(wheel_pattern())):
        code, lines = run_captured(
            install_command(uv, venv_python, "--no-index", "--find-links", str(wheelhouse),
                            MOD_WSGI_REQUIREMENT), env=env, cwd=build)
        if code == 0:
            for line in lines:
                out.detail(line)
            out.detail("From the host's wheelhouse (built once for this Python)")
            return time.monotonic() - started
    code, lines = run_captured(
        install_command(uv, venv_python, "--offline", MOD_WSGI_REQUIREMENT), env=env, cwd=build
    )
    if code == 0:
        for line in lines:
            out.detail(line)
        return time.monotonic() - started
    out.detail("Not in the build cache yet: compiling it from source (once per Python version)")
    code = run_relayed(
        install_command(uv, venv_python, MOD_WSGI_REQUIREMENT), out, env=env, cwd=build
    )
    if code != 0:
        raise BuildError(
            f"Could not install {MOD_WSGI_REQUIREMENT}, which serves the app.",
            ["It compiles against Apache: the Opus host needs apache2-dev (apxs) and",
             "the Python headers (python3.X-dev). If requirements.txt pins another",
             "mod_wsgi, remove that line."],
        )
    return time.monotonic() - started


def wheel_pattern() -> str:
    """The file names of the pinned mod_wsgi's wheels (any interpreter's tags)."""
    name, _, version = MOD_WSGI_REQUIREMENT.partition("==")
    return f"{name}-{version}-*.whl"


def remove_path(path: Path) -> None:
    """Remove a file, symlink or directory tree if present (never following a symlink)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def site_packages(venv_python: Path) -> Path:
    """The venv's purelib directory, asked of the venv's own interpreter."""
    result = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise BuildError(f"Could not find the venv's site-packages: {result.stderr.strip()}")
    return Path(result.stdout.strip())


def install_runtime(venv_python: Path, source: Path = RUNTIME_PACKAGE) -> Path:
    """Copy the ``opus_runtime`` package into the venv; returns where it went."""
    target = site_packages(venv_python) / source.name
    remove_path(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target
