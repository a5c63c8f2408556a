"""Real public Django project shapes deploy unchanged, over real git push, and serve a
page, their admin and their static files (docs/real-apps.md lists them).

Each project is made at test time from a public starter installed from PyPI, as its
users make it: Wagtail's own `wagtail start` (with a Procfile, a uwsgi ini and a
.python-version shaped as Wagtail's bakerydemo has them, on Postgres), and Django's
`startproject` served by daphne through `web: bash -c "…"` (ASGI: run as written on
$PORT, as Heroku does). Both ask for Django 6, so Python 3.13, which the session's Opus
is given once from the local mirror (tests/python_mirror.py) before the pushes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import python_mirror
from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    git,
    push_main,
    require_tool,
    shared_cache_dir,
)

WAGTAIL = "wagtail>=7.4,<7.5"
STATUS = re.compile(r"(Sig(?:Ign|Blk)):\s+([0-9a-f]+)")
CLEAN = [("SigBlk", "0" * 16), ("SigIgn", "0" * 16)]    # in /proc/PID/status order


@pytest.fixture(scope="module")
def opus313(opus: Opus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Opus]:
    """The session's Opus with Python 3.13 installed from the mirror (a build asking for
    it then finds it, as after an operator's `opus pythons:install 3.13`)."""
    with python_mirror.serve(tmp_path_factory.mktemp("mirror")) as mirror:
        done = subprocess.run(
            [sys.executable, "-m", "opus_paas", "pythons:install", "3.13"],
            env={**opus.env, "OPUS_PYTHON_DOWNLOADS": mirror.downloads},
            capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    yield opus


def wagtail_start(directory: Path, name: str) -> None:
    """`wagtail start NAME DIRECTORY`: Wagtail's CLI from the PyPI release, kept in the
    tests' cache (its own dependencies are not needed to render the template)."""
    target = shared_cache_dir() / "real-apps" / "wagtail-7.4"
    if not (target / "wagtail").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", str(target), WAGTAIL], check=True, timeout=300)
    directory.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "wagtail.bin.wagtail", "start", name,
                    str(directory)], check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(target)})


def remote(project: Path, opus: Opus, app: str) -> None:
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "as the starter made it, with its deploy files")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{app}.git")


# ---- a Wagtail site shaped as bakerydemo deploys to Heroku, on Postgres ------------------

BAKERY_PROCFILE = """\
release: yes "yes" | python manage.py migrate
web: uwsgi ./etc/uwsgi.ini
"""
# The keys a Heroku-deployed Wagtail site's uwsgi ini uses (written here, not copied).
BAKERY_INI = """\
[uwsgi]
http-socket = :$(PORT)
master = true
workers = 2
threads = 4
virtualenv = $(VIRTUAL_ENV)
wsgi-env-behaviour = holy
lazy-apps = true
static-map = /media/=/code/media/
wsgi-file = bakery/wsgi.py
"""


