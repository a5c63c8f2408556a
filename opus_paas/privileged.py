"""The one home of every step that crosses a Unix user: running app code as the
app's run user, and handing an app's files to that user.

In embedded mode as an ordinary user nothing is switched. When Opus runs as
root, app code runs as the unprivileged run user (Apache will not serve as
root). System mode routes these same calls through secureops.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TypedDict

from opus_paas.settings import Settings, user_ids


class Identity(TypedDict, total=False):
    """subprocess keyword arguments that switch the child's user."""

    user: int
    group: int
    extra_groups: list[int]


def subprocess_identity(settings: Settings) -> Identity:
    """Keyword arguments for subprocess that run a child as the app's run user
    (supplementary groups dropped)."""
    ids = user_ids(settings.app_run_user())
    if ids is None or os.geteuid() != 0:
        return {}
    uid, gid = ids
    return {"user": uid, "group": gid, "extra_groups": []}


def hand_over(settings: Settings, path: Path) -> None:
    """Give `path` (and everything below it) to the run user, never following a symlink."""
    ids = user_ids(settings.app_run_user())
    if ids is None or os.geteuid() != 0:
        return
    uid, gid = ids
    os.lchown(path, uid, gid)
    if not path.is_symlink() and path.is_dir():
        _chown_tree(path, uid, gid)


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    top_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for _root, dirs, files, root_fd in os.fwalk(".", dir_fd=top_fd, follow_symlinks=False):
            for name in dirs + files:
                os.chown(name, uid, gid, dir_fd=root_fd, follow_symlinks=False)
    finally:
        os.close(top_fd)


def stream(
    settings: Settings,
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
) -> Iterator[str]:
    """Run `argv` as the app's run user and yield its output line by line as it comes.

    Raises subprocess.CalledProcessError once the output is exhausted if it failed.
    The child gets its own process group, so a cancelled build can be killed whole.
    """
    proc = subprocess.Popen(
        list(argv), cwd=cwd, env=dict(env), stdin=stdin,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, **subprocess_identity(settings),
    )
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            yield raw.decode("utf-8", "replace").rstrip("\n")
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        code = proc.wait()
    if code != 0:
        raise subprocess.CalledProcessError(code, list(argv))


def make_private_dir(settings: Settings, path: Path, mode: int = 0o755) -> None:
    """Create `path` if missing and give the directory itself (not its contents)
    to the run user, with `mode`."""
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != mode:
        path.chmod(mode)
    ids = user_ids(settings.app_run_user())
    if ids is not None and os.geteuid() == 0:
        os.lchown(path, *ids)
