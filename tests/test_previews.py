"""Preview apps end to end, on the session's Opus over real SSH and git: a pushed branch
deploys as APP-BRANCH and serves its own code while APP serves main's; config is copied
(not the database URL); a second push redeploys it; deleting the branch destroys it; the
limit, hostile branch names, failed builds, previews off, and strangers. Plus the pure
naming rules, exhaustively."""

from __future__ import annotations

import functools
import json
import random
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from opus_paas import locks, names
from opus_paas import settings as settings_module
from opus_paas.access import OPERATOR
from opus_paas.control import commands
from opus_paas.control.context import Context
from opus_paas.data import server
from opus_paas.errors import InvalidName, OpusError
from opus_paas.run import previews
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
    set_greeting,
    wait_for_deploy,
)
from tests.gitwire import ZERO, raw_exec, update_commands
from tests.test_dashboard_http import Browser

APP = "pv"
PREVIEW = "pv-feature-x"
PASSWORD = "preview test password"


def _ssh(opus: Opus, key: SshKey, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-i", str(key.private), "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-p", str(opus.ssh_port),
         "git@127.0.0.1", command], capture_output=True, text=True, timeout=60, check=False)


def _push(project: Path, opus: Opus, key: SshKey, *refspecs: str
          ) -> subprocess.CompletedProcess[str]:
    return git(project, "push", "opus", *refspecs, env=key.git_env(opus), check=False)


def _remote_refs(opus: Opus, app: str) -> dict[str, str]:
    result = subprocess.run(["git", "--git-dir", str(opus.home / "repos" / f"{app}.git"),
                             "for-each-ref", "--format=%(refname) %(objectname)"],
                            capture_output=True, text=True, check=True)
    return dict(line.split() for line in result.stdout.splitlines())


def _app_names(opus: Opus) -> list[str]:
    return [a["name"] for a in json.loads(opus.cli("apps", "--json").stdout)]