@pytest.fixture(scope="module")
def bakery(opus313: Opus, admin_key: SshKey,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[str, float]:
    """Pushed once: (its output, how long the push took)."""
    for tool in ("initdb", "postgres"):
        require_tool(f"/usr/lib/postgresql/15/bin/{tool}")
    project = tmp_path_factory.mktemp("real") / "bakery"
    wagtail_start(project, "bakery")
    (project / "Procfile").write_text(BAKERY_PROCFILE)
    (project / "etc").mkdir()
    (project / "etc" / "uwsgi.ini").write_text(BAKERY_INI)
    (project / ".python-version").write_text("3.13\n")
    requirements = project / "requirements.txt"
    requirements.write_text(requirements.read_text() + "psycopg[binary]>=3.2,<4\n")
    # Wagtail's search index on Postgres needs it under Django 6 (postgres.E005): the
    # one line a Wagtail site moving to Postgres adds, on Heroku too.
    base = project / "bakery" / "settings" / "base.py"
    staticfiles = '"django.contrib.staticfiles",'
    base.write_text(base.read_text().replace(
        staticfiles, f'{staticfiles}\n    "django.contrib.postgres",'))
    remote(project, opus313, "bakery")
    opus313.cli("addons:enable", "postgres")
    opus313.cli("apps:create", "bakery")
    opus313.cli("pg:create", "bakery")
    started = time.monotonic()
    output = push_main(project, opus313, admin_key)
    return output, time.monotonic() - started


def test_a_wagtail_site_shaped_like_bakerydemo_deploys_on_postgres(
        opus313: Opus, bakery: tuple[str, float]) -> None:
    output, took = bakery
    assert "Using Python 3.13" in output, output
    # The web: line's uwsgi ini names the module Opus serves under mod_wsgi.
    assert "remote: -----> Serving bakery.wsgi:application under mod_wsgi (the Procfile's " \
        "web: runs uwsgi on it)" in output, output
    assert "static-map, virtualenv options are Opus's own business" in output
    # `yes | migrate`: yes ends by SIGPIPE when migrate exits, as on Heroku.
    assert 'Running release command: yes "yes" | python manage.py migrate' in output
    assert re.search(r"Applying wagtailcore\.0001\S*\.\.\. OK", output), output
    assert took < 300, f"the push took {took:.0f} s"
    host = opus313.app_host("bakery")
    status, _headers, body = opus313.get(host)
    assert status == 200 and "Welcome to your new Wagtail site" in body, body[:500]
    status, _headers, body = opus313.get(host, "/admin/login/")
    assert status == 200 and "Sign in" in body, body[:500]
    status, _headers, css = opus313.get(host, "/static/wagtailadmin/css/core.css")
    assert status == 200 and len(css) > 1000
    # The pages are in Postgres (the database pg:create made), not in a SQLite file.
    tables = opus313.cli("pg:psql", "bakery", "-c",
                         "SELECT count(*) FROM wagtailcore_page").stdout
    assert re.search(r"^\s+[1-9]\d*$", tables, re.M), tables
    assert not (opus313.home / "apps" / "bakery" / "data" / "db.sqlite3").exists()


# ---- Django served by daphne (ASGI), run as written through bash --------------------------

SHOW = "grep -E '^Sig(Ign|Blk)' /proc/self/status"
ASGI_PROCFILE = (
    f"release: python manage.py migrate --noinput && {SHOW}\n"
    f'web: bash -c "{SHOW}; exec daphne -b 127.0.0.1 -p $PORT chat.asgi:application"\n'
    """worker: env GREETING=hi bash -c 'echo "$GREETING from $DYNO in $VIRTUAL_ENV"; """
    f"""{SHOW.replace("'", '"')}; exec sleep 600'\n""")


@pytest.fixture(scope="module")
def chat(opus313: Opus, admin_key: SshKey,
         tmp_path_factory: pytest.TempPathFactory) -> str:
    project = tmp_path_factory.mktemp("real") / "chat"
    project.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "chat", str(project)],
                   check=True, timeout=60)
    (project / "requirements.txt").write_text("Django>=6,<6.1\ndaphne>=4.1,<5\n")
    (project / "runtime.txt").write_text("python-3.13.0\n")
    (project / "Procfile").write_text(ASGI_PROCFILE)
    bin_dir = project / "bin"
    bin_dir.mkdir()
    (bin_dir / "post_compile").write_text(textwrap.dedent("""\
        #!/bin/bash
        echo "post_compile in $VIRTUAL_ENV"
        grep -E '^Sig(Ign|Blk)' /proc/self/status
        """))
    remote(project, opus313, "chat")
    return push_main(project, opus313, admin_key)


