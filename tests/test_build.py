"""Exporting a pushed tree: hostile trees are refused before anything runs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit, ObjectID, Tree
from dulwich.repo import Repo

from opus_paas.build import buildpack
from opus_paas.errors import BuildFailed


def _commit(repo: Repo, entries: list[tuple[bytes, int, bytes]]) -> bytes:
    """A commit whose root tree has `entries` (name, mode, blob content or subtree id)."""
    tree = Tree()
    for name, mode, content in entries:
        if mode == stat.S_IFDIR:
            tree.add(name, mode, ObjectID(content))
            continue
        blob = Blob.from_string(content)
        repo.object_store.add_object(blob)
        tree.add(name, mode, blob.id)
    return _commit_tree(repo, tree)


def _commit_tree(repo: Repo, tree: Tree) -> bytes:
    repo.object_store.add_object(tree)
    commit = Commit()
    commit.tree = tree.id
    commit.author = commit.committer = b"T <t@example.com>"
    commit.commit_time = commit.author_time = 0
    commit.commit_timezone = commit.author_timezone = 0
    commit.message = b"m"
    repo.object_store.add_object(commit)
    return commit.id


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo.init_bare(str(tmp_path / "r.git"), mkdir=True, default_branch=b"main")


def test_export_writes_files_modes_and_inner_symlinks(repo: Repo, tmp_path: Path) -> None:
    sha = _commit(repo, [(b"a.txt", 0o100644, b"hello"), (b"run.sh", 0o100755, b"#!/bin/sh"),
                         (b"link", 0o120000, b"a.txt")])
    out = tmp_path / "out"
    assert buildpack.export_tree(repo, sha, out) == []
    assert (out / "a.txt").read_text() == "hello"
    assert (out / "run.sh").stat().st_mode & 0o111
    assert (out / "link").readlink() == Path("a.txt")


@pytest.mark.parametrize("name", [b"..", b".", b".git", b".GIT", b"a/b"])
def test_hostile_entry_names_are_refused(repo: Repo, tmp_path: Path, name: bytes) -> None:
    tree = Tree()
    blob = Blob.from_string(b"x")
    repo.object_store.add_object(blob)
    tree.add(name, 0o100644, blob.id)
    repo.object_store.add_object(tree)
    sha = _commit(repo, [(b"sub", stat.S_IFDIR, tree.id)])
    with pytest.raises(BuildFailed, match="rename it"):
        buildpack.export_tree(repo, sha, tmp_path / "out")


@pytest.mark.parametrize("target", [b"/etc/passwd", b"../outside", b"a/../../x"])
def test_symlinks_leaving_the_tree_are_refused(repo: Repo, tmp_path: Path, target: bytes) -> None:
    sha = _commit(repo, [(b"evil", 0o120000, target)])
    with pytest.raises(BuildFailed, match="points outside"):
        buildpack.export_tree(repo, sha, tmp_path / "out")
    assert not (tmp_path / "out" / "evil").exists()


# Each link alone stays inside the tree; followed through the others, each leaves it.
CHAINS = [
    [(b"up", b"."), (b"evil", b"up/..")],                              # the tree's parent
    [(b"d/u", b".."), (b"p1", b"d/u/.."), (b"p2", b"p1/.."), (b"p3", b"p2/.."),
     (b"evil", b"p3/p3/etc/shadow")],                                  # a chain to /etc
    [(b"a", b"b"), (b"b", b"c"), (b"c", b"up/../other-app/data"), (b"up", b".")],
    [(b"loop", b"loop2"), (b"loop2", b"loop")],                        # never ends
]


def _tree_of(repo: Repo, entries: list[tuple[bytes, bytes]]) -> bytes:
    """A commit of symlinks (path with at most one directory level, target)."""
    subtrees: dict[bytes, Tree] = {}
    root = Tree()
    for path, target in entries:
        blob = Blob.from_string(target)
        repo.object_store.add_object(blob)
        if b"/" in path:
            directory, name = path.split(b"/")
            subtrees.setdefault(directory, Tree()).add(name, 0o120000, blob.id)
        else:
            root.add(path, 0o120000, blob.id)
    for directory, tree in subtrees.items():
        repo.object_store.add_object(tree)
        root.add(directory, stat.S_IFDIR, tree.id)
    return _commit_tree(repo, root)


@pytest.mark.parametrize("chain", CHAINS, ids=["dot-up", "to-etc", "long", "loop"])
def test_chained_symlinks_leaving_the_tree_are_refused(
        repo: Repo, tmp_path: Path, chain: list[tuple[bytes, bytes]]) -> None:
    (tmp_path / "other-app" / "data").mkdir(parents=True)
    out = tmp_path / "build" / "out"
    with pytest.raises(BuildFailed, match=r"outside the repository|more than 40 links"):
        buildpack.export_tree(repo, _tree_of(repo, chain), out)
    escaped = [p for p in out.rglob("*") if p.is_symlink()
               and not p.resolve().is_relative_to(out.resolve())]
    assert escaped == []


def test_chained_symlinks_that_stay_inside_are_kept(repo: Repo, tmp_path: Path) -> None:
    chain = [(b"d/u", b".."), (b"here", b"d/u/d"), (b"a", b"b"), (b"b", b"here/u/x"),
             (b"x", b"d/../real")]
    out = tmp_path / "out"
    assert buildpack.export_tree(repo, _tree_of(repo, chain), out) == []
    assert (out / "a").readlink() == Path("b")


def test_submodules_are_skipped_with_a_warning(repo: Repo, tmp_path: Path) -> None:
    tree = Tree()
    tree.add(b"vendor", 0o160000, ObjectID(b"1" * 40))
    blob = Blob.from_string(b"x")
    repo.object_store.add_object(blob)
    tree.add(b"f", 0o100644, blob.id)
    warnings = buildpack.export_tree(repo, _commit_tree(repo, tree), tmp_path / "out")
    assert warnings == ["submodule vendor is not included in the build"]


def test_env_dir_never_takes_unsafe_variables(tmp_path: Path) -> None:
    buildpack.write_env_dir(tmp_path / "env", {
        "SECRET_KEY": "s", "PATH": "/evil", "LD_PRELOAD": "x",
        "OPUS_PYTHON": "/evil", "PYTHONPATH": "/evil",
        "OPUS_AUTO_MIGRATE": "0",
        "OPUS_AUTO_MIGRATEX": "0",
        "OPUS_PACKAGE_CACHE": "/evil"})
    # The app's two switches for the Django steps get through; no other OPUS_ name does.
    assert sorted(p.name for p in (tmp_path / "env").iterdir()) == ["OPUS_AUTO_MIGRATE",
                                                                    "SECRET_KEY"]


def test_release_output_parsing() -> None:
    text = "---\ndefault_process_types:\n  release: python manage.py migrate --noinput\n"
    assert buildpack.parse_release_output(text) == {
        "release": "python manage.py migrate --noinput"}
    assert buildpack.parse_release_output("---\ndefault_process_types: {}\n") == {}
    assert buildpack.parse_release_output("addons: []\n") == {}


def test_ref_update_lines_are_parsed_and_garbage_skipped() -> None:
    from opus_paas.git.hooks import parse_ref_updates

    line = f"{'0' * 40} {'a' * 40} refs/heads/main"
    assert parse_ref_updates(f"{line}\ngarbage\n{'1' * 39} {'a' * 40} x\n") == [
        ("0" * 40, "a" * 40, "refs/heads/main")]


def test_files_the_run_user_could_plant_are_read_without_following_links(tmp_path: Path) -> None:
    import os

    from opus_paas.errors import ServiceError
    from opus_paas.privileged import read_run_user_file

    slug = tmp_path / "slug"
    (slug / ".opus").mkdir(parents=True)
    (slug / ".opus" / "build.json").write_text("{}")
    assert read_run_user_file(slug, ".opus/build.json") == b"{}"
    assert read_run_user_file(slug, "Procfile") is None
    (tmp_path / "secret").write_text("root only")
    (slug / "Procfile").symlink_to(tmp_path / "secret")
    os.mkfifo(slug / "fifo")
    (slug / "big").write_bytes(b"x" * 2048)
    (tmp_path / "elsewhere").mkdir()
    (slug / "dirlink").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "build.json").write_text("{}")
    for hostile in ("Procfile", "fifo", "big", "dirlink/build.json"):
        with pytest.raises(ServiceError):
            read_run_user_file(slug, hostile, limit=1024)


def test_make_dir_refuses_a_planted_symlink(tmp_path: Path) -> None:
    from opus_paas.errors import ServiceError
    from opus_paas.privileged import make_dir

    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "run").symlink_to(victim)
    with pytest.raises(ServiceError, match="not a plain directory"):
        make_dir(tmp_path / "app" / "run", 0o755, own=True)
    with pytest.raises(ServiceError, match="not a plain directory"):
        make_dir(tmp_path / "app" / "run", 0o755, own=False)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o700


def _processes_naming(text: str) -> list[int]:
    """The live processes whose command line holds `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_step_cannot_leave_processes_behind_nor_hang_the_push(tmp_path: Path) -> None:
    import subprocess
    import time

    from opus_paas.errors import ServiceError
    from opus_paas.privileged import stream
    from opus_paas.settings import Settings

    settings = Settings(home=tmp_path, run_user="")
    slug = tmp_path / "apps" / "shop" / "releases" / "v1"
    slug.mkdir(parents=True)
    marker = tmp_path / "survivor"
    # The step starts a background child that keeps its output open, then exits.
    script = f"(sleep 3; touch {marker}) & echo started"
    start = time.monotonic()
    lines = list(stream(settings, "shop", ["/bin/sh", "-c", script], cwd=slug,
                        env={"PATH": "/usr/bin:/bin"}, timeout=60))
    assert lines == ["started"]
    assert time.monotonic() - start < 2.5
    # Until the child is gone (every process that could touch the marker names it), not
    # a fixed wait: had it survived, it would have touched the marker 3 s in.
    deadline = time.monotonic() + 10
    while _processes_naming(str(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not marker.exists()
    # A child that leaves the step's process group (setsid) and keeps its output open
    # does not hold the push either.
    start = time.monotonic()
    lines = list(stream(settings, "shop", ["/bin/sh", "-c", "setsid sleep 30 & echo left"],
                        cwd=slug, env={"PATH": "/usr/bin:/bin"}, timeout=60))
    assert lines == ["left"] and time.monotonic() - start < 5
    subprocess.run(["pkill", "-f", "^sleep 30$"], check=False)
    with pytest.raises(ServiceError, match="longer than 1 s"):
        list(stream(settings, "shop", ["/bin/sleep", "30"], cwd=slug,
                    env={"PATH": "/usr/bin:/bin"}, timeout=1))
    with pytest.raises(subprocess.CalledProcessError):
        list(stream(settings, "shop", ["/bin/false"], cwd=slug, env={"PATH": "/usr/bin:/bin"},
                    timeout=10))
    # Every step is checked by secureops's rules first, in embedded mode too.
    for argv, cwd in ((["sh", "-c", "id"], slug), (["/bin/true"], tmp_path),
                      (["/bin/true"], tmp_path / "apps" / "other" / "releases")):
        with pytest.raises(ServiceError, match="the step was refused"):
            list(stream(settings, "shop", argv, cwd=cwd, env={}, timeout=10))


@pytest.mark.parametrize("hostile", [
    {"process_types": {"web;id": "x"}},
    {"process_types": {"worker": ["not", "a", "string"]}},
    {"process_types": ["web"]},
    {"app_root": "../../etc"},
    {"app_root": "/etc"},
    {"app_root": "src/../.."},
    {"web_command": ["bash", "-c", "id"]},
    {"wsgi_module": 42},
    {"static_root": {"path": "/"}},
])
def test_build_json_from_the_run_user_is_checked_before_use(tmp_path: Path,
                                                           hostile: dict[str, object]) -> None:
    """The build runs as the app's user and writes build.json: a field Opus uses that
    is not what the buildpack writes fails the release, never reaches a path or a
    supervisor program."""
    import json

    from opus_paas.build import release

    (tmp_path / ".opus").mkdir()
    good = {"python": "/p", "python_version": "3.11.2", "app_root": "src",
            "process_types": {"web": "gunicorn x", "worker-1": "python w.py"}}
    (tmp_path / ".opus" / "build.json").write_text(json.dumps(good))
    assert release.read_build_info(tmp_path) == good
    (tmp_path / ".opus" / "build.json").write_text(json.dumps({**good, **hostile}))
    with pytest.raises(BuildFailed, match="push to build again"):
        release.read_build_info(tmp_path)
    (tmp_path / ".opus" / "build.json").write_text("[]")
    with pytest.raises(BuildFailed):
        release.read_build_info(tmp_path)


def settings_slug(slug: Path) -> Path:
    for name in ("config/__init__.py", "config/settings/__init__.py",
                 "config/settings/local.py", "config/settings/production.py",
                 "config/settings/heroku/__init__.py"):
        (slug / name).parent.mkdir(parents=True, exist_ok=True)
        (slug / name).write_text("")
    return slug


def test_a_settings_module_config_var_is_honoured_if_the_release_has_it(tmp_path: Path) -> None:
    """What the release's processes load: the config var's module, checked in the slug
    by Opus itself (a config change makes a release without building); else manage.py's."""
    from opus_paas.build import release

    slug = settings_slug(tmp_path / "slug")
    info: dict[str, object] = {"framework": "django",
                               "settings_module": "config.settings.production",
                               "default_settings_module": "config.settings.local"}
    production = {"DJANGO_SETTINGS_MODULE": "config.settings.production"}
    assert release.settings_module(slug, info, production) == "config.settings.production"
    assert release.settings_module(slug, info, {}) == "config.settings.local"
    assert release.settings_module(slug, info, {"DJANGO_SETTINGS_MODULE": ""}) == \
        "config.settings.local"
    assert release.settings_module(slug, info, {"DJANGO_SETTINGS_MODULE":
                                                "config.settings.heroku"}) == \
        "config.settings.heroku"
    # A build from before the config var was read: its settings_module is manage.py's.
    assert release.settings_module(slug, {"settings_module": "config.settings.local"}, {}) \
        == "config.settings.local"
    with pytest.raises(BuildFailed, match=r"manage\.py names no settings module"):
        release.settings_module(slug, {**info, "default_settings_module": None}, {})
    # Beside manage.py when it is in a subdirectory (app_root).
    nested = settings_slug(tmp_path / "nested" / "src").parent
    assert release.settings_module(nested, {**info, "app_root": "src"}, production) == \
        "config.settings.production"
    with pytest.raises(BuildFailed):
        release.settings_module(nested, info, production)


@pytest.mark.parametrize(("value", "says"), [
    ("config.settings.staging", "names config.settings.staging, which this release does not "
                                "have as a plain file"),
    ("config.settings.linked", "names config.settings.linked"),       # a link in the tree
    ("config.settings.outside", "names config.settings.outside"),     # a link out of it
    ("elsewhere.local", "names elsewhere.local"),                     # through a dir link
    ("config.settings.fifo", "names config.settings.fifo"),
    ("config.settings.dir", "names config.settings.dir"),             # dir.py/, a directory
    ("os.system", "names os.system"),                                 # the stdlib's, not the app's
    ("opus_runtime.settings", "names opus_runtime.settings"),         # nor the platform's
    ("../x", "is not a Python module name ('../x')"),
    ("/etc/passwd", "is not a Python module name"),
    ("config.settings.production\nX=1", "is not a Python module name"),
    ("config..settings", "is not a Python module name"),
    ("config.class", "is not a Python module name"),
    ("config.settings.\u0435", "is not a Python module name"),
    ("x" * 200, "names xxxxx"),
])
def test_a_settings_module_config_var_the_release_lacks_is_refused(
        tmp_path: Path, value: str, says: str) -> None:
    import os

    from opus_paas.build import release

    slug = settings_slug(tmp_path / "slug")
    settings_dir = slug / "config" / "settings"
    (settings_dir / "linked.py").symlink_to("production.py")
    (tmp_path / "secret.py").write_text("SECRET = 1\n")
    (settings_dir / "outside.py").symlink_to(tmp_path / "secret.py")
    (slug / "elsewhere").symlink_to(settings_dir)
    os.mkfifo(settings_dir / "fifo.py")
    (settings_dir / "dir.py").mkdir()
    (slug / "config" / "class.py").write_text("")
    info = {"framework": "django", "default_settings_module": "config.settings.local"}
    with pytest.raises(BuildFailed) as refused:
        release.settings_module(slug, info, {"DJANGO_SETTINGS_MODULE": value}, "shop")
    assert says in refused.value.message, refused.value.message
    assert "opus config:unset shop DJANGO_SETTINGS_MODULE" in refused.value.message
    assert "x" * 100 not in refused.value.message


def test_is_run_user_file_follows_no_link(tmp_path: Path) -> None:
    from opus_paas.privileged import is_run_user_file

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c.py").write_text("")
    (tmp_path / "a" / "b" / "c.py").chmod(0)       # unreadable still counts: nothing is read
    (tmp_path / "link").symlink_to(tmp_path / "a")
    (tmp_path / "a" / "l.py").symlink_to("b/c.py")
    assert is_run_user_file(tmp_path, "a/b/c.py")
    for hostile in ("link/b/c.py", "a/l.py", "a/b", "a/../a/b/c.py", "",
                    "/etc/passwd", "a/b/missing.py"):
        assert not is_run_user_file(tmp_path, hostile), hostile
