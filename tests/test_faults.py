"""Fault injection: SIGKILL of each of Opus's processes at each phase of a deploy, then
`opus up`. Each case asserts that the app serves the commit its records say, that the
deploy branch, the release records, `current` and supervisor's programs agree, that no
process of the earlier run is left, and that the next push deploys.

The deploy is stopped at an exact phase through Opus's fail points (failpoints.py, on in
this module's own Opus only); build steps and release commands pause in the app's own
code. Real parts throughout: git over SSH, supervisord, the front Apache, mod_wsgi.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opus_paas import settings as settings_module
from tests.conftest import (
    Opus,
    SshKey,
    commit_all,
    git,
    make_key,
    start_opus,
    stop_opus,
    wait_for_deploy,
)

APP = "faulty"
WSGI = '''\
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [open(__file__.replace("wsgi.py", "version.txt"), "rb").read()]
'''
# The release command and bin/pre_compile pause, where the test asks them to, by
# waiting for a file the test removes; each says where it is by writing its pid.
RELEASE = '''\
import os, pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
if pathlib.Path("PAUSE_RELEASE").exists():
    marker.write_text(str(os.getpid()))
    while marker.exists():
        time.sleep(0.05)
'''
PRE_COMPILE = '''\
#!/bin/bash
if [ -e PAUSE_BUILD ]; then
  echo $$ > "{marker}"
  sleep 300
fi
'''


@dataclasses.dataclass
class Faulty:
    """The module's Opus and its one app: a checkout that pushes, and what each commit
    serves."""

    opus: Opus
    key: SshKey
    project: Path
    markers: Path
    served: dict[str, str]       # commit -> the body it serves
    counter: int = 0

    @property
    def settings(self) -> settings_module.Settings:
        return settings_module.load(self.opus.env)

    def commit(self, *, pause: str | None = None) -> str:
        """A new commit that serves a body of its own (and pauses where asked)."""
        self.counter += 1
        body = f"version {self.counter}\n"
        (self.project / "hello" / "version.txt").write_text(body)
        for name in ("PAUSE_RELEASE", "PAUSE_BUILD"):
            (self.project / name).unlink(missing_ok=True)
        if pause is not None:
            (self.project / pause).write_text("")
        commit_all(self.project, body.strip())
        sha = git(self.project, "rev-parse", "HEAD").stdout.strip()
        self.served[sha] = body
        return sha

    def push(self) -> subprocess.Popen[str]:
        return subprocess.Popen(["git", "-C", str(self.project), "push", "-f", "opus", "main"],
                                env=self.key.git_env(self.opus), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def push_and_wait(self) -> str:
        with self.push() as pushing:
            out, _ = pushing.communicate(timeout=300)
        assert pushing.returncode == 0, out
        return out


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    # The app's steps (the run user) write their pids here: outside pytest's 0700 tree.
    markers = Path(tempfile.mkdtemp(prefix="opus-faults-", dir="/tmp"))
    markers.chmod(0o777)
    opus = start_opus(OPUS_FAILPOINTS="1", OPUS_HEALTH_TIMEOUT="20")
    try:
        tmp = tmp_path_factory.mktemp("faults")
        key = make_key(tmp, "faults")
        opus.cli("keys:add", "admin", str(key.public))
        project = tmp / APP
        (project / "hello").mkdir(parents=True)
        (project / "hello" / "wsgi.py").write_text(WSGI)
        (project / "requirements.txt").write_text("six==1.16.0\n")
        (project / "release.py").write_text(RELEASE)
        (project / "Procfile").write_text(f"release: python release.py "
                                          f"{markers / 'release.pid'}\n")
        (project / "bin").mkdir()
        (project / "bin" / "pre_compile").write_text(
            PRE_COMPILE.replace("{marker}", str(markers / "build.pid")))
        (project / "bin" / "pre_compile").chmod(0o755)
        git(project, "init", "-q", "-b", "main")
        git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/{APP}.git")
        state = Faulty(opus, key, project, markers, {})
        state.commit()
        state.push_and_wait()
        yield state
    finally:
        stop_opus(opus)
        shutil.rmtree(markers, ignore_errors=True)


# ---- the processes a case kills -------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, bytes, bytes]]:
    """{pid: (ppid, cmdline, environ)} of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            table[int(entry.name)] = (int(fields[1]), (entry / "cmdline").read_bytes(),
                                      (entry / "environ").read_bytes())
        except (OSError, IndexError):
            continue
    return table


