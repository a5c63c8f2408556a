"""Is a new instance serving? The app's health check on its port, who listens there, and
what the process's wrapper last wrote."""

from __future__ import annotations

import dataclasses
import http.client
import json
import pwd
import socket
import time
from pathlib import Path

from opus_paas import privileged
from opus_paas.errors import BuildFailed, ServiceError
from opus_paas.ports import listeners
from opus_paas.ports import listening_uids as listening_uids  # (what tests read)
from opus_paas.run import checks, programs
from opus_paas.settings import Settings
from opus_paas.store import Store
from opus_paas.supervisor import Supervisor
from opus_paas.swarm import deploy as swarm_deploy


def check_health(settings: Settings, host: str, port: int, program: str,
                 supervisor: Supervisor, check: checks.Check | None = None,
                 state_file: Path | None = None) -> None:
    """Wait until the app's check passes on the new instance (by default a GET of / with
    the app's Host answering below 500), or raise BuildFailed with what it last saw."""
    check = check or checks.Check()
    timeout = check.timeout if check.timeout is not None else settings.health_timeout
    deadline = time.monotonic() + timeout
    last, failures = "no answer", 0
    while time.monotonic() < deadline:
        state = supervisor.process_state(program)
        if state in ("FATAL", "EXITED", "ABSENT"):
            raise BuildFailed(f"the new web process did not stay up ({state}); "
                              "see `opus logs` for its output")
        died = _died(state_file)
        if died is not None:
            raise BuildFailed(f"the new web process exited (status {died}) before it "
                              "answered; see `opus logs APP --ps web` for its output")
        try:
            if check.disabled:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", check.path, headers={"Host": host})
            response = conn.getresponse()
            body = response.read(300).decode("utf-8", "replace")
            conn.close()
            if response.status < 500:
                return
            excerpt = " ".join(body.split())[:200]
            last = f"HTTP {response.status}" + (f": {excerpt}" if excerpt else "")
            failures += 1
            if check.attempts and failures >= check.attempts:
                raise BuildFailed(f"the new release failed its health check (GET {check.path}) "
                                  f"{failures} times (last: {last}); the old release keeps "
                                  "serving")
        except (OSError, http.client.HTTPException) as exc:
            last = exc.__class__.__name__
        time.sleep(0.2)
    what = "accept a connection" if check.disabled else f"pass its health check (GET {check.path})"
    state = supervisor.process_state(program)
    if state != "RUNNING":    # it never got going: say so, not only "connection refused"
        last += f"; the web process is {state}, see `opus logs APP --ps web`"
    raise BuildFailed(f"the new release did not {what} within {timeout:.0f} s "
                      f"(last: {last}); the old release keeps serving")


def check_listener(settings: Settings, app: str, port: int) -> None:
    """System mode: what answered on the app's port must be the app's own process. Any
    app could bind another's idle port before its deploy and take its traffic."""
    if not settings.system:
        return
    owners = listeners(port)
    try:
        expected = pwd.getpwnam(f"opus-{app}").pw_uid
    except KeyError:
        raise BuildFailed(f"{app} has no user of its own; push again") from None
    if owners != {expected}:
        raise BuildFailed(f"port {port}, where the new release should answer, is held by "
                          "another user's process; the old release keeps serving (ask the "
                          "operator to look at what listens there)")


def read_process_state(path: Path) -> dict[str, object]:
    """What a process's wrapper (stamp or supervise) last wrote; the app's user writes it,
    so it is read without following links and anything odd reads as nothing."""
    try:
        raw = privileged.read_run_user_file(path.parent, path.name, 4096)
        state = json.loads(raw or b"{}")
    except (ServiceError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _died(state_file: Path | None) -> object | None:
    """The exit status of an instance that died, if it did."""
    if state_file is None:
        return None
    state = read_process_state(state_file)
    return state.get("exit_status", "?") if state.get("state") == "crashed" else None


def wait_until_serving(settings: Settings, store: Store, supervisor: Supervisor) -> list[str]:
    """Wait (one health timeout in all) until every app's live instance answers its
    health check, as after a deploy; return a line for each that does not."""
    deadline = time.monotonic() + settings.health_timeout
    report = []
    for app in store.list_apps():
        live = None if app.stopped else programs.live_program(settings, app)
        if live is None or app.live_port is None or store.is_asleep(app):
            continue
        if swarm_deploy.serves(store, app):
            continue
        check = dataclasses.replace(checks.from_json(app.health_check),
                                    timeout=max(1.0, deadline - time.monotonic()))
        try:
            check_health(settings, settings.app_domain(app.name), app.live_port, live.name,
                         supervisor, check)
        except BuildFailed:
            report.append(f"{app.name} is not answering yet (release v{app.live_version}); "
                          f"see `opus logs {app.name}` and `opus ps {app.name}`")
    return report
