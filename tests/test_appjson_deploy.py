"""app.json end to end on the session's Opus: a first push sets its config vars
(generated secrets too), is refused while a required variable has no value and deploys
once it has; the postdeploy script runs once; the formation applies. `apps:create --from`
deploys a local repository for an admin and refuses hostile sources."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from opus_paas.store import Store
from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    git,
    make_django_project,
    make_key,
    push_main,
    require_tool,
    wsgi_daemons,
)

APP = "ajshop"
APP_JSON: dict[str, Any] = {
    "name": "A shop",
    "repository": "https://example.com/shop",
    "env": {
        "GREETING_WORD": "hola",
        "DJANGO_SECRET": {"description": "signs things", "generator": "secret"},
        "API_TOKEN": {"description": "the shop's API token", "required": True},
        "OPTIONAL_THING": {"required": False},
    },
    "scripts": {"postdeploy": 'echo "postdeploy says $GREETING_WORD" && '
                              'echo ran >> "$OPUS_DATA_DIR/postdeploy.txt"'},
    "formation": {"web": {"quantity": 2}},
}


def ssh(opus: Opus, key: SshKey, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
         "git@127.0.0.1", shlex.join(argv)],
        capture_output=True, text=True, timeout=120, check=False)


def config(opus: Opus, app: str) -> dict[str, str]:
    store = Store(opus.home / "opus.db")
    found = store.get_app(app)
    assert found is not None
    return store.config(found)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, opus: Opus) -> Path:
    directory = make_django_project(tmp_path_factory.mktemp("appjson") / APP)
    (directory / "app.json").write_text(json.dumps(APP_JSON, indent=2))
    commit_all(directory, "app.json")
    git(directory, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
    return directory


def test_first_push_sets_up_from_app_json_and_later_pushes_do_not(
        opus: Opus, admin_key: SshKey, project: Path) -> None:
    # A required variable without a value: refused before anything is built or set.
    refused = git(project, "push", "opus", "main", env=admin_key.git_env(opus), check=False)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "[remote rejected]" in said, said
    assert "remote:        API_TOKEN is required: the shop's API token" in said, said
    assert f"app.json requires API_TOKEN, which has no value: run `opus config:set {APP} " \
           "API_TOKEN=…`, then push again (nothing is lost)" in said, said
    assert "Python app detected" not in said
    assert set(config(opus, APP)) == {"SECRET_KEY"}

    opus.cli("config:set", APP, "API_TOKEN=t0ken")
    first = push_main(project, opus, admin_key)
    assert "-----> Setting up from app.json (the app's first deploy)" in first, first
    assert "remote:        repository is not used by Opus" in first
    assert "remote:        DJANGO_SECRET: generated a secret" in first
    assert "remote:        API_TOKEN is set already; kept" in first
    assert "remote:        Scale web=2 (app.json's formation)" in first
    assert "-----> Released v1" in first
    assert "-----> Running app.json's postdeploy script" in first
    assert "remote:        postdeploy says hola" in first
    values = config(opus, APP)
    assert values["GREETING_WORD"] == "hola" and values["API_TOKEN"] == "t0ken"
    assert len(values["DJANGO_SECRET"]) >= 60 and len(values["SECRET_KEY"]) >= 60
    assert values["DJANGO_SECRET"] != values["SECRET_KEY"]
    assert "OPTIONAL_THING" not in values
    assert "t0ken" not in first and values["DJANGO_SECRET"] not in first
    marker = opus.home / "apps" / APP / "data" / "postdeploy.txt"
    assert marker.read_text() == "ran\n"
    store = Store(opus.home / "opus.db")
    app = store.get_app(APP)
    assert app is not None and app.web_processes == 2 and app.live_version == 1
    assert wsgi_daemons(app.live_port or 0) == 2
    assert opus.get(opus.app_host(APP))[0] == 200

    # The second push: app.json is not read again (a changed value stays as set).
    (project / "app.json").write_text(json.dumps(
        {**APP_JSON, "env": {**APP_JSON["env"], "GREETING_WORD": "changed"}}))
    commit_all(project, "another greeting")
    second = push_main(project, opus, admin_key)
    assert "-----> Released v2" in second and "app.json" not in second, second
    assert marker.read_text() == "ran\n"
    assert config(opus, APP)["GREETING_WORD"] == "hola"


def test_apps_create_from_a_local_repository_and_hostile_sources(
        opus: Opus, admin_key: SshKey, project: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    source = tmp_path_factory.mktemp("from") / "site"
    git(project.parent, "clone", "-q", str(project), str(source))
    (source / "app.json").write_text(json.dumps(
        {"env": {"GREETING_WORD": "from a source"},
         "addons": ["heroku-postgresql", {"plan": "heroku-redis:mini", "as": "REDIS"}],
         "scripts": {"postdeploy": "echo fetched-and-deployed"}}))
    (source / "requirements.txt").write_text("django>=5.2,<5.3\npsycopg[binary]>=3.2\n")
    commit_all(source, "no required variable")
    for tool in ("initdb", "postgres"):
        require_tool(str(Path("/usr/lib/postgresql/15/bin") / tool))
    opus.cli("addons:enable", "postgres")     # (as test_databases does; once a session)
    for tool in ("/usr/bin/redis-server", "/usr/bin/redis-cli"):
        require_tool(tool)
    opus.cli("addons:enable", "redis")

    developer = make_key(tmp_path_factory.mktemp("from-keys"), "ajdev")
    opus.cli("keys:add", "ajdev", str(developer.public))
    for argv, said in (
            (["apps:create", "ajdev1", "--from", f"file://{source}"], "only admins may"),
            (["apps:create", "ajdev1", "--from", str(source)], "only admins may"),
            (["apps:create", "ajdev1", "--from", "https://127.0.0.1/x.git"],
             "127.0.0.1, a private, loopback or reserved address"),
            (["apps:create", "ajdev1", "--from", "ext::sh -c id"], "takes no spaces"),
            (["apps:create", "ajdev1", "--from", "https://localhost/x.git"],
             "a private, loopback or reserved address"),
            (["apps:create", "ajdev1", "--from", "-uhttps://x"], "must not start with '-'"),
            (["apps:create", "ajdev1", "--from", "ext::sh"], "transport helper")):
        refused = ssh(opus, developer, *argv)
        assert refused.returncode != 0 and said in refused.stderr, (argv, refused.stderr)
    # Split by the SSH command line, `ext::sh -c id` is more words than apps:create takes.
    split = subprocess.run(
        ["ssh", "-i", str(developer.private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
         "git@127.0.0.1", "apps:create ajdev1 --from ext::sh -c id"],
        capture_output=True, text=True, timeout=60, check=False)
    assert split.returncode != 0 and "usage: opus apps:create APP" in split.stderr
    refused = opus.cli("apps:create", "ajcli", "--from", "-uhttps://x", check=False)
    assert refused.returncode != 0 and "must not start with '-'" in refused.stderr
    assert Store(opus.home / "opus.db").get_app("ajdev1") is None

    made = opus.cli("apps:create", "ajfrom", "--from", f"file://{source}")
    out = made.stdout + made.stderr
    assert f"-----> Fetching {source}" in out, out
    assert "GREETING_WORD: set from app.json" in out and "Released v1" in out, out
    assert "fetched-and-deployed" in out
    assert "Created ajfrom." in out
    assert "Created the Postgres database app_ajfrom (DATABASE_URL)" in out
    values = config(opus, "ajfrom")
    assert values["GREETING_WORD"] == "from a source"
    assert values["DATABASE_URL"].startswith("postgres")
    assert "Started the app's Redis (ajfrom-redis, REDIS_URL)" in out, out
    assert values["REDIS_URL"].startswith("redis://:") and "@127.0.0.1:" in values["REDIS_URL"]
    pong = opus.cli("redis:cli", "ajfrom", "-c", "PING")
    assert "PONG" in pong.stdout, pong.stdout + pong.stderr
    status, _headers, body = opus.get(opus.app_host("ajfrom"))
    seen = re.search(r"\(visits: (\d+)\)", body)
    assert status == 200 and seen, body
    # Migrated and written on Postgres (the health check's visit is counted too).
    tables = opus.cli("pg:psql", "ajfrom", "-c", "SELECT count(*) FROM pages_visit").stdout
    assert re.search(rf"^\s*{seen.group(1)}\s*$", tables, re.M), tables
    log = git(opus.home / "repos" / "ajfrom.git", "log", "--format=%P|%an|%B", "main").stdout
    parents, author, message = log.split("|", 2)
    assert parents == "" and author == "Test"
    assert "no required variable" in message and f"Imported by Opus from {source} at" \
        in message
    again = opus.cli("apps:create", "ajfrom", "--from", f"file://{source}", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
