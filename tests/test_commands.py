"""The `opus` command table, on the host and over real SSH, with an authorization matrix:
admin, owner, collaborator and stranger against every command that touches an app."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Opus, SshKey, git, make_django_project, make_key, wsgi_daemons
from tests.test_sshd import on_a_terminal, ssh_t

APP = "cmdapp"


def ssh(opus: Opus, key: SshKey, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
         "git@127.0.0.1", shlex.join(argv)],
        input=stdin, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def people(opus: Opus, admin_key: SshKey,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, SshKey]:
    """admin; owner, who creates the app; collab, added to it; stranger, who is not."""
    directory = tmp_path_factory.mktemp("people")
    found = {"admin": admin_key}
    for name in ("owner", "collab", "stranger"):
        key = make_key(directory, f"cmd-{name}")
        opus.cli("keys:add", f"cmd-{name}", str(key.public))
        found[name] = key
    opus.cli("users:add", "cmd-other")   # whom access:add and access:remove are about
    created = ssh(opus, found["owner"], "apps:create", APP)
    assert created.returncode == 0, created.stderr
    added = ssh(opus, found["owner"], "access:add", APP, "cmd-collab")
    assert added.returncode == 0, added.stderr
    return found


NOT_FOUND = f"opus: app {APP} not found, or you may not use it"
FORBIDDEN = f"opus: only cmd-owner (the owner) or an admin may do that to {APP}"
# What an allowed user is told about an app that was never deployed: past authorization.
NO_RELEASE = f"opus: {APP} has no release yet; push to deploy one"
NO_ROLLBACK = f"opus: {APP} has no release to roll back from; push first"
NO_BUILD = f"opus: no such build of {APP}; `opus builds {APP}` lists them"
ADMINS_ONLY = "opus: only an admin may see or change the dashboard's certificate"

# (command, admin, owner, collaborator, stranger): "ok", or the one line of refusal.
MATRIX = [
    (["apps:info", APP], "ok", "ok", "ok", NOT_FOUND),
    (["access", APP], "ok", "ok", "ok", NOT_FOUND),
    (["releases", APP], "ok", "ok", "ok", NOT_FOUND),
    (["config", APP], "ok", "ok", "ok", NOT_FOUND),
    (["domains", APP], "ok", "ok", "ok", NOT_FOUND),
    (["ps", APP], "ok", "ok", "ok", NOT_FOUND),
    (["ps:scale", APP, "web=1"], "ok", "ok", "ok", NOT_FOUND),
    (["ps:restart", APP], NO_RELEASE, NO_RELEASE, NO_RELEASE, NOT_FOUND),
    (["ps:stop", APP], NO_RELEASE, NO_RELEASE, NO_RELEASE, NOT_FOUND),
    (["ps:start", APP], NO_RELEASE, NO_RELEASE, NO_RELEASE, NOT_FOUND),
    (["run", APP, "--", "true"], NO_RELEASE, NO_RELEASE, NO_RELEASE, NOT_FOUND),
    (["rollback", APP], NO_ROLLBACK, NO_ROLLBACK, NO_ROLLBACK, NOT_FOUND),
    (["builds:output", APP], NO_BUILD, NO_BUILD, NO_BUILD, NOT_FOUND),
    (["domains:add", APP, "matrix.example.test"], "ok", "ok", "ok", NOT_FOUND),
    (["config:get", APP, "SECRET_KEY"], "ok", "ok", "ok", NOT_FOUND),
    (["config:set", APP, "MATRIX=1"], "ok", "ok", "ok", NOT_FOUND),
    (["config:unset", APP, "MATRIX"], "ok", "ok", "ok", NOT_FOUND),
    (["builds", APP], "ok", "ok", "ok", NOT_FOUND),
    (["logs", APP, "-n", "1"], "ok", "ok", "ok", NOT_FOUND),
    (["access:add", APP, "cmd-other"], "ok", "ok", FORBIDDEN, NOT_FOUND),
    (["access:remove", APP, "cmd-other"], "ok", "ok", FORBIDDEN, NOT_FOUND),
    (["git:set", APP, "deploy-branch", "main"], "ok", "ok", FORBIDDEN, NOT_FOUND),
    (["checks", APP], "ok", "ok", "ok", NOT_FOUND),
    (["checks:set", APP, "path=/"], "ok", "ok", "ok", NOT_FOUND),
    (["checks:disable", APP], "ok", "ok", "ok", NOT_FOUND),
    (["ps:restart", APP, "worker"], NO_RELEASE, NO_RELEASE, NO_RELEASE, NOT_FOUND),
    (["certs", APP], "ok", "ok", "ok", NOT_FOUND),
    (["https:redirect", APP, "off"], "ok", "ok", "ok", NOT_FOUND),
    (["certs:remove", APP], "ok", "ok", "ok", NOT_FOUND),
    (["certs", "opus"], "ok", ADMINS_ONLY, ADMINS_ONLY, ADMINS_ONLY),
    (["apps:destroy", APP, "--confirm", APP], None, None, FORBIDDEN, NOT_FOUND),
]


ROLES = ("admin", "owner", "collab", "stranger")
CASES = [(row[0], who, expected) for row in MATRIX
         for who, expected in zip(ROLES, row[1:], strict=True) if expected is not None]


@pytest.mark.parametrize(("argv", "who", "expected"), CASES,
                         ids=[f"{argv[0]}-{who}" for argv, who, _ in CASES])
def test_authorization_matrix(opus: Opus, people: dict[str, SshKey], argv: list[str],
                              who: str, expected: str) -> None:
    """(Destroying by its owner or an admin is tested on an app of its own.)"""
    if argv[0] == "access:remove":   # something to remove, whoever tries
        ssh(opus, people["admin"], "access:add", APP, "cmd-other")
    try:
        result = ssh(opus, people[who], *argv)
    finally:
        ssh(opus, people["admin"], "access:remove", APP, "cmd-other")
        ssh(opus, people["admin"], "domains:remove", APP, "matrix.example.test")
    if expected == "ok":
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert result.stderr.strip() == expected
    assert (opus.home / "repos" / f"{APP}.git").is_dir()   # nobody destroyed it


LOCAL_READS = [["apps:info", APP], ["access", APP], ["config", APP], ["releases", APP],
               ["builds", APP], ["logs", APP], ["domains", APP], ["ps", APP], ["apps"],
               ["keys"], ["users"], ["version"], ["help"], ["help", "config:set"]]


@pytest.mark.parametrize("argv", LOCAL_READS, ids=lambda a: " ".join(a))
def test_the_same_commands_run_on_the_host_and_over_ssh(opus: Opus, people: dict[str, SshKey],
                                                        argv: list[str]) -> None:
    """The host's operator and an admin over SSH see the same thing."""
    local = opus.cli(*argv, check=False)
    remote = ssh(opus, people["admin"], *argv)
    assert (local.returncode, remote.returncode) == (0, 0), local.stderr + remote.stderr
    if argv[0] != "help":   # help over SSH leaves out the host-only commands
        assert local.stdout == remote.stdout


