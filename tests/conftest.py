"""Shared fixtures: one running Opus per test session, real git over real SSH.

End-to-end tests share the session's Opus and one persistent package cache;
every server a test starts is stopped by its fixture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
MAX_PACK_BYTES = 4 << 20
MAX_OBJECT_BYTES = 2 << 20
CONNECTIONS_PER_USER = 6
KEYS_PER_USER = 8
LOGIN_TIMEOUT = 5
BUILD_LOG_LIMIT = 256 << 10    # far above a test app's build log, below a flooding one's


def require_tool(name: str) -> str:
    """The tool's path; a missing tool fails the test under CI and skips it elsewhere."""
    path = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK)
                                  else None)
    if path is None:
        message = f"{name} is not installed; `python3 -m opus_paas.bootstrap test` installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_root(why: str) -> None:
    """Fails the test under CI (which runs as root) and skips it elsewhere unless root."""
    if os.geteuid() != 0:
        message = f"{why} (CI runs as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(size: int) -> int:
    """The start of `size` consecutive free loopback ports below the kernel's ephemeral
    range: app instances bind them long after they are chosen, and a port in the
    ephemeral range may meanwhile be taken by any outgoing connection (wrk's, the
    front's, git's)."""
    low, high = 20000, _ephemeral_start() - size
    for _ in range(50):
        start = random.randrange(low, high)
        if all(_port_free(p) for p in range(start, start + size)):
            return start
    raise RuntimeError("no block of free ports")


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def shared_cache_dir() -> Path:
    """One package cache for every test session (uv's wheels; mod_wsgi builds once)."""
    base = Path(os.environ.get("OPUS_TEST_CACHE") or
                ("/var/cache/opus-test" if os.geteuid() == 0 else
                 Path.home() / ".cache" / "opus-test"))
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        base.chmod(0o755)
    return base


