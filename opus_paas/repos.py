"""The apps' bare repositories: where each is, and its branches read and moved by
compare-and-swap (the git server's pushes, and recovery finishing one)."""

from __future__ import annotations

import logging
from pathlib import Path

from dulwich.objects import ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from opus_paas.errors import NotFound, ServiceError

log = logging.getLogger("opus.git")

ZERO_SHA = b"0" * 40


def branch_ref(branch: str) -> Ref:
    return Ref(b"refs/heads/" + branch.encode("ascii"))


def existing_repo(repos_dir: Path, app: str) -> Path:
    """repos/<app>.git if it is a real directory (a symlink planted there is refused,
    never followed); NotFound if the app has no repository yet."""
    path = repos_dir / f"{app}.git"
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        log.error("repos/%s.git is not a plain directory; refusing to use it", app)
        raise ServiceError(f"the repository of {app} is damaged; the operator must repair "
                           f"repos/{app}.git")
    if not path.is_dir():
        raise NotFound(f"app {app} has no code yet; push to it first")
    return path


def branch_head(repos_dir: Path, app: str, ref: str) -> str | None:
    """The commit `ref` points at in the app's repository (None: no such branch)."""
    repo = Repo(str(existing_repo(repos_dir, app)))
    try:
        return bytes(repo.refs[Ref(ref.encode("ascii"))]).decode("ascii")
    except KeyError:
        return None
    finally:
        repo.close()


def move_branch(repos_dir: Path, app: str, ref: str, old: str, new: str) -> bool:
    """Compare-and-swap `ref` from `old` (40 zeros: absent) to `new`; True if it points at
    `new` afterwards."""
    current = (branch_head(repos_dir, app, ref) or ZERO_SHA.decode()).encode("ascii")
    if current == new.encode("ascii"):
        return True
    if current != old.encode("ascii"):
        return False
    repo = Repo(str(existing_repo(repos_dir, app)))
    try:
        name, target = Ref(ref.encode("ascii")), ObjectID(new.encode("ascii"))
        if current == ZERO_SHA:
            return bool(repo.refs.add_if_new(name, target))
        return bool(repo.refs.set_if_equals(name, ObjectID(current), target))
    finally:
        repo.close()
