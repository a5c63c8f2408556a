"""The front serves an app's static files from secureops's copy of the live release
(OPUS_HOME/front/static/<app>/current), never from the app's own tree: what the app
changes in its release afterwards (a file, a link) never reaches the front, a link the
app leaves in STATIC_ROOT is not copied, and a rollback serves the old release's copy."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Opus, SshKey, commit_all, git, make_django_project, push_main

APP = "assets"
CSS = "pages/static/pages/site.css"
# The release step plants a link in STATIC_ROOT to the app's sources, then migrates.
PLANT = textwrap.dedent('''\
    import os, subprocess, sys
    os.symlink("../../../mysite/settings.py", ".opus/static/pages/leak.txt")
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], check=True)
    ''')


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, opus: Opus) -> Path:
    directory = make_django_project(tmp_path_factory.mktemp("static") / APP)
    (directory / "plant.py").write_text(PLANT)
    (directory / "Procfile").write_text("release: python plant.py\n")
    (directory / CSS).write_text("/* v1 */\n")
    commit_all(directory, "plant a link in STATIC_ROOT")
    git(directory, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
    return directory


@pytest.fixture(scope="module")
def first_push(opus: Opus, admin_key: SshKey, project: Path) -> str:
    return push_main(project, opus, admin_key)


def css(opus: Opus) -> tuple[int, str]:
    status, headers, body = opus.get(opus.app_host(APP), "/static/pages/site.css")
    if status == 200:
        assert headers.get("X-Opus-Served-By") == "front-static"
    return status, body


def test_static_files_are_served_from_the_copy_and_no_link_is_copied(
        opus: Opus, first_push: str) -> None:
    assert "-----> Copying static files for the front" in first_push
    assert "remote:  !     skipped static/'pages/leak.txt': a symlink is never followed" \
        in first_push, first_push
    assert css(opus) == (200, "/* v1 */\n")
    assert opus.get(opus.app_host(APP), "/static/pages/leak.txt")[0] == 404
    copy = opus.home / "front" / "static" / APP
    assert (copy / "current").readlink() == Path("v1")
    assert sorted(p.name for p in (copy / "v1" / "pages").iterdir()) == ["site.css"]
    conf = (opus.home / "front" / "httpd.conf").read_text()
    assert f'Alias /static/ "{copy / "current"}/"' in conf
    assert str(opus.home / "apps" / APP) not in conf


def test_what_the_app_changes_in_its_release_never_reaches_the_front(
        opus: Opus, first_push: str) -> None:
    static = opus.home / "apps" / APP / "releases" / "v1" / ".opus" / "static"
    (static / "pages" / "site.css").write_text("/* changed by the app */\n")
    assert css(opus) == (200, "/* v1 */\n")
    shutil.rmtree(static / "pages")
    (static / "pages").symlink_to("../../mysite")
    assert css(opus) == (200, "/* v1 */\n")
    assert opus.get(opus.app_host(APP), "/static/pages/settings.py")[0] == 404


def test_a_new_release_and_a_rollback_each_serve_their_own_copy(
        opus: Opus, admin_key: SshKey, first_push: str, project: Path) -> None:
    (project / CSS).write_text("/* v2 */\n")
    commit_all(project, "v2's style")
    assert "Released v2" in push_main(project, opus, admin_key)
    assert css(opus) == (200, "/* v2 */\n")
    opus.cli("rollback", APP, "v1")
    assert css(opus) == (200, "/* v1 */\n")      # v1's copy, not what the app changed