def _marked(home: Path) -> dict[int, tuple[int, bytes, bytes]]:
    """Processes this Opus started (they carry OPUS_INSTANCE=home)."""
    marker = f"OPUS_INSTANCE={home}".encode()
    return {pid: row for pid, row in _proc_table().items() if marker in row[2].split(b"\0")}


def _supervisord_pid(faulty: Faulty) -> int:
    return int((faulty.settings.supervisor_dir / "supervisord.pid").read_text())


def _one(pids: list[int], what: str) -> int:
    assert len(pids) == 1, f"{what}: {pids}"
    return pids[0]


def _master(table: dict[int, tuple[int, bytes, bytes]], needle: bytes) -> int:
    """The process whose command line holds `needle` and whose parent's does not (an
    Apache master, not one of its children)."""
    return _one([pid for pid, (ppid, cmd, _env) in table.items()
                 if needle in cmd and needle not in table.get(ppid, (0, b"", b""))[1]],
                needle.decode())


def _web_port(faulty: Faulty, live: bool) -> int:
    with sqlite3.connect(faulty.opus.home / "opus.db") as db:
        live_port, app_id = db.execute("SELECT live_port, id FROM apps WHERE name = ?",
                                       (APP,)).fetchone()
    base = faulty.settings.app_port_base + 2 * app_id
    return int(live_port if live else ({base, base + 1} - {live_port}).pop())