@pytest.fixture(scope="module")
def stranger(opus: Opus, tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    key = make_key(tmp_path_factory.mktemp("pv-keys"), "pvdev")
    opus.cli("keys:add", "pvdev", str(key.public))
    opus.cli("users:passwd", "pvdev", input=PASSWORD + "\n")
    return key


@pytest.fixture(scope="module")
def project(opus: Opus, admin_key: SshKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """App pv: main says "On main", a config var set before its first push, previews on."""
    path = make_django_project(tmp_path_factory.mktemp("pv") / "proj", greeting="On main")
    git(path, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
    opus.cli("apps:create", APP)
    opus.cli("config:set", APP, "PV_FLAG=from-parent")
    push_main(path, opus, admin_key)
    done = opus.cli("previews:enable", APP)
    assert "Previews are on for pv (at most 3)" in done.stdout, done.stdout
    return path


def test_a_branch_deploys_as_its_preview_and_goes_with_the_branch(
        opus: Opus, admin_key: SshKey, stranger: SshKey, project: Path) -> None:
    git(project, "checkout", "-q", "-b", "feature/x")
    set_greeting(project, "On feature")
    pushed = _push(project, opus, admin_key, "feature/x")
    output = pushed.stdout + pushed.stderr
    assert pushed.returncode == 0, output
    assert f"Creating {PREVIEW}, the preview of pv's feature/x" in output
    assert "-----> Building pv-feature-x" in output      # streamed like any build
    remote = [line for line in output.splitlines() if line.startswith("remote: ")]
    assert remote[-1].strip().endswith(
        f"Preview of pv (feature/x): http://{PREVIEW}.localhost:{opus.http_port}/"), remote
    assert opus.get(opus.app_host(PREVIEW))[2].startswith("On feature")
    assert opus.get(opus.app_host(APP))[2].startswith("On main")

    # Config: copied, but not the database URL nor the secret key.
    parent = json.loads(opus.cli("config", APP, "--json").stdout)
    copy = json.loads(opus.cli("config", PREVIEW, "--json").stdout)
    assert copy["PV_FLAG"] == "from-parent"
    assert "DATABASE_URL" not in copy and copy["SECRET_KEY"] != parent["SECRET_KEY"]

    # Listed, marked, and only for those who may use the parent.
    listed = opus.cli("previews", APP).stdout
    assert re.search(rf"feature/x\s+{PREVIEW}\s+v1\s+http://{PREVIEW}\.localhost", listed)
    assert re.search(rf"{PREVIEW}\s+v1 .*\(preview of pv\)", opus.cli("apps").stdout)
    refused = _ssh(opus, stranger, f"config {PREVIEW}")
    assert refused.returncode != 0 and f"app {PREVIEW} not found" in refused.stderr
    assert PREVIEW not in _ssh(opus, stranger, "apps").stdout
    nested = _in_process(opus, ["previews:enable", PREVIEW])
    assert nested is not None and "is itself a preview app" in nested.message
    opus.cli("access:add", APP, "pvdev")          # the parent's collaborators: the preview's
    assert "PV_FLAG" in _ssh(opus, stranger, f"config {PREVIEW}").stdout
    _dashboard_lists_the_preview(opus)
    opus.cli("access:remove", APP, "pvdev")
    assert _ssh(opus, stranger, f"config {PREVIEW}").returncode != 0

    # At its limit, another branch is stored without a preview.
    opus.cli("previews:enable", APP, "--limit", "1")
    limited = _push(project, opus, admin_key, "feature/x:other")
    assert limited.returncode == 0, limited.stderr
    assert "other stored, without a preview: pv has 1 previews, its limit; delete a branch" \
        in limited.stderr and "--limit N" in limited.stderr
    assert "refs/heads/other" in _remote_refs(opus, APP)
    assert "pv-other" not in _app_names(opus)
    opus.cli("previews:enable", APP)

    # A second push redeploys it.
    set_greeting(project, "Feature again")
    again = _push(project, opus, admin_key, "feature/x")
    assert again.returncode == 0 and "Released v2" in again.stderr, again.stderr
    assert opus.get(opus.app_host(PREVIEW))[2].startswith("Feature again")
    assert opus.get(opus.app_host(APP))[2].startswith("On main")

    # Deleting the branch destroys it.
    gone = _push(project, opus, admin_key, ":feature/x")
    assert gone.returncode == 0, gone.stderr
    assert f"Destroyed {PREVIEW}, the preview of feature/x" in gone.stderr
    assert PREVIEW not in _app_names(opus)
    status, _headers, body = opus.get(opus.app_host(PREVIEW))
    assert status == 404 and "No app is deployed" in body
    for leftover in (opus.home / "repos" / f"{PREVIEW}.git", opus.home / "apps" / PREVIEW):
        assert not leftover.exists(), leftover
    assert "feature/x" not in opus.cli("previews", APP).stdout
    git(project, "checkout", "-q", "main")


def _dashboard_lists_the_preview(opus: Opus) -> None:
    """pvdev, a collaborator on pv, sees its previews on pv's page, linked."""
    browser = Browser(opus)
    assert browser.sign_in("pvdev", PASSWORD) == 303
    status, page = browser.request("GET", f"/apps/{APP}")
    assert status == 200
    assert f'<tr data-preview="{PREVIEW}">' in page and "<code>feature/x</code>" in page
    assert f'href="/apps/{PREVIEW}"' in page
    assert f'href="http://{PREVIEW}.localhost:{opus.http_port}/"' in page
    status, page = browser.request("GET", f"/apps/{PREVIEW}")
    assert status == 200 and 'Preview of <a href="/apps/pv">pv</a>' in page


def test_a_failed_preview_build_rejects_the_branch_and_leaves_the_parent(
        opus: Opus, admin_key: SshKey, project: Path) -> None:
    git(project, "checkout", "-q", "-b", "broken")
    (project / "requirements.txt").write_text("django>=5.2,<5.3\nthis is not a requirement\n")
    commit_all(project, "break the build")
    result = _push(project, opus, admin_key, "broken")
    git(project, "checkout", "-q", "main")
    assert result.returncode != 0 and "[remote rejected] broken -> broken" in result.stderr, \
        result.stderr
    assert "pv-broken is removed again: its first build failed" in result.stderr
    assert "pv-broken" not in _app_names(opus)
    assert "refs/heads/broken" not in _remote_refs(opus, APP)
    assert not (opus.home / "repos" / "pv-broken.git").exists()
    assert opus.get(opus.app_host(APP))[2].startswith("On main")


HOSTILE_REFS = [
    b"refs/heads/../../x", b"refs/heads/-rf", b"refs/heads/HEAD", b"refs/heads/caf\xc3\xa9",
    b"refs/heads/a;id", b"refs/heads/" + b"x" * 300,
]


def test_hostile_branch_names_make_no_preview(opus: Opus, admin_key: SshKey,
                                              project: Path) -> None:
    """Each ref points at a commit the server has, sent with the wire protocol past any
    check a git client would make; each is refused and nothing is made."""
    before, refs_before = set(_app_names(opus)), _remote_refs(opus, APP)
    sha = refs_before["refs/heads/main"]
    pack = subprocess.run(["git", "pack-objects", "--stdout", "-q"], input=b"",
                          capture_output=True, check=True).stdout       # an empty pack
    answer = raw_exec(opus, admin_key, f"git-receive-pack '{APP}.git'",
                      update_commands(*[(ZERO, sha, ref) for ref in HOSTILE_REFS]) + pack)
    for ref in HOSTILE_REFS:
        assert b"ng " + ref in answer.stdout, (ref, answer.stdout[-600:])
    assert set(_app_names(opus)) == before
    assert _remote_refs(opus, APP) == refs_before
    assert not any(p.name.startswith(".") for p in (opus.home / "repos").iterdir())


def test_a_preview_name_taken_by_another_app_is_refused_and_the_branch_kept(
        opus: Opus, admin_key: SshKey, project: Path) -> None:
    opus.cli("apps:create", "pv-taken")
    result = _push(project, opus, admin_key, "main:taken")
    assert result.returncode == 0, result.stderr
    assert "taken stored, without a preview: the preview of taken would be named pv-taken, " \
        "which is another app's name" in result.stderr
    assert "refs/heads/taken" in _remote_refs(opus, APP)
    assert opus.cli("apps:info", "pv-taken", "--json").stdout.count('"preview_of": null') == 1
    assert "taken" not in opus.cli("previews", APP).stdout
    opus.cli("apps:destroy", "pv-taken", "--confirm", "pv-taken")


def test_with_previews_off_other_branches_are_only_stored(
        opus: Opus, admin_key: SshKey, project: Path) -> None:
    done = opus.cli("previews:disable", APP)
    assert "Previews are off for pv" in done.stdout
    try:
        result = _push(project, opus, admin_key, "main:stored-only")
        assert result.returncode == 0, result.stderr
        assert "refs/heads/stored-only stored; only main deploys" in result.stderr
        assert "pv-stored-only" not in _app_names(opus)
        assert "Previews are off for pv" in opus.cli("previews", APP).stdout
    finally:
        opus.cli("previews:enable", APP)
    wait_for_deploy(opus.home, APP)


@pytest.mark.parametrize(("args", "message"), [
    (["previews:enable", APP, "--limit", "0"], "--limit takes 1 to 20 previews, not 0"),
    (["previews:enable", APP, "--limit", "21"], "--limit takes 1 to 20 previews"),
    (["previews:enable", APP, "--limit", "-1"], "usage: opus previews:enable"),
    (["previews:enable", APP, "--limit", "\u00b2"], "usage: opus previews:enable"),
    (["previews:enable", APP, "--limit"], "usage: opus previews:enable"),
    (["previews:enable", "../etc"], "invalid app name"),
    (["previews:enable", "a" * 25], "not found"),
    (["previews", "no-such-app"], "app no-such-app not found"),
])
def test_previews_commands_refuse_hostile_values(opus: Opus, project: Path, args: list[str],
                                                 message: str) -> None:
    refused = _in_process(opus, args)
    assert refused is not None and message in refused.message, refused


def _in_process(opus: Opus, argv: list[str]) -> OpusError | None:
    """An `opus` command through the command table in this process, as the operator."""
    said: list[str] = []
    ctx = Context(settings_module.load(opus.env), OPERATOR, said.append, lambda _n: "")
    try:
        commands.run(ctx, argv)
    except OpusError as exc:
        return exc
    return None


def test_a_stranger_may_not_enable_or_list_previews(opus: Opus, stranger: SshKey,
                                                    project: Path) -> None:
    for command in (f"previews {APP}", f"previews:enable {APP}", f"previews:disable {APP}"):
        result = _ssh(opus, stranger, command)
        assert result.returncode != 0 and f"app {APP} not found" in result.stderr


def test_a_preview_of_a_postgres_app_gets_a_restored_copy_and_goes_with_its_parent(
        opus: Opus, admin_key: SshKey) -> None:
    """The preview made for a branch (as a push makes it, before its build) has its own
    database holding the parent's newest backup; destroying the parent destroys it and
    drops that database. (The release command migrating it is any deploy's.)"""
    for tool in ("initdb", "postgres", "pg_dump", "pg_restore", "psql"):
        require_tool(str(Path("/usr/lib/postgresql/15/bin") / tool))
    assert "Postgres is running" in opus.cli("addons:enable", "postgres").stdout
    opus.cli("apps:create", "pvpg")
    opus.cli("pg:create", "pvpg")
    opus.cli("pg:psql", "pvpg", "-c", "CREATE TABLE marker (note text); "
             "INSERT INTO marker VALUES ('in the backup')")
    opus.cli("backups:capture", "pvpg")
    opus.cli("pg:psql", "pvpg", "-c", "UPDATE marker SET note = 'after the backup'")
    opus.cli("previews:enable", "pvpg")
    settings, store = settings_module.load(opus.env), Store(opus.home / "opus.db")
    parent = store.get_app("pvpg")
    assert parent is not None
    said: list[str] = []
    with locks.app_lock(settings, "pvpg"):
        where = previews.target(settings, store, parent, "copy")
        with locks.app_lock(settings, where.name):
            preview = previews.create(settings, store, parent, "copy", where.name, said.append)
    assert any(re.search(r"Database restored from pvpg's backup \d+", line) for line in said)
    assert "in the backup" in opus.cli("pg:psql", "pvpg-copy", "-c",
                                       "SELECT note FROM marker").stdout
    own, theirs = store.app_database(preview), store.app_database(parent)
    assert own is not None and theirs is not None and own.name != theirs.name
    assert store.config(preview)["DATABASE_URL"] == own.url != theirs.url
    assert "pvpg-copy" in opus.cli("previews", "pvpg").stdout

    opus.cli("apps:destroy", "pvpg", "--confirm", "pvpg")
    assert {"pvpg", "pvpg-copy"}.isdisjoint(_app_names(opus))
    assert not store.has_database_named(own.name)
    with psycopg.connect(**server.current(settings, store).connect_args()) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname = %s",
                            (own.name,)).fetchall()
    assert left == []


def _visits(opus: Opus, app: str) -> int:
    status, _headers, body = opus.get(opus.app_host(app))
    found = re.search(r"visits: (\d+)", body)
    assert status == 200 and found, body
    return int(found.group(1))


# ---- the pure parts -----------------------------------------------------------------------

@pytest.mark.parametrize(("branch", "expected"), [
    ("feature/x", "shop-feature-x"),
    ("fix-1", "shop-fix-1"),
    ("Feature", re.compile(r"shop-feature-[0-9a-f]{6}")),
    ("a.b", re.compile(r"shop-a-b-[0-9a-f]{6}")),
    ("a/_/b", re.compile(r"shop-a-b-[0-9a-f]{6}")),
    ("x" * 200, re.compile(r"shop-x{18}-[0-9a-f]{6}")),
    ("___", re.compile(r"shop-[0-9a-f]{6}")),
])
def test_preview_names(branch: str, expected: str | re.Pattern[str]) -> None:
    name = names.preview_app_name("shop", branch)
    if isinstance(expected, str):
        assert name == expected
    else:
        assert expected.fullmatch(name), name


@pytest.mark.parametrize("branch", ["../../x", "-rf", "HEAD", "café", "a b", "a..b", ""])
def test_preview_names_refuse_what_is_no_branch(branch: str) -> None:
    with pytest.raises(InvalidName):
        names.preview_app_name("shop", branch)


@functools.cache
def _random_branches(count: int) -> list[str]:
    """Valid branch names of every shape, from a fixed seed."""
    rng = random.Random(5)
    alphabet = "abcdXYZ0189_./+@=-"
    found: list[str] = []
    while len(found) < count:
        text = "".join(rng.choice(alphabet) for _ in range(rng.choice((3, 12, 40, 120))))
        if names.BRANCH_NAME.fullmatch(text) and text != "HEAD":
            found.append(text)
    return found


@pytest.mark.parametrize("parent", ["a", "shop", "my-app-2", "p" * 19])
def test_preview_names_are_always_app_names_of_the_parent(parent: str) -> None:
    for branch in _random_branches(300):
        for limit in (27, 30):
            for suffix in (False, True):
                name = names.preview_app_name(parent, branch, limit, suffix=suffix)
                assert names.check_app_name(name) == name and len(name) <= limit
                assert name.startswith(parent + "-")
                assert name == names.preview_app_name(parent, branch, limit, suffix=suffix)
                if suffix:
                    assert re.fullmatch(r".*-[0-9a-f]{6}", name), name


def test_a_parent_too_long_for_previews_is_told_so() -> None:
    with pytest.raises(InvalidName, match="rename the app to a shorter name"):
        names.preview_app_name("a" * 25, "feature")


def test_copied_config_leaves_out_the_database_and_secret_key(tmp_path: Path) -> None:
    store = Store(tmp_path / "opus.db")
    store.init()
    owner = store.create_user("owner", "admin")
    app = store.create_app("shop", owner, {"SECRET_KEY": "s", "FLAG": "1"})
    url = "postgres://app_shop:pw@/app_shop?host=/run"
    store.set_app_database(app, "app_shop", url)
    store.change_config(app, {"DATABASE_URL": url, "OTHER_DB": url, "REDIS_URL": "redis://x",
                              "CACHE_URL": "memcache://y"}, [])
    assert previews.copied_config(store, app) == {"FLAG": "1", "CACHE_URL": "memcache://y"}
