"""A system-mode Opus for the tests and the benchmarks: `opus install --system` with the
fixed system paths, unique user names and loopback ports, then `opus up --system`;
`remove` undoes it all (uninstall --purge, then whatever a failed step left).

It refuses to install where Opus is installed already: it would overwrite it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from opus_paas.settings import NETWORK_VARS
from tests.conftest import CHECKOUT, free_port, free_port_block

SYSTEM_PATHS = [Path("/etc/opus"), Path("/usr/local/lib/opus"),
                Path("/usr/local/sbin/opus-secureops"), Path("/etc/sudoers.d/opus")]
LEFTOVERS = [*SYSTEM_PATHS, Path("/var/log/opus"), Path("/etc/systemd/system/opus.service")]


class SystemOpus:
    """An Opus installed in system mode: its home, its user, its ports."""

    def __init__(self, base: Path, user: str, ssh_port: int, http_port: int) -> None:
        self.base, self.home, self.user = base, base / "home", user
        self.ssh_port, self.http_port = ssh_port, http_port
        self.installed_at = time.time()
        # The host's network set-up (proxies, CA file) reaches the builds, as it would
        # from the operator's shell; nothing else of the caller's environment does.
        network = {k: v for k, v in os.environ.items() if k in NETWORK_VARS}
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                    "OPUS_HOME": str(self.home), "PYTHONPATH": str(CHECKOUT), **network}

    def cli(self, *args: str, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """`opus ARGS` as root on the host (Opus runs it as its own user)."""
        result = subprocess.run([sys.executable, "-m", "opus_paas", *args], env=self.env,
                                input=input, capture_output=True, text=True, timeout=900,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"opus {' '.join(args)} failed:\n{result.stdout}"
                                 f"{result.stderr}")
        return result

    def get(self, app: str, path: str = "/") -> tuple[int, str]:
        """GET through the front with the app's Host."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         headers={"Host": f"{app}.localhost"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def remove(self) -> None:
        """Uninstall (purging everything), then remove whatever a failed step left."""
        if any(p.exists() for p in SYSTEM_PATHS):
            self.cli("uninstall", "--system", "--purge", check=False)
        for path in [*LEFTOVERS, self.base]:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        subprocess.run(["nft", "delete", "table", "inet", "opus"], capture_output=True,
                       check=False)
        apps = [e.pw_name for e in pwd.getpwall()
                if Path(e.pw_dir).parent == self.home / "apps"]
        for name in (*apps, self.user, f"{self.user}-front"):
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
            subprocess.run(["userdel", name], capture_output=True, check=False)
            subprocess.run(["groupdel", name], capture_output=True, check=False)


def already_installed() -> Path | None:
    """A system path of an Opus installed here, if any."""
    return next((p for p in LEFTOVERS if p.exists()), None)


def install(**settings: str) -> SystemOpus:
    """Install and start a system-mode Opus (the caller must `remove` it, even when this
    raises: it removes what it made first)."""
    suffix = secrets.token_hex(3)
    base = Path(f"/tmp/opus-system-{suffix}")
    base.mkdir()
    base.chmod(0o755)
    opus = SystemOpus(base, f"ot{suffix}", free_port(),
                      int(settings.pop("http_port", "") or free_port()))
    ports = free_port_block(60)      # the apps' ports (two each), then their Redis ports
    chosen = {"http_host": "127.0.0.1", "http_port": str(opus.http_port),
              "ssh_host": "127.0.0.1", "ssh_port": str(opus.ssh_port),
              "dashboard_port": str(free_port()), "app_port_base": str(ports),
              "redis_port_base": str(ports + 40), "waker_port": str(free_port()),
              "autosleep_min_seconds": "2", "autosleep_check_seconds": "1",
              **settings}
    sets = [a for k, v in chosen.items() for a in ("--set", f"{k}={v}")]
    try:
        opus.cli("install", "--system", "--home", str(opus.home), "--user", opus.user, *sets)
        opus.cli("up", "--system")
    except BaseException:
        opus.remove()
        raise
    return opus
