"""dulwich, rooted at repos/: bare repositories and the streaming update hook.

The build runs from `_on_update`, after the pack is stored and before the ref
moves; each output line goes to the client at once on sideband channel 2.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.protocol import CAPABILITY_ATOMIC, SIDE_BAND_CHANNEL_PROGRESS, Protocol
from dulwich.repo import Repo
from dulwich.server import Backend, BackendRepo, ReceivePackHandler

from opus_paas import hooks, names, push
from opus_paas.errors import OpusError
from opus_paas.settings import Settings
from opus_paas.store import App, Store

log = logging.getLogger("opus.git")

DEPLOY_BRANCH = b"refs/heads/main"
ZERO_SHA = b"0" * 40


class OpusBackend(Backend):
    """Resolves a client's path ('/myapp.git') to repos/<app>.git and nothing else."""

    def __init__(self, repos_dir: Path) -> None:
        self.repos_dir = repos_dir

    def open_repository(self, path: str) -> BackendRepo:
        app = names.app_from_repo_path(path)
        repo_dir = self.repos_dir / f"{app}.git"
        if not repo_dir.is_dir() or repo_dir.is_symlink():
            raise NotGitRepository(f"no repository for app {app}")
        return Repo(str(repo_dir))


def init_repo(settings: Settings, app: str) -> None:
    """Create the app's bare repository (HEAD → main) if it does not exist, and make
    sure its post-receive hook is current."""
    path = settings.repos_dir / f"{app}.git"
    settings.repos_dir.mkdir(parents=True, exist_ok=True)
    if not path.is_dir():
        Repo.init_bare(str(path), mkdir=True, default_branch=b"main").close()
    hooks.install(path)


class DeployingReceivePackHandler(ReceivePackHandler):
    """ReceivePackHandler whose update hook builds and deploys the deploy branch."""

    def __init__(self, backend: Backend, args: Sequence[str], proto: Protocol, *,
                 settings: Settings, store: Store, app: App) -> None:
        super().__init__(backend, args, proto)
        self.settings = settings
        self.store = store
        self.app = app
        self.client_gone = False

    def capabilities(self) -> list[bytes]:
        # No `atomic`: dulwich runs every ref's update hook (our deploy) before it
        # checks the others, so an atomic push could deploy and then not move the ref.
        return [c for c in super().capabilities() if c != CAPABILITY_ATOMIC]

    def _emit(self, line: str) -> None:
        """Send one line to the client; a client that hung up does not stop the deploy
        midway (the build log keeps every line)."""
        if self.client_gone or not self.has_capability(b"side-band-64k"):
            return
        try:
            self.proto.write_sideband(SIDE_BAND_CHANNEL_PROGRESS,
                                      (line + "\n").encode("utf-8", "replace"))
        except OSError:
            self.client_gone = True

    def _on_update(self, ref_name: bytes, old_sha: bytes,
                   new_sha: bytes) -> bytes | None:
        if ref_name != DEPLOY_BRANCH:
            self._emit(f"-----> {ref_name.decode(errors='replace')} stored; only main deploys")
            return None
        if new_sha == ZERO_SHA:
            return b"deleting the deploy branch is refused; push a commit to it instead"
        try:
            assert isinstance(self.repo, Repo)
            push.deploy_commit(self.settings, self.store, self.app, self.repo, new_sha,
                               self._emit)
        except OpusError as exc:
            return _one_line(exc.message).encode("utf-8", "replace")
        except Exception:
            log.exception("deploy of %s failed", self.app.name)
            self._emit(" !     Opus hit an internal error; the operator's log has the details")
            return b"internal error; nothing was changed"
        return None


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
