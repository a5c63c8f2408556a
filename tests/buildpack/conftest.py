"""Running the Python buildpack's bin/ scripts as Opus does: a clean environment, the app's
own CACHE and the shared package cache (persistent, so mod_wsgi compiles once)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

BUILDPACK = Path(__file__).resolve().parents[2] / "buildpacks" / "python"
sys.path.insert(0, str(BUILDPACK / "lib"))
sys.path.insert(0, str(BUILDPACK / "lib" / "runtime"))
SYSTEM_PYTHON = "/usr/bin/python3.11"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def find_uv() -> str:
    # Prefer the real binary beside this interpreter over a version-manager shim.
    beside = Path(sysconfig.get_path("scripts")) / "uv"
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if found is None:
        message = "uv is not installed: pip install uv"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def build_env() -> dict[str, str]:
    """The clean environment the platform gives a build."""
    uv_dir = str(Path(find_uv()).parent)
    return {
        "PATH": f"{uv_dir}:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "LANG": "C.UTF-8",
        "OPUS_PYTHON": SYSTEM_PYTHON,
    }


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    # Not the running Opus's cache: these builds run as the test user (root in CI), and
    # what they leave there would not be writable by Opus's run user.
    return Path(os.environ.get("OPUS_TEST_CACHE") or Path.home() / ".cache" / "opus-test")


def run_bin(name: str, *args: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BUILDPACK / "bin" / name), *map(str, args)],
        env=env, capture_output=True, text=True, check=False, timeout=600,
    )


def run_compile(
    build: Path, cache: Path, env: dict[str, str], config: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Compile as Opus does: the app's own CACHE (its environments), the shared package
    cache (`cache`) passed as OPUS_PACKAGE_CACHE."""
    env_dir = build.parent / f"{build.name}-env"
    env_dir.mkdir(exist_ok=True)
    for name, value in (config or {}).items():
        (env_dir / name).write_text(value)
    app_cache = build.parent / f"{build.name}-cache"
    return run_bin("compile", build, app_cache, env_dir,
                   env={**env, "OPUS_PACKAGE_CACHE": str(cache)})
