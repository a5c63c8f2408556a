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


def install_requirements(
    uv: str, venv_python: Path, build: Path, out: Output, env: Mapping[str, str]
) -> float:
    """Install requirements.txt; returns the seconds it took."""
    started = time.monotonic()
    code = run_relayed(
        install_command(uv, venv_python, "-r", "requirements.txt"), out, env=env, cwd=build
    )
    if code != 0:
        raise BuildError(
            "Could not install the packages in requirements.txt (see uv's output above).",
            ["Check each requirement's name and version on PyPI, and try the same",
             "install locally: uv pip install -r requirements.txt"],
        )
    return time.monotonic() - started


def install_mod_wsgi(
    uv: str, venv_python: Path, build: Path, out: Output, env: Mapping[str, str]
) -> float:
    """Install mod_wsgi, which serves the app with the venv's own Python.

    The pinned version never changes, so uv's cache is tried offline first: that reuses the
    wheel built earlier even when the index's responses cannot be revalidated (a proxy that
    strips ETags makes uv treat the sdist as new and compile it again, ~15 s).
    """
    started = time.monotonic()
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
