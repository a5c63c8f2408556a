"""Ending deploys that stopped half-way, and repairing what a crash can leave behind.

Every finding names an app (or Opus itself), what is wrong, and what ends it. `opus
doctor` prints the findings and changes nothing; `opus up`, the SSH server when it
starts, the scheduler (each minute) and every deploy (for its own app, first) repair
them, each app under its lock: a deploy under way holds that lock, so its records are
never taken for a crash's. The order of record this relies on is in
docs/design-notes.md ("A deploy's order of record").
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from opus_paas import access, locks, output, privileged, repos, secretfile
from opus_paas.build import release
from opus_paas.errors import BuildFailed, OpusError
from opus_paas.front import sites
from opus_paas.layout import AppPaths
from opus_paas.run import deploy, push
from opus_paas.settings import Settings
from opus_paas.store import App, Release, Store
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import recovery as swarm_recovery

log = logging.getLogger("opus.recovery")


@dataclasses.dataclass(frozen=True)
class Finding:
    app: str
    problem: str                              # what is wrong, one line
    fix: str                                  # what ends it ("roll it back")
    repair: Callable[[], str] | None = None   # ends it, says how; None: the operator's

    def line(self) -> str:
        """One line for `opus doctor`: the problem and what ends it."""
        who = "`opus up` will " if self.repair is not None else ""
        return f"{self.app}: {self.problem}; {who}{self.fix}"


def diagnose_app(settings: Settings, store: Store, name: str) -> list[Finding]:
    """What a stop left of `name`'s deploys and files (nothing is changed). The caller
    holds the app's lock, or is only looking."""
    app = store.get_app(name)
    if app is None:
        return []
    found = [*_cut_off_builds(settings, store, app)]
    for rel in store.unfinished_releases(app):
        if rel.state == "switched" and rel.version == app.live_version:
            found.append(_finish(settings, store, app, rel))
        else:
            found.append(_abandon(settings, store, app, rel))
    if not found:   # once the deploys are ended, the live release's own files
        found += _swarm_leftovers(settings, store, app)
        found += _live_files(settings, store, app)
        found += _branch(settings, store, app)
    return found


def recover_app(settings: Settings, store: Store, name: str,
                say: Callable[[str], None] | None = None) -> list[str]:
    """Repair what diagnose_app finds (the caller holds the app's lock), again until
    nothing is left (ending a deploy can show the next finding); returns what was done.
    A repair that fails is logged and reported, and stops nothing else."""
    done: list[str] = []
    failed: set[str] = set()
    for _round in range(4):
        findings = [f for f in diagnose_app(settings, store, name)
                    if f.repair is not None and f.line() not in failed]
        if not findings:
            break
        for finding in findings:
            assert finding.repair is not None
            try:
                outcome = f"{finding.app}: {finding.repair()}"
            except (OpusError, OSError) as exc:
                log.exception("repairing %s failed", finding.line())
                failed.add(finding.line())
                message = exc.message if isinstance(exc, OpusError) else str(exc)
                outcome = f"{finding.app}: could not end it ({finding.problem}): {message}"
            done.append(outcome)
            if say is not None:
                say(outcome)
    if done:
        # What the app runs and where the front sends its traffic follow the records
        # at once (opus up does this for every app once supervisord runs).
        supervisor = Supervisor(settings)
        if supervisor.is_running():
            deploy.reconcile(settings, store, supervisor, only=name)
    return done


def settle(settings: Settings, store: Store, app: App, emit: Callable[[str], None]) -> App:
    """End what a stop left of the app's deploys before a new one (the caller holds its
    lock), and return the app as the database has it then."""
    recover_app(settings, store, app.name, lambda line: emit(output.step(f"Recovered {line}")))
    return access.fresh(store, app)


def recover_all(settings: Settings, store: Store, say: Callable[[str], None] | None = None,
                ) -> list[str]:
    """recover_app for every app whose lock is free (a deploy under way is left alone)."""
    done: list[str] = []
    for app in store.list_apps():
        with locks.app_lock_if_free(settings, app.name) as free:
            if free:
                done += recover_app(settings, store, app.name, say)
    return done


# ---- deploys that stopped half-way ---------------------------------------------------

def _cut_off_builds(settings: Settings, store: Store, app: App) -> list[Finding]:
    found = []
    for build in store.unfinished_builds(app):
        def repair(build_id: int = build.id, log_path: Path = build.log_path) -> str:
            store.finish_build(build_id, False)
            note = ("cut off: Opus stopped during this build, or could not record its end "
                    "(a full disk); nothing of it went live")
            _append_to_log(log_path, note)
            return f"build {build_id} {note}"
        found.append(Finding(app.name, f"build {build.id} never recorded its end",
                             "mark it failed", repair))
    return found


def _abandon(settings: Settings, store: Store, app: App, rel: Release) -> Finding:
    serving = f"v{app.live_version} kept serving" if app.live_version else \
        "nothing was serving"

    def repair() -> str:
        note = f"rolled back: Opus stopped during this deploy; {serving}"
        store.end_release(app, rel.version, "abandoned", note)
        _append_to_log(_build_log(settings, app, rel.version), note)
        slug_in_use = rel.slug_version != rel.version or rel.version == app.live_slug
        if slug_in_use:
            AppPaths.of(settings, app.name).env_file(rel.version).unlink(missing_ok=True)
        else:
            privileged.remove_release(settings, app.name, rel.version)
        live = None if app.live_version is None else store.get_release(app, app.live_version)
        if live is not None and live.domains is not None and \
                tuple(sorted(store.domains(app))) != tuple(sorted(live.domains)):
            store.replace_domains(app, live.domains)
        return f"v{rel.version} {note}"
    return Finding(app.name, f"the deploy of v{rel.version} stopped before traffic was "
                   "recorded on it", f"roll it back ({serving.replace('kept', 'keeps')})",
                   repair)


