"""Push to deploy, end to end: real git over real SSH, real Apache/mod_wsgi, supervisord."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Opus, SshKey, git, make_django_project, make_key, set_greeting

APP = "hello"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, opus: Opus) -> Path:
    directory = make_django_project(tmp_path_factory.mktemp("src") / "hello")
    git(directory, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
    return directory


@pytest.fixture(scope="module")
def first_push(opus: Opus, admin_key: SshKey, project: Path) -> str:
    result = git(project, "push", "opus", "main", env=admin_key.git_env(opus), check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_first_push_builds_live_and_serves_the_view(opus: Opus, first_push: str) -> None:
    # The client is told no absolute server path.
    assert str(opus.home) not in first_push and "/var/cache" not in first_push
    assert "static files copied to '/app/.opus/static'" in first_push
    # The build streams as the buildpack's lines, before git reports the ref.
    assert "remote: -----> Building hello" in first_push
    assert "remote: -----> Running release command: python manage.py migrate" in first_push
    assert re.search(r"remote: -----> Released v1 in [\d.]+ s", first_push)
    assert first_push.index("Released v1") < first_push.index("main -> main")
    status, _headers, body = opus.get(opus.app_host(APP))
    assert status == 200, body
    assert body.startswith("Hello from Opus (visits: ")
    # The model works: migrate ran in the release step, the database lives in data/.
    assert (opus.home / "apps" / APP / "data" / "db.sqlite3").is_file()
    _status, _headers, again = opus.get(opus.app_host(APP))
    assert _visits(again) == _visits(body) + 1


def test_production_settings_are_applied_without_editing_the_project(
        opus: Opus, first_push: str, project: Path) -> None:
    # DEBUG is off: an unknown path gets Django's plain 404, not the debug page.
    status, _headers, body = opus.get(opus.app_host(APP), "/no-such-page/")
    assert status == 404
    assert "URLconf" not in body and "DEBUG = True" not in body
    # ALLOWED_HOSTS is the app's domain: another Host header reaching the app is refused.
    env = (opus.home / "apps" / APP / "env" / "v1.json").read_text()
    assert '"OPUS_ALLOWED_HOSTS": "hello.localhost"' in env
    # The user's settings.py is untouched in the slug.
    slug_settings = opus.home / "apps" / APP / "current" / "mysite" / "settings.py"
    assert slug_settings.read_text() == (project / "mysite" / "settings.py").read_text()


def test_app_code_owns_only_its_own_corners(opus: Opus, first_push: str) -> None:
    """Opus keeps apps/<app>, releases/ and env/ to itself, so app code (which runs
    during the build) can never swap in a symlink that Opus would later follow."""
    base = opus.home / "apps" / APP
    run_uid = os.stat(base / "data").st_uid
    for own in (base, base / "releases", base / "env"):
        assert own.stat().st_uid == os.geteuid(), own
    for given in (base / "data", base / "run", base / "home", base / "releases" / "v1"):
        assert given.stat().st_uid == run_uid, given
    # The config snapshot stays Opus's, for the app to read (its group), not to change.
    snapshot = (base / "env" / "v1.json").stat()
    assert snapshot.st_uid == os.geteuid()
    if os.geteuid() == 0:
        assert run_uid != 0      # app code never runs as root
        assert snapshot.st_gid == os.stat(base / "data").st_gid
        assert stat.S_IMODE(snapshot.st_mode) == 0o640


def test_app_processes_see_none_of_the_operators_environment(opus: Opus,
                                                            first_push: str) -> None:
    environments = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"mod_wsgi" in (proc / "cmdline").read_bytes():
                    environments.append((proc / "environ").read_bytes())
            except OSError:
                continue
    assert environments, "no mod_wsgi process found"
    for environ in environments:
        assert b"operator-secret-marker" not in environ
        assert b"OPUS_ENV_FILE=" in environ


def test_secret_key_is_generated_once_and_kept(opus: Opus, first_push: str) -> None:
    env = (opus.home / "apps" / APP / "env" / "v1.json").read_text()
    key = re.search(r'"SECRET_KEY": "([^"]+)"', env)
    assert key and len(key.group(1)) >= 50 and "django-insecure" not in key.group(1)


def test_static_files_are_served_by_the_front_apache(opus: Opus, first_push: str) -> None:
    status, headers, body = opus.get(opus.app_host(APP), "/static/pages/site.css")
    assert status == 200
    assert body == "body { color: rebeccapurple; }\n"
    assert headers.get("X-Opus-Served-By") == "front-static"
    # The app's own Apache (its access log is in web.log) never saw the request.
    web_log = (opus.home / "logs" / APP / "web.log").read_text()
    assert '"GET / HTTP/1.1" 200' in web_log
    assert "/static/pages/site.css" not in web_log


def test_second_push_switches_to_the_new_release(opus: Opus, admin_key: SshKey,
                                                 first_push: str, project: Path) -> None:
    set_greeting(project, "Second release")
    # Read git's output as it comes: the build's lines must arrive while it runs.
    with subprocess.Popen(["git", "-C", str(project), "push", "--progress", "opus", "main"],
                          env=admin_key.git_env(opus), stderr=subprocess.PIPE,
                          text=True) as push:
        assert push.stderr is not None
        arrivals = [(time.monotonic(), line) for line in push.stderr]
        assert push.wait(timeout=300) == 0, "".join(line for _, line in arrivals)
    stderr = "".join(line for _, line in arrivals)
    assert "Released v2" in stderr
    building = next(t for t, line in arrivals if "-----> Building hello" in line)
    released = next(t for t, line in arrivals if "Released v2" in line)
    assert released - building > 1.0, "build output arrived all at once, not live"
    status, _headers, body = opus.get(opus.app_host(APP))
    assert status == 200 and body.startswith("Second release"), body
    assert (opus.home / "apps" / APP / "current").readlink() == Path("releases/v2")
    # Data persists across releases.
    assert _visits(body) > 2


def test_broken_requirement_is_rejected_and_the_old_release_keeps_serving(
        opus: Opus, admin_key: SshKey, first_push: str, project: Path) -> None:
    (project / "requirements.txt").write_text("django>=5.2,<5.3\nno-such-package-opus-test==9.9\n")
    set_greeting(project, "Broken release")
    stderr = _push_is_rejected_and_old_release_serves(opus, admin_key, project)
    assert "remote:  !     " in stderr
    # The ref did not move, and the failed build's log was kept.
    remote_head = git(project, "ls-remote", "opus", "refs/heads/main",
                      env=admin_key.git_env(opus)).stdout.split()[0]
    assert remote_head == git(project, "rev-parse", "HEAD~1").stdout.strip()
    logs = sorted((opus.home / "builds" / APP).glob("build-v*.log"))
    assert "no-such-package-opus-test" in logs[-1].read_text()
    git(project, "reset", "-q", "--hard", "HEAD~1")


def test_release_failing_its_health_check_never_gets_traffic(
        opus: Opus, admin_key: SshKey, first_push: str, project: Path) -> None:
    views = project / "pages" / "views.py"
    good = views.read_text()
    views.write_text(good.replace("def index(request):",
                                  "def index(request):\n    raise RuntimeError('broken view')"))
    git(project, "commit", "-qam", "broken view")
    stderr = _push_is_rejected_and_old_release_serves(opus, admin_key, project)
    assert "did not pass its health check" in stderr
    # The failed instance is gone: only the live release's program is configured.
    conf = (opus.home / "supervisor" / "conf.d" / f"app-{APP}.conf").read_text()
    assert conf.count("[program:") == 1
    assert opus.cli("status").stdout.count(f"{APP}-web-") == 1
    # Its slug and config snapshot are gone too; the live ones stay.
    base = opus.home / "apps" / APP
    assert sorted(p.name for p in (base / "releases").iterdir()) == ["v1", "v2"]
    assert sorted(p.name for p in (base / "env").iterdir()) == ["v1.json", "v2.json"]
    git(project, "reset", "-q", "--hard", "HEAD~1")


def test_unregistered_key_is_refused(opus: Opus, first_push: str, project: Path,
                                     tmp_path: Path) -> None:
    stranger = make_key(tmp_path, "stranger")
    result = git(project, "push", "opus", "main", env=stranger.git_env(opus), check=False)
    assert result.returncode != 0
    assert "Permission denied (publickey)" in result.stderr


def test_push_to_another_branch_is_stored_without_deploying(
        opus: Opus, admin_key: SshKey, first_push: str, project: Path) -> None:
    live = (opus.home / "apps" / APP / "current").readlink()
    git(project, "checkout", "-q", "-b", "feature")
    set_greeting(project, "Feature branch")
    result = git(project, "push", "opus", "feature", env=admin_key.git_env(opus))
    git(project, "checkout", "-q", "main")
    assert "refs/heads/feature stored; only main deploys" in result.stderr
    assert "[new branch]      feature -> feature" in result.stderr
    assert (opus.home / "apps" / APP / "current").readlink() == live
    assert not opus.get(opus.app_host(APP))[2].startswith("Feature branch")


def test_deleting_the_deploy_branch_is_refused(opus: Opus, admin_key: SshKey,
                                              first_push: str, project: Path) -> None:
    result = git(project, "push", "opus", ":main", env=admin_key.git_env(opus), check=False)
    assert result.returncode != 0
    assert "deleting main, the deploy branch, is refused" in result.stderr
    assert opus.get(opus.app_host(APP))[0] == 200


def _push_is_rejected_and_old_release_serves(opus: Opus, key: SshKey, project: Path) -> str:
    """Push HEAD, expect git to report the ref rejected, and the page of the release that
    was live before to still be served; return git's stderr."""
    before = opus.get(opus.app_host(APP))[2].split(" (")[0]
    result = git(project, "push", "opus", "main", env=key.git_env(opus), check=False)
    assert result.returncode != 0
    assert "[remote rejected] main -> main" in result.stderr
    status, _headers, body = opus.get(opus.app_host(APP))
    assert status == 200 and body.startswith(before), body
    return result.stderr


