"""A release becomes an image in Opus's registry (opus_paas/swarm/images.py): deterministic
layers, hostile slugs refused, the entrypoint's ports and environment; and one scenario
on real nodes: a Django release published to opus-registry runs by digest on a node."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from opus_paas import settings as settings_module
from opus_paas.errors import ServiceError
from opus_paas.layout import AppPaths
from opus_paas.settings import Settings
from opus_paas.store import Store
from opus_paas.swarm import bytecode, entrypoint, images, layers, registry, services
from opus_paas.swarm.entrypoint import EntrypointError
from opus_paas.swarm.layers import Entry, LayerError
from opus_paas.tls import private_ca
from tests.conftest import (
    free_port,
    git,
    make_django_project,
    make_key,
    push_main,
    require_root,
    require_tool,
    set_greeting,
    start_opus,
    stop_opus,
)
from tests.swarm_nodes import DOCKER, DOCKERD, swarm_nodes

ALWAYS = lambda _target: True  # noqa: E731
NEVER = lambda _target: False  # noqa: E731


def _tar_bytes(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    layers.write_tar(entries, out)
    return out.getvalue()


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


# ---- layers: deterministic tars -------------------------------------------------------

def test_the_same_entries_in_any_order_give_the_same_bytes() -> None:
    entries = [Entry("app/b.py", "file", 0o644, b"b"), Entry("app/a.py", "file", 0o755, b"a"),
               Entry("app/link", "link", target="a.py")]
    one, two = _tar_bytes(entries), _tar_bytes(list(reversed(entries)))
    assert one == two
    members = _members(one)
    assert list(members) == ["app", "app/a.py", "app/b.py", "app/link"]   # sorted, parents
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members.values()} == \
        {(0, 0, "", "", 0)}
    assert layers.layer(entries).digest == layers.layer(list(reversed(entries))).digest


def test_a_tree_gives_the_same_layer_whatever_its_mtimes_and_owner_modes(tmp_path: Path) -> None:
    tree = tmp_path / "slug"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "mod.py").write_text("x = 1\n")
    (tree / "run.sh").write_text("#!/bin/sh\n")
    (tree / "run.sh").chmod(0o750)
    (tree / "pkg" / "__pycache__").mkdir()
    (tree / "pkg" / "__pycache__" / "mod.pyc").write_bytes(b"junk")
    first = layers.layer(images.slug_entries(tree))
    os.utime(tree / "pkg" / "mod.py", (1_000_000, 1_000_000))
    (tree / "pkg" / "mod.py").chmod(0o600)
    assert layers.layer(images.slug_entries(tree)).digest == first.digest
    (tree / "pkg" / "mod.py").write_text("x = 2\n")
    assert layers.layer(images.slug_entries(tree)).digest != first.digest
    members = _members(io.BytesIO(__import__("gzip").decompress(first.gzipped)).getvalue())
    assert "app/pkg/__pycache__" not in members and "app/pkg/__pycache__/mod.pyc" not in members
    assert members["app/run.sh"].mode == 0o755 and members["app/pkg/mod.py"].mode == 0o644


def test_setuid_setgid_and_sticky_bits_never_reach_the_image(tmp_path: Path) -> None:
    tree = tmp_path / "slug"
    tree.mkdir()
    for name, mode in (("suid", 0o4755), ("sgid", 0o2711), ("plain", 0o4644)):
        (tree / name).write_bytes(b"x")
        (tree / name).chmod(mode)
    (tree / "sticky").mkdir()
    (tree / "sticky").chmod(0o1777)
    entries = {e.name: e for e in images.slug_entries(tree)}
    assert entries["app/suid"].mode == 0o755
    assert entries["app/sgid"].mode == 0o755
    assert entries["app/plain"].mode == 0o644
    assert entries["app/sticky"].mode == 0o755
    members = _members(_tar_bytes(list(entries.values())))
    assert not any(m.mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
                   for m in members.values())


@pytest.mark.parametrize("target", ["/etc/shadow", "../../../etc/passwd", "../..",
                                    "/app/../etc/passwd", "/root/.ssh/id_ed25519"])
def test_a_symlink_out_of_the_app_is_refused(tmp_path: Path, target: str) -> None:
    tree = tmp_path / "slug"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "evil").symlink_to(target)
    with pytest.raises(LayerError, match="outside the image"):
        images.slug_entries(tree)


def test_symlinks_inside_the_app_are_kept_as_links(tmp_path: Path) -> None:
    tree = tmp_path / "slug"
    (tree / "sub").mkdir(parents=True)
    (tree / "real.txt").write_text("hi")
    (tree / "sub" / "rel").symlink_to("../real.txt")
    (tree / "sub" / "abs").symlink_to("/app/real.txt")
    entries = {e.name: e for e in images.slug_entries(tree)}
    assert (entries["app/sub/rel"].kind, entries["app/sub/rel"].target) == ("link",
                                                                           "../real.txt")
    assert entries["app/sub/abs"].target == "/app/real.txt"


def test_fifos_and_sockets_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo" / "slug"
    fifo.mkdir(parents=True)
    os.mkfifo(fifo / "pipe")
    with pytest.raises(LayerError, match="device file, FIFO or socket"):
        images.slug_entries(fifo)
    sock_tree = tmp_path / "s"
    sock_tree.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_tree / "sock"))
        with pytest.raises(LayerError, match="device file, FIFO or socket"):
            images.slug_entries(sock_tree)


def test_device_files_are_refused(tmp_path: Path) -> None:
    require_root("mknod of a device needs root")
    tree = tmp_path / "slug"
    tree.mkdir()
    os.mknod(tree / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(LayerError, match="device file"):
        images.slug_entries(tree)


def test_a_hard_link_to_a_file_the_app_does_not_own_is_refused(tmp_path: Path) -> None:
    require_root("chown to another user needs root")
    tree = tmp_path / "slug"
    tree.mkdir()
    os.chown(tree, 65534, 65534)
    (tree / "own").write_text("mine")
    os.chown(tree / "own", 65534, 65534)
    os.link(tree / "own", tree / "own-again")       # the app's own file, twice: fine
    assert len(images.slug_entries(tree)) == 3
    secret = tmp_path / "secret"
    secret.write_text("root's")
    os.link(secret, tree / "planted")
    with pytest.raises(LayerError, match="hard link to a file owned by uid 0"):
        images.slug_entries(tree)


def test_odd_file_names_survive_as_they_are(tmp_path: Path) -> None:
    tree = tmp_path / "slug"
    tree.mkdir()
    odd = ["new\nline.txt", "sp ace", "-rf", "ünï.py", "x" * 200,
           os.fsdecode(b"latin1-\xe9")]
    for name in odd:
        (tree / name).write_bytes(b"x")
    members = _members(_tar_bytes(images.slug_entries(tree)))
    assert {f"app/{name}" for name in odd} <= set(members)


def test_link_targets_are_judged_where_they_land() -> None:
    assert layers.link_target_in_image("app/a/b", "../c") == "/app/c"
    assert layers.link_target_in_image("app/a/b", "../../../x") == ""
    assert layers.link_target_in_image("app/b", "/app/../etc") == "/etc"


# ---- the virtualenv layer --------------------------------------------------------------

def _fake_release(tmp_path: Path, python: str) -> tuple[settings_module.Settings, Path]:
    settings = settings_module.load({"OPUS_HOME": str(tmp_path / "home")})
    app_dir = settings.home / "apps" / "shop"
    env = app_dir / "cache" / "envs" / "abc"
    (env / "bin").mkdir(parents=True)
    (env / "lib" / "python3.11" / "site-packages" / "pkg" / "__pycache__").mkdir(parents=True)
    (env / "lib" / "python3.11" / "site-packages" / "pkg" / "__init__.py").write_text("")
    (env / "pyvenv.cfg").write_text(f"home = {Path(python).parent}\nversion_info = 3.11.2\n")
    (env / "bin" / "python").symlink_to(python)
    (env / "bin" / Path(python).name).symlink_to("python")
    (env / "lib64").symlink_to("lib")
    (env / "bin" / "gunicorn").write_text(f"#!{env}/bin/python\nimport sys\n")
    (env / "bin" / "gunicorn").chmod(0o755)
    slug = app_dir / "releases" / "v1"
    (slug / ".opus").mkdir(parents=True)
    (slug / ".opus" / "venv").symlink_to(env)
    (slug / "manage.py").write_text("print('hi')\n")
    return settings, slug


def test_the_virtualenv_is_materialised_at_app_opus_venv(tmp_path: Path) -> None:
    python = str(images.base_python())
    settings, slug = _fake_release(tmp_path, python)
    paths = AppPaths.of(settings, "shop")
    entries = {e.name: e for e in images.venv_entries(paths, slug)}
    venv = "app/.opus/venv"
    assert entries[f"{venv}/bin/python"].target == python
    assert entries[f"{venv}/bin/gunicorn"].data == b"#!/app/.opus/venv/bin/python\nimport sys\n"
    assert entries[f"{venv}/lib64"].target == "lib"
    assert not any("__pycache__" in name for name in entries)
    # The slug layer leaves the venv link out; the two layers together are the app.
    assert "app/.opus/venv" not in {e.name for e in images.slug_entries(slug)}
    # Keyed by contents: the same venv built at another path gives the same layer.
    again = tmp_path / "again"
    settings2, slug2 = _fake_release(again, python)
    entries2 = images.venv_entries(AppPaths.of(settings2, "shop"), slug2)
    assert layers.layer(entries2).digest == layers.layer(list(entries.values())).digest


def test_a_virtualenv_on_a_python_the_base_lacks_is_refused(tmp_path: Path) -> None:
    settings, slug = _fake_release(tmp_path, "/opt/pythons/3.13/bin/python3.13")
    with pytest.raises(LayerError, match="only Debian's"):
        images.venv_entries(AppPaths.of(settings, "shop"), slug)


def test_a_virtualenv_outside_the_app_is_refused(tmp_path: Path) -> None:
    settings, slug = _fake_release(tmp_path, str(images.base_python()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (slug / ".opus" / "venv").unlink()
    (slug / ".opus" / "venv").symlink_to(elsewhere)
    with pytest.raises(LayerError, match="not inside the app's directory"):
        images.venv_entries(AppPaths.of(settings, "shop"), slug)


# ---- byte code ------------------------------------------------------------------------

def test_byte_code_is_unchecked_hash_based_and_reproducible() -> None:
    assert bytecode.pyc_name("app/pkg/mod.py", "cpython-311") == \
        "app/pkg/__pycache__/mod.cpython-311.pyc"
    entries = [Entry("app/pkg/mod.py", "file", 0o644, b"X = 41 + 1\n"),
               Entry("app/broken.py", "file", 0o644, b"def (:\n"),
               Entry("app/data.txt", "file", 0o644, b"not python")]
    python = images.base_python()
    one = bytecode.with_bytecode(entries, python)
    assert one == bytecode.with_bytecode(list(entries), python)
    pycs = {e.name: e.data for e in one if e.name.endswith(".pyc")}
    assert len(pycs) == 1            # the broken file gets none; Python reports it on import
    [(name, pyc)] = pycs.items()
    assert name.startswith("app/pkg/__pycache__/mod.cpython-3")
    # PEP 552: flags 0b01, hash-based and never checked against the source.
    assert int.from_bytes(pyc[4:8], "little") == 0b01
    probe = subprocess.run(
        [str(python), "-I", "-c", "import marshal, sys; "
         "ns = {}; exec(marshal.loads(sys.stdin.buffer.read()[16:]), ns); "
         "print(ns['X'], ns['__builtins__'] is not None)"],
        input=pyc, capture_output=True, check=True)
    assert probe.stdout.split()[0] == b"42"


# ---- image config and manifest ---------------------------------------------------------

def test_config_and_manifest_are_reproducible_and_hold_no_config_vars() -> None:
    built = [layers.layer([Entry("a", "file", 0o644, b"a")]),
             layers.layer([Entry("b", "file", 0o644, b"b")])]
    config = images.image_config("shop", 7, built)
    assert config == images.image_config("shop", 7, built)
    parsed = json.loads(config)
    assert parsed["created"] == images.EPOCH
    assert parsed["rootfs"]["diff_ids"] == [b.diff_id for b in built]
    assert parsed["config"]["Labels"] == {"opus.app": "shop", "opus.release": "7"}
    assert parsed["config"]["Entrypoint"][-1] == "/opus/entrypoint.py"
    assert "SECRET" not in config.decode()
    body = json.loads(images.manifest(config, built))
    assert [item["digest"] for item in body["layers"]] == [b.digest for b in built]


# ---- the entrypoint --------------------------------------------------------------------

def test_slot_ports() -> None:
    assert entrypoint.slot_port({"OPUS_PORT_BASE": "21000", "OPUS_SLOT": "1"}) == 21000
    assert entrypoint.slot_port({"OPUS_PORT_BASE": "21000", "OPUS_SLOT": "3"}) == 21002
    for bad in ({"OPUS_PORT_BASE": "21000"}, {"OPUS_SLOT": "1"},
                {"OPUS_PORT_BASE": "x", "OPUS_SLOT": "1"},
                {"OPUS_PORT_BASE": "21000", "OPUS_SLOT": "0"},
                {"OPUS_PORT_BASE": "65535", "OPUS_SLOT": "2"}):
        with pytest.raises(EntrypointError):
            entrypoint.slot_port(bad)


def test_config_vars_come_from_the_file_and_paths_from_the_image(tmp_path: Path) -> None:
    config_file = tmp_path / "config"
    config_file.write_text(json.dumps({
        "SECRET_KEY": "s3cret", "PATH": "/evil", "LD_PRELOAD": "/evil.so",
        "HOME": "/host/home", "OPUS_APP_ROOT": "/host/apps/shop/releases/v1",
        "PYTHONPATH": "/evil", "OPUS_ALLOWED_HOSTS": "shop.example.com"}))
    config = entrypoint.load_config(str(config_file))
    env = entrypoint.task_environment(config, {"OPUS_SLOT": "2", "OPUS_PORT_BASE": "21000"},
                                      "web", 21001)
    assert env["SECRET_KEY"] == "s3cret"
    assert env["OPUS_ALLOWED_HOSTS"] == "shop.example.com"
    assert env["PATH"] == "/app/.opus/venv/bin:/usr/bin:/bin"
    assert "LD_PRELOAD" not in env and "PYTHONPATH" not in env
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert env["OPUS_APP_ROOT"] == "/app" and env["OPUS_DATA_DIR"] == "/data"
    assert (env["PORT"], env["DYNO"]) == ("21001", "web.2")
    config_file.write_text('["not", "an", "object"]')
    with pytest.raises(EntrypointError):
        entrypoint.load_config(str(config_file))


def test_commands_per_process_type() -> None:
    argv, extra = entrypoint.command("web", {"web_command": None, "process_types": {}},
                                     {}, 21000)
    assert argv[:3] == ["/app/.opus/venv/bin/python", "-m", "gunicorn"]
    assert argv[argv.index("--bind") + 1] == "0.0.0.0:21000"
    assert argv[-1] == "opus_runtime.wsgi:application"
    assert extra == {"PYTHONPATH": "/opus/site"}
    argv, _ = entrypoint.command("web", {}, {"OPUS_WEB_PROCESSES": "3",
                                             "OPUS_WEB_THREADS": "8"}, 21000)
    assert argv[argv.index("--workers") + 1] == "3" and argv[argv.index("--threads") + 1] == "8"
    with pytest.raises(EntrypointError, match="1 to 64"):
        entrypoint.command("web", {}, {"OPUS_WEB_THREADS": "1000"}, 21000)
    info = {"web_command": "uvicorn app:app --port $PORT",
            "process_types": {"worker": "python worker.py"}}
    argv, extra = entrypoint.command("web", info, {}, 21005)
    assert argv == ["/bin/bash", "-c", "uvicorn app:app --port $PORT"]
    assert extra == {"GUNICORN_CMD_ARGS": "--bind=0.0.0.0:21005"}
    _argv, extra = entrypoint.command("web", info, {"GUNICORN_CMD_ARGS": "-b :9"}, 21005)
    assert extra == {"GUNICORN_CMD_ARGS": "-b :9"}
    assert entrypoint.command("worker", info, {}, 21005) == (
        ["/bin/bash", "-c", "python worker.py"], {})
    with pytest.raises(EntrypointError, match="no 'clock' process type"):
        entrypoint.command("clock", info, {}, 21005)


# ---- the registry program --------------------------------------------------------------

def test_the_registry_program_runs_once_an_address_is_set(tmp_path: Path) -> None:
    unset = settings_module.load({"OPUS_HOME": str(tmp_path / "a")})
    assert registry.program(unset) is None
    with pytest.raises(Exception, match="set swarm_registry"):
        registry.address(unset)
    # Another host's address, or a name: a registry the operator runs, not Opus.
    for elsewhere in ("203.0.113.9:5000", "registry.opus.test:5000"):
        assert registry.program(settings_module.load(
            {"OPUS_HOME": str(tmp_path / "c"), "OPUS_SWARM_REGISTRY": elsewhere})) is None
    settings = settings_module.load({"OPUS_HOME": str(tmp_path / "b"),
                                     "OPUS_SWARM_REGISTRY": "127.0.0.1:5000"})
    spec = registry.program(settings)
    assert spec is not None and spec["name"] == "opus-registry"
    config = Path(spec["command"][-1]).read_text()
    assert 'addr: "127.0.0.1:5000"' in config
    assert f'rootdirectory: "{settings.home}/registry/storage"' in config


def test_the_registry_program_stores_blobs_once_and_manifests_by_our_digest(
        tmp_path: Path) -> None:
    with running_registry(tmp_path) as settings:
        address, ca = settings.swarm_registry, private_ca.ca_cert_path(settings)
        client = registry.client_for(settings)
        assert client.context is not None        # TLS, verified with Opus's CA
        # Over TLS only, and only to whoever trusts Opus's CA: another CA is refused.
        foreign = settings_module.load({"OPUS_HOME": str(tmp_path / "other")})
        with pytest.raises(ServiceError, match="is not the one Opus trusts"):
            registry.Client(address, ca=private_ca.ensure(foreign)).has_blob(
                "opus/one", "sha256:" + "0" * 64)
        assert not registry.Client(address).has_blob("opus/one", "sha256:" + "0" * 64)
        # It lets in its one user with Opus's password, nobody else.
        for auth in (None, ("opus", "not the password"), ("admin", registry.password(
                settings))):
            with pytest.raises(ServiceError, match="refused Opus's credentials"):
                registry.Client(address, ca=ca, auth=auth).has_blob("opus/one",
                                                                    "sha256:" + "0" * 64)
        shared = layers.layer([Entry("usr/bin/x", "file", 0o755, b"base")])
        own = layers.layer([Entry("app/a.py", "file", 0o644, b"print(1)")])
        # Sent to the shared repository once; every app's repository mounts it.
        assert client.ensure_blob("opus/one", shared.digest, shared.gzipped,
                                  images.BASE_REPO) is True
        assert client.ensure_blob("opus/two", shared.digest, shared.gzipped,
                                  images.BASE_REPO) is False
        assert client.has_blob("opus/two", shared.digest)
        assert client.ensure_blob("opus/two", own.digest, own.gzipped) is True
        config = images.image_config("two", 1, [shared, own])
        client.ensure_blob("opus/two", "sha256:" + hashlib.sha256(
            config).hexdigest(), config)
        body = images.manifest(config, [shared, own])
        expected = "sha256:" + hashlib.sha256(body).hexdigest()
        assert client.put_manifest("opus/two", "v1", body) == expected
        assert client.get_manifest("opus/two", expected) == body
        assert client.get_manifest("opus/two", "v9") is None
        stored = settings.home / "registry" / "storage" / "docker" / "registry" / "v2"
        assert (stored / "repositories" / "opus" / "two").is_dir()


@contextlib.contextmanager
def running_registry(tmp_path: Path, **env: str) -> Iterator[Settings]:
    """opus-registry as `opus up` runs it (its program's command and config: TLS, its
    user), on a free local port, for a home in `tmp_path`; stopped after. Its settings."""
    require_tool(registry.BINARY)
    address = f"127.0.0.1:{free_port()}"
    settings = settings_module.load({"OPUS_HOME": str(tmp_path / "home"),
                                     "OPUS_SWARM_REGISTRY": address, **env})
    spec = registry.program(settings)
    assert spec is not None
    log = open(tmp_path / "registry.log", "wb")  # noqa: SIM115 (the server keeps it)
    server = subprocess.Popen(spec["command"], cwd=spec["directory"], stdout=log,
                              stderr=subprocess.STDOUT, env=spec["environment"])
    log.close()
    try:
        ca = private_ca.ca_cert_path(settings)
        _until(lambda: _registry_answers(address, ca), 15, "the registry")
        yield settings
    finally:
        server.terminate()
        server.wait(timeout=10)


# ---- one scenario on real nodes ----------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, host: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with _OPENER.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError:
        return 0, ""


def _until(probe, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not probe():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.monotonic() - start


def test_a_django_release_published_to_the_registry_runs_by_digest_on_a_node(
        tmp_path: Path) -> None:
    require_root("the swarm nodes need network and mount namespaces")
    for tool in (DOCKERD, DOCKER, registry.BINARY, "ip", "nsenter", "unshare"):
        require_tool(tool)
    timings: dict[str, float] = {}
    with swarm_nodes(2) as swarm:
        node = swarm.nodes[1]                     # a worker: it must pull from the registry
        address = f"{swarm.gateway}:{free_port()}"
        opus = start_opus(OPUS_SWARM_REGISTRY=address)
        try:
            settings = settings_module.load(opus.env)
            ca = private_ca.ca_cert_path(settings)
            _until(lambda: _registry_answers(address, ca), 15, "opus-registry")
            client = registry.client_for(settings)
            key = make_key(tmp_path, "admin")
            opus.cli("keys:add", "admin", str(key.public))
            project = make_django_project(tmp_path / "hello")
            git(project, "remote", "add", "opus",
                f"ssh://git@127.0.0.1:{opus.ssh_port}/hello.git")
            push_main(project, opus, key)
            store = Store(settings.db_path)
            app = store.get_app("hello")
            assert app is not None
            v1 = store.get_release(app, 1)
            assert v1 is not None

            first: dict[str, float] = {}
            started = time.monotonic()
            ref1 = images.publish(settings, app, v1, first)
            timings["first publish"] = time.monotonic() - started
            assert ref1.startswith(f"{address}/opus/hello@sha256:")
            # The same release gives the same digest (nothing new is sent).
            again: dict[str, float] = {}
            started = time.monotonic()
            assert images.publish(settings, app, v1, again) == ref1
            timings["same release again"] = time.monotonic() - started
            assert again["sent_bytes"] == 0

            set_greeting(project, "Hello from a node")
            push_main(project, opus, key)
            v2 = store.get_release(app, 2)
            assert v2 is not None
            code_only: dict[str, float] = {}
            started = time.monotonic()
            ref2 = images.publish(settings, app, v2, code_only)
            timings["code-only publish"] = time.monotonic() - started
            assert ref2 != ref1
            # Only the slug layer travelled: the base and the virtualenv were reused.
            m1 = json.loads(client.get_manifest("opus/hello", ref1.rsplit("@", 1)[1]) or b"{}")
            m2 = json.loads(client.get_manifest("opus/hello", ref2.rsplit("@", 1)[1]) or b"{}")
            assert [x["digest"] for x in m1["layers"][:2]] == \
                [x["digest"] for x in m2["layers"][:2]]
            assert 0 < code_only["sent_bytes"] == m2["layers"][2]["size"] < 1_000_000
            timings["first publish sent MB"] = first["sent_bytes"] / 1e6

            # Run v2 on the worker, by digest, as the app's uid, read-only, config as a secret.
            uid = services.task_uid(settings, app)
            data = tmp_path / "data"
            shutil.copytree(opus.home / "apps" / "hello" / "data", data)
            subprocess.run(["chown", "-R", f"{uid}:{uid}", str(data)], check=True)
            data.chmod(0o700)
            config = opus.home / "apps" / "hello" / "env" / "v2.json"
            swarm.manager.docker("secret", "create", "hello-v2-config", str(config))
            port_base = free_port()
            # The test nodes never pull for a service (DOCKER_SERVICE_PREFER_OFFLINE_IMAGE,
            # tests/swarm_nodes.py): the node pulls by digest from the registry here.
            # A node that does not trust Opus's CA refuses the registry; one that does
            # pulls (as `opus nodes:add` sets it up).
            creds = tmp_path / "docker-config"
            creds.mkdir(mode=0o700)
            (creds / "config.json").write_bytes(registry.auth_config(
                address, ("opus", registry.password(settings))))
            refused = node.docker("--config", str(creds), "pull", ref2, timeout=120,
                                  check=False)
            assert refused.returncode != 0 and "x509" in refused.stderr, refused.stderr
            swarm.trust_registry(address, ca)
            # …and lets in only Opus's user (Swarm hands its credentials to the nodes).
            anonymous = node.docker("pull", ref2, timeout=120, check=False)
            assert anonymous.returncode != 0 and "basic auth" in anonymous.stderr, \
                anonymous.stderr
            started = time.monotonic()
            node.docker("--config", str(creds), "pull", ref2, timeout=120)
            timings["pull on a node"] = time.monotonic() - started
            swarm.manager.docker(
                "service", "create", "--name", "hello-web-v2", "--detach",
                "--label", "opus.app=hello", "--label", "opus.ptype=web",
                "--label", "opus.release=2", "--network", "host",
                "--constraint", f"node.hostname=={node.hostname}",
                "--user", f"{uid}:{uid}", "--read-only", "--cap-drop", "ALL",
                "--mount", "type=tmpfs,destination=/tmp",
                "--mount", f"type=bind,source={data},destination=/data",
                "--secret", f"source=hello-v2-config,target=opus-config,uid={uid},mode=0400",
                "--env", "OPUS_CONFIG_FILE=/run/secrets/opus-config",
                "--env", "OPUS_SLOT={{.Task.Slot}}", "--env", f"OPUS_PORT_BASE={port_base}",
                "--restart-delay", "1s", "--stop-grace-period", "5s", ref2, "web")
            url = f"http://{node.address}:{port_base}/"
            try:
                timings["service answering"] = _until(
                    lambda: _get(url, "hello.localhost")[0] == 200, 90,
                    f"HTTP 200 from {url}")
            except AssertionError as exc:
                tasks = swarm.manager.docker("service", "ps", "--no-trunc", "hello-web-v2",
                                             check=False)
                logs = swarm.manager.docker("service", "logs", "--raw", "hello-web-v2",
                                            check=False)
                raise AssertionError(f"{exc}\n{tasks.stdout}{tasks.stderr}\n"
                                     f"{logs.stdout[-3000:]}{logs.stderr[-3000:]}") from None
            status, body = _get(url, "hello.localhost")
            assert status == 200 and body.startswith("Hello from a node (visits: "), body
            # ALLOWED_HOSTS came from the config file: another Host is refused.
            assert _get(url, "evil.example")[0] == 400
            # The config vars are in the secret, not in what `docker inspect` shows.
            spec = swarm.manager.docker("service", "inspect", "hello-web-v2").stdout
            secret_key = json.loads(config.read_text())["SECRET_KEY"]
            assert secret_key not in spec and ref2.rsplit("@", 1)[1] in spec
            # The node pulled exactly that digest from the registry.
            pulled = node.docker("image", "ls", "--digests", "--format",
                                 "{{.Repository}}@{{.Digest}}").stdout.split()
            assert ref2 in pulled, pulled
            # The task: the app's uid, nothing writable but /tmp and its data.
            [container] = node.docker("ps", "-q", "--filter",
                                      "label=com.docker.swarm.service.name=hello-web-v2"
                                      ).stdout.split()
            inspect = json.loads(node.docker("inspect", container).stdout)[0]
            assert inspect["Config"]["User"] == f"{uid}:{uid}"
            assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        finally:
            stop_opus(opus)
    print("\ntimings:", {k: round(v, 2) for k, v in timings.items()})


def _registry_answers(address: str, ca: Path) -> bool:
    """Does the registry answer over TLS, verified with `ca`?"""
    context = ssl.create_default_context(cafile=str(ca))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(f"https://{address}/v2/", timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:
        return exc.code == 401           # it answers, and wants its user's password
    except OSError:
        return False
