"""dulwich, rooted at repos/: bare repositories, the deploying receive-pack and a
pack-objects upload-pack.

dulwich speaks the protocol; C git does the pack work (see packs.py). The build runs
for the app's deploy branch after the pack is stored and before the ref moves; each
output line goes to the client at once on sideband channel 2. Refs move only by
compare-and-swap, and the status each client gets is the one the refs show.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from dulwich.errors import GitProtocolError
from dulwich.protocol import (
    CAPABILITY_ATOMIC,
    CAPABILITY_FILTER,
    CAPABILITY_INCLUDE_TAG,
    CAPABILITY_NO_DONE,
    CAPABILITY_OFS_DELTA,
    CAPABILITY_SHALLOW,
    CAPABILITY_SIDE_BAND_64K,
    CAPABILITY_THIN_PACK,
    SIDE_BAND_CHANNEL_PROGRESS,
    Protocol,
)
from dulwich.refs import Ref
from dulwich.repo import Repo
from dulwich.server import (
    Backend,
    BackendRepo,
    ReceivePackHandler,
    UploadPackHandler,
    _ProtocolGraphWalker,
)

from opus_paas import failpoints, locks, names, output, redact
from opus_paas.errors import InvalidName, NotFound, OpusError, ProtocolError, disk_full
from opus_paas.git import hooks, packs
from opus_paas.git.wire import ChannelReader
from opus_paas.layout import AppPaths
from opus_paas.repos import ZERO_SHA, branch_ref, existing_repo
from opus_paas.run import previews, push
from opus_paas.settings import Settings
from opus_paas.store import App, Store

log = logging.getLogger("opus.git")

# More ref updates than any real push sends; a client sending more is refused.
MAX_REF_UPDATES = 1000


class OpusBackend(Backend):
    """Resolves a client's path ('/myapp.git') to repos/<app>.git and nothing else."""

    def __init__(self, repos_dir: Path) -> None:
        self.repos_dir = repos_dir

    def open_repository(self, path: str) -> BackendRepo:
        return Repo(str(existing_repo(self.repos_dir, names.app_from_repo_path(path))))


def init_repo(settings: Settings, app: str, branch: str = "main") -> None:
    """Create the app's bare repository (HEAD → `branch`) if it does not exist, and make
    sure its post-receive hook is current. Callers hold the app's deploy lock."""
    settings.repos_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = existing_repo(settings.repos_dir, app)
    except NotFound:
        # Made beside its final name and renamed in: nobody sees a half-made repo.
        paths = AppPaths.of(settings, app)
        path, partial = paths.repo, paths.partial_repo
        shutil.rmtree(partial, ignore_errors=True)
        Repo.init_bare(str(partial), mkdir=True, default_branch=branch.encode()).close()
        partial.rename(path)
    hooks.install(path)


def point_head(settings: Settings, app: str, branch: str) -> None:
    """HEAD names the deploy branch, so a clone checks out what is deployed."""
    repo = Repo(str(AppPaths.of(settings, app).repo))
    try:
        repo.refs.set_symbolic_ref(Ref(b"HEAD"), branch_ref(branch))
    finally:
        repo.close()


def handle_and_close(handler: ReceivePackHandler | UploadPackHandler) -> None:
    """Serve one request, then close the repository's pack files whatever happened."""
    try:
        handler.handle()
    finally:
        if isinstance(handler.repo, Repo):
            handler.repo.close()


def set_deploy_branch(settings: Settings, store: Store, app_name: str, branch: str) -> App:
    """Make `branch` the one whose pushes deploy `app_name` (and what a clone checks out).
    Waits for a running deploy of the app first."""
    names.check_branch_name(branch)
    with locks.app_lock(settings, names.check_app_name(app_name)):
        app = store.get_app(app_name)
        if app is None:
            raise NotFound(f"app {app_name} not found; see `opus apps`")
        store.set_deploy_branch(app, branch)
        with contextlib.suppress(NotFound):   # no repository yet: init_repo sets HEAD
            existing_repo(settings.repos_dir, app_name)
            point_head(settings, app_name, branch)
        return dataclasses.replace(app, deploy_branch=branch)