def victim(faulty: Faulty, name: str, reached_by: int | None) -> list[int]:
    """The pids to SIGKILL for `name`."""
    table = _marked(faulty.opus.home)
    if name == "sshd":
        assert reached_by is not None
        return [reached_by]
    if name == "supervisord":
        return [_supervisord_pid(faulty)]
    if name == "everything":     # a power cut: every process of this Opus at once
        return [_supervisord_pid(faulty), *table]
    if name == "front":
        return [_master(table, str(faulty.settings.front_dir / "httpd.conf").encode())]
    if name == "dashboard":
        return [_master(table, b"web.wsgi:app")]
    if name in ("new-web", "old-web"):
        port = _web_port(faulty, live=name == "old-web")
        needle = f"/run/web-{port}/httpd.conf".encode()
        # (a new instance's Apache may still be on its way: mod_wsgi-express starts it)
        _wait_until(lambda: any(needle in cmd for _pp, cmd, _env in
                                _marked(faulty.opus.home).values()), 20, "the instance")
        return [_master(_marked(faulty.opus.home), needle)]
    raise AssertionError(name)


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_until(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _wait_for(path: Path, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text().strip())
        time.sleep(0.05)
    raise AssertionError(f"nothing reached {path.name} in {seconds:.0f} s")


# ---- what must hold after recovery ---------------------------------------------------

def live_sha(faulty: Faulty) -> str:
    wait_for_deploy(faulty.opus.home, APP)
    with sqlite3.connect(faulty.opus.home / "opus.db") as db:
        (sha,) = db.execute("SELECT releases.sha FROM apps JOIN releases ON releases.app_id ="
                            " apps.id AND releases.version = apps.live_version WHERE "
                            "apps.name = ?", (APP,)).fetchone()
    return str(sha)


def assert_whole(faulty: Faulty) -> str:
    """The app serves its live release's commit; the branch, records, `current` and
    programs agree; nothing of an earlier run is left. Returns the commit served."""
    wait_for_deploy(faulty.opus.home, APP)
    home = faulty.opus.home
    with sqlite3.connect(home / "opus.db") as db:
        app_id, live, slug, port = db.execute(
            "SELECT id, live_version, live_slug, live_port FROM apps WHERE name = ?",
            (APP,)).fetchone()
        states = dict(db.execute("SELECT version, state FROM releases WHERE app_id = ?",
                                 (app_id,)).fetchall())
        pushed = db.execute("SELECT sha FROM releases WHERE app_id = ? AND state = "
                            "'released' AND ref IS NOT NULL ORDER BY version DESC LIMIT 1",
                            (app_id,)).fetchone()[0]
        live_sha = db.execute("SELECT sha FROM releases WHERE app_id = ? AND version = ?",
                              (app_id, live)).fetchone()[0]
    assert states[live] == "released", states
    assert not {v for v, s in states.items() if s in ("pending", "switched")}, states
    branch = git(faulty.project, "ls-remote", "opus", "refs/heads/main",
                 env=faulty.key.git_env(faulty.opus)).stdout.split()[0]
    assert branch == pushed, (branch, pushed)
    assert os.readlink(home / "apps" / APP / "current") == f"releases/v{slug}"
    running = {line.split()[0] for line in faulty.opus.cli("status").stdout.splitlines()[1:]
               if line.split()[1] in ("RUNNING", "STARTING")}
    assert {g for g in running if g.startswith(f"{APP}-web-")} == {f"{APP}-web-v{live}-p{port}"}
    # A program `opus up` (re)started may still be STARTING: its answer, once it has one.
    deadline = time.monotonic() + 20
    while True:
        status, _headers, body = faulty.opus.get(faulty.opus.app_host(APP))
        if status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (status, body) == (200, faulty.served[live_sha])
    # Every process of this Opus runs under today's supervisord.
    marked = _marked(home)
    table = _proc_table()
    root = _supervisord_pid(faulty)
    for pid in marked:
        if pid not in table:
            continue        # it ended between the two reads of /proc (a health check's)
        chain, seen = pid, set()
        while chain not in (0, 1, root) and chain not in seen:
            seen.add(chain)
            chain = table.get(chain, (0, b"", b""))[0]
        assert chain == root, f"{pid} is not under supervisord: {table.get(pid)}"
    # Nothing the app's paused steps started is left.
    assert not [cmd for _pp, cmd, _env in _marked(home).values()
                if b"sleep\x00300" in cmd or b"release.py\x00" + str(faulty.markers).encode()
                in cmd], "a paused step outlived its deploy"
    assert "No problems found" in faulty.opus.cli("doctor").stdout
    return str(live_sha)


@dataclasses.dataclass(frozen=True)
class Case:
    point: str          # a fail point, or "build"/"release" (the app's own steps pause)
    victim: str
    serves: str         # "old" or "new" after recovery ("either": both are consistent)


# Each phase with the deploying SSH server killed, and each other process once.
CASES = [
    Case("push.received", "sshd", "old"),
    Case("build", "build-step", "old"),
    Case("release", "release-step", "old"),
    Case("release", "sshd", "old"),
    Case("deploy.started", "new-web", "either"),   # it may come back and pass its check
    Case("deploy.healthy", "sshd", "old"),
    Case("deploy.healthy", "front", "either"),
    Case("deploy.switched", "sshd", "old"),
    Case("deploy.switched", "supervisord", "old"),
    Case("deploy.switched", "dashboard", "new"),
    Case("deploy.recorded", "sshd", "new"),
    Case("deploy.recorded", "everything", "new"),
    Case("push.ref_moved", "sshd", "new"),
    Case("deploy.draining", "sshd", "new"),
    Case("deploy.draining", "old-web", "new"),
]


def _inject(faulty: Faulty, case: Case) -> Callable[[], None]:
    """Arm the case's point; return what waits for it and kills the victim."""
    settings = faulty.settings
    if case.point in ("build", "release"):
        marker = faulty.markers / f"{case.point}.pid"
        marker.unlink(missing_ok=True)

        def at_step() -> None:
            step = _wait_for(marker)
            if case.victim in ("build-step", "release-step"):
                table = _proc_table()
                pids = [step]
                if case.victim == "build-step":   # the buildpack's compile, above the hook
                    pids = [p for p, (_pp, cmd, _e) in table.items() if b"bin/compile" in cmd]
                _kill(pids)
            else:
                # The deploying server is the step's ancestor holding OPUS_HOME's sshd.
                table = _marked(faulty.opus.home)
                _kill([p for p, (_pp, cmd, _e) in table.items()
                       if b"opus_paas.control.sshd" in cmd and b"opus_paas.guard" not in cmd])
            marker.unlink(missing_ok=True)
        return at_step
    directory = settings.home / "failpoints"
    directory.mkdir(exist_ok=True)
    reached = directory / f"{case.point}.reached"
    reached.unlink(missing_ok=True)
    (directory / "armed").write_text(case.point)

    def at_point() -> None:
        try:
            pid = _wait_for(reached)
            _kill(victim(faulty, case.victim, pid))
            time.sleep(0.3)
        finally:
            reached.unlink(missing_ok=True)      # the deploy goes on, where it still can
    return at_point


@pytest.mark.parametrize("case", CASES, ids=[f"{c.victim}@{c.point}" for c in CASES])
def test_sigkill_at_each_phase_then_up_leaves_one_consistent_state(faulty: Faulty,
                                                                   case: Case) -> None:
    before = live_sha(faulty)        # (the case before this one checked the whole state)
    pause = {"build": "PAUSE_BUILD", "release": "PAUSE_RELEASE"}.get(case.point)
    new = faulty.commit(pause=pause)
    kill = _inject(faulty, case)
    with faulty.push() as pushing:
        kill()
        pushing.communicate(timeout=300)
    if case.victim in ("supervisord", "everything"):
        # Everything Opus started dies with its supervisor (nothing waits for `opus up`).
        _wait_until(lambda: not _marked(faulty.opus.home), 15,
                    "processes outlived supervisord")
    up = faulty.opus.cli("up").stdout
    served = assert_whole(faulty)
    wanted = {"old": {before}, "new": {new}, "either": {before, new}}[case.serves]
    assert served in wanted, up
    if served == new and case.serves == "new" and case.victim != "old-web":
        # What recovery did is in the record (unless the push had finished on its own).
        releases = faulty.opus.cli("releases", APP).stdout
        assert new[:7] in releases
    # The next push deploys.
    faulty.commit()
    faulty.push_and_wait()
    assert_whole(faulty)


def test_the_host_heals_itself_without_opus_up(faulty: Faulty) -> None:
    """The SSH server killed between the switch and its record: supervisor starts it
    again, and it ends the stopped deploy as it starts (no `opus up`)."""
    before = assert_whole(faulty)
    faulty.commit()
    kill = _inject(faulty, Case("deploy.switched", "sshd", "old"))
    with faulty.push() as pushing:
        kill()
        pushing.communicate(timeout=300)
    deadline = time.monotonic() + 30
    while True:
        try:
            assert assert_whole(faulty) == before
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    releases = faulty.opus.cli("releases", APP).stdout
    assert "rolled back: Opus stopped during this deploy" in releases


def test_a_push_returns_once_traffic_has_switched(faulty: Faulty) -> None:
    """The old instance is drained and stopped after the client has its answer, under the
    app's lock: the next deploy waits for it."""
    assert_whole(faulty)
    new = faulty.commit()
    directory = faulty.settings.home / "failpoints"
    reached = directory / "deploy.draining.reached"
    (directory / "armed").write_text("deploy.draining")
    try:
        out = faulty.push_and_wait()           # returns while the old instance still runs
        assert "Released" in out and reached.exists()
        status = faulty.opus.cli("status").stdout
        assert sum(1 for line in status.splitlines() if f"{APP}-web-" in line) == 2
        assert faulty.opus.get(faulty.opus.app_host(APP))[2] == faulty.served[new]
    finally:
        reached.unlink(missing_ok=True)
    assert assert_whole(faulty) == new


def _front_answers(faulty: Faulty) -> bool:
    try:
        return faulty.opus.get("nothing.localhost")[0] == 404
    except OSError:
        return False


def test_up_ends_what_an_earlier_run_left_and_says_so(faulty: Faulty) -> None:
    """An Opus without guards (or an earlier version of it) killed with SIGKILL left its
    front's Apache running, holding the HTTP port: `opus up` ends it first, and says so."""
    assert_whole(faulty)
    home = faulty.opus.home
    _kill([_supervisord_pid(faulty), *_marked(home)])
    _wait_until(lambda: not _marked(home), 15, "a power cut that leaves nothing")
    settings = faulty.settings
    (settings.front_dir / "httpd.pid").unlink(missing_ok=True)   # the stray writes its own
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OPUS_INSTANCE": str(home)}
    stray = subprocess.Popen([settings.apache_bin, "-f", str(settings.front_dir / "httpd.conf"),
                              "-DFOREGROUND"], env=env, start_new_session=True,
                             cwd=settings.front_dir)
    try:
        _wait_until(lambda: _front_answers(faulty), 15, "the stray front")
        up = faulty.opus.cli("up").stdout
        assert "left from an earlier run of Opus" in up and str(stray.pid) in up
        assert stray.wait(timeout=10) is not None
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
    assert_whole(faulty)


def test_doctor_reports_a_damaged_current_link_and_up_repairs_it(faulty: Faulty) -> None:
    assert_whole(faulty)
    current = faulty.opus.home / "apps" / APP / "current"
    current.unlink()
    current.symlink_to("releases/v999")
    before = os.readlink(current)
    doctor = faulty.opus.cli("doctor", check=False)
    assert doctor.returncode == 1
    assert f"{APP}: current points at releases/v999" in doctor.stdout
    assert "`opus up` will point it at" in doctor.stdout
    assert os.readlink(current) == before            # the doctor changed nothing
    faulty.opus.cli("up")
    assert_whole(faulty)


def test_a_deleted_release_directory_is_built_again_from_its_commit(faulty: Faulty) -> None:
    live_sha = assert_whole(faulty)
    with sqlite3.connect(faulty.opus.home / "opus.db") as db:
        slug = db.execute("SELECT live_slug FROM apps WHERE name = ?", (APP,)).fetchone()[0]
    shutil.rmtree(faulty.opus.home / "apps" / APP / "releases" / f"v{slug}")
    doctor = faulty.opus.cli("doctor", check=False).stdout
    assert f"the build of v{slug}" in doctor and f"build it again from {live_sha[:7]}" in doctor
    up = faulty.opus.cli("up").stdout
    assert f"v{slug} was built again from {live_sha[:7]}" in up
    assert (faulty.opus.home / "apps" / APP / "releases" / f"v{slug}" / "hello").is_dir()
    assert assert_whole(faulty) == live_sha


def test_a_truncated_database_is_restored_from_its_last_good_copy(faulty: Faulty) -> None:
    live_sha = assert_whole(faulty)
    db = faulty.opus.home / "opus.db"
    os.truncate(db, db.stat().st_size // 2)
    doctor = faulty.opus.cli("doctor", check=False)
    assert doctor.returncode == 1 and "opus.db is damaged" in doctor.stdout
    up = faulty.opus.cli("up").stdout
    assert "restored from its copy of" in up
    assert list(faulty.opus.home.glob("opus.db.damaged-*"))       # kept for a post-mortem
    assert assert_whole(faulty) == live_sha


@pytest.fixture()
def small_disk() -> Iterator[Path]:
    """A 300 MB tmpfs of its own (root: the tests run as root under CI)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a small disk needs root")
        pytest.skip("mounting a small disk needs root")
    mount = Path(tempfile.mkdtemp(prefix="opus-disk-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m,mode=0755", "opus-test-disk",
                    str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def test_a_full_disk_rejects_the_push_cleanly_and_the_app_keeps_serving(
        small_disk: Path, tmp_path: Path) -> None:
    opus = start_opus(under=small_disk)
    try:
        key = make_key(tmp_path, "disk")
        opus.cli("keys:add", "admin", str(key.public))
        project = tmp_path / "full"
        (project / "hello").mkdir(parents=True)
        (project / "hello" / "wsgi.py").write_text(WSGI)
        (project / "hello" / "version.txt").write_text("before\n")
        (project / "requirements.txt").write_text("six==1.16.0\n")
        git(project, "init", "-q", "-b", "main")
        git(project, "remote", "add", "opus", f"ssh://git@127.0.0.1:{opus.ssh_port}/full.git")
        commit_all(project, "before")
        env = key.git_env(opus)
        assert git(project, "push", "opus", "main", env=env, check=False).returncode == 0
        # Fill the disk but for 2 MB: room for the pack, not for the build's copy of it.
        free = os.statvfs(small_disk)
        filler = small_disk / "filler"
        subprocess.run(["fallocate", "-l", str(free.f_bavail * free.f_frsize - (2 << 20)),
                        str(filler)], check=True)
        (project / "hello" / "version.txt").write_text("after\n")
        (project / "blob.bin").write_bytes(os.urandom(1536 << 10))
        commit_all(project, "after")
        pushed = git(project, "push", "opus", "main", env=env, check=False)
        assert pushed.returncode != 0
        assert "disk that holds Opus's data is full" in pushed.stderr, pushed.stderr
        assert "internal error" not in pushed.stderr
        assert opus.get(opus.app_host("full"))[2] == "before\n"
        filler.unlink()
        assert git(project, "push", "opus", "main", env=env, check=False).returncode == 0
        wait_for_deploy(opus.home, "full")
        assert opus.get(opus.app_host("full"))[2] == "after\n"
        assert "No problems found" in opus.cli("doctor").stdout
    finally:
        stop_opus(opus)
