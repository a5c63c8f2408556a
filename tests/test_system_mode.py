"""System mode end to end: `opus install --system` as root, `opus up --system`, two apps
pushed over SSH, each built and served as its own Unix user; from inside one app
nothing of the other's (source, data, env, logs, SQLite, processes) or of Opus's own
state is reachable; the opus user reaches root only through secureops, which refuses
what it must; `opus apps:destroy` removes an app's user; `opus uninstall --system
--purge` leaves nothing behind. Both apps ask for Python 3.13, which the host lacks: the
first push fetches it (from a local mirror) and builds mod_wsgi for it, once, root-owned
where both apps' users run it and neither can change it.

The installation uses the fixed system paths (/etc/opus, /var/log/opus,
/usr/local/lib/opus, /usr/local/sbin/opus-secureops, /etc/sudoers.d/opus), so it
refuses to run where Opus is already installed; its users have unique names and are
removed afterwards. Slow (two cold builds: each app has its own package cache), so it
runs once, in this one module.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opus_paas.control import system
from opus_paas.errors import UsageError
from opus_paas.run import health
from opus_paas.store import Store
from tests import pebble as pebble_module
from tests import python_mirror
from tests import system_opus as system_opus_module
from tests.conftest import (
    SshKey,
    commit_all,
    free_port,
    git,
    make_django_project,
    make_key,
    push_main,
    require_root,
    require_tool,
    set_greeting,
)
from tests.system_opus import SystemOpus
from tests.test_sshd import on_a_terminal, ssh_t


def as_user(user: str, *argv: str, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run `argv` as `user` with its own groups only, as supervisor runs its programs."""
    entry = pwd.getpwnam(user)
    return subprocess.run(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                           "--init-groups", *argv], input=input, capture_output=True,
                          text=True, timeout=120, check=False, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def test_roots_secret_words_reach_the_opus_user_in_its_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Root's command re-run as the opus user: words that may be secret (pg:psql -c SQL,
    config values) travel in the environment, which only the process's owner reads, not
    in its arguments, which every local user reads; hostile hand-overs are refused."""
    words = ["pg:psql", "shop", "-c", "SELECT 'secret'"]
    monkeypatch.setenv(system.ARGV_VARIABLE, json.dumps(words))
    assert system.handed_over_argv([system.ARGV_FROM_ENVIRONMENT]) == words
    assert system.ARGV_VARIABLE not in os.environ       # taken out: no child inherits it
    assert system.handed_over_argv(["apps"]) == ["apps"]
    for hostile in ('{"a": 1}', '["ok", 3]', '"pg:psql"', '["unclosed'):
        monkeypatch.setenv(system.ARGV_VARIABLE, hostile)
        with pytest.raises(UsageError):
            system.handed_over_argv([system.ARGV_FROM_ENVIRONMENT])


def test_install_refuses_a_home_holding_an_embedded_opus(tmp_path: Path) -> None:
    """The README's first command, run as root, makes an embedded Opus in /var/lib/opus;
    system mode refuses to install over it, before changing anything, and says the two
    ways forward."""
    home = tmp_path / "opus"
    store = Store(home / "opus.db")
    store.init()
    owner = store.add_key("root", "SHA256:x", "ssh-ed25519 AAAA", "root")
    store.create_app("blog", owner, {})
    chosen = system.plan(home, f"opus{secrets.token_hex(3)}", [])
    with pytest.raises(UsageError) as refused:
        system.refuse_foreign_home(chosen)
    message = refused.value.message
    assert f"{home} holds an embedded Opus (1 app" in message and "nothing was changed" in message
    assert f"--home {home}-system" in message and f"move {home} aside" in message
    # An empty directory, or none, is a home to install into.
    system.refuse_foreign_home(system.plan(tmp_path / "new", "opus", []))


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[python_mirror.Mirror]:
    with python_mirror.serve(tmp_path_factory.mktemp("mirror")) as served:
        yield served


@pytest.fixture(scope="module")
def pebble() -> Iterator[tuple[pebble_module.Pebble, int, int]]:
    """Let's Encrypt's test CA for this Opus (its files readable by the opus user), with
    the front's http and https ports."""
    http_port, https_port = free_port(), free_port()
    directory = Path(tempfile.mkdtemp(prefix="opus-pebble-", dir="/tmp"))
    running = pebble_module.start(directory, http_port)
    try:
        yield running, http_port, https_port
    finally:
        running.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def system_opus(mirror: python_mirror.Mirror,
                pebble: tuple[pebble_module.Pebble, int, int]) -> Iterator[SystemOpus]:
    require_root("system mode installs as root")
    for tool in ("sudo", "visudo", "setpriv", "runuser", "/usr/sbin/apache2", "git", "ssh"):
        require_tool(tool)
    present = system_opus_module.already_installed()
    if present is not None:
        pytest.fail(f"Opus is installed on this machine already ({present}); the system "
                    "mode test installs its own and would overwrite it")
    ca, http_port, https_port = pebble
    opus = system_opus_module.install(health_timeout="30", python_downloads=mirror.downloads,
                                      http_port=str(http_port), https_port=str(https_port),
                                      acme_directory=ca.directory,
                                      acme_ca_bundle=str(ca.listener_ca))
    try:
        yield opus
    finally:
        opus.remove()


