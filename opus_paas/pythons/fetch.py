"""Fetching an interpreter: `uv python install` into Opus's staging directory (uv downloads
a python-build-standalone build and checks its sha256: against its own list, or against
the operator's download list), then Opus points the build's sysconfig data at where it
will live, checks that it runs, and has secureops copy it into place (root's,
world-readable, in system mode).

Why uv: it knows every python-build-standalone release and its checksum, honours the
documented mirror settings, and patches each build's sysconfig data so that C extensions
(mod_wsgi first) compile against it. Its installation names its own path in that data,
so it is made in staging and relocated there (one file) before it is copied.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from opus_paas import names, output, privileged
from opus_paas.errors import BuildFailed, ServiceError
from opus_paas.output import Emit
from opus_paas.pythons import process, versions
from opus_paas.settings import Settings

SHOWN_ON_FAILURE = 12


def uv_binary(settings: Settings) -> Path:
    """uv as `opus up` copied it into OPUS_HOME/tools."""
    uv = settings.tools_dir / "bin" / "uv"
    if not uv.is_file():
        raise ServiceError(f"{uv} is missing; run `opus up` (it installs Opus's tools)")
    return uv


def uv_environment(settings: Settings, home: Path) -> dict[str, str]:
    """A clean environment for uv run by Opus: the host's network set-up, nothing else."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "UV_NO_PROGRESS": "1", "UV_SYSTEM_CERTS": "1", "UV_NATIVE_TLS": "1",
            **dict(settings.network_env)}


def python_sources(settings: Settings, staging: Path, version: str) -> list[str]:
    """uv's options for where to fetch from: the operator's mirror (uv checks what it
    downloads there against its own checksums) and download list. The list is read here
    first, and uv gets that very copy: every CPython build it names must carry a sha256,
    or nothing is fetched from it (uv would install an entry without one unchecked)."""
    options = []
    if settings.python_mirror:
        options += ["--mirror", settings.python_mirror]
    if settings.python_downloads:
        checked = staging / "downloads.json"
        checked.write_bytes(_checked_list(settings.python_downloads, version))
        options += ["--python-downloads-json-url", str(checked)]
    return options


MAX_LIST = 16 << 20
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _checked_list(location: str, version: str) -> bytes:
    where = f"the download list {location}"
    url = location if "://" in location else Path(location).as_uri()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:   # noqa: S310
            data: bytes = response.read(MAX_LIST + 1)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BuildFailed(versions.failure(version, where, [f"error: Failed to fetch: {reason}"]))\
            from None
    try:
        entries = json.loads(data) if len(data) <= MAX_LIST else None
    except ValueError:
        entries = None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise BuildFailed(f"{where} is not a JSON object of downloads in uv's format (at most "
                          f"{MAX_LIST >> 20} MiB); the operator fixes it or unsets "
                          "python_downloads")
    unchecked = sorted(key for key, entry in entries.items() if entry.get("name") == "cpython"
                       and not SHA256.fullmatch(str(entry.get("sha256") or "")))
    if unchecked:
        raise BuildFailed(f"{where} gives no sha256 for {', '.join(unchecked[:3])}: Opus "
                          "installs no interpreter it cannot verify. The operator adds each "
                          "build's sha256 to the list.")
    return data


def fresh_dir(path: Path) -> Path:
    """`path`, emptied (0700, Opus's own), its parents made."""
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    path.mkdir(mode=0o700)
    return path


def source(settings: Settings) -> str:
    return versions.describe_source(settings.python_mirror, settings.python_downloads)


