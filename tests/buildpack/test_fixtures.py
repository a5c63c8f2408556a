"""One small app per scenario (tests/buildpack/fixtures/<feature>_<scenario>/), built with
the real bin/detect, bin/compile and bin/release; each asserts what the user sees and what
the build leaves behind.

Lock files were made by the real tools (uv lock, poetry lock, pipenv lock); Django
projects by django-admin startproject, their settings cut to what the buildpack's Django
steps need.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.buildpack.conftest import FIXTURES, run_bin, run_compile

Check = Callable[[Path, str], None]


@dataclass(frozen=True)
class Scenario:
    exit_code: int
    says: tuple[str, ...]                      # regexes the output must match
    config: dict[str, str] = field(default_factory=dict)
    check: Check | None = None


def venv_has(*packages: str, not_: tuple[str, ...] = ()) -> Check:
    def check(build: Path, output: str) -> None:
        python = build / ".opus" / "venv" / "bin" / "python"
        site = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; "
             "print('\\n'.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))"],
            capture_output=True, text=True, check=True).stdout.split()
        for name in packages:
            assert name in site, (name, site)
        for name in not_:
            assert name not in site, (name, site)
    return check


def build_json(**expected: object) -> Check:
    def check(build: Path, output: str) -> None:
        info = json.loads((build / ".opus" / "build.json").read_text())
        for key, value in expected.items():
            assert info[key] == value, (key, info[key])
    return check


def both(*checks: Check) -> Check:
    def check(build: Path, output: str) -> None:
        for one in checks:
            one(build, output)
    return check


def not_built(build: Path, output: str) -> None:
    assert not (build / ".opus" / "build.json").exists()


OUT_OF_DATE = r"^ !     {lock} is out of date with {source}\.$"
SCENARIOS: dict[str, Scenario] = {
    # --- package managers ---------------------------------------------------------------
    "pip_basic": Scenario(0, (r"-----> Installing dependencies with pip \(requirements.txt\), "
                              r"using uv", r"\+ six==1\.16\.0"), check=venv_has("six")),
    "pip_invalid_requirement": Scenario(1, (
        r"^ !     Could not install the packages in requirements.txt",
        r"this-package-does-not-exist-opus-test"), check=not_built),
    "pyproject_basic": Scenario(0, (r"Installing dependencies with pyproject.toml dependencies",),
                                check=venv_has("six")),
    "pyproject_no_dependencies": Scenario(1, (r"pyproject.toml has no \[project\] dependencies",
                                              r"requirements.txt, uv.lock, poetry.lock")),
    "uv_basic": Scenario(0, (r"Installing dependencies with uv \(uv.lock\)",),
                         check=venv_has("six", not_=("idna",))),
    "uv_lock_out_of_sync": Scenario(1, (OUT_OF_DATE.format(lock="uv.lock",
                                                           source="pyproject.toml"),
                                        r"Run `uv lock`, commit uv.lock")),
    "poetry_basic": Scenario(0, (r"Installing poetry==2\.5\.1 to read the lock file|"
                                 r"Installing dependencies with Poetry",
                                 r"Installing dependencies with Poetry \(poetry.lock\)"),
                             check=venv_has("six", not_=("idna", "poetry"))),
    "poetry_lock_out_of_sync": Scenario(1, (OUT_OF_DATE.format(lock="poetry.lock",
                                                               source="pyproject.toml"),
                                            r"Run `poetry lock`")),
    "poetry_no_lock": Scenario(1, (r"a Poetry project, but there is no poetry.lock",)),
    "pipenv_basic": Scenario(0, (r"Installing dependencies with Pipenv \(Pipfile.lock\)",
                                 r"Using Python 3\.11\.\d+ .*as Pipfile.lock asks"),
                             check=venv_has("six", not_=("idna", "pipenv"))),
    "pipenv_lock_out_of_sync": Scenario(1, (OUT_OF_DATE.format(lock="Pipfile.lock",
                                                               source="Pipfile"),
                                            r"Run `pipenv lock`")),
    "pipenv_no_lock": Scenario(1, (r"There is a Pipfile but no Pipfile.lock",
                                   r"run `pipenv lock`")),
    "managers_multiple": Scenario(1, (r"Several package manager files were found: "
                                      r"requirements.txt, poetry.lock\.",)),
    "managers_none": Scenario(1, (r"No package manager file was found",
                                  r"Add a requirements.txt")),
    "managers_setup_py_only": Scenario(1, (r"Only setup.py declares this app's dependencies",)),
    "venv_in_source": Scenario(1, (r"A virtual environment is committed at venv/\.",
                                   r"git rm -r --cached venv")),
    # --- Python version -------------------------------------------------------------------
    "python_version_valid": Scenario(0, (
        r"-----> Using Python 3\.11\.\d+ \(/usr/bin/python3\.11\), as .python-version asks",)),
    "python_version_not_installed": Scenario(1, (
        r"Python 3\.9 \(from .python-version\) is not installed on this Opus host",
        r"Installed: .*3\.11\.\d+ \(/usr/bin/python3\.11\)", r"OPUS_PYTHONS")),
    "python_version_invalid": Scenario(1, (r"says 'python3.eleven', which is not a Python "
                                           r"version",)),
    "python_version_misspelled": Scenario(1, (r"Found .python_version at the repository root: "
                                              r"Opus reads .python-version",
                                              r"git mv .python_version .python-version")),
    "python_version_multiple": Scenario(1, (r"names several versions \(3.11, 3.12\)",)),
    "python_version_conflict": Scenario(1, (r".python-version asks for Python 3.12 but "
                                            r"runtime.txt for 3.11",)),
    "runtime_txt_deprecated": Scenario(0, (r"as runtime.txt asks", r"runtime.txt is deprecated",
                                           r"echo 3.11 > .python-version")),
    "runtime_txt_invalid": Scenario(1, (r"runtime.txt file says 'python 3.11.2'",)),
    # --- Django ---------------------------------------------------------------------------
    "django_collectstatic_disabled": Scenario(
        0, (r"Skipping collectstatic: DISABLE_COLLECTSTATIC is set",),
        config={"DISABLE_COLLECTSTATIC": "1"}, check=build_json(static_root=None)),
    "django_auto_migrate_off": Scenario(
        0, (r"Production settings put over mysite.settings: ALLOWED_HOSTS, CSRF_TRUSTED",
            r"OPUS_DISABLE_OVERRIDES=NAME"),
        config={"OPUS_AUTO_MIGRATE": "0", "OPUS_DISABLE_OVERRIDES": "LOGGING"},
        check=build_json(auto_migrate=False)),
    "django_misconfigured_static": Scenario(1, (
        r"mysite.missing_storage", r"python manage.py collectstatic --noinput failed",
        r"DISABLE_COLLECTSTATIC=1")),
    "django_invalid_settings_module": Scenario(1, (
        r"manage.py names the settings module mysite.settingz, but there is no "
        r"mysite/settingz.py",)),
    "django_no_manage_py": Scenario(0, (r"No manage.py found: skipping the Django steps",
                                        r"Serving mysite.wsgi:application under mod_wsgi "
                                        r"\(found mysite/wsgi.py\)"),
                                    check=build_json(framework=None, wsgi_module="mysite.wsgi")),
    "django_wsgi_application": Scenario(0, (), check=build_json(
        wsgi_module="mysite.serving", wsgi_callable="app")),
    # --- Procfile and hooks ---------------------------------------------------------------
    "procfile_gunicorn_target": Scenario(0, (
        r"-----> Serving hello:app under mod_wsgi \(the Procfile's web: runs gunicorn on it\)",),
        check=build_json(wsgi_module="hello", wsgi_callable="app", web_command=None)),
    "procfile_asgi_command": Scenario(0, (
        r"-----> The Procfile's web: command runs as written, listening on \$PORT",),
        check=build_json(web_command="uvicorn main:app --host 127.0.0.1 --port $PORT",
                         wsgi_module=None)),
    "procfile_malformed": Scenario(1, (r"Procfile line 2 is not `type: command`: "
                                       r"'worker python work.py'",)),
    "procfile_release_command": Scenario(0, (r"Serving hello:app under mod_wsgi .*waitress",),
                                         check=build_json(process_types={
                                             "web": "waitress-serve --port=$PORT hello:app",
                                             "release": 'python -c "print(42)"'})),
    "hooks_pass": Scenario(0, (r"-----> Running bin/pre_compile", r"pre_compile ran in /",
                               r"-----> Running bin/post_compile",
                               r"post_compile sees six 1\.16\.0"),
                           check=lambda build, _: None if (
                               build / "built-by-pre-compile.txt").read_text() == "made-before\n"
                           else pytest.fail("pre_compile's file is missing")),
    "hooks_fail": Scenario(1, (r"pre_compile is failing on purpose",
                               r"^ !     bin/pre_compile failed \(exit status 3\)\.$"),
                           check=not_built),
    # --- config ---------------------------------------------------------------------------
    "config_path_var": Scenario(0, (r"Ignoring config vars during the build: LD_PRELOAD, "
                                    r"PATH, PYTHONPATH",),
                                config={"PATH": "/nowhere", "LD_PRELOAD": "/evil.so",
                                        "PYTHONPATH": "/evil", "GREETING": "kept"},
                                check=venv_has("six")),
}


def test_every_fixture_has_a_scenario() -> None:
    names = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert names == set(SCENARIOS) | {"no_python_files"}
    assert len(names) >= 30


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fixture(name: str, tmp_path: Path, build_env: dict[str, str], cache_dir: Path) -> None:
    scenario = SCENARIOS[name]
    build = tmp_path / "build"
    shutil.copytree(FIXTURES / name, build, symlinks=True)
    detected = run_bin("detect", build, env=build_env)
    assert (detected.returncode, detected.stdout) == (0, "Python\n")
    result = run_compile(build, cache_dir, build_env, scenario.config)
    output = result.stdout + result.stderr
    assert result.returncode == scenario.exit_code, output
    for pattern in scenario.says:
        assert re.search(pattern, output, re.M), f"{pattern!r} not in:\n{output}"
    if scenario.exit_code:
        assert re.search(r"^ !     \S", output, re.M), "an error the user can read"
    else:
        released = run_bin("release", build, env=build_env)
        assert released.returncode == 0, released.stdout
    if scenario.check:
        scenario.check(build, output)


def test_no_python_files_lists_the_root(build_env: dict[str, str]) -> None:
    result = run_bin("detect", FIXTURES / "no_python_files", env=build_env)
    assert result.returncode == 100
    assert "Files at the repository root: README.md, index.html" in result.stdout
    assert "add a requirements.txt" in result.stdout


def test_release_steps_follow_the_procfile_and_the_switch(
        tmp_path: Path, build_env: dict[str, str], cache_dir: Path) -> None:
    """migrate is the default release step of a Django app, unless the Procfile has its
    own release: or the app turned it off."""
    for name, expected in (("django_collectstatic_disabled",
                            "  release: python manage.py migrate --noinput\n"),
                           ("django_auto_migrate_off", None)):
        build = tmp_path / name
        shutil.copytree(FIXTURES / name, build)
        assert run_compile(build, cache_dir, build_env, SCENARIOS[name].config).returncode == 0
        released = run_bin("release", build, env=build_env).stdout
        assert (expected in released) if expected else released.endswith("{}\n")


def test_a_code_only_rebuild_reuses_the_environment(
        tmp_path: Path, build_env: dict[str, str], cache_dir: Path) -> None:
    """Builds of one app share its CACHE, as Opus's releases do: unchanged dependency
    files and Python → the same environment, linked in no time; a changed file → a new
    one, saying why; the earlier environment stays for a rollback."""
    def build(version: int, requirements: str) -> tuple[Path, str]:
        slug = tmp_path / f"v{version}"
        shutil.copytree(FIXTURES / "pip_basic", slug)
        (slug / "requirements.txt").write_text(requirements)
        (slug / "app.py").write_text(f"VERSION = {version}\n")     # the code changes
        env_dir = tmp_path / "env"
        env_dir.mkdir(exist_ok=True)
        result = run_bin("compile", slug, tmp_path / "app-cache", env_dir,
                         env={**build_env, "OPUS_PACKAGE_CACHE": str(cache_dir)})
        assert result.returncode == 0, result.stdout
        return slug, result.stdout

    v1, first = build(1, "six==1.16.0\n")
    assert "Discarding cache" not in first and "Creating virtualenv" in first
    v2, second = build(2, "six==1.16.0\n")
    assert "-----> Reusing the environment of an earlier build (pip (requirements.txt), " \
        "Python 3.11." in second
    assert "Creating virtualenv" not in second
    ready = re.search(r"^       Dependencies ready in (\d+\.\d) s$", second, re.M)
    assert ready and float(ready.group(1)) < 1.0
    assert (v1 / ".opus" / "venv").resolve() == (v2 / ".opus" / "venv").resolve()
    v3, third = build(3, "six==1.17.0\n")
    assert "-----> Discarding cache since: requirements.txt changed" in third
    assert (v3 / ".opus" / "venv").resolve() != (v1 / ".opus" / "venv").resolve()
    # v1's environment is still there for a rollback, and still has its own six.
    check = subprocess.run([str(v1 / ".opus" / "venv" / "bin" / "python"), "-c",
                            "import six; print(six.__version__)"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.strip() == "1.16.0"


def test_what_an_environment_depends_on(tmp_path: Path) -> None:
    from opus_buildpack import envs

    (tmp_path / "requirements.txt").write_text("# base\n-r base.txt\nsix==1.16.0  # pinned\n")
    (tmp_path / "base.txt").write_text("idna==3.10\n")
    files, local = envs.requirement_files(tmp_path, "requirements.txt")
    assert set(files) == {"requirements.txt", "base.txt"} and local is None
    for line in ("-e .", ".", "./vendor/pkg", "/abs/pkg", "pkg @ file:///x", "--editable=."):
        (tmp_path / "base.txt").write_text(line + "\n")
        _, local = envs.requirement_files(tmp_path, "requirements.txt")
        assert local and "installs a local path" in local, line
    spec = envs.EnvSpec("/usr/bin/python3.11", "3.11.2", "pip", {"requirements.txt": "a"})
    previous = {"python": "/usr/bin/python3.11", "python_version": "3.11.2", "manager": "pip",
                "files": {"requirements.txt": "a"}, "settings": {}}
    assert envs.discard_reason(None, spec) == "there is no earlier build to reuse"
    assert envs.discard_reason({**previous, "python_version": "3.11.1"}, spec) == \
        "the Python version changed from 3.11.1 to 3.11.2"
    assert envs.discard_reason({**previous, "manager": "uv"}, spec) == \
        "the package manager changed from uv to pip"
    assert envs.discard_reason({**previous, "files": {"requirements.txt": "b"}}, spec) == \
        "requirements.txt changed"
    assert envs.discard_reason({**previous, "settings": {"UV_INDEX_URL": "x"}}, spec) == \
        "the package index settings changed"
    # The key follows every input, and nothing else (why a spec is not reusable is
    # no input of the environment).
    assert spec.key() == dataclasses.replace(spec, not_reusable="local paths").key()
    for changed in ({"manager": "uv"}, {"python_version": "3.11.3"},
                    {"files": {"requirements.txt": "b"}}, {"settings": {"UV_INDEX_URL": "x"}},
                    {"tooling": {"mod_wsgi": "mod_wsgi==6.1.2"}}):
        assert dataclasses.replace(spec, **changed).key() != spec.key(), changed