@pytest.fixture(scope="module")
def key(system_opus: SystemOpus, tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    made = make_key(tmp_path_factory.mktemp("system-keys"), "dev")
    system_opus.cli("keys:add", "dev", "-", input=made.public.read_text())
    return made


@pytest.fixture(scope="module")
def first_pushes() -> dict[str, str]:
    """Each app's first push: its output (filled in by two_apps)."""
    return {}


@pytest.fixture(scope="module")
def two_apps(system_opus: SystemOpus, key: SshKey, first_pushes: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Apps A and B, each asking for Python 3.13 and pushed once (a visit recorded in
    each one's SQLite)."""
    names = (f"a{secrets.token_hex(3)}", f"b{secrets.token_hex(3)}")
    for name in names:
        project = make_django_project(tmp_path_factory.mktemp("system-src") / name,
                                      greeting=f"Hello from {name}")
        (project / ".python-version").write_text("3.13\n")
        commit_all(project, "ask for Python 3.13")
        git(project, "remote", "add", "opus",
            f"ssh://git@127.0.0.1:{system_opus.ssh_port}/{name}.git")
        output = push_main(project, system_opus, key)    # type: ignore[arg-type]
        first_pushes[name] = output
        assert "Released v1" in output, output
        status, body = system_opus.get(name)
        assert status == 200 and f"Hello from {name}" in body, body
    return names


def _pids_of(user: str) -> list[int]:
    """The processes running as `user` now (one that exits while /proc is read is left out)."""
    uid = pwd.getpwnam(user).pw_uid
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
        except FileNotFoundError:
            continue
    return pids


# ---- what install made ------------------------------------------------------------------

def test_install_makes_a_root_owned_helper_and_one_sudoers_rule(
        system_opus: SystemOpus) -> None:
    user = system_opus.user
    for path, mode in ((Path("/usr/local/sbin/opus-secureops"), 0o755),
                       (Path("/etc/opus/secureops.json"), 0o644),
                       (Path("/etc/sudoers.d/opus"), 0o440)):
        info = path.stat()
        assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == mode, path
    for path in Path("/usr/local/lib/opus/secureops").rglob("*"):
        info = path.lstat()
        assert info.st_uid == 0 and not info.st_mode & 0o022, path
    layout = json.loads(Path("/etc/opus/secureops.json").read_text())
    assert layout["home"] == str(system_opus.home) and layout["opus_group"] == user
    # sudo lets the opus user run the helper and nothing else.
    listed = subprocess.run(["sudo", "-l", "-U", user], capture_output=True, text=True,
                            check=True).stdout
    assert "(root) NOPASSWD: /usr/local/sbin/opus-secureops" in listed
    for attempt in (["/bin/sh", "-c", "id"], ["/usr/bin/id"], ["-s"], ["-i"],
                    ["-u", "root", "/usr/bin/python3", "-c", "print(1)"],
                    ["-E", "/usr/local/sbin/opus-secureops", "--config", "/tmp/x", "x"]):
        result = as_user(user, "sudo", "-n", *attempt)
        assert result.returncode != 0 and "uid=0" not in result.stdout, (attempt, result)
    # The opus user owns its home, not root's config or the logs.
    assert system_opus.home.stat().st_uid == pwd.getpwnam(user).pw_uid
    for path in (Path("/etc/opus/supervisor/conf.d"), Path("/etc/opus/front"),
                 Path("/var/log/opus")):
        assert path.stat().st_uid == 0 and not path.stat().st_mode & 0o022, path
    unit = Path("/etc/systemd/system/opus.service").read_text()
    assert f"Environment=OPUS_HOME={system_opus.home}" in unit
    assert "ExecStart=/usr/local/lib/opus/venv/bin/opus up --system" in unit
    # supervisord dead: systemd ends the whole control group and starts Opus again.
    assert "KillMode=control-group" in unit and "Restart=on-failure" in unit
    assert "PIDFile=/etc/opus/supervisor/supervisord.pid" in unit


def test_opus_runs_as_its_user_and_the_front_master_as_root(system_opus: SystemOpus) -> None:
    status = system_opus.cli("status").stdout
    assert "opus-sshd" in status and "RUNNING" in status
    opus_pids = set(_pids_of(system_opus.user))
    commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in opus_pids}
    assert any(b"opus_paas.control.sshd" in c for c in commands.values())
    assert any(b"gunicorn" in c for c in commands.values())
    front_children = _pids_of(f"{system_opus.user}-front")
    assert front_children, "the front's children serve as the front's user"
    for pid in front_children:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert Path(f"/proc/{parent}").stat().st_uid == 0      # the master: root


# ---- apps as their own users --------------------------------------------------------------

def test_each_app_builds_and_serves_as_its_own_user(system_opus: SystemOpus,
                                                    two_apps: tuple[str, str]) -> None:
    for app in two_apps:
        user = f"opus-{app}"
        entry = pwd.getpwnam(user)
        assert entry.pw_dir == str(system_opus.home / "apps" / app)
        assert entry.pw_shell == "/usr/sbin/nologin"
        daemons = [pid for pid in _pids_of(user)
                   if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"(wsgi:")]
        assert daemons, f"no mod_wsgi daemon runs as {user}"
        slug = system_opus.home / "apps" / app / "releases" / "v1"
        info = slug.stat()
        assert info.st_uid == entry.pw_uid and stat.S_IMODE(info.st_mode) == 0o2750
        data = system_opus.home / "apps" / app / "data"
        assert data.stat().st_uid == entry.pw_uid
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert (data / "db.sqlite3").stat().st_uid == entry.pw_uid
        # A one-off process runs as the app's user too.
        ran = system_opus.cli("run", app, "--", "python", "-c",
                              "import os; print('uid', os.getuid())")
        assert f"uid {entry.pw_uid}" in ran.stdout, ran.stdout + ran.stderr


def test_one_app_reaches_nothing_of_another_or_of_opus(system_opus: SystemOpus,
                                                       two_apps: tuple[str, str]) -> None:
    a, b = two_apps
    b_dir = system_opus.home / "apps" / b
    targets = {
        "B's source": b_dir / "releases" / "v1" / "mysite" / "settings.py",
        "B's SQLite": b_dir / "data" / "db.sqlite3",
        "B's config": b_dir / "env" / "v1.json",
        "B's build config": b_dir / "build-env" / "SECRET_KEY",
        "B's log": Path("/var/log/opus") / b / "web.log",
        "the front's access log": Path("/var/log/opus/front/access.log"),
        "Opus's database": system_opus.home / "opus.db",
        "Opus's host key": system_opus.home / "ssh_host_key",
        "the front's config": Path("/etc/opus/front/httpd.conf"),
    }
    for what, path in targets.items():
        assert path.exists(), what
        result = as_user(f"opus-{a}", "cat", str(path))
        assert result.returncode != 0 and "Permission denied" in result.stderr, what
    for listing in (b_dir / "data", b_dir / "releases" / "v1", b_dir / "cache",
                    b_dir / "build-env", Path("/var/log/opus") / b, system_opus.home / "repos"):
        result = as_user(f"opus-{a}", "ls", str(listing))
        assert result.returncode != 0, listing
    for writable in (system_opus.home, system_opus.home / "apps", b_dir, b_dir / "releases",
                     b_dir / "tmp", Path("/etc/opus/supervisor/conf.d"), Path("/var/log/opus")):
        result = as_user(f"opus-{a}", "touch", str(writable / "planted"))
        assert result.returncode != 0, writable
        assert not (writable / "planted").exists()
    # Signalling B's processes is refused.
    b_pids = _pids_of(f"opus-{b}")
    assert b_pids
    result = as_user(f"opus-{a}", "kill", "-0", str(b_pids[0]))
    assert result.returncode != 0 and "not permitted" in result.stderr
    # From inside A's own code (a one-off process): the same.
    probe = ("import os\n"
             f"for p in ({str(b_dir / 'data' / 'db.sqlite3')!r}, "
             f"{str(b_dir / 'env' / 'v1.json')!r}):\n"
             "    try:\n        open(p).read(1); print('READ', p)\n"
             "    except PermissionError:\n        print('denied')\n"
             f"try:\n    os.kill({b_pids[0]}, 0); print('SIGNALLED')\n"
             "except PermissionError:\n    print('denied')\n")
    ran = system_opus.cli("run", a, "--", "python", "-c", probe)
    assert ran.stdout.split().count("denied") == 3, ran.stdout + ran.stderr
    # Connecting to B's instances (both ports: the idle one is refused before B binds
    # it), the dashboard, or supervisor's socket is refused: no request reaches them but
    # through the front, which sets X-Forwarded-Proto itself.
    settings = tomllib.loads((system_opus.home / "opus.toml").read_text())
    b_ports = _app_ports(system_opus, b)
    sockets: list[list[object]] = [
        ["tcp", ["127.0.0.1", port]] for port in (*b_ports, int(settings["dashboard_port"]))]
    sockets.append(["unix", "/etc/opus/supervisor/supervisor.sock"])
    connected = as_user(f"opus-{a}", "/usr/bin/python3", "-I", "-c", SOCKET_PROBE,
                        input=json.dumps(sockets))
    assert json.loads(connected.stdout) == {"checked": len(sockets), "reached": []}, \
        connected
    # B is unharmed.
    assert system_opus.get(b)[0] == 200


def _app_ports(system_opus: SystemOpus, app: str) -> tuple[int, int]:
    """The app's blue and green ports (from its web program's name)."""
    base = int(tomllib.loads((system_opus.home / "opus.toml").read_text())["app_port_base"])
    conf = Path(f"/etc/opus/supervisor/conf.d/app-{app}.conf").read_text()
    live = int(re.search(rf"\[program:{app}-web-v[0-9]+-p([0-9]+)\]", conf).group(1))  # type: ignore[union-attr]
    blue = live if (live - base) % 2 == 0 else live - 1
    return blue, blue + 1


def test_the_front_serves_a_copy_of_static_files_and_reads_no_app_source(
        system_opus: SystemOpus, two_apps: tuple[str, str]) -> None:
    """The app's user owns its release and changes its static files, swaps them for a
    link into the other app's release: the front still serves its own copy. The front's
    user reads no app's sources."""
    a, b = two_apps
    user = f"opus-{a}"
    front_user = f"{system_opus.user}-front"

    def served() -> str:
        status, body = system_opus.get(a, "/static/pages/site.css")
        assert status == 200, body
        return body

    original = served()
    assert "rebeccapurple" in original
    static = system_opus.home / "apps" / a / "current" / ".opus" / "static"
    script = (f"import os, shutil; p = {str(static / 'pages')!r}; "
              "open(os.path.join(p, 'site.css'), 'w').write('changed'); shutil.rmtree(p); "
              f"os.symlink({str(system_opus.home / 'apps' / b / 'current')!r}, p)")
    result = as_user(user, "/usr/bin/python3", "-c", script)
    assert result.returncode == 0, result.stderr
    assert served() == original
    for app in two_apps:
        for source in (system_opus.home / "apps" / app / "current" / "manage.py",
                       system_opus.home / "apps" / app / "releases" / "v1" / "manage.py"):
            read = as_user(front_user, "cat", str(source))
            assert read.returncode != 0 and "Permission denied" in read.stderr, source
    # The copy is root's, the front's group's to read, and no app's user's.
    copy = Path("/etc/opus/front/static") / a / "current"
    info = copy.resolve().stat()
    assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o750
    assert as_user(user, "ls", str(copy)).returncode != 0
    # Opus (a member of the front's group) sees which copy is served: nothing to repair.
    assert "No problems found" in system_opus.cli("doctor").stdout


def test_the_python_both_apps_ask_for_is_fetched_and_built_for_once(
        system_opus: SystemOpus, two_apps: tuple[str, str],
        first_pushes: dict[str, str]) -> None:
    a, b = two_apps
    first, second = first_pushes[a], first_pushes[b]
    assert "-----> Fetching Python 3.13: .python-version asks for it" in first, first
    assert "-----> Building mod_wsgi==6.1.1 for Python 3.13.0" in first, first
    for output in (first, second):
        assert "From the host's wheelhouse (built once for this Python)" in output, output
        assert "compiling it from source" not in output
    assert "Fetching Python" not in second and "Building mod_wsgi" not in second, second
    installed = Path("/usr/local/lib/opus/pythons/cpython-3.13.0-linux-x86_64-gnu")
    assert f"Using Python 3.13.0 ({installed}/bin/python3)" in second, second
    for path in [installed.parent, installed, *installed.rglob("*")]:
        info = path.lstat()
        assert info.st_uid == 0 and info.st_gid == 0, path
        if not stat.S_ISLNK(info.st_mode):
            assert not info.st_mode & (0o022 | stat.S_ISUID | stat.S_ISGID), path
            assert info.st_mode & 0o004, path
    wheels = list(Path("/usr/local/lib/opus/wheels").glob("cp313-*/mod_wsgi-6.1.1-*.whl"))
    assert len(wheels) == 1 and wheels[0].stat().st_uid == 0
    assert stat.S_IMODE(wheels[0].stat().st_mode) == 0o644
    for app in two_apps:
        # Each app's processes run it as the app's own user; neither may change it.
        ran = system_opus.cli("run", app, "--", "python", "-c",
                              "import os, sys; print(sys.version.split()[0], os.getuid(), "
                              "sys.base_prefix)")
        assert ran.stdout.split() == ["3.13.0", str(pwd.getpwnam(f"opus-{app}").pw_uid),
                                      str(installed)], ran.stdout + ran.stderr
        for target in (installed / "lib" / "python3.13" / "os.py", wheels[0]):
            result = as_user(f"opus-{app}", "python3", "-c", f"open({str(target)!r}, 'a')")
            assert result.returncode != 0 and "Permission denied" in result.stderr, target
        result = as_user(f"opus-{app}", "touch", str(installed / "bin" / "planted"))
        assert result.returncode != 0
    assert not any((system_opus.home / "staging").rglob("*.whl"))
    # Root's `opus pythons` (run as the opus user) sees who uses it; it stays while used.
    listed = json.loads(system_opus.cli("pythons", "--json").stdout)
    fetched = [row for row in listed if row["fetched"]]
    assert [(r["path"], r["used_by"]) for r in fetched] == \
        [(f"{installed}/bin/python3", {a: [1], b: [1]})], listed
    refused = system_opus.cli("pythons:remove", "3.13.0", check=False)
    assert refused.returncode == 5 and "is used by" in refused.stderr


# Run as the probing app's user: tries each of the other app's paths as told, and says
# which it could read, list or signal.
PROBE = """
import json, os, stat, sys
reached, checked = [], 0
for path, how in json.load(sys.stdin):
    checked += 1
    try:
        if how == "signal":
            os.kill(int(path.rsplit("/", 1)[1]), 0)
        elif how == "list":
            os.listdir(path)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.read(fd, 1)
            finally:
                os.close(fd)
    except (OSError, ValueError):
        continue
    reached.append([path, how])
print(json.dumps({"checked": checked, "reached": reached}))
"""


def belongings(system_opus: SystemOpus, apps: tuple[str, ...]
               ) -> dict[str, list[tuple[str, str]]]:
    """Everything of each of `apps` on the host, found by walking (as root) Opus's home,
    its config and logs, /tmp and /proc: each path under one of the app's own places or
    owned by its user, with what another user must not do to it. (One walk for all the
    apps: /tmp alone took seconds to walk.)"""
    home = system_opus.home
    uids: dict[str, int] = {}
    exact: dict[str, set[str]] = {}
    below: dict[str, tuple[str, ...]] = {}
    for app in apps:
        uids[app] = pwd.getpwnam(f"opus-{app}").pw_uid
        own_places = [home / "apps" / app, home / "builds" / app,
                      home / "repos" / f"{app}.git", home / "locks" / f"{app}.lock",
                      Path("/var/log/opus") / app,
                      Path("/etc/opus/supervisor/conf.d") / f"app-{app}.conf",
                      # Every app's backups, Postgres's data and its admin password are
                      # Opus's alone (its socket's directory is for every app to connect).
                      home / "backups", home / "postgres" / "data",
                      home / "postgres" / "admin.password"]
        # (Strings, not Paths: /tmp holds tens of thousands of files, and Path.parents
        # for each of them took seconds.)
        exact[app] = {str(place) for place in own_places}
        below[app] = tuple(f"{place}/" for place in own_places)
    found: dict[str, list[tuple[str, str]]] = {app: [] for app in apps}
    for root in (home, Path("/etc/opus"), Path("/var/log/opus"), Path("/tmp")):
        for directory, subdirs, files in os.walk(root):
            for name in [*subdirs, *files]:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISLNK(info.st_mode):
                    continue
                if root == Path("/tmp") and info.st_mtime < system_opus.installed_at:
                    continue   # an earlier install's: uids are given out again after --purge
                for app in apps:
                    if info.st_uid == uids[app] or path in exact[app] or \
                            path.startswith(below[app]):
                        found[app].append((path, "list" if stat.S_ISDIR(info.st_mode)
                                           else "read"))
    for app in apps:
        for pid in _pids_of(f"opus-{app}"):
            found[app] += [(f"/proc/{pid}", "signal"), (f"/proc/{pid}/environ", "read"),
                           (f"/proc/{pid}/fd", "list"), (f"/proc/{pid}/cwd", "list")]
    return found


def test_nothing_of_one_app_is_readable_listable_or_signalable_by_another(
        system_opus: SystemOpus, two_apps: tuple[str, str]) -> None:
    """Generated from the tree, not a hand list: a new directory is covered the day it is
    added. Each way round: A's user probes everything of B's, and B's everything of A's."""
    found = belongings(system_opus, two_apps)
    for me, other in (two_apps, tuple(reversed(two_apps))):
        targets = found[other]
        assert len(targets) > 100, "the walk found too little of the app to mean much"
        probe = as_user(f"opus-{me}", "/usr/bin/python3", "-I", "-c", PROBE,
                        input=json.dumps(targets))
        assert probe.returncode == 0, probe.stderr
        report = json.loads(probe.stdout)
        print(f"isolation walk, opus-{me} against {other}: {report['checked']} paths "
              f"checked, {len(report['reached'])} reached")
        assert report["reached"] == [], report["reached"][:20]


# Run as the probing app's user: connects to each TCP port or Unix socket as told, and
# says which it reached (a connection, or any answer, counts).
SOCKET_PROBE = """
import json, socket, sys
reached, checked = [], 0
for kind, where in json.load(sys.stdin):
    checked += 1
    family = socket.AF_INET if kind == "tcp" else socket.AF_INET6 if kind == "tcp6" else \
        socket.AF_UNIX
    address = (where[0], where[1]) if kind != "unix" else \
        ("\\0" + where[1:] if where.startswith("@") else where)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(address)
    except (OSError, ValueError):
        continue
    reached.append([kind, where])
print(json.dumps({"checked": checked, "reached": reached}))
"""


def _socket_owners() -> dict[int, int]:
    """Each socket inode held open by a process: the uid of (one) process holding it."""
    owners: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            uid = proc.stat().st_uid
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owners.setdefault(int(link[8:-1]), uid)
        except OSError:
            continue
    return owners


def listening_sockets(uids: set[int]) -> list[tuple[str, object]]:
    """Every TCP socket listening on this host (from /proc/net/tcp and tcp6) and every
    Unix socket listening (from /proc/net/unix) that a user of `uids` owns, as targets
    for SOCKET_PROBE."""
    found: list[tuple[str, object]] = []
    for kind, table in (("tcp", "/proc/net/tcp"), ("tcp6", "/proc/net/tcp6")):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or int(fields[7]) not in uids:
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            if kind == "tcp":
                host = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                host = socket.inet_ntop(socket.AF_INET6, b"".join(
                    raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            found.append((kind, (host, int(port, 16))))
    owners = _socket_owners()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        # Listening (flags 00010000), with a name (an unnamed one cannot be reached).
        if len(fields) < 8 or int(fields[3], 16) & 0x10000 == 0:
            continue
        if owners.get(int(fields[6])) in uids:
            found.append(("unix", fields[7]))
    return sorted(set(found), key=str)


def test_no_socket_of_another_app_or_of_opus_answers_an_app(
        system_opus: SystemOpus, two_apps: tuple[str, str]) -> None:
    """Generated from the kernel's tables: every TCP and Unix socket listening as the
    other app's user, the opus user or the front's (the dashboard, supervisor's socket,
    the other app's instances and its mod_wsgi daemons' sockets), and the front's
    balancer-manager ports, refuse a connection from an app. Only the front's public
    ports and Opus's SSH server answer, as they answer anyone."""
    public = {system_opus.http_port, system_opus.ssh_port, *_https_port(system_opus)}
    user = pwd.getpwnam(system_opus.user).pw_uid
    front_user = pwd.getpwnam(f"{system_opus.user}-front").pw_uid
    manager = _manager_ports(system_opus)
    for me, other in (two_apps, tuple(reversed(two_apps))):
        theirs = {pwd.getpwnam(f"opus-{other}").pw_uid, user, front_user}
        targets = [t for t in listening_sockets(theirs)
                   if not (t[0] != "unix" and t[1][1] in public)]     # type: ignore[index]
        targets += [("tcp", ("127.0.0.1", port)) for port in manager]
        # Root's Unix sockets in Opus's places (supervisord's).
        targets += [t for t in listening_sockets({0}) if t[0] == "unix" and
                    str(t[1]).startswith(("/etc/opus/", f"{system_opus.home}/"))]
        kinds = {kind for kind, _where in targets}
        assert "tcp" in kinds and "unix" in kinds, targets
        probe = as_user(f"opus-{me}", "/usr/bin/python3", "-I", "-c", SOCKET_PROBE,
                        input=json.dumps(targets))
        assert probe.returncode == 0, probe.stderr
        report = json.loads(probe.stdout)
        print(f"socket walk, opus-{me} against {other} and Opus: {report['checked']} "
              f"sockets checked, {len(report['reached'])} reached")
        assert report["reached"] == [], report["reached"]
    # The walk is not vacuous: the opus user reaches the dashboard and the manager.
    reached = as_user(system_opus.user, "/usr/bin/python3", "-I", "-c", SOCKET_PROBE,
                      input=json.dumps([["tcp", ["127.0.0.1", manager[0]]]]))
    assert json.loads(reached.stdout)["reached"], reached


def _asleep(system_opus: SystemOpus, app: str) -> bool:
    return bool(json.loads(system_opus.cli("ps:autosleep", app, "--json").stdout)["asleep"])


def _port_owners(port: int) -> set[int]:
    tables = "".join(Path(name).read_text() for name in ("/proc/net/tcp", "/proc/net/tcp6"))
    return health.listening_uids(tables, port)


def test_a_sleeping_app_is_woken_by_its_request_as_its_own_user(
        system_opus: SystemOpus, two_apps: tuple[str, str]) -> None:
    """Idle, the app's instance stops (no process of its user is left); its next request
    is held by the front while the waker (the opus user's) starts the instance again,
    through supervisor, as the app's own user, and is answered."""
    a, _b = two_apps
    app = Store(system_opus.home / "opus.db").get_app(a)
    assert app is not None and app.live_port is not None
    system_opus.cli("ps:autosleep", a, "2s")
    deadline = time.monotonic() + 30
    while not _asleep(system_opus, a) or _port_owners(app.live_port):
        assert time.monotonic() < deadline, "the app never fell asleep"
        time.sleep(0.3)
    system_opus.cli("ps:autosleep", a, "1h")     # once woken, it stays awake
    assert "web.1  asleep" in system_opus.cli("ps", a).stdout
    start = time.monotonic()
    status, body = system_opus.get(a)
    woke = time.monotonic() - start
    print(f"system mode: {a} woke and answered in {woke:.2f} s")
    assert status == 200 and f"Hello from {a}" in body, body
    assert _port_owners(app.live_port) == {pwd.getpwnam(f"opus-{a}").pw_uid}
    assert not _asleep(system_opus, a)
    waker = [pid for pid in _pids_of(system_opus.user)
             if b"opus_paas.run.waker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert waker, "the waker runs as the opus user"
    system_opus.cli("ps:autosleep", a, "off")


def test_only_the_front_and_opus_may_reach_the_waker(system_opus: SystemOpus,
                                                      two_apps: tuple[str, str]) -> None:
    """nftables refuses an app's user a connection to the waker's port; the opus user
    connects (and, without the front's proof, is refused by the waker itself)."""
    a, _b = two_apps
    port = int(tomllib.loads((system_opus.home / "opus.toml").read_text())["waker_port"])
    rules = subprocess.run(["nft", "list", "table", "inet", "opus"], capture_output=True,
                           text=True, check=True).stdout
    opus = pwd.getpwnam(system_opus.user).pw_uid
    assert f"tcp dport {port} meta skuid != " in rules, rules
    assert f"tcp sport {port} meta skuid != {opus} drop" in rules, rules
    probe = ("import http.client\n"
             "try:\n"
             f"    c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=5)\n"
             f"    c.request('GET', '/', headers={{'Host': '{a}.localhost'}})\n"
             "    print(c.getresponse().status)\n"
             "except OSError as exc:\n"
             "    print('refused', type(exc).__name__)\n")
    ran = as_user(f"opus-{a}", "/usr/bin/python3", "-I", "-c", probe)
    assert ran.stdout.startswith("refused ConnectionRefusedError"), ran
    ran = as_user(system_opus.user, "/usr/bin/python3", "-I", "-c", probe)
    assert ran.stdout.strip() == "403", ran


def _https_port(system_opus: SystemOpus) -> list[int]:
    settings = tomllib.loads((system_opus.home / "opus.toml").read_text())
    return [int(settings["https_port"])] if "https_port" in settings else [443]


def _manager_ports(system_opus: SystemOpus) -> tuple[int, int]:
    base = int(tomllib.loads((system_opus.home / "opus.toml").read_text())["app_port_base"])
    return base, base + 1


def _manager_request(port: int, host: str, token: str | None) -> str:
    """A script that asks the balancer-manager for its page and prints the outcome."""
    headers = {"Host": host, **({"X-Opus-Token": token} if token is not None else {})}
    return ("import http.client\n"
            "try:\n"
            f"    c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=5)\n"
            f"    c.request('GET', '/.opus/balancer', headers={headers!r})\n"
            "    r = c.getresponse(); body = r.read().decode()\n"
            "    print(r.status, 'app-' in body)\n"
            "except OSError as exc:\n"
            "    print('refused', type(exc).__name__)\n")


def test_the_front_state_and_manager_are_opus_alone(system_opus: SystemOpus,
                                                    two_apps: tuple[str, str]) -> None:
    """front.json (0600, no token in it) and front.token are unreadable by an app; the
    balancer-manager refuses an app's user with no token, a wrong one, or the real one
    (read as root), on its own port (nftables) and through the front's public port
    (whatever port the Host header names); the token is new after each `opus up`."""
    a, b = two_apps
    token_file, record = system_opus.home / "front.token", system_opus.home / "front.json"
    token = token_file.read_text().strip()
    assert token and token not in record.read_text()
    assert json.loads(record.read_text())["token_sha256"]
    for path in (token_file, record):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        read = as_user(f"opus-{a}", "cat", str(path))
        assert read.returncode != 0 and "Permission denied" in read.stderr, path
    manager, _tls = _manager_ports(system_opus)
    host = f"{b}.localhost"
    for attempt in (None, "0" * 32, token):
        ran = as_user(f"opus-{a}", "/usr/bin/python3", "-I", "-c",
                      _manager_request(manager, host, attempt))
        assert ran.stdout.startswith("refused ConnectionRefusedError"), (attempt, ran)
        for spoofed in (host, f"{host}:{manager}"):
            ran = as_user(f"opus-{a}", "/usr/bin/python3", "-I", "-c",
                          _manager_request(system_opus.http_port, spoofed, attempt))
            assert ran.stdout.startswith("403"), (attempt, spoofed, ran)
    # Opus itself is served (so the refusals above are not a broken manager).
    ran = as_user(system_opus.user, "/usr/bin/python3", "-I", "-c",
                  _manager_request(manager, host, token))
    assert ran.stdout.strip() == "200 True", ran
    # A restart makes a new token; the old one is refused even to Opus.
    system_opus.cli("up", "--system")
    fresh = token_file.read_text().strip()
    assert fresh != token
    for attempt, said in ((token, "403"), (fresh, "200 True")):
        ran = as_user(system_opus.user, "/usr/bin/python3", "-I", "-c",
                      _manager_request(manager, host, attempt))
        assert ran.stdout.startswith(said), (attempt, ran)
    assert system_opus.get(b)[0] == 200


def test_each_apps_temporary_files_are_its_own(system_opus: SystemOpus,
                                               two_apps: tuple[str, str]) -> None:
    """Builds, release commands, `run` and the app's processes use the app's own TMPDIR,
    never the host's shared /tmp."""
    a, _b = two_apps
    tmp = system_opus.home / "apps" / a / "tmp"
    probe = f"import tempfile; print(tempfile.gettempdir() == {str(tmp)!r})"
    ran = system_opus.cli("run", a, "--", "python", "-c", probe)   # its output is redacted
    assert ran.stdout.strip() == "True", ran.stdout + ran.stderr
    assert tmp.stat().st_uid == pwd.getpwnam(f"opus-{a}").pw_uid
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o700
    web = [pid for pid in _pids_of(f"opus-{a}")
           if b"mod_wsgi" in _cmdline(Path(f"/proc/{pid}"))]
    assert web and all(f"TMPDIR={tmp}".encode() in
                       Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in web)


def test_run_on_a_terminal_in_system_mode(system_opus: SystemOpus, key: SshKey,
                                          two_apps: tuple[str, str]) -> None:
    """`ssh -t HOST run APP -- …`: secureops gives the app's user a terminal of its own."""
    a, _b = two_apps
    uid = pwd.getpwnam(f"opus-{a}").pw_uid
    program = ("import os, sys, shutil; print(sys.stdin.isatty(), sys.stdout.isatty(), "
               f"os.getuid() == {uid}, shutil.get_terminal_size().columns > 0, "
               "os.environ['TERM']); print('you typed', input('name? ').upper()); sys.exit(3)")
    command = shlex.join(["run", a, "--", "python", "-c", program])
    status, lines = on_a_terminal(
        ["env", "TERM=screen", *ssh_t(system_opus, key, command)],  # type: ignore[arg-type]
        keystrokes=b"opus\r", asked=(b"name? ",))
    assert status == 3, lines
    assert "True True True True screen" in lines, lines
    assert any(line.endswith("you typed OPUS") for line in lines), lines


def test_the_opus_user_cannot_reach_root_through_secureops(system_opus: SystemOpus,
                                                           two_apps: tuple[str, str]) -> None:
    a, b = two_apps
    helper = ["sudo", "-n", "/usr/local/sbin/opus-secureops"]
    user = system_opus.user
    slug = str(system_opus.home / "apps" / a / "releases" / "v1")
    # A step runs as the app's user, never as root, whatever it asks for.
    ran = as_user(user, *helper, "run", a,
                  input=json.dumps({"argv": ["/usr/bin/id", "-u"], "cwd": slug, "env": {}}))
    assert ran.returncode == 0 and ran.stdout.strip() == str(pwd.getpwnam(f"opus-{a}").pw_uid)
    front_spec = {"listen_host": "127.0.0.1", "listen_port": system_opus.http_port,
                  "scheme": "http", "https_port": 8443, "manager_port": 19998,
                  "manager_tls_port": 19999,
                  "dashboard": {"domain": "opus.localhost", "host": "127.0.0.1",
                                "port": 8090, "tls": None},
                  "token": "0" * 32, "sites": []}
    site = {"app": a, "domains": [f"{a}.localhost"], "port": 40000, "members": [40000]}
    hostile = [
        (["run", a], {"argv": ["/bin/sh", "-c", "id"], "cwd": "/", "env": {}}, "not inside"),
        (["run", "root"], {"argv": ["/usr/bin/id"], "env": {},
                           "cwd": str(system_opus.home / "apps" / "root" / "x")},
         "does not exist"),
        (["run", a], {"argv": ["/usr/bin/id"], "cwd": slug.replace(a, b), "env": {}},
         "not inside"),
        (["run", a], {"argv": ["/usr/bin/id"], "cwd": slug, "env": {"LD_PRELOAD": "/x.so"}},
         "not allowed"),
        (["user-delete", b], None, "directory still exists"),
        (["programs-install", a], {"programs": [{
            "name": f"{a}-web-v1-p1", "command": ["/bin/sh"], "directory": slug,
            "log_name": "web.log"}]}, "not inside the app's releases"),
        (["front-install"], {**front_spec, "sites": [
            {**site, "domains": ['x.localhost" LoadModule evil /tmp/evil.so']}]},
         "not a host name"),
        (["front-install"], {**front_spec, "sites": [
            {**site, "domains": ["x.localhost\nLoadModule evil /tmp/evil.so"]}]},
         "one line of text"),
        (["front-install"], {**front_spec, "sites": [
            site, {**site, "app": b, "domains": [f"{b}.localhost"]}]},
         "a port is given to two apps"),
        (["front-install"], {**front_spec, "token": "' || true || '"}, "token"),
        (["front-install"], {**front_spec, "include": "/tmp/evil.conf"}, "unknown keys"),
        (["front-install"], {**front_spec, "sites": [{**site, "tls": {
            "domains": ["bank.example"], "redirect": False, "serial": "1"}}]},
         "some of its own domains"),
        (["cert-install"], {"site": "../../etc/ssl", "chain": "", "key": ""},
         "invalid app name"),
        (["cert-install"], {"site": a, "chain": "-----BEGIN CERTIFICATE-----\nAAAA\n"
                            "-----END CERTIFICATE-----\nSSLEngine off\n", "key": ""},
         "text after the last PEM block"),
        (["cert-remove"], {"site": "fallback/../.."}, "invalid app name"),
        (["hand-over", "../" + a], None, "invalid app name"),
        (["python-install"], {"name": "cpython-3.13.0-linux-x86_64-gnu/../../../etc"},
         "not an interpreter's name"),
        (["python-install"], {"name": "cpython-3.12.9-linux-x86_64-gnu"}, "nothing is staged"),
        (["python-remove", a], {"name": "cpython-3.13.0-linux-x86_64-gnu"}, "usage"),
        (["wheels-install"], {"key": "../wheels"}, "not a wheelhouse key"),
    ]
    before = Path("/etc/opus/front/httpd.conf").read_bytes()
    for argv, spec, said in hostile:
        result = as_user(user, *helper, *argv,
                         input="" if spec is None else json.dumps(spec))
        assert result.returncode == 77 and said in result.stderr, (argv, result.stderr)
    assert Path("/etc/opus/front/httpd.conf").read_bytes() == before
    log = [json.loads(line) for line in
           Path("/var/log/opus/secureops.log").read_text().splitlines()]
    denials = [entry for entry in log if entry["outcome"] == "deny"]
    assert len(denials) >= len(hostile)
    assert all(entry["caller"] == f"uid {pwd.getpwnam(user).pw_uid}" for entry in denials)


def test_secureops_installs_no_interpreter_that_leads_out_of_itself(
        system_opus: SystemOpus, two_apps: tuple[str, str]) -> None:
    """The opus user stages a tree whose python3 is a link to where any app's user could
    write: refused, and nothing is installed."""
    user = system_opus.user
    name = "cpython-3.12.9-linux-x86_64-gnu"
    staged = system_opus.home / "staging" / "pythons" / name
    link = staged / "bin" / "python3"
    script = (f"import os; os.makedirs({str(link.parent)!r}); "
              f"os.symlink('../../../../../../../tmp/planted', {str(link)!r})")
    assert as_user(user, "python3", "-c", script).returncode == 0
    try:
        result = as_user(user, "sudo", "-n", "/usr/local/sbin/opus-secureops",
                         "python-install", input=json.dumps({"name": name}))
        assert result.returncode == 77 and "leads out of the tree" in result.stderr, result
        assert not (Path("/usr/local/lib/opus/pythons") / name).exists()
        assert not [p for p in Path("/usr/local/lib/opus/pythons").iterdir()
                    if p.name.startswith(".")]
    finally:
        as_user(user, "rm", "-rf", str(staged.parent))


def _start_step(system_opus: SystemOpus, app: str,
                ) -> tuple[subprocess.Popen[str], Callable[[], list[int]]]:
    """A step through sudo and secureops, as the opus user sends it, that leaves a
    background child (named by a marker); returns sudo and what finds the child."""
    entry = pwd.getpwnam(system_opus.user)
    marker = f"sleep-{secrets.token_hex(4)}"
    spec = {"argv": ["/bin/bash", "-c", f"exec -a {marker} sleep 300 & wait"],
            "cwd": str(system_opus.home / "apps" / app / "releases" / "v1"), "env": {}}
    step = subprocess.Popen(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
         "sudo", "-n", "/usr/local/sbin/opus-secureops", "run", app],
        stdin=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
    assert step.stdin is not None
    step.stdin.write(json.dumps(spec) + "\n")
    step.stdin.close()

    def sleepers() -> list[int]:
        return [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and _cmdline(p).startswith(marker.encode())]

    deadline = time.monotonic() + 10
    while not sleepers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleepers(), "the step did not start"
    assert Path(f"/proc/{sleepers()[0]}").stat().st_uid == pwd.getpwnam(f"opus-{app}").pw_uid
    return step, sleepers


def _gone(sleepers: Callable[[], list[int]], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while sleepers() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not sleepers()


def test_stopping_a_step_through_sudo_kills_all_it_started(
        system_opus: SystemOpus, two_apps: tuple[str, str]) -> None:
    """Opus may not signal an app's user: it tells sudo (TERM), which tells secureops,
    which kills the step's whole process group (a disconnected push, a timeout)."""
    step, sleepers = _start_step(system_opus, two_apps[0])
    entry = pwd.getpwnam(system_opus.user)
    # The opus user signals its own sudo, as privileged.py does.
    subprocess.run(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                    "--init-groups", "kill", "-TERM", str(step.pid)], check=True)
    step.wait(timeout=20)
    assert _gone(sleepers, 10), "the step's background child outlived it"


def test_a_step_dies_whole_when_secureops_is_killed_mid_request(
        system_opus: SystemOpus, two_apps: tuple[str, str]) -> None:
    """SIGKILL of secureops while it runs a step: the step runs under the process-tree
    guard as the app's user, which ends everything the step started."""
    step, sleepers = _start_step(system_opus, two_apps[0])
    helpers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
               and b"opus-secureops" in _cmdline(p) and _owner(p) == 0
               and b"sudo" not in _cmdline(p).split(b"\0")[0]]
    assert helpers, "no secureops process"
    for pid in helpers:
        os.kill(pid, signal.SIGKILL)
    step.wait(timeout=20)
    assert _gone(sleepers, 15), "the step outlived secureops"


def test_a_second_push_keeps_serving_and_prunes_as_the_apps_user(
        system_opus: SystemOpus, key: SshKey, two_apps: tuple[str, str],
        tmp_path: Path) -> None:
    a, _b = two_apps
    project = tmp_path / a
    git(tmp_path, "clone", "-q", f"ssh://git@127.0.0.1:{system_opus.ssh_port}/{a}.git",
        str(project), env=key.git_env(system_opus))    # type: ignore[arg-type]
    set_greeting(project, "Second release")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{system_opus.ssh_port}/{a}.git")
    output = push_main(project, system_opus, key)    # type: ignore[arg-type]
    assert "Released v2" in output, output
    # Through the manager's own port, which only Opus may reach (no graceful reload).
    assert "Switched through the front's balancer" in output, output
    status, body = system_opus.get(a)
    assert status == 200 and "Second release" in body
    visits = int(re.search(r"visits: ([0-9]+)", body).group(1))   # type: ignore[union-attr]
    assert visits >= 2, body        # the data stayed (health checks visit too)
    slug = system_opus.home / "apps" / a / "releases" / "v2"
    assert slug.stat().st_uid == pwd.getpwnam(f"opus-{a}").pw_uid
    rollback = system_opus.cli("rollback", a, "v1")
    assert "v3" in rollback.stdout, rollback.stdout
    assert "Hello from" in system_opus.get(a)[1]


def test_an_app_squatting_anothers_idle_port_does_not_get_its_traffic(
        system_opus: SystemOpus, key: SshKey, two_apps: tuple[str, str],
        tmp_path: Path) -> None:
    """App A binds B's idle port and answers there; B's next deploy must not switch
    B's traffic to A (nor take B down)."""
    a, b = two_apps
    settings = tomllib.loads((system_opus.home / "opus.toml").read_text())
    base = int(settings["app_port_base"])
    conf = Path(f"/etc/opus/supervisor/conf.d/app-{b}.conf").read_text()
    live = int(re.search(rf"\[program:{b}-web-v[0-9]+-p([0-9]+)\]", conf).group(1))  # type: ignore[union-attr]
    idle = live + 1 if (live - base) % 2 == 0 else live - 1
    squatter = subprocess.Popen(
        [sys.executable, "-m", "opus_paas", "run", a, "--", "python", "-m", "http.server",
         "--bind", "127.0.0.1", str(idle)], env=system_opus.env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tables = Path("/proc/net/tcp").read_text()
            if health.listening_uids(tables, idle):
                break
            time.sleep(0.2)
        assert health.listening_uids(Path("/proc/net/tcp").read_text(), idle) == \
            {pwd.getpwnam(f"opus-{a}").pw_uid}
        # Neither the front's children nor Opus complete a connection to the squatter
        # (its answers are dropped): no request of B's reaches it.
        for user in (f"{system_opus.user}-front", system_opus.user):
            probe = as_user(user, "/usr/bin/python3", "-I", "-c", SOCKET_PROBE,
                            input=json.dumps([["tcp", ["127.0.0.1", idle]]]))
            assert json.loads(probe.stdout)["reached"] == [], (user, probe)
        project = tmp_path / b
        git(tmp_path, "clone", "-q", f"ssh://git@127.0.0.1:{system_opus.ssh_port}/{b}.git",
            str(project), env=key.git_env(system_opus))    # type: ignore[arg-type]
        set_greeting(project, "Squatted")
        result = git(project, "push", "origin", "main", check=False,
                     env=key.git_env(system_opus))    # type: ignore[arg-type]
        assert result.returncode != 0, result.stdout + result.stderr
        status, body = system_opus.get(b)
        assert status == 200 and f"Hello from {b}" in body and "Squatted" not in body
    finally:
        # The one-off runs as A's user, below sudo: root stops it where it runs.
        uid = pwd.getpwnam(f"opus-{a}").pw_uid
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and b"http.server" in _cmdline(proc):
                with contextlib.suppress(OSError):
                    if proc.stat().st_uid == uid:
                        os.kill(int(proc.name), signal.SIGTERM)
        squatter.wait(timeout=30)


def test_listening_uids_reads_the_kernels_table() -> None:
    table = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
             "   0: 0100007F:4E20 00000000:0000 0A 00000000:00000000 00:00000000 00000000   995\n"
             "   1: 0100007F:4E20 0100007F:9C40 01 00000000:00000000 00:00000000 00000000   996\n"
             "   2: 0100007F:4E21 00000000:0000 0A 00000000:00000000 00:00000000 00000000   997\n")
    assert health.listening_uids(table, 20000) == {995}      # listening only, that port
    assert health.listening_uids(table, 20002) == set()


def test_https_certificates_are_ordered_by_opus_and_kept_by_root(
        system_opus: SystemOpus, two_apps: tuple[str, str],
        pebble: tuple[pebble_module.Pebble, int, int]) -> None:
    """The opus user orders the certificate (its account key its own, 0600), secureops
    keeps the pair root's (0600 in a 0700 directory): no app's user, nor the front's
    children, nor Opus can read the key; the app is served over https."""
    ca, _http_port, https_port = pebble
    _a, b = two_apps
    domain = f"{b}.system.test"
    system_opus.cli("domains:add", b, domain)
    deadline = time.monotonic() + 60
    while domain not in json.loads(system_opus.cli("certs", b, "--json").stdout)["https"]:
        assert time.monotonic() < deadline, system_opus.cli("certs", b).stdout
        time.sleep(0.5)
    context = ssl.create_default_context(cafile=str(ca.root))
    with socket.create_connection(("127.0.0.1", https_port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname=domain) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n"
                    .encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and f"Hello from {b}".encode() in answer
    directory = Path("/etc/opus/front/certs") / b
    key = directory / "key.pem"
    assert (key.stat().st_uid, stat.S_IMODE(key.stat().st_mode)) == (0, 0o600)
    assert (directory.stat().st_uid, stat.S_IMODE(directory.stat().st_mode)) == (0, 0o700)
    account = system_opus.home / "acme" / "account.key"
    assert pwd.getpwuid(account.stat().st_uid).pw_name == system_opus.user
    assert stat.S_IMODE(account.stat().st_mode) == 0o600
    for user in (f"opus-{b}", f"opus-{_a}", f"{system_opus.user}-front", system_opus.user):
        for secret in (key, account):
            if user == system_opus.user and secret == account:
                continue
            read = as_user(user, "cat", str(secret))
            assert read.returncode != 0 and "Permission denied" in read.stderr, (user, secret)


def test_destroying_an_app_removes_its_user_and_files(system_opus: SystemOpus,
                                                      two_apps: tuple[str, str]) -> None:
    _a, b = two_apps
    # As its user, the app leaves a data tree deeper than any path can name, with links
    # out of it: all of it goes, nothing it points at.
    deep = ("import os\nos.chdir('../../data')\nfor _ in range(600):\n"
            "    os.mkdir('d' * 20); os.chdir('d' * 20)\n"
            "os.symlink('/etc', 'etc'); os.mkfifo('fifo')\n")
    built = system_opus.cli("run", b, "--", "python", "-c", deep)
    assert built.returncode == 0, built.stdout + built.stderr
    system_opus.cli("apps:destroy", b, "--confirm", b)
    assert Path("/etc/passwd").is_file()
    deadline = time.monotonic() + 10
    with pytest.raises(KeyError):
        while time.monotonic() < deadline:
            pwd.getpwnam(f"opus-{b}")
            time.sleep(0.2)
    assert not (system_opus.home / "apps" / b).exists()
    assert not (Path("/var/log/opus") / b).exists()
    assert not Path(f"/etc/opus/supervisor/conf.d/app-{b}.conf").exists()
    assert not Path(f"/etc/opus/front/certs/{b}").exists()
    assert system_opus.get(b)[0] == 404


def test_uninstall_leaves_nothing_behind(system_opus: SystemOpus,
                                         two_apps: tuple[str, str]) -> None:
    a, _b = two_apps
    user = system_opus.user
    system_opus.cli("uninstall", "--system", "--purge")
    for path in [*system_opus_module.LEFTOVERS, system_opus.home]:
        assert not path.exists(), path
    for name in (user, f"{user}-front", f"opus-{a}"):
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
    listed = subprocess.run(["nft", "list", "table", "inet", "opus"], capture_output=True,
                            check=False)
    assert listed.returncode != 0, "the port rules outlived the installation"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and
                str(system_opus.home).encode() in _cmdline(p)]
        if not left:
            break
        time.sleep(0.2)
    assert not left, "processes left after uninstall"


def _owner(proc: Path) -> int:
    """The uid a process runs as, or -1 once it has exited."""
    try:
        return proc.stat().st_uid
    except FileNotFoundError:
        return -1


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
