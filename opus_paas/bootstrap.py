"""Set up a checkout and run it: the README's two commands.

    python3 -m opus_paas.bootstrap up      install what is missing, then `opus up`
    python3 -m opus_paas.bootstrap test    install what is missing, then run every test
    python3 -m opus_paas.bootstrap system [--home DIR] [--user NAME] [--set KEY=VALUE]…
                                           (root) `opus install --system`, `opus up --system`

Stdlib only: it runs before anything is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
VENV = CHECKOUT / ".venv"

# Debian packages: Apache and its headers (mod_wsgi builds against them; mod_ssl and
# mod_http2 come with it), git and the ssh client, a system Python with headers and venv
# for the apps' virtualenvs, and openssl (secureops makes the front's fallback
# certificate with it). System mode also needs sudo and nftables (SYSTEM_PACKAGES).
APT_PACKAGES = [
    "apache2", "apache2-dev", "apache2-utils", "git", "openssh-client",
    "python3", "python3-dev", "python3-venv", "build-essential", "curl", "openssl",
]
# The opus user reaches secureops through sudo; nftables keeps each app's loopback ports
# to the app's own user.
SYSTEM_PACKAGES = ["sudo", "nftables"]
# Load for the zero-downtime tests; a headless browser (and a font) for the dashboard's;
# sudo for system mode's (the opus user reaches secureops through it); patchelf for the
# local Python mirror the interpreter tests package (tests/python_mirror.py); for the
# HTTPS tests Let's Encrypt's test CA (pebble), NSS's certutil (Chromium's trust store)
# and h2load (HTTP/2 load); PostgreSQL for the databases' (the operator installs it with
# POSTGRES_PACKAGES when enabling it).
POSTGRES_PACKAGES = ["postgresql", "postgresql-client"]
# Redis for the Redis add-on's tests (the operator installs it when enabling it).
REDIS_PACKAGES = ["redis-server"]
# Docker Swarm from Debian's docker.io for the scale-out tests (tests/swarm_nodes.py runs
# three dockerd nodes in namespaces of their own; iproute2's ip and util-linux's unshare
# and nsenter build them) and a static busybox for their registry-free image (it
# replaces and provides Debian's dynamic busybox); the private registry release images
# are pushed to (docker-registry, run as the program opus-registry).
SWARM_PACKAGES = ["docker.io", "busybox-static", "iproute2", "openssh-server",
                  "docker-registry"]
APT_TEST_PACKAGES: list[str] = ["wrk", "chromium", "chromium-driver", "fonts-dejavu-core",
                                "sudo", "patchelf", "pebble", "libnss3-tools",
                                "nghttp2-client", "nftables", *POSTGRES_PACKAGES,
                                *REDIS_PACKAGES, *SWARM_PACKAGES]


def _missing_apt(packages: list[str]) -> list[str]:
    missing = []
    for package in packages:
        result = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", package],
                                capture_output=True, text=True, check=False)
        if "install ok installed" not in result.stdout:
            missing.append(package)
    return missing


def install_system_packages(packages: list[str]) -> None:
    if not shutil.which("dpkg-query"):
        print("bootstrap: not a Debian system; install Apache 2.4 with its dev headers, git, "
              "openssh-client and python3-dev yourself", file=sys.stderr)
        return
    missing = _missing_apt(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"bootstrap: missing Debian packages: {' '.join(missing)}\n"
                 f"  install them with: sudo apt-get install -y {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"-----> Installing {' '.join(missing)}", flush=True)
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                   check=True, env=env)


def install_python_packages(extras: str) -> Path:
    """A virtualenv in the checkout with Opus installed (editable); its python."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"-----> Creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    spec = f"{CHECKOUT}[{extras}]" if extras else str(CHECKOUT)
    print("-----> Installing Opus and its Python dependencies", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-e", spec], check=True)
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "test", "system"):
        print(__doc__)
        return 2
    if argv[0] == "up":
        install_system_packages(APT_PACKAGES)
        python = install_python_packages("")
        return subprocess.run([str(python), "-m", "opus_paas", "up"], check=False).returncode
    if argv[0] == "system":
        install_system_packages([*APT_PACKAGES, *SYSTEM_PACKAGES])
        python = install_python_packages("")
        opus = [str(python), "-m", "opus_paas"]
        installed = subprocess.run([*opus, "install", "--system", *argv[1:]], check=False)
        if installed.returncode != 0:
            return installed.returncode
        home = dict(zip(argv[1::2], argv[2::2], strict=False)).get("--home")
        env = {**os.environ, **({"OPUS_HOME": home} if home else {})}
        return subprocess.run([*opus, "up", "--system"], check=False, env=env).returncode
    install_system_packages(APT_PACKAGES + APT_TEST_PACKAGES)
    python = install_python_packages("test")
    return subprocess.run([str(python), "-m", "pytest", *argv[1:]], cwd=CHECKOUT,
                          check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
