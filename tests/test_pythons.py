"""Any Python an app asks for: a push asking for a version the host lacks (3.13; the host
has Debian's 3.11) fetches it from a local mirror, builds mod_wsgi for it once, serves
and reports it; `opus pythons` lists it with the app using it; it cannot be removed
while a kept release uses it. Fetches that must fail (a wrong checksum in the list, a
list without checksums, a build whose checksum uv knows otherwise, an unreachable list,
a version the list lacks) fail with a message naming the version, the source and what
the operator can do, and install nothing. The pure parts (messages, the buildpack's
report, settings) exhaustively.

The mirror (tests/python_mirror.py) packages pyenv's 3.13.0 as python-build-standalone
builds are packaged; this module's own Opus (embedded, as root: the apps run as nobody)
takes it from there.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opus_paas import settings as settings_module
from opus_paas.errors import ServiceError, UsageError
from opus_paas.pythons import report, versions
from tests import python_mirror
from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    free_port,
    git,
    make_django_project,
    make_key,
    start_opus,
    stop_opus,
)
from tests.test_commands import ssh

INSTALL = "cpython-3.13.0-linux-x86_64-gnu"


# ---- pure: versions, sources, messages --------------------------------------------------

@pytest.mark.parametrize(("version", "fetched"), [
    ("3.10", True), ("3.14", True), ("3.13.0", True), ("3.12.11", True),
    ("3.9", False), ("3.15", False), ("2.7", False), ("3", False), ("3.13.", False),
    ("3.13.0.1", False), ("3.13;id", False), (" 3.13", False), ("3.13\n", False),
    ("", False), ("cpython-3.13", False), ("../3.13", False),
])
def test_which_versions_opus_fetches(version: str, fetched: bool) -> None:
    assert versions.fetchable(version) is fetched
    if fetched:
        assert versions.check_version(version) == version
    else:
        with pytest.raises(UsageError, match=r"give 3\.10 to 3\.14"):
            versions.check_version(version)


def test_sources_are_named_as_the_operator_set_them() -> None:
    assert versions.describe_source("", "") == \
        "python-build-standalone's releases (uv's default source)"
    assert versions.describe_source("http://m/", "") == "the mirror http://m/"
    assert versions.describe_source("", "/srv/list.json") == "the download list /srv/list.json"
    assert versions.describe_source("http://m/", "http://l") == \
        "the download list http://l (through the mirror http://m/)"
    assert versions.version_of(INSTALL) == "3.13.0"
    assert versions.version_of("cpython-3.14.0rc2+freethreaded-linux-x86_64-gnu") == "3.14.0rc2"


def test_fetched_interpreters_go_where_the_operator_says(tmp_path: Path) -> None:
    """OPUS_PYTHONS_DIR (embedded mode), like OPUS_WHEELS_DIR: homes may share one."""
    home = str(tmp_path / "home")
    assert settings_module.load({"OPUS_HOME": home}).managed_pythons_dir == \
        tmp_path / "home" / "pythons"
    shared = settings_module.load({"OPUS_HOME": home, "OPUS_PYTHONS_DIR": "/srv/pythons"})
    assert shared.managed_pythons_dir == Path("/srv/pythons")
    system = settings_module.Settings(home=tmp_path, mode="system",
                                      pythons_dir=Path("/srv/pythons"))
    assert system.managed_pythons_dir == settings_module.SYSTEM_PYTHONS_DIR


def test_relocating_names_the_installed_path_only() -> None:
    text = ("'INCLUDEPY': '/s/cpython-3.13.0/include/python3.13',\n"
            "'LIBDIR': '/s/cpython-3.13.0/lib', 'CC': 'gcc -pthread'")
    moved = versions.relocate(text, "/s/cpython-3.13.0", "/usr/local/lib/opus/pythons/x")
    assert "/s/" not in moved and "'LIBDIR': '/usr/local/lib/opus/pythons/x/lib'" in moved
    assert "'CC': 'gcc -pthread'" in moved


# uv's own words (uv 0.13), as each failure prints them.
HASH_MISMATCH = """\
Downloading cpython-3.13.0-linux-x86_64-gnu (download) (25.0MiB)
error: Failed to install cpython-3.13.0-linux-x86_64-gnu
  cause: Hash mismatch for `cpython-3.13.0-linux-x86_64-gnu`

         Expected:
         b5e74d1e16402b633c6f04519618231fc0dbae7d2f9e4b1ac17c294cc3d3d076

         Computed:
         38104956b8893ff09341d5392309a149894c3c4b4cddfcf66ef4f56bd5d0dd94"""
REFUSED = """\
error: Failed to install cpython-3.13.0-linux-x86_64-gnu
  cause: Request failed after 3 retries in 10.7s
  cause: Failed to download `http://127.0.0.1:9/x.tar.gz`
  cause: tcp connect error
  cause: Connection refused (os error 111)"""
MISSING = "error: No download found for request: cpython-3.12-linux-x86_64-gnu"


@pytest.mark.parametrize(("output", "said"), [
    (HASH_MISMATCH, r"Python 3\.13 from SRC does not match its sha256 \(expected b5e74d1e16402b63…"
                    r", got 38104956b8893ff0…\); nothing was installed\. The operator: check the "
                    r"file on the mirror"),
    (REFUSED, r"Python 3\.13 could not be downloaded from SRC: Connection refused \(os error "
              r"111\)\. The operator: make sure this host reaches it, or set python_mirror"),
    (MISSING, r"SRC has no build of Python 3\.13 for this host\. The operator: add one there"),
    ("error: something new", r"could not be fetched from SRC: something new\. The operator: "
                             r"see uv's output above"),
    ("", r"could not be fetched from SRC: no output"),
])
def test_a_failed_fetch_says_what_and_what_to_do(output: str, said: str) -> None:
    message = versions.failure("3.13", "SRC", output.splitlines())
    assert re.search(said, message), message
    assert "pythons:install" in message or "OPUS_PYTHONS" in message or "mirror" in message


def good_report(**changes: object) -> dict[str, object]:
    interpreter = {"path": "/usr/bin/python3.11", "version": "3.11.2", "managed": False,
                   "wheelhouse": "cp311-0123456789abcdef"}
    data: dict[str, object] = {"request": {"version": "3.13", "source": ".python-version"},
                               "problem": "Python 3.13 is not installed", "chosen": None,
                               "installed": [interpreter], "mod_wsgi": "mod_wsgi==6.1.1"}
    data.update(changes)
    return data


def test_the_buildpacks_report_is_read_with_every_field_checked() -> None:
    found = report.parse(json.dumps(good_report()))
    assert found.request == report.Request("3.13", ".python-version")
    assert found.chosen is None and found.installed[0].path == "/usr/bin/python3.11"
    installed = report.Interpreter(
        f"/usr/local/lib/opus/pythons/{INSTALL}/bin/python3", "3.13.0", True,
        "cp313-0123456789abcdef")
    assert installed.install_name(Path("/usr/local/lib/opus/pythons")) == INSTALL
    assert installed.install_name(Path("/elsewhere")) is None
    assert report.Interpreter("/usr/local/lib/opus/pythons/x/bin/python3", "3.13.0", True,
                              "cp313-0123456789abcdef").install_name(
        Path("/usr/local/lib/opus/pythons")) is None
    one = good_report()["installed"][0]    # type: ignore[index]
    for hostile in (
        good_report(request={"version": "3.13; rm -rf /", "source": ".python-version"}),
        good_report(request={"version": "3.13", "source": "../../etc/passwd"}),
        good_report(installed=[{**one, "path": "relative/python"}]),
        good_report(installed=[{**one, "path": "/usr/bin/python\n3"}]),
        good_report(installed=[{**one, "wheelhouse": "../../../etc"}]),
        good_report(installed=[{**one, "managed": "yes"}]),
        good_report(mod_wsgi="mod_wsgi==6.1.1 --index-url http://evil"),
        good_report(chosen="/usr/bin/python3.11"),
        {"request": None},
    ):
        with pytest.raises(ServiceError, match="bin/interpreter gave an answer"):
            report.parse(json.dumps(hostile))
    with pytest.raises(ServiceError, match="cannot read"):
        report.parse("not json")


@pytest.mark.parametrize(("name", "value", "valid"), [
    ("python_mirror", "https://mirror.example/pbs", True),
    ("python_mirror", "file:///srv/pbs", True),
    ("python_mirror", "/srv/pbs", False),
    ("python_mirror", "ftp://mirror", False),
    ("python_mirror", "http://a b", False),
    ("python_downloads", "/srv/python-downloads.json", True),
    ("python_downloads", "http://127.0.0.1/list.json", True),
    ("python_downloads", "list.json", False),
    ("python_downloads", "javascript:alert(1)", False),
    ("python_downloads", "http://x/\nrm", False),
])
def test_python_sources_must_be_urls(name: str, value: str, valid: bool,
                                     tmp_path: Path) -> None:
    environ = {"OPUS_HOME": str(tmp_path), f"OPUS_{name.upper()}": value}
    if valid:
        assert getattr(settings_module.load(environ), name) == value
    else:
        with pytest.raises(UsageError, match=f"{name} = .* is not valid; give a URL"):
            settings_module.load(environ)


# ---- end to end: a push asking for Python 3.13 ------------------------------------------

@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[python_mirror.Mirror]:
    with python_mirror.serve(tmp_path_factory.mktemp("mirror")) as served:
        yield served


@pytest.fixture(scope="module")
def fetching_opus(mirror: python_mirror.Mirror) -> Iterator[Opus]:
    """An Opus that fetches from the mirror's download list."""
    running = start_opus(OPUS_PYTHON_DOWNLOADS=mirror.downloads)
    try:
        yield running
    finally:
        stop_opus(running)