@dataclasses.dataclass
class Opus:
    """A running Opus: its home, ports and environment."""

    home: Path
    ssh_port: int
    http_port: int
    env: dict[str, str]

    def cli(self, *args: str, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "opus_paas", *args], env=self.env, input=input,
            capture_output=True, text=True, timeout=300, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"opus {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def get(self, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
        """GET through the front with a Host header (the resolver here lacks *.localhost)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return (response.status, dict(response.headers),
                        response.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode("utf-8", "replace")

    def app_host(self, app: str) -> str:
        return f"{app}.localhost"


def opus_processes(home: Path) -> list[str]:
    """Command lines of live processes that belong to the Opus rooted at `home`."""
    found = []
    marker = str(home).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes() if marker not in cmdline else b""
        except OSError:
            continue
        zombie = (entry / "stat").read_text().split()[2] == "Z"
        if (marker in cmdline or marker in environ) and not zombie:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def wsgi_daemons(port: int) -> int:
    """The OS's view: mod_wsgi daemon processes serving the instance on `port` (they
    name themselves `(wsgi:HOST:PORT:UID)`)."""
    prefix = f"(wsgi:127.0.0.1:{port}:".encode()
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes().startswith(prefix):
                    count += 1
    return count


def start_opus(*, under: Path | None = None, **extra_env: str) -> Opus:
    """A new Opus with a home of its own (in `under`, default /tmp) and these OPUS_*
    settings on top of the tests' own."""
    for tool in ("git", "ssh", "ssh-keygen", "/usr/sbin/apache2", "apxs"):
        require_tool(tool)
    home = Path(tempfile.mkdtemp(prefix="opus-test-", dir=under or "/tmp"))
    home.chmod(0o755)   # the run user and the front's children traverse it
    ssh_port = free_port()
    http_port = int(extra_env.get("OPUS_HTTP_PORT") or free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPUS_")}
    ports = free_port_block(600)    # one block: the apps' ports and their Redis ports apart
    env.update({
        "OPUS_HOME": str(home),
        "OPUS_SSH_PORT": str(ssh_port),
        "OPUS_HTTP_PORT": str(http_port),
        "OPUS_DASHBOARD_PORT": str(free_port()),
        "OPUS_APP_PORT_BASE": str(ports),          # two per app, 200 apps
        "OPUS_REDIS_PORT_BASE": str(ports + 400),  # then one per app's Redis
        # Small, so the Redis tests reach it quickly (the default is 64mb).
        "OPUS_REDIS_MAXMEMORY": "8mb",
        "OPUS_WAKER_PORT": str(free_port()),
        # Sleeping apps fall asleep after 2 s idle, checked every second.
        "OPUS_AUTOSLEEP_MIN_SECONDS": "2",
        "OPUS_AUTOSLEEP_CHECK_SECONDS": "1",
        # The dashboard samples memory every 2 s (30 by default): a chart test waits for
        # the next sample after its app starts.
        "OPUS_MEMORY_SAMPLE_SECONDS": "2",
        "OPUS_CACHE_DIR": str(shared_cache_dir()),
        # mod_wsgi's wheels, built once per interpreter (path) for every test Opus.
        "OPUS_WHEELS_DIR": str(shared_cache_dir() / "wheels"),
        # Short, so the failing-health-check scenario stays quick; instances here are
        # ready in about 0.5 s.
        "OPUS_HEALTH_TIMEOUT": "8",
        # Short limits, so the stalled-client, over-limit and busy-app scenarios are quick.
        "OPUS_SSH_READ_TIMEOUT": "6",
        "OPUS_SSH_IDLE_TIMEOUT": "6",
        "OPUS_DEPLOY_WAIT_TIMEOUT": "8",
        "OPUS_MAX_PACK_BYTES": str(MAX_PACK_BYTES),
        "OPUS_MAX_OBJECT_BYTES": str(MAX_OBJECT_BYTES),
        "OPUS_SSH_CONNECTIONS_PER_USER": str(CONNECTIONS_PER_USER),
        "OPUS_SSH_KEYS_PER_USER": str(KEYS_PER_USER),
        "OPUS_SSH_LOGIN_TIMEOUT": str(LOGIN_TIMEOUT),
        "OPUS_BUILD_LOG_LIMIT": str(BUILD_LOG_LIMIT),
        # No certificates are ordered but by the HTTPS tests, from their own pebble.
        "OPUS_ACME_DIRECTORY": "off",
        "OPUS_HTTPS_PORT": str(free_port()),
        "PYTHONPATH": str(CHECKOUT),
        # Set in the operator's shell; no app process may see it.
        "OPERATOR_ONLY_SECRET": "operator-secret-marker",
    })
    env.update(extra_env)
    opus = Opus(home, ssh_port, http_port, env)
    opus.cli("up")
    return opus


def stop_opus(opus: Opus, *, remove_in_background: bool = False) -> None:
    """`opus down`, which must leave no process of this Opus; then its home goes.
    `remove_in_background`: for the session's Opus, whose home holds every app of the
    session (removing it took 11 s of 21 s after seven modules here, more after the
    suite): a detached `rm -rf` removes it while pytest ends, as nothing runs after it."""
    opus.cli("down")
    deadline = time.monotonic() + 20
    while opus_processes(opus.home) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = opus_processes(opus.home)
    if remove_in_background and shutil.which("setsid"):
        subprocess.run(["setsid", "--fork", "rm", "-rf", "--", str(opus.home)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True, timeout=10)
    else:
        shutil.rmtree(opus.home, ignore_errors=True)
    assert not left, f"processes left after `opus down`: {left}"


@pytest.fixture(scope="session")
def opus() -> Iterator[Opus]:
    """The session's one running Opus; `opus down` at the end must leave nothing. The
    interpreters it fetches (tests/test_real_apps.py's 3.13) are kept in the tests' cache:
    at the same path each session, their mod_wsgi wheel is built once, not per session."""
    running = start_opus(OPUS_PYTHONS_DIR=str(shared_cache_dir() / "pythons"))
    try:
        yield running
    finally:
        stop_opus(running, remove_in_background=True)


@dataclasses.dataclass
class SshKey:
    private: Path
    public: Path

    def git_env(self, opus: Opus) -> dict[str, str]:
        env = dict(os.environ)
        env["GIT_SSH_COMMAND"] = (
            f"ssh -i {self.private} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"
        )
        env.update({"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
                    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com"})
        return env


def make_key(directory: Path, name: str) -> SshKey:
    private = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name,
                    "-f", str(private)], check=True)
    return SshKey(private, private.with_suffix(".pub"))


@pytest.fixture(scope="session")
def admin_key(opus: Opus, tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    key = make_key(tmp_path_factory.mktemp("keys"), "admin")
    opus.cli("keys:add", "admin", str(key.public))
    return key


def git(repo: Path, *args: str, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def commit_all(project: Path, message: str) -> None:
    """Commit everything in the work tree, as a developer would."""
    git(project, "add", "-A")
    git(project, "-c", "user.name=Test", "-c", "user.email=test@example.com",
        "commit", "-q", "-m", message)


def push_main(project: Path, opus: Opus, key: SshKey) -> str:
    """`git push opus main`, which must succeed; its whole output. Returns once the deploy
    is done (the push itself returns once traffic has switched)."""
    result = git(project, "push", "opus", "main", env=key.git_env(opus), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    url = git(project, "remote", "get-url", "opus").stdout.strip()
    wait_for_deploy(opus.home, url.rstrip("/").rsplit("/", 1)[1].removesuffix(".git"))
    return result.stdout + result.stderr


def wait_for_deploy(home: Path, app: str, seconds: float = 60) -> None:
    """Wait until no deploy of `app` runs: the old instance of a push is drained and
    stopped after the push returns, under the app's lock (locks/<app>.lock)."""
    lock = home / "locks" / f"{app}.lock"
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                assert time.monotonic() < deadline, f"the deploy of {app} never finished"
                time.sleep(0.05)
    finally:
        os.close(fd)


VIEWS = '''\
from django.http import HttpResponse

from .models import Visit


def index(request):
    Visit.objects.create(path=request.path)
    return HttpResponse("{greeting} (visits: %d)" % Visit.objects.count())
'''


def make_django_project(directory: Path, greeting: str = "Hello from Opus") -> Path:
    """A project made by django-admin startproject + startapp, with a view, a model and a
    static file, committed on main."""
    directory.mkdir(parents=True)
    django = [sys.executable, "-m", "django"]
    subprocess.run([*django, "startproject", "mysite", "."], cwd=directory, check=True)
    subprocess.run([sys.executable, "manage.py", "startapp", "pages"], cwd=directory,
                   check=True, env={**os.environ, "DJANGO_SETTINGS_MODULE": "mysite.settings"})
    (directory / "pages" / "models.py").write_text(textwrap.dedent('''\
        from django.db import models


        class Visit(models.Model):
            path = models.CharField(max_length=200)
            at = models.DateTimeField(auto_now_add=True)
        '''))
    (directory / "pages" / "migrations" / "0001_initial.py").write_text(textwrap.dedent('''\
        from django.db import migrations, models


        class Migration(migrations.Migration):
            initial = True
            dependencies = []
            operations = [
                migrations.CreateModel(
                    name="Visit",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                                   serialize=False, verbose_name="ID")),
                        ("path", models.CharField(max_length=200)),
                        ("at", models.DateTimeField(auto_now_add=True)),
                    ],
                ),
            ]
        '''))
    (directory / "pages" / "views.py").write_text(VIEWS.replace("{greeting}", greeting))
    static = directory / "pages" / "static" / "pages"
    static.mkdir(parents=True)
    (static / "site.css").write_text("body { color: rebeccapurple; }\n")
    settings = directory / "mysite" / "settings.py"
    settings.write_text(settings.read_text().replace(
        "INSTALLED_APPS = [", "INSTALLED_APPS = [\n    'pages',"))
    urls = directory / "mysite" / "urls.py"
    urls.write_text(urls.read_text().replace(
        "from django.urls import path",
        "from django.urls import path\n\nfrom pages.views import index",
    ).replace("urlpatterns = [", "urlpatterns = [\n    path('', index),"))
    (directory / "requirements.txt").write_text("django>=5.2,<5.3\n")
    git(directory, "init", "-q", "-b", "main")
    commit_all(directory, "startproject")
    return directory


def set_greeting(project: Path, greeting: str) -> None:
    (project / "pages" / "views.py").write_text(VIEWS.replace("{greeting}", greeting))
    commit_all(project, f"say {greeting}")
