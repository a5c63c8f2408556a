"""The git server under pressure, end to end over real SSH: concurrent pushes are told the
truth, hostile input gets one line and leaves nothing, a busy app makes pushes wait,
a hung-up client cancels its build, clone and fetch work for those with access."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    MAX_OBJECT_BYTES,
    MAX_PACK_BYTES,
    Opus,
    SshKey,
    git,
    make_django_project,
    make_key,
    set_greeting,
)
from tests.gitwire import ZERO, RawResult, pkt, raw_exec, update_commands

RACE = "race"


def url(opus: Opus, app: str) -> str:
    return f"ssh://git@127.0.0.1:{opus.ssh_port}/{app}.git"


def commit_tree(repo: Path, parent: str | None, message: str) -> str:
    """A new commit (same tree as `parent`, or HEAD's) without touching the work tree."""
    tree = git(repo, "rev-parse", f"{parent or 'HEAD'}^{{tree}}").stdout.strip()
    args = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
    env = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return git(repo, *args, env=env).stdout.strip()


def remote_refs(opus: Opus, app: str) -> dict[str, str]:
    """The refs as the server's repository holds them (read with C git, not Opus)."""
    result = subprocess.run(["git", "--git-dir", str(opus.home / "repos" / f"{app}.git"),
                             "for-each-ref", "--format=%(refname) %(objectname)"],
                            capture_output=True, text=True, check=True)
    return dict(line.split() for line in result.stdout.splitlines())


def residue(opus: Opus) -> list[str]:
    """Anything a refused push could leave in any repository: quarantines, temp packs,
    half-made repos, lock files."""
    found = []
    for repo in (opus.home / "repos").iterdir():
        if repo.name.startswith("."):
            found.append(repo.name)
            continue
        objects = repo / "objects"
        found += [str(p) for p in objects.glob("incoming-*")]
        found += [str(p) for p in objects.glob("pack/tmp_*")]
        found += [str(p) for p in repo.rglob("*.lock")]
    return found


@pytest.fixture(scope="module")
def dev_key(opus: Opus, tmp_path_factory: pytest.TempPathFactory) -> SshKey:
    """A developer who owns none of this module's apps."""
    key = make_key(tmp_path_factory.mktemp("devkey"), "gitdev")
    opus.cli("keys:add", "gitdev", str(key.public))
    return key


@pytest.fixture(scope="module")
def race_repo(opus: Opus, admin_key: SshKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny repository whose `side` branch lives in app `race` (stored, never built)."""
    repo = tmp_path_factory.mktemp("race") / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("race\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q", "-m", "1")
    result = git(repo, "push", url(opus, RACE), "HEAD:refs/heads/side",
                 env=admin_key.git_env(opus), check=False)
    assert result.returncode == 0, result.stderr
    assert "refs/heads/side stored; only main deploys" in result.stderr
    return repo


# ---- concurrency ------------------------------------------------------------------

def test_two_pushes_to_one_branch_each_told_the_truth_ten_rounds(
        opus: Opus, admin_key: SshKey, race_repo: Path) -> None:
    env = admin_key.git_env(opus)
    for round_ in range(10):
        base = remote_refs(opus, RACE)["refs/heads/side"]
        ours = [commit_tree(race_repo, base, f"round {round_} client {i}") for i in (0, 1)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(
                lambda sha: git(race_repo, "push", url(opus, RACE),
                                f"{sha}:refs/heads/side", env=env, check=False), ours))
        server = remote_refs(opus, RACE)["refs/heads/side"]
        succeeded = [sha for sha, r in zip(ours, results, strict=True) if r.returncode == 0]
        assert succeeded == [server], [r.stderr for r in results]
        for sha, result in zip(ours, results, strict=True):
            if sha != server:   # the loser is told why, by git, not left hanging
                assert "[rejected]" in result.stderr or "stale info" in result.stderr, \
                    result.stderr
    assert residue(opus) == []


def test_two_first_pushes_to_a_new_app_both_land(opus: Opus, admin_key: SshKey,
                                                 race_repo: Path) -> None:
    """Creating the app and its repository happens under the app's lock: neither push
    sees a half-made repository, neither is lost."""
    env = admin_key.git_env(opus)
    tips = [commit_tree(race_repo, None, f"first push {i}") for i in (0, 1)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(
            lambda i: git(race_repo, "push", url(opus, "twins"), f"{tips[i]}:refs/heads/b{i}",
                          env=env, check=False), (0, 1)))
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert remote_refs(opus, "twins") == {"refs/heads/b0": tips[0], "refs/heads/b1": tips[1]}
    assert opus.cli("apps").stdout.count("twins ") == 1
    assert residue(opus) == []


def test_a_push_to_a_busy_app_waits_says_so_and_then_goes_through(
        opus: Opus, admin_key: SshKey, race_repo: Path) -> None:
    base = remote_refs(opus, RACE)["refs/heads/side"]
    new = commit_tree(race_repo, base, "after the wait")
    with deploy_lock_held(opus, RACE) as release:
        proc = subprocess.Popen(["git", "-C", str(race_repo), "push", url(opus, RACE),
                                 f"{new}:refs/heads/side"], env=admin_key.git_env(opus),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert proc.poll() is None   # still waiting for the "deploy" to finish
        release()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"remote: waiting for the deploy of {RACE} to finish…" in err
    assert remote_refs(opus, RACE)["refs/heads/side"] == new


def test_a_push_to_an_app_busy_too_long_is_refused_and_changes_nothing(
        opus: Opus, admin_key: SshKey, race_repo: Path) -> None:
    before = remote_refs(opus, RACE)
    new = commit_tree(race_repo, before["refs/heads/side"], "never lands")
    with deploy_lock_held(opus, RACE):
        result = git(race_repo, "push", url(opus, RACE), f"{new}:refs/heads/side",
                     env=admin_key.git_env(opus), check=False)
    assert result.returncode != 0
    assert f"opus: the deploy of {RACE} is still running after 8 s; push again once it " \
        "has finished" in result.stderr
    assert remote_refs(opus, RACE) == before


@contextlib.contextmanager
def deploy_lock_held(opus: Opus, app: str) -> Iterator[Callable[[], None]]:
    """Hold an app's deploy lock as a running deploy does (flock on its lock file);
    yields a function that lets go early."""
    fd = os.open(opus.home / "locks" / f"{app}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held = [True]

    def release() -> None:
        if held[0]:
            os.close(fd)
            held[0] = False
    try:
        yield release
    finally:
        release()


def test_five_apps_pushed_at_once_all_deploy(opus: Opus, admin_key: SshKey,
                                             tmp_path: Path) -> None:
    template = make_django_project(tmp_path / "template")
    projects = []
    for i in range(5):
        project = tmp_path / f"p{i}"
        shutil.copytree(template, project)
        set_greeting(project, f"Parallel app {i}")
        projects.append(project)
    env = admin_key.git_env(opus)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(
            lambda i: git(projects[i], "push", url(opus, f"par{i}"), "main", env=env,
                          check=False), range(5)))
    for i, result in enumerate(results):
        assert result.returncode == 0, result.stderr
        status, _headers, body = opus.get(opus.app_host(f"par{i}"))
        assert (status, body.split(" (")[0]) == (200, f"Parallel app {i}")


# ---- refs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def branch_project(opus: Opus, admin_key: SshKey,
                   tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = make_django_project(tmp_path_factory.mktemp("branches") / "proj",
                                  greeting="On main")
    git(project, "remote", "add", "opus", url(opus, "branchy"))
    result = git(project, "push", "opus", "main", env=admin_key.git_env(opus), check=False)
    assert result.returncode == 0, result.stderr
    return project


def test_the_deploy_branch_is_chosen_per_app(opus: Opus, admin_key: SshKey,
                                             branch_project: Path) -> None:
    env = admin_key.git_env(opus)
    done = opus.cli("git:set", "branchy", "deploy-branch", "production")
    assert "Pushes to production now deploy branchy" in done.stdout
    set_greeting(branch_project, "Only stored")
    stored = git(branch_project, "push", "opus", "main", env=env)
    assert "refs/heads/main stored; only production deploys" in stored.stderr
    assert opus.get(opus.app_host("branchy"))[2].startswith("On main")
    deployed = git(branch_project, "push", "opus", "main:production", env=env)
    assert "Released v2" in deployed.stderr
    assert opus.get(opus.app_host("branchy"))[2].startswith("Only stored")
    # A clone checks out what is deployed.
    symref = git(branch_project, "ls-remote", "--symref", "opus", "HEAD", env=env)
    assert "ref: refs/heads/production\tHEAD" in symref.stdout
    # The old deploy branch may now be deleted; the new one may not.
    git(branch_project, "push", "opus", ":main", env=env)
    refused = git(branch_project, "push", "opus", ":production", env=env, check=False)
    assert "deleting production, the deploy branch, is refused" in refused.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["branchy", "deploy-branch", "../x"], "invalid branch name"),
    (["branchy", "deploy-branch", "-f"], "invalid branch name"),
    (["branchy", "deploy-branch", "a b;id"], "invalid branch name"),
    (["branchy", "deploy-branch", "x.lock"], "invalid branch name"),
    (["branchy", "deploy-branch", "HEAD"], "invalid branch name"),
    (["no-such-app", "deploy-branch", "main"], "app no-such-app not found"),
    (["../etc", "deploy-branch", "main"], "invalid app name"),
    (["branchy", "build-dir", "x"], "usage: opus git:set APP deploy-branch BRANCH"),
])
def test_git_set_refuses_hostile_values(opus: Opus, branch_project: Path, args: list[str],
                                        message: str) -> None:
    result = opus.cli("git:set", *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_force_push_deploys(opus: Opus, admin_key: SshKey, branch_project: Path) -> None:
    env = admin_key.git_env(opus)
    git(branch_project, "reset", "-q", "--hard", "HEAD~1")   # drop the deployed commit
    set_greeting(branch_project, "Rewritten history")
    plain = git(branch_project, "push", "opus", "main:production", env=env, check=False)
    assert plain.returncode != 0 and "[rejected]" in plain.stderr
    forced = git(branch_project, "push", "--force", "opus", "main:production", env=env)
    assert "forced update" in forced.stderr
    assert opus.get(opus.app_host("branchy"))[2].startswith("Rewritten history")


# ---- clone and fetch ------------------------------------------------------------------

def test_clone_and_pull_work_for_the_owner_and_not_for_a_stranger(
        opus: Opus, admin_key: SshKey, dev_key: SshKey, branch_project: Path,
        tmp_path: Path) -> None:
    env = admin_key.git_env(opus)
    clone = tmp_path / "clone"
    result = subprocess.run(["git", "clone", "-q", url(opus, "branchy"), str(clone)],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (clone / "manage.py").is_file()
    assert git(clone, "rev-parse", "HEAD").stdout == \
        git(branch_project, "rev-parse", "main").stdout
    set_greeting(branch_project, "Fetched later")
    git(branch_project, "push", "opus", "main:production", env=env)
    git(clone, "pull", "-q", "--ff-only", env=env)
    assert "Fetched later" in (clone / "pages" / "views.py").read_text()
    git(clone, "fsck", "--strict")

    stranger = subprocess.run(["git", "clone", url(opus, "branchy"), str(tmp_path / "no")],
                              env=dev_key.git_env(opus), capture_output=True, text=True,
                              check=False)
    assert stranger.returncode != 0
    assert "opus: app branchy not found, or you may not use it" in stranger.stderr
    missing = subprocess.run(["git", "clone", url(opus, "nothing-here"), str(tmp_path / "n")],
                             env=dev_key.git_env(opus), capture_output=True, text=True,
                             check=False)
    assert "opus: app nothing-here not found, or you may not use it" in missing.stderr


def test_a_strangers_push_is_refused_like_a_missing_app(
        opus: Opus, dev_key: SshKey, branch_project: Path) -> None:
    before = remote_refs(opus, "branchy")
    result = git(branch_project, "push", url(opus, "branchy"), "main:production",
                 env=dev_key.git_env(opus), check=False)
    assert "opus: app branchy not found, or you may not use it" in result.stderr
    assert remote_refs(opus, "branchy") == before


# ---- a client that hangs up ------------------------------------------------------------

def test_a_client_hanging_up_cancels_its_build(opus: Opus, admin_key: SshKey,
                                               tmp_path: Path) -> None:
    project = make_django_project(tmp_path / "slow")
    (project / "Procfile").write_text("release: sleep 317\n")
    git(project, "add", "-A")
    git(project, "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q",
        "-m", "slow release")
    proc = subprocess.Popen(["git", "-C", str(project), "push", url(opus, "slow"), "main"],
                            env=admin_key.git_env(opus), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "Running release command: sleep 317" in line:
            break
    deadline = time.monotonic() + 10
    while not _sleepers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _sleepers(), "".join(seen)
    os.killpg(proc.pid, signal.SIGKILL)   # the developer's Ctrl-C: git and ssh both go
    proc.wait()
    proc.stderr.close()
    deadline = time.monotonic() + 10
    while _sleepers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _sleepers()
    assert "refs/heads/main" not in remote_refs(opus, "slow")
    # The lock is let go (the wait limit here is 8 s) and nothing is stuck: the next
    # push deploys.
    (project / "Procfile").unlink()
    git(project, "add", "-A")
    git(project, "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q",
        "-m", "no slow release")
    result = git(project, "push", url(opus, "slow"), "main", env=admin_key.git_env(opus),
                 check=False)
    assert result.returncode == 0, result.stderr
    assert opus.get(opus.app_host("slow"))[0] == 200


def _sleepers() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().endswith(b"sleep\x00317\x00"):
                    found.append(entry.name)
            except OSError:
                continue
    return found


# ---- hostile input on the wire ----------------------------------------------------------

@pytest.fixture(scope="module")
def side_tip(opus: Opus, race_repo: Path) -> str:
    return remote_refs(opus, RACE)["refs/heads/side"]


def _pack(repo: Path, revs: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "pack-objects", "--revs", "--stdout", "-q"],
                          input=revs.encode(), capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def new_commit(race_repo: Path, side_tip: str) -> tuple[str, bytes]:
    """A commit the server lacks, and the pack that brings it."""
    sha = commit_tree(race_repo, side_tip, "hostile")
    return sha, _pack(race_repo, f"{sha}\n^{side_tip}\n")


def _push_raw(opus: Opus, key: SshKey, payload: bytes, **kw: object) -> RawResult:
    return raw_exec(opus, key, f"git-receive-pack '{RACE}.git'", payload, **kw)  # type: ignore[arg-type]


def _refused_in_one_line(result: RawResult) -> str:
    lines = result.stderr_lines()
    assert result.status not in (0, None), result
    assert len(lines) == 1 and lines[0].startswith("opus: "), result.stderr
    return lines[0]


PROTOCOL_GARBAGE = {
    "bad pkt-line length": b"zzzz",
    "pkt-line shorter than its header": b"0002",
    "pkt-line longer than the stream": b"ffff" + b"a" * 10,
    "update with two fields": pkt(b"abc refs/heads/side\0report-status\n") + b"0000",
    "update with a non-hex sha": pkt(b"x" * 40 + b" " + b"y" * 40 + b" refs/heads/side\n")
    + b"0000",
    "update with an empty ref": pkt(b"0" * 40 + b" " + b"1" * 40 + b" \n") + b"0000",
    "binary noise": bytes(random.Random(7).randrange(256) for _ in range(4096)),
}


@pytest.mark.parametrize("case", sorted(PROTOCOL_GARBAGE))
def test_malformed_protocol_is_refused_in_one_line(opus: Opus, admin_key: SshKey,
                                                   side_tip: str, case: str) -> None:
    before = remote_refs(opus, RACE)
    result = _push_raw(opus, admin_key, PROTOCOL_GARBAGE[case])
    line = _refused_in_one_line(result)
    assert str(opus.home) not in result.stderr and "/tmp/" not in result.stderr
    assert "git protocol" in line or "not valid" in line or "sent nothing" in line, line
    assert remote_refs(opus, RACE) == before
    assert residue(opus) == []


@pytest.mark.parametrize("case", ["garbage", "truncated", "header only", "wrong checksum"])
def test_broken_packs_are_refused_and_leave_nothing(
        opus: Opus, admin_key: SshKey, side_tip: str, new_commit: tuple[str, bytes],
        case: str) -> None:
    sha, pack = new_commit
    data = {"garbage": b"PACK" + b"\x00\x00\x00\x02\x00\x00\x00\x05" + b"junk" * 100,
            "truncated": pack[: len(pack) // 2],
            "header only": pack[:12],
            "wrong checksum": pack[:-20] + b"\x00" * 20}[case]
    before = remote_refs(opus, RACE)
    result = _push_raw(opus, admin_key,
                       update_commands((side_tip, sha, b"refs/heads/side")) + data)
    line = _refused_in_one_line(result)
    assert "the pushed pack is not valid" in line and "nothing was stored" in line
    assert remote_refs(opus, RACE) == before
    assert residue(opus) == []
    assert not _has_object(opus, RACE, sha)


def _has_object(opus: Opus, app: str, sha: str) -> bool:
    return subprocess.run(["git", "--git-dir", str(opus.home / "repos" / f"{app}.git"),
                           "cat-file", "-e", sha], capture_output=True, check=False
                          ).returncode == 0


def test_a_pack_over_the_limit_is_refused_by_real_git(opus: Opus, admin_key: SshKey,
                                                      race_repo: Path) -> None:
    before = remote_refs(opus, RACE)
    (race_repo / "big.bin").write_bytes(os.urandom(MAX_PACK_BYTES + 512 * 1024))
    git(race_repo, "add", "big.bin")
    git(race_repo, "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q",
        "-m", "too big")
    result = git(race_repo, "push", url(opus, RACE), "HEAD:refs/heads/big",
                 env=admin_key.git_env(opus), check=False)
    assert result.returncode != 0
    opus_lines = [ln for ln in result.stderr.splitlines() if ln.startswith("opus: ")]
    assert opus_lines == ["opus: the push is larger than the limit of 4 MiB; nothing was "
                          "stored (the operator sets max_pack_bytes)"], result.stderr
    assert remote_refs(opus, RACE) == before
    assert residue(opus) == []
    git(race_repo, "reset", "-q", "--hard", "HEAD~1")


def test_a_file_inflating_past_the_limit_is_refused_by_real_git(
        opus: Opus, admin_key: SshKey, race_repo: Path) -> None:
    """A decompression bomb: 3 MiB of zeros is a few kilobytes on the wire."""
    before = remote_refs(opus, RACE)
    (race_repo / "zeros.bin").write_bytes(bytes(MAX_OBJECT_BYTES + (1 << 20)))
    git(race_repo, "add", "zeros.bin")
    git(race_repo, "-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q",
        "-m", "bomb")
    try:
        result = git(race_repo, "push", url(opus, RACE), "HEAD:refs/heads/bomb",
                     env=admin_key.git_env(opus), check=False)
    finally:
        git(race_repo, "reset", "-q", "--hard", "HEAD~1")
    assert result.returncode != 0
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("opus: ")] == [
        "opus: the push holds a file of 3 MiB, over the limit of 2 MiB; nothing was stored "
        "(the operator sets max_object_bytes)"], result.stderr
    assert remote_refs(opus, RACE) == before
    assert residue(opus) == []


def test_one_refs_failure_keeps_the_others_statuses(opus: Opus, admin_key: SshKey,
                                                    side_tip: str,
                                                    new_commit: tuple[str, bytes]) -> None:
    """`side` exists, so `side/x` cannot be written; `multi-ok` moves and is told so."""
    sha, pack = new_commit
    result = _push_raw(opus, admin_key, update_commands(
        (ZERO, sha, b"refs/heads/multi-ok"), (ZERO, sha, b"refs/heads/side/x")) + pack)
    assert result.status == 0, result.stderr
    assert b"ok refs/heads/multi-ok" in result.stdout
    assert b"ng refs/heads/side/x failed to write (request " in result.stdout
    refs = remote_refs(opus, RACE)
    assert refs["refs/heads/multi-ok"] == sha and "refs/heads/side/x" not in refs


@pytest.mark.parametrize("payload", [b"0000", b""], ids=["nothing to push", "hung up"])
def test_a_push_that_stores_nothing_creates_no_app(opus: Opus, admin_key: SshKey,
                                                   payload: bytes) -> None:
    raw_exec(opus, admin_key, "git-receive-pack 'squatter.git'", payload)
    assert "squatter" not in opus.cli("apps").stdout
    assert not (opus.home / "repos" / "squatter.git").exists()
    assert not (opus.home / "apps" / "squatter").exists()


def test_a_stalled_client_is_cut_off_while_others_are_served(
        opus: Opus, admin_key: SshKey, side_tip: str, new_commit: tuple[str, bytes],
        race_repo: Path) -> None:
    sha, pack = new_commit
    before = remote_refs(opus, RACE)
    results: list[RawResult] = []
    stalled = threading.Thread(target=lambda: results.append(_push_raw(
        opus, admin_key, update_commands((side_tip, sha, b"refs/heads/side")) + pack[:50],
        close_stdin=False)))
    stalled.start()
    time.sleep(1)
    # Meanwhile another client of the same app reads, and another app takes pushes.
    started = time.monotonic()
    listed = git(race_repo, "ls-remote", url(opus, RACE), env=admin_key.git_env(opus))
    assert side_tip in listed.stdout and time.monotonic() - started < 5
    stalled.join(60)
    line = _refused_in_one_line(results[0])
    assert "sent nothing for 6 s" in line
    assert 5 < results[0].seconds < 20
    assert remote_refs(opus, RACE) == before
    assert residue(opus) == []


HOSTILE_REFS = [
    b"HEAD", b"refs/heads/../../config", b"refs/heads/-rf", b"refs/heads/--upload-pack=id",
    b"refs/heads/x.lock", b"refs/heads/a..b", b"refs/heads/.hidden", b"refs/heads/a\x1b[2J",
    b"refs/heads/a;id", b"refs/heads/$(id)", b"refs/remotes/origin/x", b"refs/heads/",
    b"refs/heads/" + b"x" * 300, b"refs/heads/caf\xc3\xa9", b"refs/heads/a@{0}",
]


@pytest.mark.parametrize("ref", HOSTILE_REFS, ids=lambda r: repr(r)[2:-1][:40])
def test_hostile_ref_names_are_refused_and_store_nothing(
        opus: Opus, admin_key: SshKey, side_tip: str, new_commit: tuple[str, bytes],
        ref: bytes) -> None:
    sha, pack = new_commit
    before = remote_refs(opus, RACE)
    result = _push_raw(opus, admin_key, update_commands((ZERO, sha, ref)) + pack)
    assert result.status == 0   # the protocol went fine; the ref was refused
    assert b"ng " + ref + b" invalid" in result.stdout or \
        b"ng " + ref + b" " in result.stdout, result.stdout[-300:]
    assert remote_refs(opus, RACE) == before
    assert not any(p.name.startswith(("-", "..")) for p in
                   (opus.home / "repos" / f"{RACE}.git" / "refs" / "heads").iterdir())
    assert residue(opus) == []


def test_a_branch_may_only_point_at_a_commit(opus: Opus, admin_key: SshKey, side_tip: str,
                                             race_repo: Path) -> None:
    tree = git(race_repo, "rev-parse", f"{side_tip}^{{tree}}").stdout.strip()
    result = _push_raw(opus, admin_key,
                       update_commands((ZERO, tree, b"refs/heads/tree-branch"))
                       + _pack(race_repo, f"{side_tip}\n"))
    assert b"ng refs/heads/tree-branch a branch must point at a commit" in result.stdout
    assert "refs/heads/tree-branch" not in remote_refs(opus, RACE)


def test_a_stale_old_value_is_refused(opus: Opus, admin_key: SshKey, side_tip: str,
                                      new_commit: tuple[str, bytes]) -> None:
    sha, pack = new_commit
    before = remote_refs(opus, RACE)
    wrong_old = "1" * 40
    result = _push_raw(opus, admin_key,
                       update_commands((wrong_old, sha, b"refs/heads/side")) + pack)
    assert b"ng refs/heads/side stale info" in result.stdout
    assert remote_refs(opus, RACE) == before


def test_a_symlinked_repository_is_never_followed(opus: Opus, admin_key: SshKey,
                                                  race_repo: Path, tmp_path: Path) -> None:
    git(race_repo, "push", url(opus, "linked"), "HEAD:refs/heads/side",
        env=admin_key.git_env(opus))
    real = opus.home / "repos" / "linked.git"
    elsewhere = tmp_path / "elsewhere.git"
    subprocess.run(["git", "init", "-q", "--bare", str(elsewhere)], check=True)
    moved = real.with_name("linked.git.real")
    real.rename(moved)
    real.symlink_to(elsewhere)
    try:
        for verb in ("git-receive-pack", "git-upload-pack"):
            result = raw_exec(opus, admin_key, f"{verb} 'linked.git'")
            line = _refused_in_one_line(result)
            assert line == "opus: the repository of linked is damaged; the operator must " \
                "repair repos/linked.git"
        assert not (elsewhere / "hooks" / "post-receive").exists()
        assert not (opus.home / "repos" / ".linked.git.new").exists()
    finally:
        real.unlink()
        moved.rename(real)
