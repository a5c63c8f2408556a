"""The Python buildpack (buildpacks/python): pure functions, then real builds with uv.

The end-to-end builds use a persistent uv cache (``OPUS_TEST_CACHE`` or ~/.cache/opus-test),
so only the first run compiles mod_wsgi.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opus_buildpack import (
    django,
    main,
    packages,
    python_version,
)
from opus_buildpack.buildinfo import (
    BuildInfo,
    read_build_info,
    render_release,
    write_build_info,
)
from opus_buildpack.detect import is_python_app, not_detected_message
from opus_buildpack.envdir import filter_config, flag_set, read_env_dir
from opus_buildpack.errors import BuildError
from opus_buildpack.output import Output, format_alert, format_detail
from opus_buildpack.python_version import Interpreter, Request
from opus_runtime.bootstrap import load_env_file, prepare
from opus_runtime.overlay import (
    OverlayError,
    build_overrides,
    csrf_origins,
    parse_bool,
    parse_database_url,
    split_list,
)

from tests.buildpack.conftest import SYSTEM_PYTHON, run_bin, run_compile, touch

PG = "django.db.backends.postgresql"


# --- output -------------------------------------------------------------------------------


def test_output_styles() -> None:
    stream = io.StringIO()
    out = Output(stream)
    out.step("Installing")
    out.detail("one\ntwo")
    out.alert("It broke.", ["Do this."])
    assert stream.getvalue().splitlines() == [
        "-----> Installing",
        "       one",
        "       two",
        "",
        " !     It broke.",
        " !",
        " !     Do this.",
        "",
    ]


def test_detail_of_empty_text_is_a_blank_line() -> None:
    assert format_detail("") == [""]
    assert format_alert("x")[0] == "" and format_alert("x")[-1] == ""


# --- manage.py and settings discovery -----------------------------------------------------

STARTPROJECT_MANAGE_PY = '''#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def main():
    """Run administrative tasks."""
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')
    try:
        from django.core.management import execute_from_command_line
    except ImportError as exc:
        raise ImportError("Couldn't import Django.") from exc
    execute_from_command_line(sys.argv)
'''


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (STARTPROJECT_MANAGE_PY, "mysite.settings"),
        ('os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.prod")',
         "config.settings.prod"),
        ('os.environ.setdefault(\n    "DJANGO_SETTINGS_MODULE",\n    "mysite.settings",\n)',
         "mysite.settings"),
        ("from os import environ\nenviron.setdefault('DJANGO_SETTINGS_MODULE', 'a.b')", "a.b"),
        ('os.environ["DJANGO_SETTINGS_MODULE"] = "proj.settings"', "proj.settings"),
        ('# os.environ.setdefault("DJANGO_SETTINGS_MODULE", "old.settings")\n'
         'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "new.settings")', "new.settings"),
        ('os.environ.setdefault("DJANGO_SETTINGS_MODULE", \'mixed.settings")', None),
        ('os.environ.setdefault("DJANGO_SETTINGS_MODULE", f"{name}.settings")', None),
        ('os.environ.setdefault("DJANGO_SETTINGS_MODULE", "x; import os")', None),
        ('os.environ.setdefault("DJANGO_SETTINGS_MODULE", "../etc/passwd")', None),
        ('os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysité.settings")', None),
        ('os.environ.setdefault("OTHER", "mysite.settings")', None),
        ("", None),
    ],
)
def test_parse_settings_module(text: str, expected: str | None) -> None:
    assert django.parse_settings_module(text) == expected


def test_find_manage_py_prefers_shallowest_and_skips_vendored_dirs(tmp_path: Path) -> None:
    for skipped in (".git", ".opus", "node_modules", "venv", "my env"):
        touch(tmp_path / skipped / "manage.py")
    touch(tmp_path / "custom-venv" / "pyvenv.cfg")
    touch(tmp_path / "custom-venv" / "manage.py")
    assert django.find_manage_py(tmp_path) is None
    touch(tmp_path / "b" / "c" / "manage.py")
    touch(tmp_path / "z" / "manage.py")
    touch(tmp_path / "a" / "manage.py")
    assert django.find_manage_py(tmp_path) == tmp_path / "a" / "manage.py"
    touch(tmp_path / "manage.py")
    assert django.find_manage_py(tmp_path) == tmp_path / "manage.py"


def test_find_manage_py_depth_limit_and_symlinks(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "b" / "c" / "d" / "manage.py")
    assert django.find_manage_py(tmp_path) is None
    touch(tmp_path / "a" / "b" / "c" / "manage.py")
    assert django.find_manage_py(tmp_path) == tmp_path / "a" / "b" / "c" / "manage.py"
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    touch(outside / "manage.py")
    link_root = tmp_path / "root"
    link_root.mkdir()
    (link_root / "link").symlink_to(outside)
    assert django.find_manage_py(link_root) is None


@pytest.mark.parametrize(
    ("settings_module", "files", "expected"),
    [
        ("mysite.settings", {"mysite/wsgi.py"}, "mysite.wsgi"),
        ("mysite.settings", set(), None),
        ("config.settings.prod", {"config/wsgi.py"}, "config.wsgi"),
        ("config.settings.prod", {"config/settings/wsgi.py", "config/wsgi.py"},
         "config.settings.wsgi"),
        ("settings", {"wsgi.py"}, None),
        ("mysite.settings", {"mysite/wsgi/__init__.py"}, "mysite.wsgi"),
    ],
)
def test_find_wsgi_module(settings_module: str, files: set[str], expected: str | None) -> None:
    root = Path("/app")

    def is_file(path: Path) -> bool:
        return path.relative_to(root).as_posix() in files

    assert django.find_wsgi_module(root, settings_module, is_file) == expected


def test_collectstatic_command_and_environment() -> None:
    python = Path("/b/.opus/venv/bin/python")
    assert django.collectstatic_command(python, debug=False) == [
        str(python), "manage.py", "collectstatic", "--noinput"]
    assert django.collectstatic_command(python, debug=True)[-1] == "--traceback"
    env = django.collectstatic_environment(
        {"SECRET_KEY": "k", "DJANGO_SETTINGS_MODULE": "evil", "HOME": "/evil"},
        {"PATH": "/usr/bin:/bin", "HOME": "/home/app", "LANG": "C.UTF-8"},
        settings_module="mysite.settings", static_root=Path("/b/.opus/static"),
        data_dir=Path("/tmp/d"),
    )
    assert env == {
        "SECRET_KEY": "k",
        "DJANGO_SETTINGS_MODULE": "opus_runtime.settings",
        "OPUS_USER_SETTINGS_MODULE": "mysite.settings",
        "OPUS_STATIC_ROOT": "/b/.opus/static",
        "OPUS_DATA_DIR": "/tmp/d",
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/app",
        "LANG": "C.UTF-8",
    }


# --- config vars from the env dir ---------------------------------------------------------


def test_filter_config_refuses_loader_and_platform_names() -> None:
    config = filter_config({
        "PATH": "/evil", "LD_PRELOAD": "/evil.so", "LD_LIBRARY_PATH": "/x", "LD_AUDIT": "/x",
        "PYTHONHOME": "/x", "PYTHONPATH": "/x", "PYTHONSTARTUP": "/x", "OPUS_PYTHON": "/x",
        "OPUS_STATIC_ROOT": "/x", "bad-name": "1", "1ABC": "1", "NUL": "a\0b",
        "SECRET_KEY": "s3cret\n", "DEBUG": "1", "PYTHONUNBUFFERED": "1", "path": "ok",
    })
    assert config.env == {"SECRET_KEY": "s3cret\n", "DEBUG": "1", "PYTHONUNBUFFERED": "1",
                          "path": "ok"}
    assert set(config.ignored) == {
        "PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONHOME", "PYTHONPATH",
        "PYTHONSTARTUP", "OPUS_PYTHON", "OPUS_STATIC_ROOT", "bad-name", "1ABC", "NUL"}


def test_read_env_dir(tmp_path: Path) -> None:
    assert read_env_dir(tmp_path / "missing").env == {}
    assert read_env_dir(None).env == {}
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    assert read_env_dir(env_dir).env == {}
    touch(env_dir / "SECRET_KEY", "abc")
    touch(env_dir / "LD_PRELOAD", "/evil.so")
    touch(tmp_path / "target", "linked")
    (env_dir / "LINKED").symlink_to(tmp_path / "target")
    (env_dir / "SUBDIR").mkdir()
    config = read_env_dir(env_dir)
    assert config.env == {"SECRET_KEY": "abc"}
    assert config.ignored == ("LD_PRELOAD",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("yes", True), ("0", False), ("", False), (" ", False), (" 0 ", False)],
)
def test_flag_set(value: str, expected: bool) -> None:
    assert flag_set({"DISABLE_COLLECTSTATIC": value}, "DISABLE_COLLECTSTATIC") is expected
    assert flag_set({}, "DISABLE_COLLECTSTATIC") is False


def test_base_environment_keeps_the_hosts_network_settings_only() -> None:
    from opus_buildpack.envdir import base_environment

    env = base_environment({"PATH": "/p", "HOME": "/h", "LANG": "C.UTF-8",
                            "HTTPS_PROXY": "http://proxy:3128", "SSL_CERT_FILE": "/ca.pem",
                            "LD_PRELOAD": "/evil.so", "SECRET": "x"})
    assert env == {"PATH": "/p", "HOME": "/h", "LANG": "C.UTF-8",
                   "HTTPS_PROXY": "http://proxy:3128", "SSL_CERT_FILE": "/ca.pem"}


def test_uv_environment_keeps_build_settings_fixed() -> None:
    env = packages.uv_environment(
        {"PATH": "/opt/uv:/usr/bin:/bin", "HOME": "/h", "LANG": "C.UTF-8"},
        {"UV_CACHE_DIR": "/evil", "UV_INDEX_URL": "https://idx.example/simple", "PATH": "/x",
         "UV_LINK_MODE": "symlink"},
        Path("/cache"),
    )
    assert env["UV_CACHE_DIR"] == "/cache/uv"
    assert env["PATH"] == "/opt/uv:/usr/bin:/bin"
    assert env["UV_INDEX_URL"] == "https://idx.example/simple"
    assert env["UV_LINK_MODE"] == "hardlink"
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    assert env["UV_NO_PROGRESS"] == "1"


# --- interpreter choice -------------------------------------------------------------------


def test_requested_version_from_each_file() -> None:
    ask = python_version.requested_version
    assert ask({".python-version": "# pinned\n3.11\n"}, [".python-version"]) == \
        Request((3, 11), ".python-version")
    assert ask({".python-version": "3.12.1 # exact"}, []) == Request((3, 12, 1), ".python-version")
    assert ask({"runtime.txt": "python-3.11.2\n"}, []) == Request((3, 11, 2), "runtime.txt")
    lock = json.dumps({"_meta": {"requires": {"python_version": "3.11"}}})
    assert ask({"Pipfile.lock": lock}, []) == Request((3, 11), "Pipfile.lock")
    assert ask({"Pipfile.lock": "{not json"}, []) is None
    assert ask({}, ["requirements.txt"]) is None
    # The two files may agree (3.11 and 3.11.2); .python-version wins.
    assert ask({".python-version": "3.11", "runtime.txt": "python-3.11.2"}, []).source == \
        ".python-version"


@pytest.mark.parametrize(("files", "listing", "message"), [
    ({".python-version": "3.11\n3.12\n"}, [], "names several versions"),
    ({".python-version": "\n# nothing\n"}, [], "is empty"),
    ({".python-version": "python-3.11"}, [], r"write just the version: 3\.11"),
    ({".python-version": "3.x"}, [], "not a Python version"),
    ({".python-version": "2.7"}, [], "not a Python version"),
    ({".python-version": "3.11;rm -rf /"}, [], "not a Python version"),
    ({"runtime.txt": "python3.11.2"}, [], "runtime.txt file says"),
    ({".python-version": "3.12", "runtime.txt": "python-3.11.2"}, [], "Keep one"),
    ({}, [".python_version"], r"Found \.python_version .*reads \.python-version"),
    ({}, ["runtime.text"], "git mv runtime.text runtime.txt"),
])
def test_requested_version_errors(files: dict[str, str], listing: list[str],
                                  message: str) -> None:
    with pytest.raises(BuildError) as error:
        python_version.requested_version(files, listing)
    assert re.search(message, error.value.message + " ".join(error.value.hints))


def test_choose_among_installed() -> None:
    old = Interpreter(Path("/usr/bin/python3.11"), (3, 11, 2))
    new = Interpreter(Path("/opt/pyenv/versions/3.12.4/bin/python3"), (3, 12, 4))
    patch = Interpreter(Path("/opt/pyenv/versions/3.11.9/bin/python3"), (3, 11, 9))
    choose = python_version.choose
    assert choose(None, [old, new]) == new
    assert choose(None, [old, new], default=old) == old
    assert choose(Request((3, 11), "x"), [old, new, patch]) == patch
    assert choose(Request((3, 11, 2), "x"), [old, new, patch]) == old
    with pytest.raises(BuildError) as missing:
        choose(Request((3, 8), ".python-version"), [old, new])
    assert "Python 3.8 (from .python-version) is not installed" in missing.value.message
    hints = " ".join(missing.value.hints)
    assert "3.11.2 (/usr/bin/python3.11)" in hints and "OPUS_PYTHONS" in hints
    with pytest.raises(BuildError, match="No Python interpreter"):
        choose(None, [])


def test_interpreters_are_discovered_where_the_host_keeps_them(tmp_path: Path) -> None:
    """Debian's python3.X, pyenv versions and the operator's list, each run to learn its
    version; what cannot run is left out."""
    system = tmp_path / "bin"
    system.mkdir()
    (system / "python3.11").symlink_to(SYSTEM_PYTHON)
    touch(system / "python3.99")                       # not executable: left out
    pyenv = tmp_path / "pyenv" / "versions" / "3.11.2" / "bin"
    pyenv.mkdir(parents=True)
    (pyenv / "python3").symlink_to(SYSTEM_PYTHON)
    listed = tmp_path / "listed-python"
    listed.symlink_to(SYSTEM_PYTHON)
    environ = {"OPUS_PYTHONS": f"{listed}:relative/python"}
    paths = python_version.candidate_paths(environ, system_bin=system,
                                           pyenv_roots=[tmp_path / "pyenv"])
    assert paths == [listed, Path("relative/python"), system / "python3.11",
                     system / "python3.99", pyenv / "python3"]
    found = python_version.installed_interpreters(environ, system_bin=system,
                                                  pyenv_roots=[tmp_path / "pyenv"])
    # One per exact version; the operator's list comes first.
    assert [(i.path, i.version[:2]) for i in found] == [(listed, (3, 11))]
    with pytest.raises(BuildError, match="OPUS_PYTHON=/nope"):
        python_version.default_interpreter({"OPUS_PYTHON": "/nope"}, found)


def test_interpreters_opus_fetched_count_but_do_not_become_the_default(tmp_path: Path) -> None:
    """OPUS_MANAGED_PYTHONS: each installation's bin/python3, marked as fetched. An app
    asking for its version gets it; an app asking for nothing keeps the host's newest."""
    managed = tmp_path / "pythons"
    for name in ("cpython-3.13.0-linux-x86_64-gnu", ".cpython-3.12.0-linux-x86_64-gnu.4.tmp"):
        (managed / name / "bin").mkdir(parents=True)
    fetched = managed / "cpython-3.13.0-linux-x86_64-gnu" / "bin" / "python3"
    environ = {"OPUS_MANAGED_PYTHONS": str(managed)}
    assert python_version.managed_paths(environ) == [fetched]       # a copy in progress: not
    assert python_version.managed_paths({"OPUS_MANAGED_PYTHONS": "relative"}) == []
    assert fetched in python_version.candidate_paths(environ, system_bin=tmp_path / "none",
                                                     pyenv_roots=[])
    host = Interpreter(Path("/usr/bin/python3.11"), (3, 11, 2))
    new = Interpreter(fetched, (3, 13, 0), managed=True)
    choose = python_version.choose
    assert choose(None, [host, new]) == host
    assert choose(None, [new]) == new              # a host without its own: the fetched one
    assert choose(Request((3, 13), ".python-version"), [host, new]) == new
    assert choose(None, [host, new], default=new) == new      # the operator's OPUS_PYTHON
    with pytest.raises(BuildError) as missing:
        choose(Request((3, 9), ".python-version"), [host, new])
    assert "Opus fetches Python 3.10 to 3.14" in " ".join(missing.value.hints)


