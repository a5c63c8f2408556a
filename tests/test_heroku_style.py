"""Projects made for Heroku deploy on Opus unchanged, pushed with git over SSH as a new user
would: a Django project set up the way Heroku's guide says (gunicorn in the Procfile,
whitenoise, dj-database-url, .python-version), and a web: command that is no WSGI server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    git,
    make_django_project,
    make_key,
    push_main,
    set_greeting,
)

HEROKU_SETTINGS = '''
# --- as Heroku's Django guide sets a project up ---
import os

import dj_database_url

SECRET_KEY = os.environ.get("SECRET_KEY", SECRET_KEY)
DEBUG = os.environ.get("ENVIRONMENT") == "development"
ALLOWED_HOSTS = [".herokuapp.com", "localhost", "127.0.0.1"]
MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
DATABASES = {
    "default": dj_database_url.config(default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
                                      conn_max_age=600),
}
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
'''




@pytest.fixture(scope="module")
def heroku_project(tmp_path_factory: pytest.TempPathFactory, opus: Opus) -> Path:
    project = make_django_project(tmp_path_factory.mktemp("heroku") / "herokuish",
                                  greeting="Hello from a Heroku project")
    (project / "requirements.txt").write_text(
        "django>=5.2,<5.3\ngunicorn>=23\nwhitenoise>=6.8\ndj-database-url>=2.3\n")
    (project / "Procfile").write_text("web: gunicorn mysite.wsgi --log-file -\n")
    (project / ".python-version").write_text("3.11\n")
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + HEROKU_SETTINGS)
    commit_all(project, "set up for Heroku")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/herokuish.git")
    return project


@pytest.fixture(scope="module")
def newcomer(opus: Opus, tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    """A developer who has just been given an account: a key, no apps yet."""
    key = make_key(tmp_path_factory.mktemp("newcomer"), "newcomer")
    opus.cli("users:add", "newcomer", "--role", "developer")
    opus.cli("keys:add", "newcomer", str(key.public))
    return key


def test_a_heroku_django_project_deploys_unchanged(
        opus: Opus, newcomer: SshKey, heroku_project: Path) -> None:
    first = push_main(heroku_project, opus, newcomer)   # the first push creates the app
    assert re.search(r"remote: -----> Using Python 3\.11\.\d+ \(/usr/bin/python3\.11\), as "
                     r"\.python-version asks", first)
    assert "remote: -----> Serving mysite.wsgi:application under mod_wsgi (the Procfile's " \
        "web: runs gunicorn on it)" in first
    assert "remote: -----> Running release command: python manage.py migrate" in first
    host = opus.app_host("herokuish")
    status, _headers, body = opus.get(host)
    assert status == 200 and body.startswith("Hello from a Heroku project (visits: "), body
    # whitenoise's manifest storage ran in collectstatic; the front serves the files.
    status, _headers, css = opus.get(host, "/static/pages/site.css")
    assert status == 200 and "rebeccapurple" in css
    manifest = opus.home / "apps" / "herokuish" / "current" / ".opus" / "static" / \
        "staticfiles.json"
    assert manifest.is_file()
    # Opus's production settings won over the project's: the host is allowed, the
    # database is in the app's data directory.
    assert (opus.home / "apps" / "herokuish" / "data" / "db.sqlite3").is_file()

    # A code-only push reuses the environment: no package is installed again.
    set_greeting(heroku_project, "Hello again")
    second = push_main(heroku_project, opus, newcomer)
    assert "remote: -----> Reusing the environment of an earlier build" in second
    assert "Creating virtualenv" not in second
    ready = re.search(r"remote:        Dependencies ready in (\d+\.\d) s", second)
    assert ready and float(ready.group(1)) < 1.0, second
    status, _headers, body = opus.get(host)
    assert status == 200 and body.startswith("Hello again"), body


def test_a_web_command_that_is_no_wsgi_server_runs_as_written(
        opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    project = tmp_path / "plainweb"
    project.mkdir()
    (project / "requirements.txt").write_text("six==1.16.0\n")
    (project / "Procfile").write_text("web: python -m http.server $PORT --bind 127.0.0.1\n")
    (project / "index.html").write_text("<h1>served by http.server on $PORT</h1>\n")
    git(project, "init", "-q", "-b", "main")
    commit_all(project, "a web command")
    git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/plainweb.git")
    output = push_main(project, opus, admin_key)
    assert "remote: -----> The Procfile's web: command runs as written, listening on $PORT" \
        in output
    status, _headers, body = opus.get(opus.app_host("plainweb"))
    assert status == 200 and "served by http.server" in body, body
    # Its processes are its own server's business: ps:scale says how to scale it.
    refused = opus.cli("ps:scale", "plainweb", "web=2", check=False)
    assert refused.returncode != 0
    assert "runs its Procfile command as written" in refused.stderr + refused.stdout
    processes = opus.cli("ps", "plainweb")
    assert processes.returncode == 0 and "plainweb" in processes.stdout