def resolve(settings: Settings, version: str) -> str | None:
    """The installation uv would fetch for `version` (its name), or None if its list has
    none (the fetch then says why)."""
    staging = fresh_dir(settings.staging_dir / "resolve")
    try:
        done = subprocess.run(
            [str(uv_binary(settings)), "python", "list", "--only-downloads", "--no-cache",
             "--output-format", "json", *python_sources(settings, staging, version), version],
            env=uv_environment(settings, staging), cwd=staging, capture_output=True,
            text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, BuildFailed):
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        found = json.loads(done.stdout) if done.returncode == 0 else []
    except ValueError:
        return None
    keys = [item.get("key") for item in found if isinstance(item, dict)
            and item.get("implementation") == "cpython" and item.get("variant") == "default"]
    return next((k for k in keys if isinstance(k, str) and names.PYTHON_INSTALL.fullmatch(k)),
                None)


def fetch(settings: Settings, version: str, emit: Emit,
          cancelled: threading.Event | None = None) -> str:
    """Fetch CPython `version` (3.X: the newest the source has; 3.X.Y: exactly), install
    it where builds find it, and return its name. BuildFailed says what went wrong and
    what the operator can do; nothing is installed then."""
    started = time.monotonic()
    staging = fresh_dir(settings.staging_dir / "pythons")
    where = source(settings)
    emit(output.detail(f"Downloading it from {where}"))
    try:
        sources = python_sources(settings, staging, version)
    except BuildFailed:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Bytecode for the standard library now: no app's user may write it later.
    argv = [str(uv_binary(settings)), "python", "install", "--install-dir", str(staging),
            "--no-bin", "--no-cache", "--compile-bytecode", *sources, version]
    try:
        code, lines = process.run(argv, env=uv_environment(settings, staging), cwd=staging,
                                  timeout=settings.build_timeout, cancelled=cancelled)
    except ServiceError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildFailed(f"fetching Python {version} was stopped: {exc.message}") from None
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        for line in [line for line in lines if line.strip()][-SHOWN_ON_FAILURE:]:
            emit(output.detail(line))
        raise BuildFailed(versions.failure(version, where, lines))
    try:
        name = _staged_name(staging)
        _relocate(staging / name, settings.managed_pythons_dir / name)
        _check_runs(staging / name, versions.version_of(name))
        privileged.install_python(settings, name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    emit(output.detail(f"Checked its sha256 and installed {name} in "
                     f"{time.monotonic() - started:.1f} s"))
    return name


def _staged_name(staging: Path) -> str:
    """The one installation uv made (beside it: its lock, a link for the minor version)."""
    made = [p.name for p in staging.iterdir() if p.is_dir() and not p.is_symlink()
            and names.PYTHON_INSTALL.fullmatch(p.name)]
    if len(made) != 1:
        raise BuildFailed(f"uv left {len(made)} installations instead of one in staging; "
                          "run the fetch again (`opus pythons:install VERSION`)")
    return made[0]


def _relocate(staged: Path, installed: Path) -> None:
    """Name `installed` where uv named `staged`, and compile what changed again."""
    for data in staged.glob("lib/python3*/_sysconfigdata_*.py"):
        if data.is_file() and not data.is_symlink():
            data.write_text(versions.relocate(data.read_text(), str(staged), str(installed)))
            for stale in data.parent.glob(f"__pycache__/{data.stem}.*.pyc"):
                stale.unlink()
            subprocess.run([str(staged / "bin" / "python3"), "-I", "-m", "py_compile",
                            str(data)], capture_output=True, timeout=60, check=False,
                           env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                           stdin=subprocess.DEVNULL)


def _check_runs(staged: Path, version: str) -> None:
    python = staged / "bin" / "python3"
    try:
        done = subprocess.run([str(python), "-I", "-c",
                               "import sys, sysconfig; print(*sys.version_info[:3], sep='.')"],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildFailed(f"the fetched Python {version} does not run here ({exc}); "
                          "nothing was installed") from None
    if done.returncode != 0 or done.stdout.strip() != version:
        raise BuildFailed(f"the fetched Python {version} does not run here "
                          f"({(done.stderr or done.stdout).strip()[-200:]}); nothing was "
                          "installed")