def test_the_wheelhouse_key_follows_the_interpreters_path() -> None:
    one = Interpreter(Path("/usr/bin/python3.11"), (3, 11, 2))
    assert re.fullmatch(r"cp311-[0-9a-f]{16}", one.wheelhouse_key)
    assert Interpreter(Path("/usr/bin/python3.11"), (3, 11, 9)).wheelhouse_key == \
        one.wheelhouse_key                       # a patch upgrade keeps its wheels
    assert Interpreter(Path("/opt/other/python3"), (3, 11, 2)).wheelhouse_key != \
        one.wheelhouse_key                       # another libpython: wheels of its own


@pytest.mark.parametrize(("files", "request_", "chosen", "problem"), [
    ({}, None, "3.11", None),
    ({".python-version": "3.11\n"}, {"version": "3.11", "source": ".python-version"},
     "3.11", None),
    ({".python-version": "3.13\n"}, {"version": "3.13", "source": ".python-version"},
     None, "Python 3.13 (from .python-version) is not installed on this Opus host."),
    ({"runtime.txt": "python-3.12.1"}, {"version": "3.12.1", "source": "runtime.txt"},
     None, "Python 3.12.1 (from runtime.txt) is not installed on this Opus host."),
    ({".python-version": "three"}, None, None, "which is not a Python version"),
])
def test_bin_interpreter_tells_opus_what_the_build_would_use(
        tmp_path: Path, files: dict[str, str], request_: dict[str, str] | None,
        chosen: str | None, problem: str | None) -> None:
    build = tmp_path / "app"
    for name, text in files.items():
        touch(build / name, text)
    build.mkdir(exist_ok=True)
    touch(build / "requirements.txt", "django\n")
    result = run_bin("interpreter", build, env={"PATH": "/usr/bin:/bin",
                                                "OPUS_PYTHONS": SYSTEM_PYTHON})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["request"] == request_
    assert (report["chosen"]["version"][:4] if report["chosen"] else None) == chosen
    assert (problem or "") in (report["problem"] or "") and bool(problem) == bool(
        report["problem"])
    assert report["mod_wsgi"] == "mod_wsgi==6.1.1"
    assert {"path": SYSTEM_PYTHON, "managed": False} .items() <= report["installed"][0].items()
    assert run_bin("interpreter", build, build, env={"PATH": "/usr/bin:/bin"}).returncode == 2


