"""One-off tasks on the swarm: a pinned app's release command runs on its node, next to
its data (docs/scale-out.md, Pinned data).

The task is a replicated job (`--mode replicated-job`, run once, never restarted) of the
release's image, named `<app>-release-v<N>` and labelled as the release's services are
(so recovery finds one a crash left), as the app's uid with the release's config-vars
secret, its data volume at /data and the node's placement constraint. Opus waits for it
to end, prints its output, and removes it; a non-zero exit rejects the release.
"""

from __future__ import annotations

import time

from opus_paas import output
from opus_paas.errors import BuildFailed, ServiceError
from opus_paas.output import Emit
from opus_paas.swarm import entrypoint, follow, nodes, services

POLL = 0.5
SHOWN_LINES = 2000


def release_spec(spec: services.ServiceSpec, command: str) -> services.ServiceSpec:
    """The one-off task of `command` (the Procfile's `release:`), from the spec of the
    release's web service: same image, uid, secret, CA, volume and node; no health
    check, no port served, one run."""
    return services.ServiceSpec(
        name=services.service_name(spec.app, "release", spec.version), image=spec.image,
        app=spec.app, ptype="release", version=spec.version, uid=spec.uid, replicas=1,
        port_base=spec.port_base, secret=spec.secret, ca_config=spec.ca_config,
        limits=spec.limits, constraints=spec.constraints, volume=spec.volume, job=True,
        args=(entrypoint.RUN, command))


def outcome(task: dict[str, object]) -> tuple[str, int | None, str]:
    """(state, exit code, error) of a task as `docker inspect` gives it (pure)."""
    status = task.get("Status")
    status = status if isinstance(status, dict) else {}
    container = status.get("ContainerStatus")
    code = container.get("ExitCode") if isinstance(container, dict) else None
    return (str(status.get("State", "")), code if isinstance(code, int) else None,
            str(status.get("Err") or ""))


def run(mgr: nodes.Manager, spec: services.ServiceSpec, command: str, timeout: float,
        emit: Emit) -> None:
    """Runs the one-off to its end and prints its output; BuildFailed unless it exits 0.
    The service goes in any case (the secret is the caller's)."""
    job = release_spec(spec, command)
    argv = services.create_argv(job)            # checked before any change
    emit(output.step(f"Running release command on the swarm: {command}"))
    mgr(*argv)
    try:
        state, code, error = _wait(mgr, job.name, timeout)
        _show_logs(mgr, job.name, emit)
    finally:
        _remove(mgr, job.name, emit)
    if state != "complete" or code not in (0, None):
        how = f"exit status {code}" if code is not None else (error or state)
        raise BuildFailed(f"the release command failed on the swarm ({how}); fix it, or "
                          "change `release:` in your Procfile")


def _show_logs(mgr: nodes.Manager, name: str, emit: Emit) -> None:
    """The task's output, its last SHOWN_LINES lines (the logs failing is said, never a
    reason to reject a release that ran)."""
    try:
        logs = mgr.run("service", "logs", "--raw", "--no-trunc", name, timeout=60)
    except ServiceError as exc:
        emit(output.alert(f"the release command's output could not be read ({exc.message})"))
        return
    lines = (logs.stdout + logs.stderr).splitlines()
    if len(lines) > SHOWN_LINES:
        emit(output.detail(f"… {len(lines) - SHOWN_LINES} lines before these"))
    for line in lines[-SHOWN_LINES:]:
        emit(output.detail(line))


def _remove(mgr: nodes.Manager, name: str, emit: Emit) -> None:
    for _ in range(3):
        try:
            result = mgr.run("service", "rm", name)
        except ServiceError:
            continue
        if result.returncode == 0 or "not found" in result.stderr:
            return
        time.sleep(1)
    emit(output.alert(f"the one-off service {name} could not be removed; remove it with "
                      f"`docker service rm {name}` on the manager"))


def _wait(mgr: nodes.Manager, name: str, timeout: float) -> tuple[str, int | None, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ids = mgr("service", "ps", "--no-trunc", "-q", name).split()
        except ServiceError:      # the manager busy for a moment: ask again
            ids = []
        if ids:
            try:
                found = follow.inspect_tasks(mgr, ids)
            except ServiceError:
                found = []
            ended = [outcome(t) for t in found
                     if isinstance(t, dict) and outcome(t)[0] in follow.ENDED]
            if ended:
                return ended[-1]
        if time.monotonic() > deadline:
            raise BuildFailed(f"the release command did not end on the swarm within "
                              f"{timeout:.0f} s and was stopped")
        time.sleep(POLL)
