"""Real public Django project shapes deploy unchanged, over real git push, and serve a
page, their admin and their static files (docs/real-apps.md lists them).

Each project is made at test time from a public starter installed from PyPI, as its
users make it: Wagtail's own `wagtail start` (with a Procfile, a uwsgi ini and a
.python-version shaped as Wagtail's bakerydemo has them, on Postgres), and Django's
`startproject` served by daphne through `web: bash -c "…"` (ASGI: run as written on
$PORT, as Heroku does). cookiecutter-django's layout, which no PyPI package renders
without its template, is a small project of our own in that shape (tests/real_apps/
cookiecutter). They ask for Python 3.13, which the session's Opus is given once from
the local mirror (tests/python_mirror.py) before the pushes.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opus_paas.store import Store
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
    it then finds it, as after an operator's `opus pythons:install 3.13`). It goes to the
    tests' cache (OPUS_PYTHONS_DIR), which sessions running at once share: one at a time."""
    lock = (shared_cache_dir() / "pythons.lock").open("w")
    with lock, python_mirror.serve(tmp_path_factory.mktemp("mirror")) as mirror:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
def postgres(opus313: Opus) -> Opus:
    """The session's Opus (3.13) with its Postgres add-on running (`opus pg:create`)."""
    for tool in ("initdb", "postgres"):
        require_tool(f"/usr/lib/postgresql/15/bin/{tool}")
    opus313.cli("addons:enable", "postgres")
    return opus313