# --- detect and release -------------------------------------------------------------------


def test_detect_message_lists_root_files() -> None:
    assert is_python_app(["requirements.txt"]) and is_python_app(["manage.py", "x"])
    assert not is_python_app(["src/", "README.md"])
    message, hints = not_detected_message(["README.md", "src/"])
    assert "requirements.txt, runtime.txt" in message
    assert "README.md, src/" in message
    assert any("requirements.txt" in h for h in hints)
    many, _ = not_detected_message([f"f{i}" for i in range(25)])
    assert "and 5 more" in many


def test_release_yaml() -> None:
    plain = BuildInfo(python="/b/.opus/venv/bin/python", python_version="3.11.2")
    assert render_release(plain) == "---\ndefault_process_types: {}\n"
    nested = BuildInfo(python="p", python_version="3.11.2", framework="django",
                       manage_py="src/manage.py", settings_module="mysite.settings")
    assert render_release(nested) == (
        "---\ndefault_process_types:\n  release: python src/manage.py migrate --noinput\n")
    for hostile in ("../manage.py", "a b/manage.py", "manage.py\n  web: evil", "/manage.py"):
        with pytest.raises(BuildError):
            render_release(BuildInfo(python="p", python_version="3", framework="django",
                                     manage_py=hostile))


def test_build_info_round_trip_and_bad_files(tmp_path: Path) -> None:
    (tmp_path / ".opus").mkdir()
    info = BuildInfo(python="/p", python_version="3.11.2")
    write_build_info(tmp_path, info)
    assert read_build_info(tmp_path) == info
    for bad in ("[]", "{", '{"python": 1, "python_version": "3"}', '{"python": "/p"}'):
        (tmp_path / ".opus" / "build.json").write_text(bad)
        with pytest.raises(BuildError):
            read_build_info(tmp_path)
    with pytest.raises(BuildError, match="missing") as missing:
        read_build_info(tmp_path / "nothing")
    assert "bin/compile" in missing.value.hints[0]


def test_main_usage_errors() -> None:
    out = Output(io.StringIO())
    assert main.detect_main([], out) == 2
    assert main.compile_main(["one"], out) == 2
    assert main.compile_main(["/nonexistent-opus-build", "/tmp"], out) == 2
    assert main.release_main([], out) == 2


def test_compile_without_requirements_says_what_to_add(tmp_path: Path) -> None:
    touch(tmp_path / "manage.py", STARTPROJECT_MANAGE_PY)
    stream = io.StringIO()
    code = main.compile_main([str(tmp_path), str(tmp_path / "cache")], Output(stream), {})
    assert code == 1
    assert " !     No package manager file was found at the repository root." in stream.getvalue()


def test_compile_django_no_settings_line_fails_before_installing(tmp_path: Path) -> None:
    touch(tmp_path / "requirements.txt", "django\n")
    touch(tmp_path / "src" / "manage.py", "import sys\nprint(sys.argv)\n")
    stream = io.StringIO()
    code = main.compile_main([str(tmp_path), str(tmp_path / "cache")], Output(stream), {})
    assert code == 1
    output = stream.getvalue()
    assert " !     Could not find DJANGO_SETTINGS_MODULE in src/manage.py." in output
    assert 'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")' in output
    assert "-----> Creating virtualenv" not in output