def test_the_changing_commands_on_the_host(opus: Opus, people: dict[str, SshKey],
                                          tmp_path: Path) -> None:
    """The operator at the host's shell: every changing command, on an app of its own."""
    def ok(*argv: str, stdin: str | None = None) -> str:
        result = opus.cli(*argv, input=stdin, check=False)
        assert result.returncode == 0, f"{argv}: {result.stderr}"
        return result.stdout

    assert "Created hostapp." in ok("apps:create", "hostapp")
    ok("config:set", "hostapp", "A=1", "B=two words")
    assert json.loads(ok("config", "hostapp", "--json"))["B"] == "two words"
    ok("config:unset", "hostapp", "A")
    assert "A" not in json.loads(ok("config", "hostapp", "--json"))
    ok("access:add", "hostapp", "cmd-collab")
    ok("access:remove", "hostapp", "cmd-collab")
    ok("domains:add", "hostapp", "host.example.test")
    ok("domains:remove", "hostapp", "host.example.test")
    ok("git:set", "hostapp", "deploy-branch", "trunk")
    assert json.loads(ok("apps:info", "hostapp", "--json"))["deploy_branch"] == "trunk"
    ok("users:add", "cmd-hosted")
    key = make_key(tmp_path, "hosted")
    ok("keys:add", "cmd-hosted", "-", stdin=key.public.read_text())
    ok("keys:remove", "hosted")
    ok("users:passwd", "cmd-hosted", stdin="a long enough password\n")
    ok("users:role", "cmd-hosted", "admin")
    ok("users:remove", "cmd-hosted")
    ok("ps:scale", "hostapp", "web=2")
    ok("apps:rename", "hostapp", "hostapp2")
    ok("apps:destroy", "hostapp2", "--confirm", "hostapp2")
    assert "hostapp" not in ok("apps")


def test_a_collaborator_may_push_and_clone_a_stranger_may_not(
        opus: Opus, people: dict[str, SshKey], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q",
        "--allow-empty", "-m", "1")
    url = f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git"
    pushed = git(repo, "push", url, "HEAD:refs/heads/collab-work",
                 env=people["collab"].git_env(opus), check=False)
    assert pushed.returncode == 0, pushed.stderr
    refused = git(repo, "push", url, "HEAD:refs/heads/stranger-work",
                  env=people["stranger"].git_env(opus), check=False)
    assert NOT_FOUND in refused.stderr
    clone = subprocess.run(["git", "clone", "-q", "--branch", "collab-work", url,
                            str(tmp_path / "c")], env=people["collab"].git_env(opus),
                           capture_output=True, text=True, check=False)
    assert clone.returncode == 0, clone.stderr


def test_apps_lists_only_what_each_may_use(opus: Opus, people: dict[str, SshKey]) -> None:
    def names(who: str) -> list[str]:
        result = ssh(opus, people[who], "apps", "--json")
        assert result.returncode == 0, result.stderr
        return [a["name"] for a in json.loads(result.stdout)]
    assert APP in names("admin") and APP in names("owner") and APP in names("collab")
    assert APP not in names("stranger")
    assert APP in [a["name"] for a in json.loads(opus.cli("apps", "--json").stdout)]