def _visits(body: str) -> int:
    match = re.search(r"visits: (\d+)", body)
    assert match, body
    return int(match.group(1))


def test_post_receive_hook_records_only_pushes_whose_ref_moved(opus: Opus, admin_key: SshKey,
                                                             first_push: str,
                                                             project: Path) -> None:
    pushes = (opus.home / "builds" / APP / "pushes.log").read_text().splitlines()
    main = [line.split()[1:] for line in pushes if " refs/heads/main " in line]
    live_sha = git(project, "ls-remote", "opus", "refs/heads/main",
                   env=admin_key.git_env(opus)).stdout.split()[0]
    # The first and second push; not the rejected build, not the refused deletion.
    assert len(main) == 2
    assert main[1] == ["refs/heads/main", main[0][2], live_sha]
    assert any(" refs/heads/feature " in line for line in pushes)


def test_post_receive_hook_prunes_old_releases_but_never_the_live_one(opus: Opus,
                                                                      first_push: str) -> None:
    repo = opus.home / "repos" / f"{APP}.git"
    releases = opus.home / "apps" / APP / "releases"
    assert sorted(p.name for p in releases.iterdir()) == ["v1", "v2"]
    result = subprocess.run([str(repo / "hooks" / "post-receive")], input="", cwd=repo,
                            env={**opus.env, "GIT_DIR": str(repo), "OPUS_KEEP_RELEASES": "1"},
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert sorted(p.name for p in releases.iterdir()) == ["v2"]
    assert not (opus.home / "apps" / APP / "env" / "v1.json").exists()
    # The front's copy of its static files goes with it; the live one's stays.
    copies = opus.home / "front" / "static" / APP
    assert sorted(p.name for p in copies.iterdir()) == ["current", "v2"]
    assert opus.get(opus.app_host(APP))[0] == 200


def test_post_receive_hook_never_fails_the_push_nor_talks_to_the_client(
        opus: Opus, first_push: str) -> None:
    repo = opus.home / "repos" / f"{APP}.git"
    (opus.home / "apps" / APP / "releases" / "v\u00b2").mkdir()   # "²".isdigit() is True
    hostile_env = {**opus.env, "GIT_DIR": str(repo), "OPUS_KEEP_RELEASES": "not-a-number"}
    result = subprocess.run([str(repo / "hooks" / "post-receive")], input="garbage\n",
                            cwd=repo, env=hostile_env, capture_output=True, text=True,
                            check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert "post-receive failed" in (opus.home / "logs" / "hooks.log").read_text()