@pytest.fixture(scope="module")
def key(fetching_opus: Opus, tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    made = make_key(tmp_path_factory.mktemp("keys"), "dev")
    fetching_opus.cli("keys:add", "dev", str(made.public))
    return made


def project_asking_for(base: Path, app: str, version: str, opus: Opus) -> Path:
    project = make_django_project(base / app, greeting=f"Hello from {app}")
    (project / ".python-version").write_text(f"{version}\n")
    commit_all(project, f"ask for Python {version}")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{app}.git")
    return project


@pytest.fixture(scope="module")
def pushed(fetching_opus: Opus, key: SshKey,
           tmp_path_factory: pytest.TempPathFactory) -> str:
    """The first push of an app asking for 3.13: its whole output."""
    project = project_asking_for(tmp_path_factory.mktemp("src"), "py313", "3.13",
                                 fetching_opus)
    result = git(project, "push", "opus", "main", env=key.git_env(fetching_opus), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_a_push_asking_for_a_missing_python_fetches_builds_and_serves_it(
        fetching_opus: Opus, pushed: str) -> None:
    lines = [line.removeprefix("remote: ").rstrip() for line in pushed.splitlines()]
    source = fetching_opus.env["OPUS_PYTHON_DOWNLOADS"]
    order = [
        "-----> Fetching Python 3.13: .python-version asks for it and this host has none",
        f"       Downloading it from the download list {source}",
        "-----> Building mod_wsgi==6.1.1 for Python 3.13.0 (once per interpreter on this host)",
        "-----> Python app detected",
        f"-----> Using Python 3.13.0 ($OPUS_HOME/pythons/{INSTALL}/bin/python3), as "
        ".python-version asks",
        "       From the host's wheelhouse (built once for this Python)",
        "-----> Released v1",
    ]
    found = [next((n for n, line in enumerate(lines) if line.startswith(want)), -1)
             for want in order]
    assert -1 not in found and found == sorted(found), (found, pushed)
    assert any(re.fullmatch(rf"       Checked its sha256 and installed {INSTALL} in "
                            r"[0-9.]+ s", line) for line in lines), pushed
    status, _headers, body = fetching_opus.get("py313.localhost")
    assert status == 200 and "Hello from py313" in body
    ran = fetching_opus.cli("run", "py313", "--", "python", "-c",
                            "import sys, sysconfig; print(sys.version.split()[0], "
                            "sysconfig.get_config_var('LIBDIR'))")
    assert ran.stdout.split() == ["3.13.0", f"$OPUS_HOME/pythons/{INSTALL}/lib"], ran.stdout


def test_the_fetched_python_is_readable_by_the_apps_and_writable_by_opus_alone(
        fetching_opus: Opus, pushed: str) -> None:
    installed = fetching_opus.home / "pythons" / INSTALL
    for path in [installed, *installed.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        assert info.st_uid == os.geteuid() and not info.st_mode & 0o022, path
        assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID), path
        assert info.st_mode & 0o004, path
    if os.geteuid() != 0:
        return      # (as root, apps run as nobody: it runs the interpreter, cannot change it)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                 str(installed / "bin" / "python3")]
    result = subprocess.run(
        [*as_nobody, "-c", f"open({str(installed / 'lib' / 'python3.13' / 'os.py')!r}, 'a')"],
        capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "Permission denied" in result.stderr
    # The standard library's bytecode was compiled before the copy and still matches its
    # sources (the copy keeps their times): no process has to compile it again.
    result = subprocess.run([*as_nobody, "-v", "-c", "import json, sysconfig; "
                             "sysconfig.get_config_vars()"],
                            capture_output=True, text=True, check=True)
    assert "bytecode is stale" not in result.stderr
    assert (f"code object from '{installed}/lib/python3.13/json/__pycache__/"
            "__init__.cpython-313.pyc'") in result.stderr
    assert re.search(r"code object from '[^']*/__pycache__/_sysconfigdata_[^']*\.pyc'",
                     result.stderr)
    listed = json.loads(fetching_opus.cli("pythons", "--json").stdout)
    key = next(row["wheelhouse"] for row in listed if row["fetched"])
    wheels = Path(fetching_opus.env["OPUS_WHEELS_DIR"]) / key
    assert [p.name for p in wheels.iterdir()] == ["mod_wsgi-6.1.1-cp313-cp313-linux_x86_64.whl"]
    assert not wheels.stat().st_mode & 0o022


def test_pythons_lists_it_with_its_user_and_keeps_it_while_used(
        fetching_opus: Opus, pushed: str) -> None:
    listed = json.loads(fetching_opus.cli("pythons", "--json").stdout)
    fetched = [row for row in listed if row["fetched"]]
    assert [(r["version"], r["name"], r["mod_wsgi"], r["used_by"]) for r in fetched] == \
        [("3.13.0", INSTALL, True, {"py313": [1]})]
    host = [row for row in listed if not row["fetched"]]
    assert any(r["default"] and r["path"] == "/usr/bin/python3.11" for r in host), listed
    text = fetching_opus.cli("pythons").stdout
    assert re.search(r"3\.13\.0 +fetched .*mod_wsgi built; used by py313 \(v1\)", text), text
    refused = fetching_opus.cli("pythons:remove", "3.13.0", check=False)
    assert refused.returncode == 5
    assert "Python 3.13.0 (cpython-3.13.0-linux-x86_64-gnu) is used by py313 (v1)" in \
        refused.stderr
    assert (fetching_opus.home / "pythons" / INSTALL).is_dir()
    host_one = fetching_opus.cli("pythons:remove", "3.11.2", check=False)
    assert host_one.returncode == 2 and "the host's own" in host_one.stderr
    again = fetching_opus.cli("pythons:install", "3.13")
    assert f"{INSTALL} is installed already" in again.stdout
    assert "Downloading" not in again.stdout and "Building" not in again.stdout


def cli_with(opus: Opus, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`opus ARGS` on this Opus's home with other settings (OPUS_* overrides)."""
    env = {**opus.env, **{f"OPUS_{k.upper()}": v for k, v in settings.items()}}
    env = {k: v for k, v in env.items() if v}
    return subprocess.run([sys.executable, "-m", "opus_paas", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_fetches_that_must_fail_say_why_and_install_nothing(
        opus: Opus, mirror: python_mirror.Mirror, tmp_path: Path) -> None:
    """On the session's Opus, with other sources set and a place for fetched interpreters
    of its own (the session's is shared with the tests' cache, which may hold 3.13)."""
    pythons = tmp_path / "pythons"
    closed = f"http://127.0.0.1:{free_port()}/downloads.json"
    cases = [
        ({"python_downloads": mirror.wrong_checksum},
         rf"Python 3\.13 from the download list {re.escape(mirror.wrong_checksum)} does "
         r"not match its sha256 \(expected 0000000000000000…, got [0-9a-f]{16}…\); nothing "
         r"was installed\. The operator: check the file on the mirror"),
        ({"python_downloads": mirror.unchecked},
         rf"the download list {re.escape(mirror.unchecked)} gives no sha256 for {INSTALL}: "
         r"Opus installs no interpreter it cannot verify"),
        # The real 3.13.0's place on a python-build-standalone mirror holds this repackaged
        # build: uv's own checksum of the real one refuses it.
        ({"python_mirror": mirror.url},
         rf"Python 3\.13\.0 from the mirror {re.escape(mirror.url)} does not match its "
         r"sha256 \(expected b5e74d1e16402b63…"),
        ({"python_downloads": closed},
         rf"Python 3\.13 could not be downloaded from the download list "
         rf"{re.escape(closed)}: Failed to fetch: .*Connection refused.*The operator: make "
         r"sure this host reaches it, or set python_mirror"),
    ]
    for settings, said in cases:
        version = "3.13.0" if "python_mirror" in settings else "3.13"
        result = cli_with(opus, "pythons:install", version, pythons_dir=str(pythons),
                          **settings)
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 6, (settings, output)
        assert re.search(said, output), (settings, output)
    assert not pythons.exists() or not any(pythons.iterdir())
    assert not any((opus.home / "staging" / "pythons").glob("*"))


def test_a_push_asking_for_a_version_the_source_lacks_is_rejected(
        fetching_opus: Opus, key: SshKey, tmp_path: Path, pushed: str) -> None:
    project = project_asking_for(tmp_path, "py312", "3.12", fetching_opus)
    result = git(project, "push", "opus", "main", env=key.git_env(fetching_opus), check=False)
    output = " ".join(result.stdout.replace("remote:", "").split()) + result.stderr
    assert result.returncode != 0 and "[remote rejected] main -> main" in result.stderr
    assert (f"the download list {fetching_opus.env['OPUS_PYTHON_DOWNLOADS']} has no build of "
            "Python 3.12 for this host. The operator: add one there") in output, output
    assert "pythons:install" in output or "OPUS_PYTHONS" in output
    assert fetching_opus.get("py312.localhost")[0] == 404


def test_over_ssh_developers_list_and_only_admins_install_or_remove(
        fetching_opus: Opus, key: SshKey, tmp_path: Path, pushed: str) -> None:
    developer = make_key(tmp_path, "pydev")
    fetching_opus.cli("keys:add", "pydev", str(developer.public))
    listed = ssh(fetching_opus, developer, "pythons")
    assert listed.returncode == 0 and "3.13.0    fetched" in listed.stdout, listed.stderr
    for argv in (["pythons:install", "3.13"], ["pythons:remove", "3.13.0"]):
        refused = ssh(fetching_opus, developer, *argv)
        assert refused.returncode == 4 and "only an admin may" in refused.stderr, argv
    for hostile in ("3.13; id", "../3.13", "3.9", "-rf", "cpython-3.13", "3.13.0/../.."):
        refused = ssh(fetching_opus, key, "pythons:install", hostile)
        assert refused.returncode == 2, (hostile, refused.stderr)
        assert "is not a version Opus fetches; give 3.10 to 3.14" in refused.stderr
        removal = ssh(fetching_opus, key, "pythons:remove", hostile)
        assert removal.returncode == 2 and "names no interpreter" in removal.stderr, \
            (hostile, removal.stderr)
    assert (fetching_opus.home / "pythons" / INSTALL).is_dir()


def test_pythons_names_to_a_developer_only_the_apps_they_may_use(
        opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    """On the session's Opus: an app's kept release built on the host's Python is named
    to its owner and to admins, never to another developer."""
    owner, stranger = make_key(tmp_path, "pyowner"), make_key(tmp_path, "pystranger")
    for name, made in (("pyowner", owner), ("pystranger", stranger)):
        opus.cli("keys:add", name, str(made.public))
    assert ssh(opus, owner, "apps:create", "pyhidden").returncode == 0
    slug = opus.home / "apps" / "pyhidden" / "releases" / "v1"
    (slug / ".opus").mkdir(parents=True)
    (slug / ".opus" / "build.json").write_text(json.dumps(
        {"process_types": {}, "interpreter": "/usr/bin/python3.11"}))
    for key, sees in ((owner, True), (admin_key, True), (stranger, False)):
        listed = ssh(opus, key, "pythons", "--json")
        assert listed.returncode == 0, listed.stderr
        used = {app for row in json.loads(listed.stdout) for app in row["used_by"]}
        assert ("pyhidden" in used) is sees, (key.private.name, used)
        assert ("pyhidden" in ssh(opus, key, "pythons").stdout) is sees