def test_an_asgi_app_runs_as_written_on_port_with_default_signals(
        opus313: Opus, chat: str) -> None:
    assert "Using Python 3.13.0" in chat, chat
    assert "The Procfile's web: command runs as written, listening on $PORT" in chat
    # The build hook and the release command (through bash: `&&`) saw an activated venv
    # and default signals.
    assert re.search(r"post_compile in /\S+/\.opus/venv", chat), chat
    assert sorted(STATUS.findall(chat)) == sorted(CLEAN * 2), chat
    host = opus313.app_host("chat")
    status, _headers, body = opus313.get(host)
    assert status == 404 and "Not Found" in body     # DEBUG off: Django's plain 404
    status, _headers, body = opus313.get(host, "/admin/login/")
    assert status == 200 and "Django administration" in body, body[:500]
    status, _headers, css = opus313.get(host, "/static/admin/css/base.css")
    assert status == 200 and "body" in css
    # The web process and a worker (env-prefixed, through bash) start clean too.
    opus313.cli("ps:scale", "chat", "worker=1")
    logs = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "hi from worker.1" not in logs:
        time.sleep(0.5)
        logs = opus313.cli("logs", "chat", "-n", "200").stdout
    assert re.search(r"hi from worker\.1 in /\S+/\.opus/venv", logs), logs
    assert STATUS.findall(logs).count(CLEAN[0]) >= 2, logs      # web and worker
    assert set(STATUS.findall(logs)) == set(CLEAN), logs
    ran = opus313.cli("run", "chat", "--", "grep", "-E", "^Sig(Ign|Blk)",
                      "/proc/self/status")
    assert sorted(STATUS.findall(ran.stdout)) == CLEAN, ran.stdout
    opus313.cli("ps:scale", "chat", "worker=0")


# ---- settings split base/production, gunicorn.conf.py, pyproject.toml + uv.lock -----------

GUNICORN_CONF = """\
import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8000')}"
wsgi_app = "config.wsgi:application"
workers = 2
accesslog = "-"
"""
PYPROJECT = """\
[project]
name = "ledger"
version = "0.1.0"
requires-python = ">=3.12"
dependencies = ["Django>=6,<6.1", "gunicorn>=23"]
"""


def split_settings(project: Path) -> None:
    """config/settings.py as a package: base.py (startproject's) and production.py,
    which manage.py and wsgi.py name."""
    package = project / "config" / "settings"
    package.mkdir()
    base = (project / "config" / "settings.py").read_text()
    (project / "config" / "settings.py").unlink()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text(base.replace(
        "Path(__file__).resolve().parent.parent", "Path(__file__).resolve().parent.parent.parent"))
    (package / "production.py").write_text(
        "from .base import *  # noqa: F403\n\nDEBUG = False\nALLOWED_HOSTS = ['example.com']\n")
    for name in ("manage.py", "config/wsgi.py", "config/asgi.py"):
        path = project / name
        text = path.read_text()
        for quote in "'\"":
            text = text.replace(f"{quote}config.settings{quote}",
                                f"{quote}config.settings.production{quote}")
        path.write_text(text)


@pytest.fixture(scope="module")
def ledger(opus313: Opus, admin_key: SshKey,
           tmp_path_factory: pytest.TempPathFactory) -> str:
    project = tmp_path_factory.mktemp("real") / "ledger"
    project.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "config", str(project)],
                   check=True, timeout=60)
    split_settings(project)
    (project / "gunicorn.conf.py").write_text(GUNICORN_CONF)
    (project / "Procfile").write_text("web: gunicorn -c gunicorn.conf.py\n")
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / ".python-version").write_text("3.13.0\n")
    python = next((opus313.home / "pythons").glob("cpython-3.13.*/bin/python3"))
    subprocess.run([sys.executable, "-m", "uv", "lock", "--python", str(python)],
                   cwd=project, check=True, timeout=120,
                   env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    remote(project, opus313, "ledger")
    return push_main(project, opus313, admin_key)


def test_split_settings_gunicorn_conf_and_a_uv_lock_deploy(opus313: Opus, ledger: str) -> None:
    assert "Installing dependencies with uv (uv.lock)" in ledger, ledger
    assert "Django app: manage.py, settings config.settings.production" in ledger
    assert "The Procfile's web: command runs as written, listening on $PORT" in ledger
    # No release: line: Opus migrates a Django app itself.
    assert "Applying auth.0001_initial... OK" in ledger, ledger
    host = opus313.app_host("ledger")
    status, _headers, body = opus313.get(host, "/admin/login/")
    assert status == 200 and "Django administration" in body, body[:500]
    status, _headers, css = opus313.get(host, "/static/admin/css/base.css")
    assert status == 200 and "body" in css