# --- runtime overlay ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("TRUE", True), (" Yes ", True), ("on", True),
     ("0", False), ("false", False), ("", False), ("no", False), ("2", False), ("y", False)],
)
def test_parse_bool(value: str, expected: bool) -> None:
    assert parse_bool(value) is expected


def test_hosts_and_csrf_origins() -> None:
    hosts = split_list(" example.com, ,*.example.org,.example.net,127.0.0.1,* ")
    assert hosts == ["example.com", "*.example.org", ".example.net", "127.0.0.1", "*"]
    assert csrf_origins(hosts) == [
        "http://example.com", "https://example.com", "http://127.0.0.1", "https://127.0.0.1"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////var/lib/app/db.sqlite3",
         {"ENGINE": "django.db.backends.sqlite3", "NAME": "/var/lib/app/db.sqlite3"}),
        ("sqlite://", {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}),
        ("sqlite:////data/my%20db.sqlite3",
         {"ENGINE": "django.db.backends.sqlite3", "NAME": "/data/my db.sqlite3"}),
        ("postgres://app:secret@db.internal:5433/appdb",
         {"ENGINE": PG, "NAME": "appdb", "USER": "app", "PASSWORD": "secret",
          "HOST": "db.internal", "PORT": "5433"}),
        ("postgresql://u%40x:p%3Aa%2Fs%40s%23@DB.Example.com/n",
         {"ENGINE": PG, "NAME": "n", "USER": "u@x", "PASSWORD": "p:a/s@s#",
          "HOST": "DB.Example.com", "PORT": ""}),
        ("postgres://u:pa:ss@h/n",
         {"ENGINE": PG, "NAME": "n", "USER": "u", "PASSWORD": "pa:ss", "HOST": "h", "PORT": ""}),
        ("postgres://u:p@ss@h/n",
         {"ENGINE": PG, "NAME": "n", "USER": "u", "PASSWORD": "p@ss", "HOST": "h", "PORT": ""}),
        ("postgres://%2Fvar%2Frun%2Fpostgresql/appdb",
         {"ENGINE": PG, "NAME": "appdb", "USER": "", "PASSWORD": "",
          "HOST": "/var/run/postgresql", "PORT": ""}),
        ("postgres://u@[::1]:5432/n",
         {"ENGINE": PG, "NAME": "n", "USER": "u", "PASSWORD": "", "HOST": "::1",
          "PORT": "5432"}),
        ("POSTGRES://u@h/n?sslmode=require&application_name=opus",
         {"ENGINE": PG, "NAME": "n", "USER": "u", "PASSWORD": "", "HOST": "h", "PORT": "",
          "OPTIONS": {"sslmode": "require", "application_name": "opus"}}),
        ("mysql://root:pw@localhost:3306/shop",
         {"ENGINE": "django.db.backends.mysql", "NAME": "shop", "USER": "root",
          "PASSWORD": "pw", "HOST": "localhost", "PORT": "3306"}),
    ],
)
def test_parse_database_url(url: str, expected: dict[str, Any]) -> None:
    assert parse_database_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///relative.db", "four slashes"),
        ("redis://h/0", "not supported"),
        ("postgres://h:notaport/n", "invalid port"),
        ("postgres://h:0/n", "invalid port"),
        ("postgres://h:99999/n", "invalid port"),
        ("postgres://h", "no database name"),
        ("postgres://h/", "no database name"),
        ("postgres://h/n\r\nX-Injected: 1", "control characters"),
        ("not a url", "scheme://"),
        ("", "scheme://"),
    ],
)
def test_parse_database_url_rejects(url: str, message: str) -> None:
    with pytest.raises(OverlayError, match=message):
        parse_database_url(url)