class DeployingReceivePackHandler(ReceivePackHandler):
    """ReceivePackHandler whose packs go through `git index-pack` and whose deploy branch
    builds and deploys before it moves."""

    def __init__(self, backend: Backend, args: Sequence[str], proto: Protocol, *,
                 settings: Settings, store: Store, app: App, reader: ChannelReader,
                 cancelled: threading.Event, request_id: str) -> None:
        super().__init__(backend, args, proto)
        self.settings = settings
        self.store = store
        self.app = app
        self.reader = reader
        self.cancelled = cancelled
        self.request_id = request_id
        self.client_gone = False
        # Releases this push brought live, whose old instances are still to be drained
        # (the SSH server does that after the client has its answer).
        self.deployed: list[push.Deployed] = []

    def capabilities(self) -> list[bytes]:
        # No `atomic`: each ref's deploy runs before the next ref is looked at, so an
        # all-or-nothing promise could not be kept.
        return [c for c in super().capabilities() if c != CAPABILITY_ATOMIC]

    def _emit(self, line: str) -> None:
        """Send one line to the client. A send that fails (hung up, or stalled past the
        read timeout) may have left half a packet: the client is treated as gone, the
        build is cancelled, and nothing more is written to it."""
        if self.client_gone or not self.has_capability(CAPABILITY_SIDE_BAND_64K):
            return
        try:
            self.proto.write_sideband(SIDE_BAND_CHANNEL_PROGRESS,
                                      (line + "\n").encode("utf-8", "replace"))
        except (OSError, GitProtocolError):   # dulwich wraps a closed socket's error
            self.client_gone = True
            self.cancelled.set()

    @property
    def repo_dir(self) -> Path:
        assert isinstance(self.repo, Repo)
        return Path(self.repo.controldir())

    def _apply_pack(self, refs: list[tuple[bytes, bytes, bytes]]  # type: ignore[override]
                    ) -> Iterator[tuple[bytes, bytes]]:
        if len(refs) > MAX_REF_UPDATES:
            raise ProtocolError(f"a push may update at most {MAX_REF_UPDATES} refs at once; "
                                "nothing was stored; push in smaller batches")
        new_tips = [new for _old, new, _ref in refs if new != ZERO_SHA]
        if new_tips:
            # A ProtocolError here ends the connection with one line; nothing moved.
            packs.receive(self.settings.git_bin, self.repo_dir, self.reader,
                          max_bytes=self.settings.max_pack_bytes,
                          max_object_bytes=self.settings.max_object_bytes,
                          read_timeout=self.settings.ssh_read_timeout,
                          index_timeout=self.settings.build_timeout, new_tips=new_tips)
            failpoints.reached(self.settings, "push.received")
        yield (b"unpack", b"ok")
        for old, new, ref in refs:
            try:
                status = self._update(ref, old, new)
            except Exception:
                # One ref's failure must not lose the others' statuses: refs before it
                # may have moved, a release may be live.
                log.exception("[%s] updating %r failed", self.request_id, ref)
                status = self._status(f"failed to write (request {self.request_id})")
            yield (ref, status)

    def _on_post_receive(self, client_refs: list[tuple[bytes, bytes, bytes]]  # type: ignore[override]
                         ) -> None:
        hooks.after_push(self.settings, self.repo_dir, client_refs, self.request_id)

    def _update(self, ref: bytes, old: bytes, new: bytes) -> bytes:
        """Validate, maybe deploy, then move `ref` from `old` to `new`; b"ok" or why not."""
        try:
            shown = names.check_ref_name(ref)
        except InvalidName as exc:
            return self._status(exc.message)
        assert isinstance(self.repo, Repo)
        try:
            current: bytes = self.repo.refs[Ref(ref)]
        except KeyError:
            current = ZERO_SHA
        if current != old:
            return b"stale info: the branch moved since you fetched; fetch and push again"
        if new != ZERO_SHA and ref.startswith(b"refs/heads/") and \
                packs.object_type(self.settings.git_bin, self.repo_dir, new) != "commit":
            return b"a branch must point at a commit"
        if ref == branch_ref(self.app.deploy_branch):
            if new == ZERO_SHA:
                return self._status(f"deleting {self.app.deploy_branch}, the deploy branch, is "
                               "refused; push a commit to it instead")
            return self._deploy(ref, old, new)
        if ref.startswith(b"refs/heads/"):
            branch = shown[len("refs/heads/"):]
            if new == ZERO_SHA:
                status = self._move(ref, old, new)
                if status == b"ok":
                    self._destroy_preview(branch)
                return status
            if self.store.preview_limit(self.app) is not None:
                return self._preview(ref, old, new, branch)
        if new != ZERO_SHA:
            self._emit(output.step(
                f"{shown} stored; only {self.app.deploy_branch} deploys "
                f"(opus git:set {self.app.name} deploy-branch BRANCH changes that)"))
        return self._move(ref, old, new)

    def _deploy(self, ref: bytes, old: bytes, new: bytes) -> bytes:
        """Build and deploy `new`; the ref moves once its release is recorded live."""
        branch = push.BranchMove(ref.decode("ascii"), old.decode("ascii"),
                                 lambda: self._move(ref, old, new) == b"ok")
        assert isinstance(self.repo, Repo)
        repo = self.repo
        deployed = self._deploying(lambda: push.deploy_commit(
            self.settings, self.store, self.app, repo, new, self._emit,
            cancelled=self.cancelled, branch=branch))
        if isinstance(deployed, bytes):
            return deployed
        self.deployed.append(deployed)
        if not deployed.branch_moved:
            return b"stale info: the branch moved during the push; fetch and push again"
        return b"ok"

    def _preview(self, ref: bytes, old: bytes, new: bytes, branch: str) -> bytes:
        """Deploy `branch` as the app's preview; the branch moves once it is live. A
        branch that may have no preview (limit, name) is stored all the same."""
        try:
            previews.target(self.settings, self.store, self.app, branch)
        except OpusError as exc:
            self._emit(output.alert(f"{branch} stored, without a preview: {exc.message}"))
            return self._move(ref, old, new)
        assert isinstance(self.repo, Repo)
        repo = self.repo
        deployed = self._deploying(lambda: previews.deploy_branch(
            self.settings, self.store, self.app, repo, branch, new, self._emit,
            self.cancelled, lambda: self._move(ref, old, new) == b"ok"))
        if isinstance(deployed, bytes):
            return deployed
        if not deployed.branch_moved:
            return b"stale info: the branch moved during the push; fetch and push again"
        return b"ok"

    def _destroy_preview(self, branch: str) -> None:
        """The branch is gone: so is its preview app. A failure is said and logged (the
        branch is deleted all the same; `apps:destroy` finishes the job)."""
        try:
            previews.destroy_branch(self.settings, self.store, self.app, branch, self._emit)
        except Exception as exc:
            log.exception("[%s] destroying the preview of %s failed", self.request_id, branch)
            message = exc.message if isinstance(exc, OpusError) else \
                f"internal error (request {self.request_id})"
            self._emit(output.alert(f"{branch} is deleted, but its preview app could not be "
                                    f"destroyed: {message}; `opus apps:destroy` it"))

    def _deploying(self, work: Callable[[], push.Deployed]) -> push.Deployed | bytes:
        """Run a deploy; an error becomes the ref's status (bytes)."""
        try:
            return work()
        except OpusError as exc:
            return self._status(exc.message)
        except Exception as exc:
            full = disk_full(exc)
            if full is not None:
                log.warning("[%s] deploy of %s: %s", self.request_id, self.app.name, exc)
                self._emit(output.alert(full.message))
                return self._status(full.message)
            log.exception("[%s] deploy of %s failed", self.request_id, self.app.name)
            self._emit(output.alert("Opus hit an internal error; the operator's log has the "
                                    f"details (request {self.request_id})"))
            return self._status(f"internal error (request {self.request_id}); the "
                                "operator's log has the details")

    def _status(self, message: str) -> bytes:
        """A ref status fits on one pkt-line and one terminal line, and names no server
        path."""
        text = redact.redact(message, redact.replacements(self.settings))
        return " ".join(text.split())[:200].encode("utf-8", "replace")

    def _move(self, ref: bytes, old: bytes, new: bytes) -> bytes:
        assert isinstance(self.repo, Repo)
        refs = self.repo.refs
        if new == ZERO_SHA:
            moved = refs.remove_if_equals(ref, old)  # type: ignore[arg-type]
        elif old == ZERO_SHA:
            moved = refs.add_if_new(ref, new)  # type: ignore[arg-type]
        else:
            moved = refs.set_if_equals(ref, old, new)  # type: ignore[arg-type]
        if not moved:
            return b"stale info: the branch moved during the push; fetch and push again"
        return b"ok"


