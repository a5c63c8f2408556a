"""apps:destroy removes whatever an app left in its directory, however deep, and
nothing outside it."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import Opus, SshKey

APP = "deeptree"
DEPTH = 600
NAME = "d" * 20          # 600 of these make paths far past PATH_MAX (4096)


def _deep_tree(top: Path, outside: Path) -> None:
    """What the app could leave in its data/: directories DEPTH deep, each with a file;
    at the bottom a link out of the tree and a FIFO. Built through fds, as no path to the
    bottom fits in PATH_MAX."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            os.mkdir(NAME, dir_fd=fd)
            below = os.open(NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.symlink(str(outside), "out", dir_fd=fd)
        os.mkfifo("fifo", dir_fd=fd)
    finally:
        os.close(fd)


def test_destroy_removes_a_tree_of_any_depth_and_follows_no_link(
        opus: Opus, admin_key: SshKey, tmp_path: Path) -> None:
    opus.cli("apps:create", APP)      # (owned by the admin `admin_key` made)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep\n")
    app_dir = opus.home / "apps" / APP
    _deep_tree(app_dir / "data", outside)
    destroyed = opus.cli("apps:destroy", APP, "--confirm", APP, check=False)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert not app_dir.exists()
    assert (outside / "keep.txt").read_text() == "keep\n"
    assert APP not in opus.cli("apps").stdout