def test_overrides_from_a_full_environment() -> None:
    user: dict[str, Any] = {
        "DATABASES": {"default": {"ENGINE": "x"}, "replica": {"ENGINE": "y"}},
        "CSRF_TRUSTED_ORIGINS": ["https://admin.example.com"],
        "DEBUG": True,
    }
    o = build_overrides({
        "OPUS_ALLOWED_HOSTS": "app.example.com,*.example.com",
        "SECRET_KEY": "k", "DEBUG": "yes", "DATABASE_URL": "postgres://u:p@h/n",
        "OPUS_STATIC_ROOT": "/b/.opus/static", "OPUS_DATA_DIR": "/srv/data/",
    }, user)
    assert o["ALLOWED_HOSTS"] == ["app.example.com", "*.example.com"]
    assert o["CSRF_TRUSTED_ORIGINS"] == [
        "https://admin.example.com", "http://app.example.com", "https://app.example.com"]
    assert o["SECRET_KEY"] == "k" and o["DEBUG"] is True
    assert o["DATABASES"]["default"]["NAME"] == "n"
    assert o["DATABASES"]["replica"] == {"ENGINE": "y"}
    assert user["DATABASES"]["default"] == {"ENGINE": "x"}  # the app's dict is not mutated
    assert o["STATIC_URL"] == "/static/" and o["STATIC_ROOT"] == "/b/.opus/static"
    assert o["MEDIA_ROOT"] == "/srv/data/media" and o["MEDIA_URL"] == "/media/"
    assert o["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert o["LOGGING"]["handlers"]["stdout"]["stream"] == "ext://sys.stdout"
    assert o["LOGGING"]["loggers"]["django"]["level"] == "INFO"


def test_overrides_defaults_and_disabling() -> None:
    o = build_overrides({}, {"DEBUG": True})
    assert o["DEBUG"] is False
    assert not {"ALLOWED_HOSTS", "SECRET_KEY", "DATABASES", "STATIC_ROOT", "MEDIA_ROOT"} & set(o)
    o = build_overrides({"OPUS_DATA_DIR": "/d"}, {})
    assert o["DATABASES"] == {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/d/db.sqlite3"}}
    o = build_overrides({"OPUS_DATA_DIR": "/d", "OPUS_ALLOWED_HOSTS": "h",
                         "OPUS_DISABLE_OVERRIDES": "databases, ALLOWED_HOSTS,DEBUG"}, {})
    assert not {"DATABASES", "ALLOWED_HOSTS", "DEBUG"} & set(o)
    assert o["CSRF_TRUSTED_ORIGINS"] == ["http://h", "https://h"]


def test_wsgi_bootstrap(tmp_path: Path) -> None:
    env_file = touch(tmp_path / "env.json", json.dumps({"SECRET_KEY": "a'b\"c $x", "X": ""}))
    environ = {"OPUS_ENV_FILE": str(env_file), "OPUS_APP_ROOT": "/app/src",
               "OPUS_USER_SETTINGS_MODULE": "mysite.settings", "OPUS_WSGI_MODULE": "mysite.wsgi"}
    path = ["/lib", "/app/src"]
    assert prepare(environ, path) == ("mysite.wsgi", "application")
    assert path == ["/app/src", "/lib"]
    assert environ["SECRET_KEY"] == "a'b\"c $x" and environ["X"] == ""
    assert environ["DJANGO_SETTINGS_MODULE"] == "opus_runtime.settings"
    plain = {"OPUS_WSGI_MODULE": "app"}
    assert prepare(plain, []) == ("app", "application") and "DJANGO_SETTINGS_MODULE" not in plain
    with pytest.raises(RuntimeError, match="OPUS_WSGI_MODULE"):
        prepare({}, [])
    for bad in ("[]", '{"A": 1}', '{"A=B": "x"}', '{"": "x"}'):
        env_file.write_text(bad)
        with pytest.raises(RuntimeError, match="JSON object"):
            load_env_file(str(env_file))


# --- real builds ----------------------------------------------------------------------------


def startproject(root: Path, requirements: str = "django>=5.2,<5.3\n") -> Path:
    """``django-admin startproject mysite .`` in ``root``, plus a ``blog`` app with static."""
    root.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", "."],
                   cwd=root, check=True)
    settings = root / "mysite" / "settings.py"
    text = settings.read_text()
    patched = re.sub(r"(['\"])django.contrib.staticfiles\1,",
                     r"\g<0>\n    'blog',", text, count=1)
    assert patched != text
    settings.write_text(patched)
    touch(root / "blog" / "__init__.py")
    touch(root / "blog" / "static" / "blog" / "site.css", "body { color: #123; }\n")
    touch(root / "requirements.txt", requirements)
    return root


@pytest.fixture(scope="module")
def django_startproject(
    tmp_path_factory: pytest.TempPathFactory, build_env: dict[str, str], cache_dir: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    build = startproject(tmp_path_factory.mktemp("django_startproject") / "app")
    config = {"SECRET_KEY": "build-secret", "PATH": "/evil", "LD_PRELOAD": "/evil.so"}
    return build, run_compile(build, cache_dir, build_env, config)


def test_compile_django_startproject(
    django_startproject: tuple[Path, subprocess.CompletedProcess[str]], build_env: dict[str, str]
) -> None:
    build, result = django_startproject
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout
    for step in ("-----> Python app detected", "-----> Creating virtualenv",
                 "-----> Installing dependencies with pip (requirements.txt), using uv",
                 "-----> Installing mod_wsgi==6.1.1",
                 "       Django app: manage.py, settings mysite.settings",
                 "-----> Using Python 3.11.",
                 "-----> Production settings put over mysite.settings: ALLOWED_HOSTS, ",
                 "-----> Running python manage.py collectstatic --noinput"):
        assert step in output
    assert " !     Ignoring config vars during the build: LD_PRELOAD, PATH" in output
    assert re.search(r"^       Dependencies ready in \d+\.\d s$", output, re.M)
    assert re.search(r"^        \+ django==5\.2\.", output, re.M)  # uv's output, relayed
    venv_python = build / ".opus" / "venv" / "bin" / "python"
    info = json.loads((build / ".opus" / "build.json").read_text())
    assert info == {
        "python": str(venv_python),
        "python_version": info["python_version"],
        "interpreter": SYSTEM_PYTHON,
        "framework": "django",
        "manage_py": "manage.py",
        "settings_module": "mysite.settings",
        "default_settings_module": "mysite.settings",
        "wsgi_module": "mysite.wsgi",
        "wsgi_callable": "application",
        "static_root": str(build / ".opus" / "static"),
        "app_root": ".",
        "web_command": None,
        "process_types": {},
        "auto_migrate": True,
    }
    assert re.fullmatch(r"3\.11\.\d+", info["python_version"])
    assert (build / ".opus" / "static" / "blog" / "site.css").read_text().startswith("body")
    assert (build / ".opus" / "static" / "admin").is_dir()
    express = build / ".opus" / "venv" / "bin" / "mod_wsgi-express"
    module_config = subprocess.run([str(express), "module-config"], env=build_env,
                                   capture_output=True, text=True, check=True)
    # The venv is the content-addressed environment in the app's cache, linked in.
    env = (build / ".opus" / "venv").resolve()
    assert (build / ".opus" / "venv").is_symlink() and env.parent.name == "envs"
    assert f'WSGIPythonHome "{env}"' in module_config.stdout
    release = run_bin("release", build, env=build_env)
    assert release.returncode == 0, release.stdout
    assert release.stdout == (
        "---\ndefault_process_types:\n  release: python manage.py migrate --noinput\n")


def test_built_app_serves_through_the_runtime(
    django_startproject: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    build, result = django_startproject
    assert result.returncode == 0, result.stdout
    env_file = touch(tmp_path / "env.json", json.dumps(
        {"SECRET_KEY": "runtime-secret", "OPUS_ALLOWED_HOSTS": "127.0.0.1,.example.com"}))
    probe = """
import json
from wsgiref.util import setup_testing_defaults
import opus_runtime.wsgi
from django.conf import settings
environ = {}
setup_testing_defaults(environ)
statuses = []
b"".join(opus_runtime.wsgi.application(environ, lambda s, h, e=None: statuses.append(s)))
print(json.dumps({"status": statuses[0], "hosts": settings.ALLOWED_HOSTS,
    "origins": settings.CSRF_TRUSTED_ORIGINS, "secret": settings.SECRET_KEY,
    "debug": settings.DEBUG, "db": settings.DATABASES["default"]["NAME"],
    "static": str(settings.STATIC_ROOT)}))
"""
    env = {"PATH": "/usr/bin:/bin", "OPUS_ENV_FILE": str(env_file), "OPUS_APP_ROOT": str(build),
           "OPUS_USER_SETTINGS_MODULE": "mysite.settings", "OPUS_WSGI_MODULE": "mysite.wsgi",
           "OPUS_DATA_DIR": str(tmp_path), "OPUS_STATIC_ROOT": str(build / ".opus" / "static")}
    run = subprocess.run([str(build / ".opus" / "venv" / "bin" / "python"), "-c", probe],
                         env=env, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.splitlines()[-1])
    assert seen == {
        "status": "404 Not Found",  # the host was allowed: a disallowed one would be 400
        "hosts": ["127.0.0.1", ".example.com"],
        "origins": ["http://127.0.0.1", "https://127.0.0.1"],
        "secret": "runtime-secret",
        "debug": False,
        "db": f"{tmp_path}/db.sqlite3",
        "static": str(build / ".opus" / "static"),
    }
    assert "WARNING django.request: Not Found: /" in run.stdout  # LOGGING goes to stdout


def test_compile_pip_invalid_requirement(
    tmp_path: Path, build_env: dict[str, str], cache_dir: Path
) -> None:
    build = tmp_path / "pip_invalid_requirement"
    touch(build / "requirements.txt", "this-package-does-not-exist-opus==1.0\n")
    result = run_compile(build, cache_dir, build_env)
    assert result.returncode == 1
    assert "       " in result.stdout  # uv's own explanation, relayed
    assert "\n\n !     Could not install the packages in requirements.txt" in result.stdout
    assert not (build / ".opus" / "build.json").exists()


def test_compile_django_nested_without_collectstatic(
    tmp_path: Path, build_env: dict[str, str], cache_dir: Path
) -> None:
    build = tmp_path / "django_nested"
    startproject(build / "src")
    (build / "src" / "requirements.txt").rename(build / "requirements.txt")
    result = run_compile(build, cache_dir, build_env, {"DISABLE_COLLECTSTATIC": "1"})
    assert result.returncode == 0, result.stdout
    assert "-----> Skipping collectstatic: DISABLE_COLLECTSTATIC is set" in result.stdout
    info = json.loads((build / ".opus" / "build.json").read_text())
    assert info["manage_py"] == "src/manage.py" and info["static_root"] is None
    release = run_bin("release", build, env=build_env)
    assert "  release: python src/manage.py migrate --noinput\n" in release.stdout


def test_compile_django_collectstatic_failure_names_the_fix(
    tmp_path: Path, build_env: dict[str, str], cache_dir: Path
) -> None:
    build = startproject(tmp_path / "django_collectstatic_broken")
    manifest = "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
    with (build / "mysite" / "settings.py").open("a") as settings:
        settings.write(f"\nSTORAGES = {{'staticfiles': {{'BACKEND': '{manifest}'}}}}\n")
    touch(build / "blog" / "static" / "blog" / "broken.css", 'a { background: url("gone.png") }')
    result = run_compile(build, cache_dir, build_env)
    assert result.returncode == 1
    assert "gone.png" in result.stdout  # Django's own error, relayed
    assert " !     python manage.py collectstatic --noinput failed." in result.stdout
    assert "DISABLE_COLLECTSTATIC=1" in result.stdout
    assert "DEBUG_COLLECTSTATIC=1" in result.stdout


def test_compile_python_without_django(
    tmp_path: Path, build_env: dict[str, str], cache_dir: Path
) -> None:
    build = tmp_path / "python_no_django"
    touch(build / "requirements.txt", "")
    touch(build / ".opus" / "static" / "pushed.txt", "a pushed .opus is not trusted")
    result = run_compile(build, cache_dir, build_env)
    assert result.returncode == 0, result.stdout
    assert "-----> No manage.py found: skipping the Django steps" in result.stdout
    info = json.loads((build / ".opus" / "build.json").read_text())
    assert info["framework"] is None and info["manage_py"] is None
    assert not (build / ".opus" / "static").exists()
    assert run_bin("release", build, env=build_env).stdout == (
        "---\ndefault_process_types: {}\n")


def test_detect(tmp_path: Path, build_env: dict[str, str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_bin("detect", empty, env=build_env)
    assert result.returncode == 100
    assert " !     No Python app detected." in result.stdout
    assert "requirements.txt, runtime.txt" in result.stdout
    assert "The repository root is empty." in result.stdout
    touch(empty / "README.md")
    assert "Files at the repository root: README.md" in run_bin(
        "detect", empty, env=build_env).stdout
    touch(empty / "manage.py")
    result = run_bin("detect", empty, env=build_env)
    assert (result.returncode, result.stdout) == (0, "Python\n")


# --- Procfile -------------------------------------------------------------------------------


def test_procfile_parsing() -> None:
    from opus_buildpack import procfile

    text = "# c\nweb: gunicorn x\n\nrelease: python manage.py migrate\nworker_2-a:  run  \n"
    assert procfile.parse(text) == {"web": "gunicorn x", "release": "python manage.py migrate",
                                    "worker_2-a": "run"}


@pytest.mark.parametrize(("text", "line"), [
    ("web", 1), ("web:", 1), ("# ok\nwe b: x", 2), ("web: a\nweb: b", 2), ("web;id: x", 1),
    ("$(id): x", 1), ("w\u00e9b: x", 1), (f"{'w' * 64}: x", 1), ("../web: x", 1),
])
def test_bad_procfiles_name_the_line(text: str, line: int) -> None:
    from opus_buildpack import procfile

    with pytest.raises(BuildError, match=f"Procfile line {line}"):
        procfile.parse(text)


@pytest.mark.parametrize(("command", "expected"), [
    ("gunicorn mysite.wsgi", ("mysite.wsgi", "application", "gunicorn", None)),
    ("gunicorn mysite.wsgi:application --log-file -", ("mysite.wsgi", "application",
                                                      "gunicorn", None)),
    ("gunicorn -w 3 -b 0.0.0.0:$PORT --chdir src app:server", ("app", "server", "gunicorn",
                                                                "src")),
    ("FOO=1 python -m gunicorn hello:app", ("hello", "app", "gunicorn", None)),
    ("waitress-serve --port=$PORT hello:app", ("hello", "app", "waitress-serve", None)),
    ("uwsgi --http :$PORT --module mysite.wsgi:application", ("mysite.wsgi", "application",
                                                              "uwsgi", None)),
    ("uwsgi --http :$PORT --wsgi-file mysite/wsgi.py", ("mysite.wsgi", "application", "uwsgi",
                                                        None)),
    ("mod_wsgi-express start-server mysite/wsgi.py --port $PORT", ("mysite.wsgi",
                                                                   "application",
                                                                   "mod_wsgi-express", None)),
])
def test_wsgi_targets_of_known_servers(command: str, expected: tuple[object, ...]) -> None:
    from opus_buildpack import procfile

    target = procfile.wsgi_target(command)
    assert target is not None
    assert (target.module, target.callable, target.server, target.chdir) == expected


@pytest.mark.parametrize("command", [
    "uvicorn main:app --port $PORT", "daphne -p $PORT mysite.asgi:application",
    "gunicorn 'app:create_app()'", "gunicorn -c gunicorn.conf.py", "waitress-serve --call a:f",
    "gunicorn a:b c:d", "gunicorn ../x:app", "gunicorn 'x;id:app'", "gunicorn \"unclosed",
    "uwsgi --ini uwsgi.ini", "uwsgi ./etc/uwsgi.ini", "python app.py", "",
])
def test_other_web_commands_run_as_written(command: str) -> None:
    from opus_buildpack import procfile

    assert procfile.wsgi_target(command) is None


def test_bin_interpreter_follows_no_link_chain_out_of_the_build(tmp_path: Path) -> None:
    """Opus runs bin/interpreter on the pushed tree as itself: a chain of links (each
    inside the tree on its own) must not show it a file of another app or the host's."""
    secret = touch(tmp_path / "other-app" / "secret", "3.12 other-apps-secret-token\n")
    build = tmp_path / "app"
    touch(build / "requirements.txt", "django\n")
    (build / "d").mkdir()
    (build / "d" / "u").symlink_to("..")
    (build / "p1").symlink_to("d/u/..")
    (build / ".python-version").symlink_to("p1/other-app/secret")
    assert (build / ".python-version").read_text() == secret.read_text()   # the kernel would
    result = run_bin("interpreter", build, env={"PATH": "/usr/bin:/bin",
                                                "OPUS_PYTHONS": SYSTEM_PYTHON})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "other-apps-secret-token" not in result.stdout
    assert report["problem"].startswith(
        ".python-version is a link that leads outside the app's repository.")
    # A link that stays inside is read as before.
    (build / ".python-version").unlink()
    touch(build / "config" / "python-version", "3.11\n")
    (build / ".python-version").symlink_to("d/u/config/python-version")
    inside = json.loads(run_bin("interpreter", build, env={
        "PATH": "/usr/bin:/bin", "OPUS_PYTHONS": SYSTEM_PYTHON}).stdout)
    assert inside["request"] == {"version": "3.11", "source": ".python-version"}


# The shape of a real one (Wagtail's bakerydemo serves itself this way on Heroku).
UWSGI_INI = """\
; served by uwsgi on Heroku
[uwsgi]
http-socket=:$(PORT)
master=true
virtualenv=$(VIRTUAL_ENV)
static-map=/media/=/code/site/media/
wsgi-file=site/wsgi.py

[other]
module = elsewhere.wsgi
"""


@pytest.mark.parametrize(("command", "files", "expected"), [
    ("uwsgi ./etc/uwsgi.ini", {"etc/uwsgi.ini": UWSGI_INI},
     ("site.wsgi", "application", None, ("static-map", "virtualenv"))),
    ("uwsgi --ini etc/uwsgi.ini:other", {"etc/uwsgi.ini": UWSGI_INI},
     ("elsewhere.wsgi", "application", None, ())),
    ("uwsgi --ini=u.ini", {"u.ini": "[uwsgi]\nchdir = src\nmodule = %(proj).wsgi:app\n"
                                    "proj=$(NOT_SET)x\nenv = A=1\n"},
     (".wsgi", None, None, None)),       # %(proj) is not set yet where module= reads it
    ("uwsgi --ini=u.ini", {"u.ini": "[uwsgi]\nproj = $(PROJECT)\nchdir = /code\n"
                                    "module = %(proj).wsgi:app\nenv = A=1\n"},
     ("mysite.wsgi", "app", None, ("env",))),
    ("uwsgi u.ini", {"u.ini": "[uwsgi]\nchdir=src\nwsgi-file = ../x.py\n"}, None),
    ("uwsgi u.ini", {"u.ini": "[uwsgi]\nmodule = x;id\n"}, None),
    ("uwsgi missing.ini", {}, None),
    ("uwsgi u.ini", {"u.ini": "module = top.wsgi\n"}, None),   # outside any section
])
def test_a_uwsgi_ini_file_gives_the_target(command: str, files: dict[str, str],
                                           expected: tuple[object, ...] | None) -> None:
    from opus_buildpack import procfile

    target = procfile.wsgi_target(command, files.get, {"PROJECT": "mysite"})
    if expected is None or expected[1] is None:
        assert target is None
    else:
        assert (target.module, target.callable, target.chdir, target.ignored) == expected


def test_the_ini_reader_reads_plain_repository_files_only(tmp_path: Path) -> None:
    from opus_buildpack.main import repo_reader

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "uwsgi.ini").write_text(UWSGI_INI)
    (tmp_path / "linked").symlink_to(tmp_path / "etc")
    (tmp_path / "passwd.ini").symlink_to("/etc/passwd")
    read = repo_reader(tmp_path)
    assert read("./etc/uwsgi.ini") == read("etc/uwsgi.ini") == UWSGI_INI
    for hostile in ("linked/uwsgi.ini", "passwd.ini", "/etc/passwd", "../x.ini",
                    "etc/../etc/uwsgi.ini", "etc", "nothing.ini", "etc/uwsgi.ini\n"):
        assert read(hostile) is None, hostile


# --- a DJANGO_SETTINGS_MODULE config var (cookiecutter-django's production settings) ------


def settings_tree(root: Path, manage_names: str | None = "config.settings.local") -> Path:
    """manage.py and config/settings/{base,local,production}.py, as cookiecutter-django
    lays them out; manage.py names `manage_names` (None: no such line)."""
    line = (f'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "{manage_names}")\n'
            if manage_names else "")
    touch(root / "manage.py", f"import os\n{line}")
    for name in ("__init__", "base", "local", "production"):
        touch(root / "config" / "settings" / f"{name}.py")
    touch(root / "config" / "__init__.py")
    touch(root / "config" / "wsgi.py")
    return root


def test_a_settings_module_config_var_chooses_the_settings(tmp_path: Path) -> None:
    root = settings_tree(tmp_path)
    out = Output(stream=io.StringIO())
    app = main.find_django_app(root, out, {"DJANGO_SETTINGS_MODULE":
                                           "config.settings.production"})
    assert app is not None
    assert (app.settings_module, app.default_settings, app.wsgi_module) == (
        "config.settings.production", "config.settings.local", "config.wsgi")
    assert "settings config.settings.production (the DJANGO_SETTINGS_MODULE config var)" \
        in out.stream.getvalue()
    unset = main.find_django_app(root, out, {"DJANGO_SETTINGS_MODULE": ""})
    assert unset is not None and unset.settings_module == "config.settings.local"
    # A package's __init__.py counts; manage.py need not name any module then.
    touch(root / "config" / "settings" / "heroku" / "__init__.py")
    lone = settings_tree(tmp_path / "lone", manage_names=None)
    touch(lone / "config" / "settings" / "heroku" / "__init__.py")
    app = main.find_django_app(lone, out, {"DJANGO_SETTINGS_MODULE": "config.settings.heroku"})
    assert app is not None and (app.settings_module, app.default_settings) == (
        "config.settings.heroku", None)


@pytest.mark.parametrize(("value", "says"), [
    ("config.settings.staging", "names config.settings.staging, which this push does not "
                                "have: no config/settings/staging.py"),
    ("os.system", "names os.system, which this push does not have"),   # not the repo's
    ("config.settings.linked", "names config.settings.linked"),        # a link
    ("config.settings.outside", "names config.settings.outside"),      # a link out
    ("elsewhere.production", "names elsewhere.production"),            # through a dir link
    ("config.class", "names config.class"),                            # a keyword
    ("../x", "is not a Python module name: '../x'"),
    ("/etc/passwd", "is not a Python module name"),
    ("config.settings.production\nX=1", "is not a Python module name"),
    ("config..settings", "is not a Python module name"),
    ("config.settings.", "is not a Python module name"),
    ("configs\u0435ttings", "is not a Python module name"),                # Cyrillic e
    ("x" * 200, "names xxxxx"),
])
def test_a_settings_module_config_var_the_repo_lacks_stops_the_build_early(
        tmp_path: Path, value: str, says: str) -> None:
    root = settings_tree(tmp_path / "app")
    (root / "config" / "settings" / "linked.py").symlink_to("production.py")
    secret = touch(tmp_path / "other" / "settings.py", "SECRET = 1\n")
    (root / "config" / "settings" / "outside.py").symlink_to(secret)
    (root / "elsewhere").symlink_to(root / "config" / "settings")
    touch(root / "config" / "class.py")
    with pytest.raises(BuildError) as refused:
        main.find_django_app(root, Output(stream=io.StringIO()),
                             {"DJANGO_SETTINGS_MODULE": value})
    assert says in refused.value.message, refused.value.message
    assert "x" * 100 not in refused.value.message     # a long value is cut, not echoed
    assert "  opus config:unset APP DJANGO_SETTINGS_MODULE" in refused.value.hints
    assert any("config.settings.local" in hint for hint in refused.value.hints)


def test_module_in_tree_follows_no_link(tmp_path: Path) -> None:
    root = settings_tree(tmp_path)
    assert django.module_in_tree(root, "config.settings.base") == \
        root / "config" / "settings" / "base.py"
    assert django.module_in_tree(root, "config.settings") == \
        root / "config" / "settings" / "__init__.py"
    (root / "linked").symlink_to(root / "config")
    (root / "config" / "dir.py").mkdir()
    for module in ("linked.settings.base", "config.dir", "config.nothing", "config.def", "",
                   "config/settings"):
        assert django.module_in_tree(root, module) is None, module


# --- gunicorn worker classes: WSGI ones map to mod_wsgi, others run as written ------------


@pytest.mark.parametrize(("command", "mapped"), [
    ("gunicorn config.wsgi:application", True),
    ("gunicorn config.wsgi:application --worker-class gthread --threads 4", True),
    ("gunicorn -k gevent config.wsgi", True),
    ("gunicorn -kgthread config.wsgi", True),
    ("gunicorn -k egg:gunicorn#sync config.wsgi", True),
    ("gunicorn --worker-class=gunicorn.workers.gthread.ThreadWorker config.wsgi", True),
    ("gunicorn config.asgi:application -k uvicorn_worker.UvicornWorker", False),
    ("gunicorn config.asgi:application -k uvicorn.workers.UvicornWorker", False),
    ("gunicorn config.asgi:application --worker-class=uvicorn_worker.UvicornWorker", False),
    ("gunicorn config.asgi:application --worker-cl=uvicorn_worker.UvicornWorker", False),
    ("gunicorn -kuvicorn_worker.UvicornWorker config.asgi:application", False),
    ("gunicorn -k asgi config.asgi:application", False),        # gunicorn 24+'s own ASGI
    ("gunicorn -k tornado app:application", False),
    ("gunicorn -k '' config.wsgi", False),
])
def test_a_non_wsgi_gunicorn_worker_class_runs_as_written(command: str, mapped: bool) -> None:
    from opus_buildpack import procfile

    assert (procfile.wsgi_target(command) is not None) is mapped


def test_a_worker_class_in_gunicorn_cmd_args_counts_too() -> None:
    from opus_buildpack import procfile

    asgi = {"GUNICORN_CMD_ARGS": "--workers=3 -k uvicorn_worker.UvicornWorker"}
    assert procfile.wsgi_target("gunicorn config.asgi:application", environ=asgi) is None
    wsgi = {"GUNICORN_CMD_ARGS": "--workers=3 --worker-class=gthread"}
    assert procfile.wsgi_target("gunicorn config.wsgi", environ=wsgi) is not None
    assert procfile.wsgi_target("gunicorn config.wsgi",
                                environ={"GUNICORN_CMD_ARGS": "'unclosed"}) is not None


# --- GUNICORN_CMD_ARGS of a web command run as written ------------------------------------


@pytest.mark.parametrize(("own", "expected"), [
    (None, "--bind=127.0.0.1:5000"),
    ("", "--bind=127.0.0.1:5000"),
    ("--workers=3", "--bind=127.0.0.1:5000 --workers=3"),
    ("--workers 3 --access-logfile -", "--bind=127.0.0.1:5000 --workers 3 --access-logfile -"),
    ("-b 0.0.0.0:5000", "-b 0.0.0.0:5000"),                 # the app's own bind stays
    ("-b0.0.0.0:5000", "-b0.0.0.0:5000"),
    ("--bind=unix:/tmp/x.sock", "--bind=unix:/tmp/x.sock"),
    ("--bind 0.0.0.0:80 -w 2", "--bind 0.0.0.0:80 -w 2"),
    ("--bin=[::]:5000", "--bin=[::]:5000"),                 # argparse takes abbreviations
    ("--backlog=64", "--bind=127.0.0.1:5000 --backlog=64"),
    ("'unclosed", "'unclosed"),                              # gunicorn says what is wrong
])
def test_gunicorn_cmd_args_bind_loopback_unless_the_app_binds(
        own: str | None, expected: str) -> None:
    from opus_runtime.bootstrap import gunicorn_cmd_args

    environ = {} if own is None else {"GUNICORN_CMD_ARGS": own}
    assert gunicorn_cmd_args(environ, "5000") == expected


# --- the overlay keeps how the project uses its database ----------------------------------


def test_the_overlay_keeps_the_users_database_options() -> None:
    user: dict[str, Any] = {"DATABASES": {"default": {
        "ENGINE": "django.db.backends.sqlite3", "NAME": "/dev/db.sqlite3", "HOST": "devhost",
        "ATOMIC_REQUESTS": True, "AUTOCOMMIT": False, "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True, "TIME_ZONE": "Europe/Paris",
        "OPTIONS": {"timeout": 20}, "TEST": {"NAME": "t"}}}}
    kept = {"ATOMIC_REQUESTS": True, "AUTOCOMMIT": False, "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True, "TIME_ZONE": "Europe/Paris"}
    o = build_overrides({"DATABASE_URL": "postgres://u:p@db:5433/shop?sslmode=require"}, user)
    assert o["DATABASES"]["default"] == {
        **kept, "ENGINE": PG, "NAME": "shop", "USER": "u", "PASSWORD": "p", "HOST": "db",
        "PORT": "5433", "OPTIONS": {"sslmode": "require"}}
    # The app's data (no DATABASE_URL): its options kept too, the dev connection not.
    o = build_overrides({"OPUS_DATA_DIR": "/d"}, user)
    assert o["DATABASES"]["default"] == {
        **kept, "ENGINE": "django.db.backends.sqlite3", "NAME": "/d/db.sqlite3"}
    assert user["DATABASES"]["default"]["NAME"] == "/dev/db.sqlite3"    # not mutated
    # A connection's own keys always come from DATABASE_URL, never the user's.
    assert build_overrides({"DATABASE_URL": "sqlite:////d/x.db"}, {"DATABASES": {
        "default": {"NAME": "old", "ENGINE": "x", "ATOMIC_REQUESTS": True}}})[
        "DATABASES"]["default"] == {"ENGINE": "django.db.backends.sqlite3", "NAME": "/d/x.db",
                                    "ATOMIC_REQUESTS": True}
    odd: dict[str, Any]
    for odd in ({"DATABASES": {"default": "not a dict"}}, {"DATABASES": {}}, {}):
        assert build_overrides({"DATABASE_URL": "sqlite:////d/x.db"}, odd)[
            "DATABASES"]["default"] == {"ENGINE": "django.db.backends.sqlite3",
                                        "NAME": "/d/x.db"}


def tcp_listeners(port: int) -> set[str]:
    """The addresses with a TCP socket listening on `port` (IPv4 and IPv6)."""
    import socket

    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:     # 0A: LISTEN
                raw = bytes.fromhex(address)
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, raw))
    return found


def listening_address(tmp_path: Path, argv: list[str], port: int,
                      env: dict[str, str]) -> set[str]:
    """Start `argv`, wait until something listens on `port`, stop it: where it listened."""
    import time

    log = tmp_path / "server.log"
    with log.open("wb") as out, subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out,
                                                 stderr=subprocess.STDOUT) as process:
        try:
            deadline = time.monotonic() + 20
            while not (found := tcp_listeners(port)) and time.monotonic() < deadline:
                assert process.poll() is None, log.read_text()
                time.sleep(0.05)
            return found
        finally:
            process.terminate()
            process.wait(timeout=20)


def test_gunicorn_run_as_written_binds_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    """gunicorn's own default with $PORT set is 0.0.0.0:$PORT; opus_runtime.web's
    GUNICORN_CMD_ARGS makes it 127.0.0.1:$PORT, over a config file's bind too (gunicorn
    reads the variable after the file); a -b on the command line is the app's choice."""
    from tests.conftest import free_port

    touch(tmp_path / "hello.py", "def application(environ, start_response):\n"
          "    start_response('200 OK', [])\n    return [b'hi']\n")
    touch(tmp_path / "conf.py", "import os\nbind = f\"0.0.0.0:{os.environ['PORT']}\"\n")
    venv_bin = str(Path(sys.executable).parent)
    runtime = str(Path(main.__file__).resolve().parents[1] / "runtime")
    env = {"PATH": f"{venv_bin}:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": runtime,
           "OPUS_APP_ROOT": str(tmp_path), "HOME": str(tmp_path)}
    port = free_port()
    plain = listening_address(tmp_path, [f"{venv_bin}/gunicorn", "hello:application"], port,
                              {**env, "PORT": str(port)})
    assert plain == {"0.0.0.0"}          # gunicorn alone, $PORT set: every interface
    for command, expected in (("gunicorn hello:application", {"127.0.0.1"}),
                              ("gunicorn -c conf.py hello:application", {"127.0.0.1"}),
                              ("gunicorn -b 0.0.0.0:$PORT hello:application", {"0.0.0.0"})):
        port = free_port()
        argv = [sys.executable, "-m", "opus_runtime.web", str(port), command]
        assert listening_address(tmp_path, argv, port, env) == expected, command
