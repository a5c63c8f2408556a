"""Which versions Opus fetches, where from, and what a failed fetch tells the operator:
all pure."""

from __future__ import annotations

import re
from collections.abc import Sequence

from opus_paas import names
from opus_paas.errors import UsageError

# The minor versions Opus fetches on demand (the buildpack's messages say the same).
FETCHED_MINORS = range(10, 15)
ON_HOST = ("or install one on the host (apt-get install python3.X-dev python3.X-venv, a "
           "pyenv version under /opt/pyenv, or its path in OPUS_PYTHONS)")


def fetchable(version: str) -> bool:
    """Whether Opus fetches `version` (3.X or 3.X.Y)."""
    match = names.PYTHON_VERSION.fullmatch(version)
    return match is not None and int(match.group(1)) in FETCHED_MINORS


def check_version(version: str) -> str:
    """`version` as an operator gave it, if Opus fetches it."""
    if not fetchable(version):
        shown = version if len(version) <= 20 and version.isprintable() else repr(version[:20])
        raise UsageError(f"Python {shown} is not a version Opus fetches; give 3.10 to 3.14 "
                         "(e.g. 3.13, or 3.13.1 exactly)")
    return version


def version_of(install_name: str) -> str:
    """3.13.0 of cpython-3.13.0-linux-x86_64-gnu."""
    return install_name.split("-")[1].partition("+")[0]


def describe_source(mirror: str, downloads: str) -> str:
    """Where uv fetches from, in the operator's terms."""
    if downloads:
        return f"the download list {downloads}" + (f" (through the mirror {mirror})"
                                                   if mirror else "")
    if mirror:
        return f"the mirror {mirror}"
    return "python-build-standalone's releases (uv's default source)"


def relocate(text: str, staged: str, installed: str) -> str:
    """uv writes an installation's own path into its sysconfig data (where compilers
    find its headers and libpython): the staged path becomes the installed one."""
    return text.replace(staged, installed)


HASH = re.compile(r"Expected:\s*([0-9a-fA-F]{64})\s*Computed:\s*([0-9a-fA-F]{64})", re.S)
UNREACHABLE = ("error sending request", "tcp connect error", "dns error", "Connection refused",
               "timed out", "HTTP status", "Failed to fetch", "Failed to download",
               "failed to open file", "No such file or directory", "certificate")


def failure(version: str, source: str, lines: Sequence[str]) -> str:
    """What the operator is told when uv could not provide `version` from `source`."""
    text = "\n".join(lines)
    causes = [line.strip().removeprefix("cause:").removeprefix("error:").strip()
              for line in lines if line.strip().startswith(("cause:", "error:"))]
    reason = causes[-1] if causes else (lines[-1].strip() if lines else "no output")
    if "Hash mismatch" in text:
        found = HASH.search(text)
        sums = f" (expected {found.group(1)[:16]}…, got {found.group(2)[:16]}…)" if found else ""
        return (f"Python {version} from {source} does not match its sha256{sums}; nothing "
                "was installed. The operator: check the file on the mirror against the "
                "checksum its list gives (or refresh the mirror), then push again.")
    if "No download found" in text:
        return (f"{source} has no build of Python {version} for this host. The operator: add "
                f"one there, or set python_downloads/python_mirror to a source that has it, "
                f"{ON_HOST}; or ask for a version it has.")
    if any(marker in text for marker in UNREACHABLE):
        return (f"Python {version} could not be downloaded from {source}: {reason}. The "
                "operator: make sure this host reaches it, or set python_mirror (or "
                "python_downloads) to a source it reaches (a local mirror on an air-gapped "
                f"host), {ON_HOST}; then push again (or `opus pythons:install {version}`).")
    return (f"Python {version} could not be fetched from {source}: {reason}. The operator: "
            f"see uv's output above (`opus pythons:install {version}` shows it too), "
            f"{ON_HOST}.")