def _finish(settings: Settings, store: Store, app: App, rel: Release) -> Finding:
    def repair() -> str:
        note = "finished by recovery: Opus stopped after traffic had switched to it"
        if rel.ref is not None and rel.previous_sha is not None:
            moved = repos.move_branch(settings.repos_dir, app.name, rel.ref, rel.previous_sha,
                                       rel.sha)
            if not moved:
                note += f"; {rel.ref} had moved meanwhile and was left as it was"
        store.end_release(app, rel.version, "released", note)
        _append_to_log(_build_log(settings, app, rel.version), note)
        return f"v{rel.version} {note}"
    return Finding(app.name, f"v{rel.version} serves, but its push stopped before "
                   f"{rel.ref or 'its record'} was updated", "finish the push", repair)


def _swarm_leftovers(settings: Settings, store: Store, app: App) -> list[Finding]:
    """A swarm deploy cut short: its services, secret, members, record (swarm/recovery.py)."""
    if not swarm_recovery.involved(settings, store, app):
        return []
    try:
        cleanup = swarm_recovery.plan(settings, store, app)
    except OpusError as exc:
        log.warning("%s: the swarm was not looked at: %s", app.name, exc.message)
        return []
    if not cleanup:
        return []
    serving = f"v{app.live_version} keeps serving" if app.live_version else "nothing serves"

    def repair() -> str:
        swarm_recovery.apply(settings, store, app, cleanup)
        return f"removed what a deploy cut short left: {cleanup.describe()}"
    return [Finding(app.name, f"a deploy cut short left {cleanup.describe()}",
                    f"remove it ({serving})", repair)]


# ---- the live release's own files ----------------------------------------------------

def _live_files(settings: Settings, store: Store, app: App) -> list[Finding]:
    if app.live_version is None:
        return []
    live = store.get_release(app, app.live_version)
    slug_version = app.live_slug or app.live_version
    slug = AppPaths.of(settings, app.name).slug(slug_version)
    try:
        info = release.read_build_info(slug)
    except (BuildFailed, OpusError):
        info = None
    if info is None:
        if live is None:
            return [Finding(app.name, f"the build of v{app.live_version} is gone and no "
                            "record says which commit it was", "push to deploy again")]
        return [Finding(app.name, f"the build of v{app.live_version} (releases/v{slug_version})"
                        " is missing or damaged", f"build it again from {live.sha[:7]}",
                        lambda: _rebuild(settings, store, app, live))]
    found = []
    env_file = AppPaths.of(settings, app.name).env_file(app.live_version)
    if not env_file.exists() and live is not None:
        def write_env() -> str:
            env = release.runtime_env(settings, app, slug, live.config, info,
                                      sites.app_domains(settings, store, app))
            release.write_env_file(settings, app.name, app.live_version or 0, env)
            return f"the config snapshot of v{app.live_version} was written again"
        found.append(Finding(app.name, f"the config snapshot of v{app.live_version} is "
                             "missing", "write it again from the release's record",
                             write_env))
    current = AppPaths.of(settings, app.name).current
    wanted = f"releases/v{slug_version}"
    try:
        pointed: str | None = os.readlink(current)
    except OSError:
        pointed = None
    if pointed != wanted:
        def point() -> str:
            release.point_current(settings, app.name, slug_version)
            return f"current points at {wanted} again"
        found.append(Finding(app.name, f"current points at {pointed or 'nothing'}, not "
                             f"{wanted}", f"point it at {wanted}", point))
    else:
        served = release.static_pointed(settings, app.name)
        if served != f"v{slug_version}":
            def serve_static() -> str:
                privileged.copy_static(settings, app.name, slug_version, live=True)
                return f"the front serves the static files of v{slug_version} again"
            found.append(Finding(app.name, f"the front serves the static files of "
                                 f"{served or 'no release'}, not v{slug_version}'s",
                                 "copy them for the front", serve_static))
    return found


def _rebuild(settings: Settings, store: Store, app: App, live: Release) -> str:
    lines: list[str] = []
    push.rebuild(settings, store, app, live, lines.append)
    return f"v{app.live_version} was built again from {live.sha[:7]}"


def _branch(settings: Settings, store: Store, app: App) -> list[Finding]:
    """The deploy branch must be where the newest pushed release put it: a database
    restored from its backup can be a deploy behind the repository."""
    ref = repos.branch_ref(app.deploy_branch).decode()
    pushed = [r for r in store.list_releases(app) if r.released and r.ref == ref]
    if not pushed:
        return []
    newest = pushed[0]
    try:
        current = repos.branch_head(settings.repos_dir, app.name, ref)
    except OpusError:
        return []
    if current is None or current == newest.sha:
        return []

    def repair() -> str:
        assert current is not None
        repos.move_branch(settings.repos_dir, app.name, ref, current, newest.sha)
        return (f"{app.deploy_branch} points at {newest.sha[:7]} (v{newest.version}) again; "
                f"push {current[:7]} to deploy it")
    return [Finding(app.name, f"{app.deploy_branch} is at {current[:7]}, but the newest "
                    f"release pushed to it is v{newest.version} ({newest.sha[:7]})",
                    f"move {app.deploy_branch} back to v{newest.version}'s commit",
                    repair)]


def _build_log(settings: Settings, app: App, version: int) -> Path:
    return AppPaths.of(settings, app.name).build_log(version)


def _append_to_log(path: Path, note: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with contextlib.suppress(OSError), secretfile.open_private(path, "a") as out:
        out.write(output.step(f"Recovery ({stamp}): {note}\n"))
