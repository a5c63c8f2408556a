"""The parts of a pinned app's data on its node that need no node (docs/scale-out.md,
Pinned data): the archives that move data/ (real tar streams through the very scripts
the nodes and this host run, with hostile archives), the volume and one-off task in
`docker service create` (hostile values refused), the entrypoint's `--run`, the task
outcome read from `docker inspect`, and the store's record of where the data is."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from opus_paas.errors import InvalidName, UsageError
from opus_paas.store import App, Store, SwarmNode, SwarmRelease
from opus_paas.swarm import entrypoint, layers, oneoff, pinning, services, volumes

PYTHON = "/usr/bin/python3"


def _script(script: str, cwd: Path, data: bytes = b"",
            args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    if script == volumes.PACK and not args:
        args = ("pack", str(volumes.MAX_BYTES))
    return subprocess.run([PYTHON, "-I", "-c", script, *args], cwd=cwd, input=data,
                          capture_output=True, timeout=60, check=False)


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o640
    return info


def test_data_moves_as_plain_files_and_directories_and_replaces_what_was_there(
        tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "media" / "2026").mkdir(parents=True)
    (source / "db.sqlite3").write_bytes(bytes(range(256)) * 1000)
    (source / "media" / "2026" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (source / "media" / "2026" / "cat.jpg").chmod(0o640)
    (source / "empty").mkdir()
    (source / "link").symlink_to("/etc/passwd")
    os.mkfifo(source / "fifo")
    packed = _script(volumes.PACK, source)
    assert packed.returncode == 0, packed.stderr
    said = packed.stderr.decode()
    assert "skipped fifo: not a directory or a regular file" in said
    assert "skipped link: not a directory or a regular file" in said
    with tarfile.open(fileobj=io.BytesIO(packed.stdout)) as archive:
        names = archive.getnames()
    assert names == ["db.sqlite3", "empty", "media", "media/2026", "media/2026/cat.jpg"]
    # The same tree packs to the same bytes.
    assert _script(volumes.PACK, source).stdout == packed.stdout
    # Its size is known before anything is read, and a tree over the limit packs nothing.
    size = _script(volumes.PACK, source, args=("size",))
    assert int(size.stdout) == 256 * 1000 + len(b"\xff\xd8 a cat")
    over = _script(volumes.PACK, source, args=("pack", "1000"))
    assert (over.returncode, over.stdout) == (3, b"")

    target.mkdir()
    (target / "stale.txt").write_text("from an earlier move")
    (target / "old").mkdir()
    (target / "old" / "x").write_text("x")
    unpacked = _script(volumes.UNPACK, target, packed.stdout)
    assert unpacked.returncode == 0, unpacked.stderr
    assert sorted(p.name for p in target.iterdir()) == ["db.sqlite3", "empty", "media"]
    assert (target / "db.sqlite3").read_bytes() == bytes(range(256)) * 1000
    cat = target / "media" / "2026" / "cat.jpg"
    assert cat.read_bytes() == b"\xff\xd8 a cat" and cat.stat().st_mode & 0o777 == 0o640
    # An empty data/ moves as nothing, and empties the other side.
    empty = tmp_path / "none"
    empty.mkdir()
    assert _script(volumes.PACK, empty).stdout == _script(volumes.PACK, empty).stdout
    assert _script(volumes.UNPACK, target, b"").returncode == 0
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("member", [
    _member("../escape"),
    _member("/etc/cron.d/evil"),
    _member("media/../../escape"),
    _member("a//b"),
    _member("link", tarfile.SYMTYPE, "/etc/passwd"),
    _member("hard", tarfile.LNKTYPE, "db.sqlite3"),
    _member("dev", tarfile.CHRTYPE),
    _member("fifo", tarfile.FIFOTYPE),
], ids=["dotdot", "absolute", "nested-dotdot", "empty-part", "symlink", "hardlink", "device",
        "fifo"])
def test_unpacking_refuses_hostile_members_and_changes_nothing(
        tmp_path: Path, member: tarfile.TarInfo) -> None:
    target = tmp_path / "data" / "inner"
    target.mkdir(parents=True)
    (target / "kept.txt").write_text("what was there")
    archive = _tar((_member("db.sqlite3"), b"ok"), (member, b"evil"))
    result = _script(volumes.UNPACK, target, archive)
    assert result.returncode != 0
    assert b"refused" in result.stderr and b"not a plain directory or file" in result.stderr
    assert not (tmp_path / "escape").exists() and not (tmp_path / "data" / "escape").exists()
    # Checked before anything is emptied or written: what was there stays.
    assert sorted(p.name for p in target.iterdir()) == ["kept.txt"]
    assert (target / "kept.txt").read_text() == "what was there"


def test_unpacking_refuses_a_sparse_member(tmp_path: Path) -> None:
    source = tmp_path / "sparse.tar"
    holes = tmp_path / "holes"
    with open(holes, "wb") as file:
        file.truncate(1 << 20)
        file.write(b"end")
    made = subprocess.run(["tar", "--sparse", "--format=gnu", "-cf", str(source), "-C",
                           str(tmp_path), "holes"], capture_output=True, check=False)
    assert made.returncode == 0, made.stderr
    target = tmp_path / "target"
    target.mkdir()
    result = _script(volumes.UNPACK, target, source.read_bytes())
    assert result.returncode != 0 and b"refused 'holes'" in result.stderr
    assert list(target.iterdir()) == []


def test_the_node_side_runs_in_the_apps_volume_as_its_uid_with_nothing_else() -> None:
    image = "10.77.1.1:5000/opus/shop@sha256:" + "a" * 64
    argv = volumes.node_argv(image, 30007, services.volume_name("shop"), volumes.UNPACK)
    assert argv[:3] == ["/usr/bin/docker", "run", "--rm"]
    for flag in (["--network", "none"], ["--read-only"], ["--cap-drop", "ALL"],
                 ["--security-opt", "no-new-privileges"], ["--user", "30007:30007"],
                 ["--mount", "type=volume,source=opus-data-shop,destination=/data"],
                 ["--workdir", "/data"], ["--entrypoint", "/usr/bin/python3"]):
        at = argv.index(flag[0])
        assert argv[at:at + len(flag)] == flag, flag
    assert argv[argv.index(image):] == [image, "-I", "-c", volumes.UNPACK]
    for image_, uid, volume in ((image + " --privileged", 30007, "opus-data-shop"),
                                ("--privileged", 30007, "opus-data-shop"),
                                (image, 0, "opus-data-shop"),
                                (image, 30007, "/etc:/data")):
        with pytest.raises(UsageError):
            volumes.node_argv(image_, uid, volume, volumes.PACK)
    # The image's /data starts every new volume as the app's own.
    entry = volumes.data_dir_entry(30007)
    out = io.BytesIO()
    layers.write_tar([entry], out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        [info] = archive.getmembers()
    assert (info.name, info.uid, info.gid, info.mode, info.isdir()) == \
        ("data", 30007, 30007, 0o700, True)


def _spec(**changes: object) -> services.ServiceSpec:
    fields: dict[str, object] = dict(
        name="shop-web-v3", image="10.77.1.1:5000/opus/shop@sha256:" + "b" * 64, app="shop",
        ptype="web", version=3, uid=30007, replicas=1, port_base=21000,
        secret="shop-env-v3", constraints=(pinning.placement("node1"),),
        volume="opus-data-shop")
    fields.update(changes)
    return services.ServiceSpec(**fields)  # type: ignore[arg-type]


def test_a_pinned_service_mounts_its_own_volume_and_the_release_command_is_a_job() -> None:
    argv = services.create_argv(_spec())
    at = argv.index("type=volume,source=opus-data-shop,destination=/data")
    assert argv[at - 1] == "--mount"
    assert "OPUS_DATA_DIR=/data" in argv and "--replicas" in argv
    job = oneoff.release_spec(_spec(), "python manage.py migrate --noinput")
    assert (job.name, job.ptype, job.job, job.volume, job.secret) == \
        ("shop-release-v3", "release", True, "opus-data-shop", "shop-env-v3")
    job_argv = services.create_argv(job)
    mode = job_argv.index("--mode")
    assert job_argv[mode:mode + 4] == ["--mode", "replicated-job", "--restart-condition",
                                       "none"]
    assert "--replicas" not in job_argv and "--no-healthcheck" in job_argv
    assert "node.labels.opus.node==node1" in job_argv
    # The command is one argument after the entrypoint's --run: no shell on the way.
    assert job_argv[-3:] == [job.image, "--run", "python manage.py migrate --noinput"]


@pytest.mark.parametrize("volume", ["opus-data-other", "opus-data-shop,readonly=false",
                                    "/var/lib/docker", "opus-data-shop:/etc", ""])
def test_a_service_never_mounts_another_apps_volume_or_a_path(volume: str) -> None:
    with pytest.raises(UsageError, match="is not shop's own data volume"):
        services.create_argv(_spec(volume=volume))


def test_a_job_runs_once() -> None:
    with pytest.raises(UsageError, match="runs once"):
        services.create_argv(_spec(job=True, replicas=2))


@pytest.mark.parametrize("name", ["../x", "Shop", "a" * 40, "x;rm", ""])
def test_volume_names_come_from_valid_app_names_only(name: str) -> None:
    with pytest.raises(InvalidName):
        services.volume_name(name)


def test_the_entrypoint_runs_a_one_off_command_with_the_tasks_environment(
        tmp_path: Path) -> None:
    env = {"OPUS_PORT_BASE": "21000"}      # a job's task may have no slot
    assert entrypoint.slot_port({**env, "OPUS_SLOT": "1"}) == 21000
    with pytest.raises(entrypoint.EntrypointError):
        entrypoint.slot_port({**env, "OPUS_SLOT": "0"})
    task = entrypoint.task_environment({"SECRET_KEY": "k", "PATH": "/evil"}, env, "release",
                                       21000)
    assert task["DYNO"] == "release.1" and task["PATH"].startswith("/app/.opus/venv/bin")
    assert task["OPUS_DATA_DIR"] == "/data" and task["SECRET_KEY"] == "k"
    # Too many words is a usage error, before anything is read or run.
    slotted = {**env, "OPUS_SLOT": "1"}
    for argv in (["web", "extra"], [entrypoint.RUN, "a", "b"]):
        with contextlib.redirect_stderr(io.StringIO()) as said:
            assert entrypoint.main(argv, slotted) == 2
        assert "usage: entrypoint.py [PROCESS_TYPE] | --run COMMAND" in said.getvalue()


def test_a_tasks_outcome_from_docker_inspect() -> None:
    assert oneoff.outcome({"Status": {"State": "complete", "ContainerStatus":
                                      {"ExitCode": 0}}}) == ("complete", 0, "")
    assert oneoff.outcome({"Status": {"State": "failed", "Err": "task: non-zero exit (3)",
                                      "ContainerStatus": {"ExitCode": 3}}}) == \
        ("failed", 3, "task: non-zero exit (3)")
    assert oneoff.outcome({"Status": {"State": "rejected", "Err": "No such image"}}) == \
        ("rejected", None, "No such image")
    assert oneoff.outcome({}) == ("", None, "")
    assert oneoff.outcome({"Status": "garbage"}) == ("", None, "")


def test_the_store_knows_where_each_apps_data_is_and_pins_it_there(tmp_path: Path) -> None:
    store = Store(tmp_path / "opus.db")
    store.init()
    owner = store.create_user("ann", "admin")
    shop, blog = store.create_app("shop", owner, {}), store.create_app("blog", owner, {})
    store.add_node(SwarmNode("node2", "10.0.0.2", 22, "x" * 25, time.time()))
    store.add_node(SwarmNode("node1", "10.0.0.1", 22, "y" * 25, time.time()))

    def live_on_swarm(app: App) -> App:
        store.begin_release(app, 1, "a" * 40, "Deploy")
        store.release_went_live(app, 1, 21000)
        store.add_swarm_release(app, SwarmRelease(app.name, 1, "r/opus/x@sha256:" + "c" * 64,
                                                  0, (f"{app.name}-web-v1",), time.time()))
        return store.get_app(app.name) or app

    assert volumes.data_node(store, shop) is None
    assert pinning.pinned_node_of(store, shop) == "node1"     # the first by name
    # A record whose app does not run on the swarm is a move cut short: stale, it goes.
    store.set_swarm_data_node(shop, "node2")
    assert store.swarm_data_node(shop) == "node2"
    assert volumes.data_node(store, shop) is None and store.swarm_data_node(shop) is None
    shop, blog = live_on_swarm(shop), live_on_swarm(blog)
    store.set_swarm_data_node(shop, "node2")
    store.set_swarm_data_node(blog, "node2")
    assert volumes.data_node(store, shop) == "node2"
    assert pinning.pinned_node_of(store, shop) == "node2"     # where its data is
    assert volumes.apps_with_data_on(store, "node2") == ["blog", "shop"]
    assert volumes.apps_with_data_on(store, "node1") == []
    store.set_swarm_data_node(shop, None)
    assert store.swarm_data_node(shop) is None
    assert volumes.apps_with_data_on(store, "node2") == ["blog"]
    # Back here (its swarm release has no services left): the record is stale.
    store.add_swarm_release(blog, dataclasses.replace(store.swarm_releases(blog)[0],
                                                      services=()))
    assert volumes.apps_with_data_on(store, "node2") == []
    store.set_swarm_data_node(blog, "node2")
    store.delete_app(blog)
    assert store.apps_with_data_on("node2") == []