def test_apps_info_and_access_in_text_and_json(opus: Opus, people: dict[str, SshKey]) -> None:
    info = json.loads(ssh(opus, people["collab"], "apps:info", APP, "--json").stdout)
    assert info["owner"] == "cmd-owner" and info["collaborators"] == ["cmd-collab"]
    assert info["git_url"].endswith(f"/{APP}.git") and info["deploy_branch"] == "main"
    text = ssh(opus, people["owner"], "apps:info", APP).stdout
    assert "owner:          cmd-owner" in text
    listed = json.loads(opus.cli("access", "--app", APP, "--json").stdout)
    assert listed == {"owner": "cmd-owner", "collaborators": ["cmd-collab"]}


def test_destroy_needs_the_name_repeated_and_removes_everything(
        opus: Opus, people: dict[str, SshKey]) -> None:
    owner = people["owner"]
    assert ssh(opus, owner, "apps:create", "doomed").returncode == 0
    unconfirmed = ssh(opus, owner, "apps:destroy", "doomed")
    assert unconfirmed.returncode == 2
    assert "repeat its name: --confirm doomed" in unconfirmed.stderr
    wrong = ssh(opus, owner, "apps:destroy", "doomed", "--confirm", "doome")
    assert wrong.returncode == 2
    assert (opus.home / "repos" / "doomed.git").is_dir()
    done = ssh(opus, owner, "apps:destroy", "doomed", "--confirm", "doomed")
    assert done.returncode == 0, done.stderr
    assert not (opus.home / "repos" / "doomed.git").exists()
    assert not (opus.home / "apps" / "doomed").exists()
    assert "doomed" not in opus.cli("apps").stdout


def test_rename_carries_code_config_data_and_people_over(
        opus: Opus, people: dict[str, SshKey], tmp_path: Path) -> None:
    owner = people["owner"]
    project = make_django_project(tmp_path / "proj", "Renamed app")
    pushed = git(project, "push", f"ssh://git@127.0.0.1:{opus.ssh_port}/renamefrom.git",
                 "main", env=owner.git_env(opus), check=False)
    assert pushed.returncode == 0, pushed.stderr
    assert ssh(opus, owner, "access:add", "renamefrom", "cmd-collab").returncode == 0
    secret = ssh(opus, owner, "config:get", "renamefrom", "SECRET_KEY").stdout
    body = opus.get(opus.app_host("renamefrom"))[2]
    assert body.startswith("Renamed app (visits: ")
    visits = int(body.split("visits: ")[1].rstrip(")"))

    assert ssh(opus, people["collab"], "apps:rename", "renamefrom", "x").stderr.strip() == \
        "opus: only cmd-owner (the owner) or an admin may do that to renamefrom"
    assert ssh(opus, owner, "apps:rename", "renamefrom", APP).returncode == 5
    assert ssh(opus, owner, "apps:rename", "renamefrom", "Bad;name").returncode == 2
    done = ssh(opus, owner, "apps:rename", "renamefrom", "renameto")
    assert done.returncode == 0, done.stderr
    assert "git remote set-url opus ssh://git@" in done.stdout

    status, _headers, body = opus.get(opus.app_host("renameto"))
    assert status == 200 and body.startswith("Renamed app (visits: ")
    # The data came along: a fresh database would count from its health check again.
    assert int(body.split("visits: ")[1].rstrip(")")) > visits + 1
    assert opus.get(opus.app_host("renamefrom"))[0] == 404
    assert ssh(opus, owner, "config:get", "renameto", "SECRET_KEY").stdout == secret
    assert json.loads(ssh(opus, owner, "access", "renameto", "--json").stdout)[
        "collaborators"] == ["cmd-collab"]
    listed = git(project, "ls-remote", f"ssh://git@127.0.0.1:{opus.ssh_port}/renameto.git",
                 env=owner.git_env(opus))
    assert "refs/heads/main" in listed.stdout
    assert not (opus.home / "apps" / "renamefrom").exists()
    assert not (opus.home / "repos" / "renamefrom.git").exists()
    assert "renamefrom" not in ssh(opus, people["admin"], "apps").stdout


def test_a_rename_whose_rebuild_fails_puts_everything_back(
        opus: Opus, people: dict[str, SshKey], tmp_path: Path) -> None:
    owner = people["owner"]
    project = make_django_project(tmp_path / "proj", "Stays put")
    pushed = git(project, "push", f"ssh://git@127.0.0.1:{opus.ssh_port}/staysput.git",
                 "main", env=owner.git_env(opus), check=False)
    assert pushed.returncode == 0, pushed.stderr
    # A config the next build will not survive (its health check gets 500s).
    ssh(opus, owner, "config:set", "staysput", "DATABASE_URL=postgres://nowhere/db",
        "--no-restart")
    failed = ssh(opus, owner, "apps:rename", "staysput", "wentaway")
    assert failed.returncode == 6, failed.stdout + failed.stderr
    status, _headers, body = opus.get(opus.app_host("staysput"))
    assert status == 200 and body.startswith("Stays put")
    assert "wentaway" not in opus.cli("apps").stdout
    assert not (opus.home / "apps" / "wentaway").exists()
    assert (opus.home / "repos" / "staysput.git").is_dir()
    assert (opus.home / "apps" / "staysput" / "data" / "db.sqlite3").is_file()