class PackObjectsUploadPackHandler(UploadPackHandler):
    """UploadPackHandler that negotiates with dulwich and packs with `git pack-objects`.

    Shallow and partial clones are not offered: git then asks for a full clone.
    """

    def __init__(self, backend: Backend, args: Sequence[str], proto: Protocol, *,
                 settings: Settings) -> None:
        super().__init__(backend, args, proto)
        self.settings = settings

    def capabilities(self) -> list[bytes]:
        return [c for c in super().capabilities()
                if c not in (CAPABILITY_SHALLOW, CAPABILITY_FILTER)]

    def handle(self) -> None:
        assert isinstance(self.repo, Repo)
        self._processing_have_lines = True
        store = self.repo.object_store
        walker = _ProtocolGraphWalker(self, store, self.repo.get_peeled,
                                      self.repo.refs.get_symrefs)
        refs = {ref: sha for ref, sha in self.repo.get_refs().items() if sha in store}
        wants = walker.determine_wants(refs)
        if not wants:
            return
        haves = store.find_common_revisions(walker)
        if not walker.handle_done(not self.has_capability(CAPABILITY_NO_DONE),
                                  self._done_received):
            return
        self._start_pack_send_phase()
        packs.send(self.settings.git_bin, Path(self.repo.controldir()), wants, haves,
                   thin=self.has_capability(CAPABILITY_THIN_PACK),
                   ofs_delta=self.has_capability(CAPABILITY_OFS_DELTA),
                   include_tag=self.has_capability(CAPABILITY_INCLUDE_TAG),
                   write=self.write_pack_data)
        self.proto.write_pkt_line(None)