@pytest.fixture(scope="module")
def bakery(postgres: Opus, admin_key: SshKey,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[str, float]:
    """Pushed once: (its output, how long the push took)."""
    opus313 = postgres
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
    pythons = Path(opus313.env["OPUS_PYTHONS_DIR"])
    python = next(pythons.glob("cpython-3.13.*/bin/python3"))
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


# ---- cookiecutter-django's Heroku layout: config/settings/*, django-environ, a config var
# naming the production settings (manage.py names local), gunicorn, Postgres --------------

COOKIECUTTER = Path(__file__).parent / "real_apps" / "cookiecutter"
# What cookiecutter-django's Heroku docs have its users set (`heroku config:set …`).
COOKIECUTTER_CONFIG = ("DJANGO_SETTINGS_MODULE=config.settings.production",
                       "DJANGO_SECRET_KEY=made-up-for-the-test-" + "x" * 40,
                       "DJANGO_ADMIN_URL=hidden-admin/",
                       # No TLS in front here: production.py redirects to https by default.
                       "DJANGO_SECURE_SSL_REDIRECT=False")
# Its Procfile when the project is made with use_async: uvicorn's worker, under gunicorn.
ASYNC_WEB = "web: gunicorn config.asgi:application -k uvicorn_worker.UvicornWorker\n"


@pytest.fixture(scope="module")
def shop(postgres: Opus, admin_key: SshKey,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    """Pushed once: (the project, its push output, how long the push took). It also has
    config/settings/linked.py, a link to production.py (git keeps links)."""
    project = tmp_path_factory.mktemp("real") / "shop"
    shutil.copytree(COOKIECUTTER, project)
    (project / "config" / "settings" / "linked.py").symlink_to("production.py")
    remote(project, postgres, "shop")
    postgres.cli("apps:create", "shop")
    postgres.cli("pg:create", "shop")
    postgres.cli("config:set", "shop", *COOKIECUTTER_CONFIG)
    started = time.monotonic()
    output = push_main(project, postgres, admin_key)
    return project, output, time.monotonic() - started


def live_state(opus: Opus, app: str) -> tuple[int | None, dict[str, str]]:
    """The app's live release and its stored config, as Opus's database has them."""
    store = Store(opus.home / "opus.db")
    found = store.get_app(app)
    assert found is not None
    return found.live_version, store.config(found)


def test_a_cookiecutter_django_project_deploys_unchanged(
        postgres: Opus, shop: tuple[Path, str, float]) -> None:
    _project, output, took = shop
    assert "Using Python 3.13" in output, output
    assert "Installing dependencies with pip (requirements.txt)" in output, output
    assert "Django app: manage.py, settings config.settings.production (the " \
        "DJANGO_SETTINGS_MODULE config var)" in output, output
    assert "Serving config.wsgi:application under mod_wsgi (the Procfile's web: runs " \
        "gunicorn on it)" in output, output
    assert "Running release command: python manage.py migrate" in output, output
    assert "Applying auth.0001_initial... OK" in output, output
    assert took < 120, f"the push took {took:.0f} s"
    host = postgres.app_host("shop")
    status, _headers, body = postgres.get(host)
    assert status == 200 and "laid out as cookiecutter-django" in body, body[:500]
    # production.py's ADMIN_URL (a config var), not base.py's admin/: production it is.
    status, _headers, body = postgres.get(host, "/hidden-admin/login/")
    assert status == 200 and "Django administration" in body, body[:500]
    assert postgres.get(host, "/admin/login/")[0] == 404
    status, _headers, css = postgres.get(host, "/static/css/project.css")
    assert status == 200 and "generated from project.scss" in css
    status, _headers, css = postgres.get(host, "/static/admin/css/base.css")
    assert status == 200 and "body" in css
    # The overlay put DATABASE_URL's connection in and kept how the project uses it.
    shown = postgres.cli("run", "shop", "--", "python", "manage.py", "shell", "-c",
                         "from django.conf import settings as s; d = s.DATABASES['default']; "
                         "print('db', d['ENGINE'], d['ATOMIC_REQUESTS'], d['CONN_MAX_AGE'], "
                         "s.ADMIN_URL)").stdout
    assert "db django.db.backends.postgresql True 60 hidden-admin/" in shown, shown


def test_a_settings_module_config_var_the_repo_lacks_stops_the_build(
        postgres: Opus, admin_key: SshKey, shop: tuple[Path, str, float]) -> None:
    project, _output, _took = shop
    host = postgres.app_host("shop")
    live, _config = live_state(postgres, "shop")
    # Set for the next push only: that push lacks the module, so it is not deployed.
    postgres.cli("config:set", "shop", "DJANGO_SETTINGS_MODULE=config.settings.staging",
                 "--no-restart")
    try:
        (project / "CHANGES").write_text("staging settings to come\n")
        commit_all(project, "a change")
        pushed = subprocess.run(["git", "push", "-q", "opus", "main"], cwd=project,
                                env=admin_key.git_env(postgres), capture_output=True,
                                text=True, timeout=300, check=False)
        assert pushed.returncode != 0, pushed.stderr
        assert "The config var DJANGO_SETTINGS_MODULE names config.settings.staging, which " \
            "this push does not have: no config/settings/staging.py" in pushed.stderr
        assert "Nothing was deployed; the running release is unchanged." in pushed.stderr
        assert "opus config:unset APP DJANGO_SETTINGS_MODULE" in pushed.stderr
        assert "[remote rejected] main -> main" in pushed.stderr, pushed.stderr
    finally:
        postgres.cli("config:set", "shop", "DJANGO_SETTINGS_MODULE=config.settings.production",
                     "--no-restart")
    assert live_state(postgres, "shop")[0] == live
    assert postgres.get(host, "/hidden-admin/login/")[0] == 200


def test_a_settings_module_config_var_naming_a_link_is_refused_by_the_live_release(
        postgres: Opus, shop: tuple[Path, str, float]) -> None:
    """config:set makes a release from the live build, without building: Opus checks the
    module there itself (other hostile values: tests/test_build.py), and changes nothing
    when it is not a plain file: here a link (to production.py, inside the tree)."""
    before = live_state(postgres, "shop")
    refused = postgres.cli("config:set", "shop", "DJANGO_SETTINGS_MODULE=config.settings.linked",
                           check=False)
    assert refused.returncode != 0
    message = refused.stdout + refused.stderr
    assert "names config.settings.linked, which this release does not have as a plain " \
        "file" in message, message
    assert "opus config:unset shop DJANGO_SETTINGS_MODULE" in message, message
    assert live_state(postgres, "shop") == before
    assert before[1]["DJANGO_SETTINGS_MODULE"] == "config.settings.production"


def listening_sockets(pids: list[int]) -> set[tuple[str, int]]:
    """The TCP sockets in LISTEN state that these processes hold, (address, port)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            found = re.fullmatch(r"socket:\[(\d+)\]", target)
            if found:
                inodes.add(found.group(1))
    sockets = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and fields[9] in inodes:      # 0A: LISTEN
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order.
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                sockets.add((socket.inet_ntop(family, raw), int(port, 16)))
    return sockets


def app_processes(app: str, word: str) -> list[tuple[int, dict[str, str]]]:
    """The app's processes whose command line has `word`, with their environments."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in environ.decode(errors="replace").split("\0")
                   if "=" in item)
        if word.encode() in cmdline and env.get("OPUS_APP") == app:
            found.append((int(entry.name), env))
    return found


@pytest.fixture(scope="module")
def shop_async(postgres: Opus, admin_key: SshKey, shop: tuple[Path, str, float]) -> str:
    """The project made with cookiecutter-django's use_async (gunicorn with uvicorn's
    worker class), pushed with the config var now naming local.py, which this push has."""
    project, _output, _took = shop
    procfile = project / "Procfile"
    procfile.write_text(procfile.read_text().replace(
        "web: gunicorn config.wsgi:application\n", ASYNC_WEB))
    commit_all(project, "use_async: uvicorn's worker under gunicorn")
    postgres.cli("config:set", "shop", "DJANGO_SETTINGS_MODULE=config.settings.local",
                 "--no-restart")
    return push_main(project, postgres, admin_key)


def test_gunicorn_run_as_written_listens_on_loopback(postgres: Opus, shop_async: str) -> None:
    """gunicorn with uvicorn's worker class, which mod_wsgi cannot stand in for, runs as
    written; without -b, gunicorn would listen on 0.0.0.0:$PORT ($PORT set): Opus's
    GUNICORN_CMD_ARGS keeps it on loopback, behind the front."""
    assert "The Procfile's web: command runs as written, listening on $PORT" in shop_async
    assert "Reusing the environment of an earlier build" in shop_async, shop_async
    status, _headers, body = postgres.get(postgres.app_host("shop"))
    assert status == 200 and "laid out as cookiecutter-django" in body, body[:500]
    gunicorns = app_processes("shop", "uvicorn_worker.UvicornWorker")
    assert gunicorns, "no gunicorn of the app is running"
    ports = {env.get("PORT") for _pid, env in gunicorns}
    assert len(ports) == 1 and None not in ports, ports
    port = int(ports.pop() or 0)
    assert {env.get("GUNICORN_CMD_ARGS") for _pid, env in gunicorns} == {
        f"--bind=127.0.0.1:{port}"}
    assert listening_sockets([pid for pid, _env in gunicorns]) == {("127.0.0.1", port)}


def test_a_settings_module_config_var_is_honoured_if_the_release_has_it(
        postgres: Opus, shop_async: str) -> None:
    """Changed to local.py (which keeps base.py's admin/), the release serves it: the
    build and the release both took the config var (a change without a build is checked
    the same way: the link test above, tests/test_build.py)."""
    assert "settings config.settings.local (the DJANGO_SETTINGS_MODULE config var)" in \
        shop_async, shop_async
    host = postgres.app_host("shop")
    status, _headers, body = postgres.get(host, "/admin/login/")
    assert status == 200 and "Django administration" in body, body[:500]
    assert postgres.get(host, "/hidden-admin/login/")[0] == 404