def test_creating_an_existing_app_is_refused(opus: Opus, people: dict[str, SshKey]) -> None:
    result = ssh(opus, people["stranger"], "apps:create", APP)
    assert (result.returncode, result.stderr.strip()) == (
        5, f"opus: app {APP} already exists; choose another name")


# ---- releases, builds and logs of a deployed app ------------------------------------------

LIVE = "cmdlive"


@pytest.fixture(scope="module")
def live_app(opus: Opus, people: dict[str, SshKey],
             tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_django_project(tmp_path_factory.mktemp("live") / "proj", "Live for logs")
    result = git(project, "push", f"ssh://git@127.0.0.1:{opus.ssh_port}/{LIVE}.git", "main",
                 env=people["owner"].git_env(opus), check=False)
    assert result.returncode == 0, result.stderr
    return project


def test_releases_and_build_output(opus: Opus, people: dict[str, SshKey],
                                   live_app: Path) -> None:
    sha = git(live_app, "rev-parse", "HEAD").stdout.strip()
    text = ssh(opus, people["owner"], "releases", LIVE).stdout
    assert text.startswith(f"v1     {sha[:7]}") and text.rstrip().endswith("(live)")
    listed = json.loads(ssh(opus, people["owner"], "releases", LIVE, "--json").stdout)
    assert [(r["version"], r["sha"], r["live"]) for r in listed] == [(1, sha, True)]
    builds = json.loads(ssh(opus, people["owner"], "builds", LIVE, "--json").stdout)
    assert [b["status"] for b in builds] == ["succeeded"]
    output = ssh(opus, people["owner"], "builds:output", LIVE).stdout
    assert f"-----> Building {LIVE} from {sha[:7]}" in output
    assert "-----> Released v1" in output and str(opus.home) not in output
    same = ssh(opus, people["owner"], "builds:output", LIVE, str(builds[0]["id"])).stdout
    assert same == output
    missing = ssh(opus, people["owner"], "builds:output", LIVE, "999999")
    assert missing.returncode == 3 and "no such build" in missing.stderr
    assert ssh(opus, people["stranger"], "builds:output", LIVE).stderr.strip() == \
        f"opus: app {LIVE} not found, or you may not use it"


def test_logs_show_the_last_lines_and_follow_new_ones(opus: Opus, people: dict[str, SshKey],
                                                      live_app: Path) -> None:
    marker = f"/logs-marker-{time.time_ns()}"
    assert opus.get(opus.app_host(LIVE), marker)[0] == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = ssh(opus, people["owner"], "logs", LIVE, "-n", "50").stdout
        if marker in shown:
            break
        time.sleep(0.3)
    assert marker in shown
    # Heroku's form, merged in time order: the app's web process and the front's access
    # log both saw the request.
    lines = shown.splitlines()
    assert all(re.match(rf"\d{{4}}-\d\d-\d\dT[\d:.]+Z ({LIVE}\[web\.1\]|opus\[front\]): ",
                        line) for line in lines), shown
    assert {line.split(" ")[1] for line in lines if marker in line} >= \
        {f"{LIVE}[web.1]:", "opus[front]:"}, shown
    assert [line.split(" ")[0] for line in lines] == sorted(line.split(" ")[0] for line in lines)
    assert len(ssh(opus, people["owner"], "logs", LIVE, "-n", "2").stdout.splitlines()) == 2

    follower = subprocess.Popen(
        ["ssh", "-i", str(people["owner"].private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
         "git@127.0.0.1", f"logs {LIVE} -t -n 0 --ps web"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        live_marker = f"/live-marker-{time.time_ns()}"
        opus.get(opus.app_host(LIVE), live_marker)
        assert follower.stdout is not None
        line = follower.stdout.readline()
        while live_marker not in line and line:
            line = follower.stdout.readline()
        assert live_marker in line and f" {LIVE}[web.1]: " in line, line
    finally:
        follower.kill()
        follower.communicate()


TRICKY = 'hello "world" \'quoted\'\nsecond line ünïcödé \x1b[31m $(id) `id` ; rm -rf /'


def test_config_set_makes_one_release_and_keeps_values_exactly(
        opus: Opus, people: dict[str, SshKey], live_app: Path) -> None:
    owner = people["owner"]
    before = json.loads(ssh(opus, owner, "releases", LIVE, "--json").stdout)[0]["version"]
    result = ssh(opus, owner, "config:set", LIVE, f"GREETING={TRICKY}", "EMPTY=", "X=1=2")
    assert result.returncode == 0, result.stderr
    assert f"v{before + 1} is live" in result.stdout
    releases = json.loads(ssh(opus, owner, "releases", LIVE, "--json").stdout)
    assert (releases[0]["version"], releases[0]["live"]) == (before + 1, True)
    assert releases[0]["description"] == "Set GREETING, EMPTY, X"
    config = json.loads(ssh(opus, owner, "config", LIVE, "--json").stdout)
    assert (config["GREETING"], config["EMPTY"], config["X"]) == (TRICKY, "", "1=2")
    assert ssh(opus, owner, "config:get", LIVE, "GREETING").stdout == TRICKY + "\n"
    # The table never lets a value drive the reader's terminal or forge a row.
    table = ssh(opus, owner, "config", LIVE).stdout
    assert "\x1b" not in table and "\\u001b[31m" in table and "\\nsecond line" in table
    # The running release got them: its environment snapshot holds them exactly.
    env = json.loads((opus.home / "apps" / LIVE / "env" / f"v{before + 1}.json").read_text())
    assert env["GREETING"] == TRICKY
    assert opus.get(opus.app_host(LIVE))[0] == 200
    unset = ssh(opus, owner, "config:unset", LIVE, "EMPTY", "X")
    assert unset.returncode == 0 and f"v{before + 2} is live" in unset.stdout
    assert "X" not in json.loads(ssh(opus, owner, "config", LIVE, "--json").stdout)


def test_config_set_without_restart_waits_for_the_next_deploy(
        opus: Opus, people: dict[str, SshKey], live_app: Path) -> None:
    owner = people["owner"]
    before = ssh(opus, owner, "releases", LIVE, "--json").stdout
    result = ssh(opus, owner, "config:set", LIVE, "LATER=yes", "--no-restart")
    assert "the next deploy takes it" in result.stdout
    assert ssh(opus, owner, "releases", LIVE, "--json").stdout == before
    assert ssh(opus, owner, "config:get", LIVE, "LATER").stdout == "yes\n"


@pytest.mark.parametrize("pairs", [["GOOD=1", "bad key=2"], ["GOOD=1", "1BAD=2"],
                                   ["GOOD=1", "NOEQUALS"]])
def test_a_bad_pair_sets_nothing(opus: Opus, people: dict[str, SshKey], live_app: Path,
                                 pairs: list[str]) -> None:
    owner = people["owner"]
    before = ssh(opus, owner, "releases", LIVE, "--json").stdout
    result = ssh(opus, owner, "config:set", LIVE, *pairs)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "GOOD" not in json.loads(ssh(opus, owner, "config", LIVE, "--json").stdout)
    assert ssh(opus, owner, "releases", LIVE, "--json").stdout == before


def test_a_config_that_breaks_the_app_changes_nothing(opus: Opus, people: dict[str, SshKey],
                                                      live_app: Path) -> None:
    owner = people["owner"]
    before = ssh(opus, owner, "releases", LIVE, "--json").stdout
    result = ssh(opus, owner, "config:set", LIVE, "DATABASE_URL=postgres://nowhere/db")
    assert result.returncode == 6, result.stdout + result.stderr
    assert "health check" in result.stderr
    assert "DATABASE_URL" not in json.loads(ssh(opus, owner, "config", LIVE, "--json").stdout)
    assert ssh(opus, owner, "releases", LIVE, "--json").stdout == before
    assert opus.get(opus.app_host(LIVE))[0] == 200


def test_rollback_brings_back_an_earlier_release_and_its_config(
        opus: Opus, people: dict[str, SshKey], live_app: Path) -> None:
    owner = people["owner"]
    ssh(opus, owner, "config:set", LIVE, "COLOUR=red")
    ssh(opus, owner, "config:set", LIVE, "COLOUR=blue")
    live = json.loads(ssh(opus, owner, "releases", LIVE, "--json").stdout)[0]["version"]
    back = ssh(opus, owner, "rollback", LIVE)
    assert back.returncode == 0, back.stderr
    assert f"v{live + 1} is live" in back.stdout
    assert ssh(opus, owner, "config:get", LIVE, "COLOUR").stdout == "red\n"
    newest = json.loads(ssh(opus, owner, "releases", LIVE, "--json").stdout)[0]
    assert newest["description"] == f"Rollback to v{live - 1}"
    to_first = ssh(opus, owner, "rollback", LIVE, "v1")
    assert to_first.returncode == 0, to_first.stderr
    assert "COLOUR" not in json.loads(ssh(opus, owner, "config", LIVE, "--json").stdout)
    assert opus.get(opus.app_host(LIVE))[2].startswith("Live for logs")
    missing = ssh(opus, owner, "rollback", LIVE, "v999")
    assert missing.returncode == 3 and "has no release v999" in missing.stderr
    assert ssh(opus, owner, "rollback", LIVE, "latest").returncode == 2


def test_a_custom_domain_is_served_and_allowed_then_removed(
        opus: Opus, people: dict[str, SshKey], live_app: Path) -> None:
    owner = people["owner"]
    added = ssh(opus, owner, "domains:add", LIVE, "www.example.test")
    assert added.returncode == 0, added.stderr
    assert "is live" in added.stdout
    assert json.loads(ssh(opus, owner, "domains", LIVE, "--json").stdout) == [
        f"{LIVE}.localhost", "www.example.test"]
    status, _headers, body = opus.get("www.example.test")
    assert status == 200 and body.startswith("Live for logs")   # Django allowed the host
    env = json.loads((opus.home / "apps" / LIVE / "env" /
                      f"v{_live_version(opus, owner)}.json").read_text())
    assert env["OPUS_ALLOWED_HOSTS"] == f"{LIVE}.localhost,www.example.test"
    taken = ssh(opus, people["admin"], "domains:add", APP, "www.example.test")
    assert taken.returncode == 5 and "already in use" in taken.stderr
    removed = ssh(opus, owner, "domains:remove", LIVE, "www.example.test")
    assert removed.returncode == 0, removed.stderr
    assert opus.get("www.example.test")[0] == 404
    again = ssh(opus, owner, "domains:remove", LIVE, "www.example.test")
    assert again.returncode == 3


def _web_port(opus: Opus, key: SshKey) -> int:
    listed = json.loads(ssh(opus, key, "ps", LIVE, "--json").stdout)
    assert len(listed) == 1, listed
    return int(listed[0]["name"].rsplit("-p", 1)[1])


def test_ps_scale_restart_stop_and_start(opus: Opus, people: dict[str, SshKey],
                                         live_app: Path) -> None:
    owner = people["owner"]
    listed = json.loads(ssh(opus, owner, "ps", LIVE, "--json").stdout)
    assert [(p["type"], p["state"], p["processes"]) for p in listed] == [("web", "RUNNING", 1)]
    before = _web_port(opus, owner)
    assert wsgi_daemons(before) == 1
    releases = ssh(opus, owner, "releases", LIVE, "--json").stdout

    scaled = ssh(opus, owner, "ps:scale", LIVE, "web=3")
    assert scaled.returncode == 0, scaled.stderr
    listed = json.loads(ssh(opus, owner, "ps", LIVE, "--json").stdout)
    assert [(p["state"], p["processes"]) for p in listed] == [("RUNNING", 3)]
    after = _web_port(opus, owner)
    assert after != before   # a new instance on the other port; the old one is gone
    assert (wsgi_daemons(after), wsgi_daemons(before)) == (3, 0)
    assert opus.get(opus.app_host(LIVE))[0] == 200
    assert ssh(opus, owner, "releases", LIVE, "--json").stdout == releases   # no release

    restarted = ssh(opus, owner, "ps:restart", LIVE)
    assert restarted.returncode == 0, restarted.stderr
    assert _web_port(opus, owner) == before and wsgi_daemons(before) == 3

    stopped = ssh(opus, owner, "ps:stop", LIVE)
    assert stopped.returncode == 0, stopped.stderr
    assert (wsgi_daemons(before), wsgi_daemons(after)) == (0, 0)
    assert "stopped" in ssh(opus, owner, "ps", LIVE).stdout
    assert opus.get(opus.app_host(LIVE))[0] == 503
    started = ssh(opus, owner, "ps:start", LIVE)
    assert started.returncode == 0 and "Started" in started.stdout, started.stderr
    assert opus.get(opus.app_host(LIVE))[0] == 200
    assert "running already" in ssh(opus, owner, "ps:start", LIVE).stdout
    assert ssh(opus, owner, "ps:scale", LIVE, "web=1").returncode == 0


def test_run_a_one_off_command_in_the_live_release(opus: Opus, people: dict[str, SshKey],
                                                   live_app: Path) -> None:
    owner = people["owner"]
    probe = ("import os, sys; print(len(os.environ['SECRET_KEY']) > 20, os.getuid() != 0, "
             "os.getcwd().endswith('/releases/v1')); sys.exit(7)")
    result = ssh(opus, owner, "run", LIVE, "--", "python", "-c", probe)
    assert (result.returncode, result.stdout) == (7, "True True True\n"), result.stderr
    local = opus.cli("run", LIVE, "--", "python", "-c", probe, check=False)
    assert (local.returncode, local.stdout) == (7, "True True True\n")
    check = ssh(opus, owner, "run", LIVE, "--", "python", "manage.py", "check")
    assert check.returncode == 0 and "System check identified no issues" in check.stdout
    without_dashes = ssh(opus, owner, "run", LIVE, "python", "-c", "print(1)")
    assert without_dashes.returncode == 2 and "the -- is needed" in without_dashes.stderr
    option_like = ssh(opus, owner, "run", LIVE, "--", "python", "-c",
                      "import sys; print(sys.argv[1:])", "-a", "--json", "--app", "x")
    assert option_like.stdout == "['-a', '--json', '--app', 'x']\n", option_like.stderr
    missing = ssh(opus, owner, "run", LIVE, "--", "no-such-program")
    assert missing.returncode == 3 and "no-such-program: no such command" in missing.stderr
    stranger = ssh(opus, people["stranger"], "run", LIVE, "--", "id")
    assert stranger.stderr.strip() == f"opus: app {LIVE} not found, or you may not use it"


def test_run_on_a_terminal_is_interactive(opus: Opus, people: dict[str, SshKey],
                                          live_app: Path) -> None:
    """`ssh -t HOST run APP -- …` gets a real terminal: input is typed, sizes and the
    client's terminal type are known."""
    program = ("import os, sys, shutil; print(sys.stdin.isatty(), sys.stdout.isatty(), "
               "shutil.get_terminal_size().columns > 0, os.environ['TERM']); "
               "print('you typed', input('name? ').upper()); sys.exit(3)")
    status, lines = on_a_terminal(
        ["env", "TERM=xterm-256color",
         *ssh_t(opus, people["owner"], shlex.join(["run", LIVE, "--", "python", "-c", program]))],
        keystrokes=b"opus\r", asked=(b"name? ",))
    assert status == 3, lines
    assert "True True True xterm-256color" in lines, lines
    assert any(line.endswith("you typed OPUS") for line in lines), lines


@pytest.mark.parametrize(("pairs", "message"), [
    (["worker=1"], "has no process type 'worker'; its Procfile has: web"),
    (["worker=-1"], "'worker=-1' is not TYPE=COUNT"),
    (["w;id=1"], "process type"),
    (["web=0"], "web takes 1 to 16 processes"),
    (["web=99"], "web takes 1 to 16 processes"),
    (["web=x"], "'web=x' is not TYPE=COUNT"),
    (["web"], "'web' is not TYPE=COUNT"),
])
def test_ps_scale_refuses_bad_counts(opus: Opus, people: dict[str, SshKey], live_app: Path,
                                     pairs: list[str], message: str) -> None:
    result = ssh(opus, people["owner"], "ps:scale", LIVE, *pairs)
    assert result.returncode in (2, 3) and message in result.stderr, result.stderr


def _live_version(opus: Opus, key: SshKey) -> int:
    listed = json.loads(ssh(opus, key, "releases", LIVE, "--json").stdout)
    return int(next(r["version"] for r in listed if r["live"]))


@pytest.mark.parametrize("domain", [f"{APP}.localhost", "localhost", "opus.localhost",
                                    "127.0.0.1", "10.1.2.3", "myhost",
                                    "UPPER.test", "a..b.test", "-x.test", "x" * 300 + ".test",
                                    "evil.test;id", "evil.test\nServerAlias x", "*.test"])
def test_hostile_domains_are_refused(opus: Opus, people: dict[str, SshKey], live_app: Path,
                                     domain: str) -> None:
    before = ssh(opus, people["owner"], "domains", LIVE).stdout
    result = ssh(opus, people["owner"], "domains:add", LIVE, domain)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert ssh(opus, people["owner"], "domains", LIVE).stdout == before


@pytest.mark.parametrize(("args", "message"), [
    (["--ps", "worker"], f"opus: no worker log for {LIVE} yet"),
    (["--ps", "../../etc/passwd"], "opus: invalid process type"),
    (["-n", "many"], "opus: -n needs a number of lines"),
])
def test_logs_refuse_bad_options(opus: Opus, people: dict[str, SshKey], live_app: Path,
                                 args: list[str], message: str) -> None:
    result = ssh(opus, people["owner"], "logs", LIVE, *args)
    assert result.returncode != 0 and result.stderr.startswith(message), result.stderr


# ---- users and keys ---------------------------------------------------------------------

def test_users_are_managed_by_admins_only(opus: Opus, people: dict[str, SshKey]) -> None:
    denied = ssh(opus, people["owner"], "users")
    assert (denied.returncode, denied.stderr.strip()) == (4, "opus: only an admin may list "
                                                             "users")
    assert ssh(opus, people["owner"], "users:add", "sneaky").returncode == 4
    added = ssh(opus, people["admin"], "users:add", "cmd-temp", "--role", "developer")
    assert added.returncode == 0, added.stderr
    listed = json.loads(ssh(opus, people["admin"], "users", "--json").stdout)
    assert {"name": "cmd-temp", "role": "developer"} in listed
    assert ssh(opus, people["admin"], "users:role", "cmd-temp", "admin").returncode == 0
    assert ssh(opus, people["admin"], "users:role", "cmd-temp", "root").returncode == 2
    removed = ssh(opus, people["admin"], "users:remove", "cmd-temp")
    assert removed.returncode == 0, removed.stderr
    owns = ssh(opus, people["admin"], "users:remove", "cmd-owner")
    assert owns.returncode == 5 and f"owns {APP}" in owns.stderr


def test_the_last_admin_stays_an_admin(opus: Opus, people: dict[str, SshKey]) -> None:
    admins = [u["name"] for u in json.loads(opus.cli("users", "--json").stdout)
              if u["role"] == "admin"]
    assert admins == ["admin"]
    result = opus.cli("users:role", "admin", "developer", check=False)
    assert result.returncode == 5
    assert "admin is the last admin; make another user admin first" in result.stderr


def test_a_password_is_set_from_stdin_and_stored_hashed(opus: Opus,
                                                        people: dict[str, SshKey]) -> None:
    result = ssh(opus, people["owner"], "users:passwd", "cmd-owner",
                 stdin="correct horse battery\n")
    assert result.returncode == 0, result.stderr
    other = ssh(opus, people["owner"], "users:passwd", "admin", stdin="whatever12345\n")
    assert other.returncode == 4
    short = ssh(opus, people["owner"], "users:passwd", "cmd-owner", stdin="short\n")
    assert short.returncode == 2 and "at least 10 characters" in short.stderr
    stored = subprocess.run(["sqlite3", str(opus.home / "opus.db"),
                             "SELECT password_hash FROM users WHERE name='cmd-owner'"],
                            capture_output=True, text=True, check=False).stdout
    if stored:   # sqlite3's CLI may be missing; the hash format is tested in test_keys
        assert stored.startswith("scrypt$") and "correct horse" not in stored


def test_keys_over_ssh_a_developer_sees_and_manages_only_their_own(
        opus: Opus, people: dict[str, SshKey], tmp_path: Path) -> None:
    own = json.loads(ssh(opus, people["collab"], "keys", "--json").stdout)
    assert {k["user"] for k in own} == {"cmd-collab"}
    extra = make_key(tmp_path, "collab-laptop")
    added = ssh(opus, people["collab"], "keys:add", "cmd-collab", "-",
                stdin=extra.public.read_text())
    assert added.returncode == 0, added.stderr
    for_other = ssh(opus, people["collab"], "keys:add", "cmd-owner", "-",
                    stdin=make_key(tmp_path, "x").public.read_text())
    assert for_other.returncode == 4
    # Removal by name takes effect for the next connection.
    assert ssh(opus, extra, "apps").returncode == 0
    removed = ssh(opus, people["collab"], "keys:remove", "collab-laptop")
    assert removed.returncode == 0, removed.stderr
    assert ssh(opus, extra, "apps").returncode == 255
    not_mine = ssh(opus, people["collab"], "keys:remove", "cmd-owner")
    assert not_mine.returncode == 3


@pytest.mark.parametrize("text", [
    'command="/bin/sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOg4 x',
    "garbage",
    "",
])
def test_bad_keys_over_ssh_are_refused_in_one_line(opus: Opus, people: dict[str, SshKey],
                                                   text: str) -> None:
    result = ssh(opus, people["collab"], "keys:add", "cmd-collab", "-", stdin=text)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


# ---- the table itself ---------------------------------------------------------------------

def test_help_over_ssh_lists_no_host_only_commands(opus: Opus,
                                                   people: dict[str, SshKey]) -> None:
    shown = ssh(opus, people["owner"], "help").stdout
    assert "opus apps:create APP" in shown and "opus up" not in shown
    refused = ssh(opus, people["admin"], "down")
    assert refused.stderr.strip() == "opus: `opus down` runs on the Opus host only"
    assert "Usage: opus git:set APP deploy-branch BRANCH" in \
        ssh(opus, people["owner"], "help", "git:set").stdout
    assert json.loads(ssh(opus, people["owner"], "version", "--json").stdout)["version"]


def test_unknown_commands_suggest_close_matches(opus: Opus, people: dict[str, SshKey]) -> None:
    result = ssh(opus, people["owner"], "apps:craete", "x")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("opus: unknown command apps:craete; did you "
                                            "mean apps:create")


@pytest.mark.parametrize("name", ["a;id", "$(id)", "`id`", "a\nb", "../x", "x" * 100, "-rf",
                                  "Upper", "opus"])
def test_hostile_app_names_are_refused_everywhere(opus: Opus, people: dict[str, SshKey],
                                                  name: str) -> None:
    before = opus.cli("apps").stdout
    over_ssh = ssh(opus, people["owner"], "apps:create", name)
    local = opus.cli("apps:create", name, check=False)
    for result in (over_ssh, local):
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("opus: invalid app name")
    assert opus.cli("apps").stdout == before


@pytest.mark.parametrize("name", ["root;id", "$(id)", "a b", "../etc", "x" * 40, "Admin"])
def test_hostile_user_names_are_refused(opus: Opus, name: str) -> None:
    result = opus.cli("users:add", name, check=False)
    assert result.returncode == 2 and result.stderr.startswith("opus: invalid user name")


@pytest.mark.parametrize("argv", [["logs", APP, "-n", "\u00b2"], ["ps:scale", APP, "web=\u00b2"],
                                  ["rollback", APP, "v\u00b2"], ["logs", APP, "-n", "9" * 5000],
                                  ["apps:info", APP, "--app", APP]])
def test_odd_numbers_and_repeated_options_get_one_line(opus: Opus, people: dict[str, SshKey],
                                                       argv: list[str]) -> None:
    for result in (ssh(opus, people["owner"], *argv), opus.cli(*argv, check=False)):
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "internal error" not in result.stderr


def test_a_command_line_with_an_open_quote_is_refused(opus: Opus,
                                                      people: dict[str, SshKey]) -> None:
    result = subprocess.run(
        ["ssh", "-i", str(people["owner"].private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-p", str(opus.ssh_port), "git@127.0.0.1",
         "apps:info 'cmdapp"], capture_output=True, text=True, timeout=60, check=False)
    assert result.stderr.strip() == "opus: the command line has an unclosed quote"
