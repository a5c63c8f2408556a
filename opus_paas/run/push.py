"""What happens when a push reaches an app's deploy branch: build, release, deploy.

Runs inside the git server's update hook, before the ref moves: any failure
rejects the push and leaves the live release untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dulwich.repo import Repo

from opus_paas import failpoints, output, privileged, redact, secretfile
from opus_paas.build import buildpack, release
from opus_paas.data import backups
from opus_paas.errors import BuildFailed, OpusError
from opus_paas.front import sites
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.run import appdirs, appsetup, buildlog, deploy
from opus_paas.settings import Settings
from opus_paas.store import App, Release, Store
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import deploy as swarm_deploy


@dataclasses.dataclass(frozen=True)
class BranchMove:
    """The move of the deploy branch a push makes once its release is live."""

    ref: str                       # refs/heads/<branch>
    previous: str                  # its commit before the push (40 zeros: a new branch)
    move: Callable[[], bool]       # compare-and-swap; False when it moved meanwhile


@dataclasses.dataclass
class Deployed:
    """A release that serves: what is left of its deploy (Switched.finish) and how the
    branch move went."""

    version: int
    switched: deploy.Switched | swarm_deploy.Switched
    log_path: Path
    branch_moved: bool | None = None     # None: no branch to move

    def finish(self, emit: Emit | None = None) -> None:
        """Drain and stop the old instance; lines go to `emit` and the build log."""
        with secretfile.open_private(self.log_path, "a") as log:
            def both(line: str) -> None:
                log.write(line + "\n")
                if emit is not None:
                    emit(line)
            self.switched.finish(both)


def deploy_commit(settings: Settings, store: Store, app: App, repo: Repo, sha: bytes,
                  emit: Emit, *, cancelled: threading.Event | None = None,
                  branch: BranchMove | None = None) -> Deployed:
    """Build `sha` and bring it live, recording each step in the order of record (see
    docs/design-notes.md); `branch` moves once the release is recorded live. Returns
    the release, whose old instance is still to be drained (Deployed.finish).

    Setting `cancelled` (the client hung up) stops the build and anything before the
    switch; the caller holds the app's deploy lock.
    """
    cancelled = cancelled or threading.Event()
    started = time.monotonic()
    appdirs.ensure_app_dirs(settings, app.name)
    version = store.next_release_version(app)
    paths = AppPaths.of(settings, app.name)
    slug = paths.slug(version)
    if os.path.lexists(slug):       # left by a build that was cut off
        privileged.remove_release(settings, app.name, version)
    log_path = paths.build_log(version)
    build_id = store.start_build(app, sha.decode(), log_path)
    ok = False
    data_back: swarm_deploy.DataBack | None = None
    with secretfile.open_private(log_path, "w") as log:
        capped = buildlog.CappedLog(log, settings.build_log_limit)
        emit_and_log = _tee(_redacting(emit, settings, slug), capped.write)
        try:
            emit_and_log(output.step(f"Building {app.name} from {sha.decode()[:7]}"))
            for warning in buildpack.export_tree(repo, sha, slug):
                emit_and_log(output.alert(warning))
            spec = appsetup.read(repo, sha) if appsetup.is_first_deploy(store, app) else None
            if spec is not None:
                appsetup.before_build(settings, store, app, spec, emit_and_log)
            config = store.config(app)    # (the buildpack's run hands the slug over)
            result = buildpack.run_buildpack(settings, app.name, slug, config,
                                             emit_and_log, cancelled)
            info = release.read_build_info(slug)
            if info is None:
                raise BuildFailed("the buildpack left no .opus/build.json")
            types = {**result.process_types, **release.process_types(info)}
            if spec is not None and spec.formation:
                app = appsetup.apply_formation(store, app, spec, types,
                                               bool(info.get("web_command")), emit_and_log)
            formation = store.formation(app)
            idle = sorted(k for k in set(types) - {"web", "release"}
                          if formation.get(k, (0, False))[0] == 0)
            if idle:
                emit_and_log(output.detail(f"Scaled to 0: {', '.join(idle)} (run one with "
                                           f"`opus ps:scale {app.name} {idle[0]}=1`)"))
            env = release.runtime_env(settings, app, slug, config, info,
                                      sites.app_domains(settings, store, app))
            release.write_env_file(settings, app.name, version, env)
            on_node = None      # a pinned swarm app's runs on its node, by its data
            if store.scheduler(app) == "local":
                # Moving back: the data comes home before the backup and release command.
                data_back = swarm_deploy.bring_data_back(settings, store, app, emit_and_log)
            if types.get("release"):
                backups.before_release(settings, store, app, version, emit_and_log)
                if swarm_deploy.release_on_node(settings, store, app, version, config):
                    on_node = types["release"]
                else:
                    release.run_release_command(settings, app.name, slug, types["release"],
                                                env, emit_and_log, cancelled)
            # After the release command (which could still add to the slug): what the
            # front will serve is copied now, before traffic moves.
            release.copy_static(settings, app.name, version, emit_and_log)
            if cancelled.is_set():
                raise BuildFailed("cancelled: the client disconnected before the switch")
            deployed = _release_live(settings, store, app, version, sha.decode(), config,
                                     branch, log_path, emit_and_log, release_command=on_node,
                                     data_back=data_back)
            ok = True
            took = time.monotonic() - started
            emit_and_log(output.step(f"Released v{version} in {took:.1f} s"))
            url = f"http://{settings.app_domain(app.name)}:{settings.http_port}/"
            emit_and_log(output.detail(url))
            if spec is not None and spec.postdeploy:
                appsetup.run_postdeploy(settings, app, slug, spec.postdeploy, env,
                                        emit_and_log, cancelled)
        except OpusError as exc:
            emit_and_log("")
            emit_and_log(output.alert(exc.message))
            emit_and_log("")
            raise
        finally:
            if not ok and data_back is not None:     # the swarm serves it again
                with contextlib.suppress(OpusError):
                    data_back.undo(emit_and_log)
            capped.close()
            store.finish_build(build_id, ok)
            now = store.get_app(app.name)
            if not ok and (now is None or now.live_version != version):
                # A live slug is never removed, whatever failed after the switch.
                privileged.remove_release(settings, app.name, version)
    return deployed


def _release_live(settings: Settings, store: Store, app: App, version: int, sha: str,
                  config: dict[str, str], branch: BranchMove | None, log_path: Path,
                  emit: Emit, *, release_command: str | None = None,
                  data_back: swarm_deploy.DataBack | None = None) -> Deployed:
    """Pending, switched and recorded live, then the branch moved and released: each
    step durable before the next (a stop anywhere leaves a state recovery can end)."""
    store.begin_release(app, version, sha, f"Deploy {sha[:7]}", config=config,
                        ref=branch.ref if branch else None,
                        previous_sha=branch.previous if branch else None)
    try:
        switched: deploy.Switched | swarm_deploy.Switched
        if store.scheduler(app) == "swarm":      # on the swarm's nodes (swarm/deploy.py)
            switched = swarm_deploy.release_live(
                settings, store, app, version, emit, slug_version=version, config=config,
                record=lambda port: store.release_went_live(app, version, port),
                release_command=release_command)
        else:
            switched = deploy.deploy(settings, store, Supervisor(settings), app, version,
                                     emit, record=lambda port: store.release_went_live(
                                         app, version, port), data_back=data_back)
    except BaseException:
        store.forget_release(app, version)     # (only while it is still pending)
        raise
    deployed = Deployed(version, switched, log_path)
    note = ""
    if branch is not None:
        deployed.branch_moved = branch.move()
        failpoints.reached(settings, "push.ref_moved")
        if not deployed.branch_moved:
            note = f"{branch.ref} had moved meanwhile; it was left as it was"
            emit(output.alert(f"v{version} is live, but {note}"))
    store.end_release(app, version, "released", note)
    return deployed


def rebuild(settings: Settings, store: Store, app: App, live: Release, emit: Emit) -> None:
    """Build the live release's commit again into its slug, which went missing, with its
    config (no release command: that ran when the release was made), and write its
    config snapshot again. The caller holds the app's lock."""
    slug_version = live.slug_version
    slug = AppPaths.of(settings, app.name).slug(slug_version)
    if os.path.lexists(slug):
        privileged.remove_release(settings, app.name, slug_version)
    repo = Repo(str(repo_path(settings, app.name)))
    try:
        for warning in buildpack.export_tree(repo, live.sha.encode(), slug):
            emit(output.alert(warning))
    finally:
        repo.close()
    buildpack.run_buildpack(settings, app.name, slug, live.config, emit, threading.Event())
    info = release.read_build_info(slug)
    if info is None:
        raise BuildFailed("the buildpack left no .opus/build.json")
    env = release.runtime_env(settings, app, slug, live.config, info,
                              sites.app_domains(settings, store, app))
    release.write_env_file(settings, app.name, live.version, env)
    release.copy_static(settings, app.name, slug_version, emit)


def _redacting(emit: Emit, settings: Settings, slug: Path) -> Emit:
    """The client sees no absolute server path (the slug reads as /app) and no terminal
    control sequence a build step printed."""
    pairs = redact.replacements(settings, slug)

    def redacted(line: str) -> None:
        emit(redact.shown(line, pairs))
    return redacted


def _tee(emit: Emit, write: Callable[[str], object]) -> Emit:
    def both(line: str) -> None:
        write(line + "\n")
        emit(line)
    return both


def repo_path(settings: Settings, app: str) -> Path:
    return AppPaths.of(settings, app).repo
