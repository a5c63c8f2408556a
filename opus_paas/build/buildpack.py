"""Runs the buildpack for a push: export the pushed tree, detect, compile, release.

Every line of output is yielded as it arrives, so the SSH side can stream it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from opus_paas import names, privileged
from opus_paas.errors import BuildFailed, ServiceError
from opus_paas.layout import AppPaths
from opus_paas.output import Emit
from opus_paas.paths import shipped
from opus_paas.pythons import provide
from opus_paas.settings import Settings

# Config variables the build never takes from the app (the buildpack filters too).
UNSAFE_BUILD_VARS = re.compile(
    r"PATH|PYTHONHOME|PYTHONPATH|PYTHONSTARTUP|LD_.*|OPUS_(?!AUTO_MIGRATE\Z|DISABLE_OVERRIDES\Z).*")

S_IFGITLINK = 0o160000


@dataclasses.dataclass(frozen=True)
class BuildResult:
    """What a successful build leaves behind in its slug directory."""

    slug: Path
    process_types: dict[str, str]    # from bin/release's default_process_types


# ---- staging the tools the run user needs ---------------------------------
def install_tools(settings: Settings) -> None:
    """Copy the buildpacks and uv into OPUS_HOME/tools, readable by the run user.

    Opus's own installation may sit where the run user cannot read it (pyenv
    under /root is 0700), so builds use these copies.
    """
    tools = settings.tools_dir
    (tools / "bin").mkdir(parents=True, exist_ok=True)
    tools.chmod(0o755)
    (tools / "bin").chmod(0o755)
    staged = tools / "buildpacks"
    fresh = tools / ".buildpacks.new"
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(shipped("buildpacks"), fresh,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _make_world_readable(fresh)
    old = tools / ".buildpacks.old"
    shutil.rmtree(old, ignore_errors=True)
    if staged.exists():
        os.replace(staged, old)
    os.replace(fresh, staged)
    shutil.rmtree(old, ignore_errors=True)
    uv = find_uv()
    target = tools / "bin" / "uv"
    if not target.exists() or target.stat().st_size != uv.stat().st_size:
        tmp = tools / "bin" / ".uv.tmp"
        shutil.copyfile(uv, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, target)


def find_uv() -> Path:
    import sysconfig

    candidates = [Path(sysconfig.get_path("scripts")) / "uv", shutil.which("uv")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    raise BuildFailed("uv is not installed next to Opus; reinstall opus (it depends on uv)")


def _make_world_readable(top: Path) -> None:
    """Directories 0755; files 0644, except the buildpacks' bin/ entry points, 0755
    (a wheel install may have dropped their executable bits)."""
    for root, dirs, files in os.walk(top):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)  # noqa: S103
        executable = os.path.basename(root) == "bin"
        for name in files:
            os.chmod(os.path.join(root, name), 0o755 if executable else 0o644)
    os.chmod(top, 0o755)  # noqa: S103 - the run user must read the buildpacks


# ---- exporting a pushed tree -----------------------------------------------
def _check_entry_name(name: bytes, where: str) -> str:
    text = name.decode("utf-8", "surrogateescape")
    if text in ("", ".", "..") or "/" in text or "\0" in text or text.lower() == ".git":
        raise BuildFailed(f"the pushed tree has an entry named {text!r} in {where or '/'}; "
                          "rename it and push again")
    return text


def _check_symlink(target: str, link_rel: PurePosixPath) -> None:
    """A symlink in the tree may only point inside the tree."""
    if target.startswith("/") or "\0" in target:
        raise BuildFailed(f"symlink {link_rel} points outside the repository ({target}); "
                          "replace it with a relative link or a copy")
    depth = len(link_rel.parent.parts)
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise BuildFailed(f"symlink {link_rel} points outside the repository ({target}); "
                              "replace it with a relative link or a copy")


MAX_LINK_HOPS = 40    # the kernel's own limit (ELOOP) on links followed in one lookup


def resolve_inside(links: Mapping[PurePosixPath, str], link: PurePosixPath) -> None:
    """Follow `link` as the kernel would, through every link of the tree (`links`: each
    link's path to its target), and refuse it if it ever leaves the tree: each link
    checked alone passes `a -> .` and `b -> a/..`, yet b is the tree's parent (pure)."""
    pending = [*link.parent.parts, *PurePosixPath(links[link]).parts]
    at: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not at:
                raise BuildFailed(
                    f"symlink {link} leads outside the repository through other links "
                    f"(it points at {links[link]}); replace it with a link straight to "
                    "its target inside the repository, or a copy")
            at.pop()
            continue
        at.append(part)
        target = links.get(PurePosixPath(*at))
        if target is not None:
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise BuildFailed(f"symlink {link} goes through more than {MAX_LINK_HOPS} "
                                  "links (a loop?); replace it with a plain link or a copy")
            at.pop()
            pending[:0] = PurePosixPath(target).parts


def export_tree(repo: Repo, commit_sha: bytes, dest: Path) -> list[str]:
    """Write the commit's tree into the empty directory `dest`; return warnings."""
    commit = repo[commit_sha]
    if not isinstance(commit, Commit):
        raise BuildFailed("the pushed ref does not point at a commit; push a branch")
    warnings: list[str] = []
    dest.mkdir(parents=True)
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    links: dict[PurePosixPath, str] = {}
    try:
        _export(repo, commit.tree, dest_fd, PurePosixPath(), warnings, links)
        refused: list[BuildFailed] = []
        for link in links:
            try:
                resolve_inside(links, link)
            except BuildFailed as exc:
                refused.append(exc)
                _unlink_at(dest_fd, link)      # no one follows it out, even by mistake
        if refused:
            raise refused[0]
    finally:
        os.close(dest_fd)
    return warnings


def _unlink_at(top_fd: int, path: PurePosixPath) -> None:
    """Remove the link at `path` under `top_fd`, through directories only."""
    fd = os.dup(top_fd)
    try:
        for part in path.parent.parts:
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = sub
        os.unlink(path.name, dir_fd=fd)
    finally:
        os.close(fd)


def _export(repo: Repo, tree_id: bytes, dir_fd: int, rel: PurePosixPath,
            warnings: list[str], links: dict[PurePosixPath, str]) -> None:
    tree = repo[tree_id]
    assert isinstance(tree, Tree)
    for entry in tree.items():
        name = _check_entry_name(entry.path, str(rel))
        mode, sha = entry.mode, entry.sha
        path = rel / name
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            sub_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            try:
                _export(repo, sha, sub_fd, path, warnings, links)
            finally:
                os.close(sub_fd)
        elif mode == S_IFGITLINK:
            warnings.append(f"submodule {path} is not included in the build")
        elif stat.S_ISLNK(mode):
            blob = repo[sha]
            assert isinstance(blob, Blob)
            target = blob.as_raw_string().decode("utf-8", "surrogateescape")
            _check_symlink(target, path)
            os.symlink(target, name, dir_fd=dir_fd)
            links[path] = target
        else:
            blob = repo[sha]
            assert isinstance(blob, Blob)
            file_mode = 0o755 if mode & 0o111 else 0o644
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         file_mode, dir_fd=dir_fd)
            with os.fdopen(fd, "wb") as out:
                for chunk in blob.chunked:
                    out.write(chunk)


# ---- running the buildpack ---------------------------------------------------
def write_env_dir(env_dir: Path, config: Mapping[str, str]) -> None:
    """The buildpack's ENV dir: one file per config variable (unsafe names left out).
    The directory is Opus's (0711), the files the app's once handed over."""
    env_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    for old in env_dir.iterdir():
        old.unlink()
    for key, value in config.items():
        if names.CONFIG_KEY.fullmatch(key) and not UNSAFE_BUILD_VARS.fullmatch(key):
            fd = os.open(env_dir / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o600)
            with os.fdopen(fd, "w") as out:
                out.write(value)


def build_environment(settings: Settings, app_dir: Path) -> dict[str, str]:
    """A clean environment for the buildpack: nothing inherited from Opus; HOME and
    TMPDIR the app's own (no other app's build can see or plant its temporary files)."""
    env = {
        "PATH": f"{settings.tools_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(app_dir / "home"),
        "TMPDIR": str(app_dir / "tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        # Trust the host's CA store, as the rest of the host does.
        "UV_NATIVE_TLS": "1",
        **dict(settings.network_env),
    }
    if not settings.system:   # system mode: each app's own cache (the buildpack's CACHE)
        env["OPUS_PACKAGE_CACHE"] = str(settings.package_cache)
    if settings.python:
        env["OPUS_PYTHON"] = settings.python
    if settings.pythons:
        env["OPUS_PYTHONS"] = settings.pythons
    # The interpreters Opus fetched and the wheels built against them (read-only here).
    env["OPUS_MANAGED_PYTHONS"] = str(settings.managed_pythons_dir)
    env["OPUS_WHEELHOUSE"] = str(settings.wheelhouse_dir)
    return env


def own_environment(settings: Settings) -> dict[str, str]:
    """The build environment for Opus's own work outside any app (fetching an interpreter,
    building mod_wsgi for it): HOME and TMPDIR in the staging directory, Opus's."""
    for name in ("home", "tmp"):
        (settings.staging_dir / name).mkdir(mode=0o700, parents=True, exist_ok=True)
    return build_environment(settings, settings.staging_dir)


def parse_release_output(text: str) -> dict[str, str]:
    """The default_process_types of bin/release's YAML (the small subset buildpacks print)."""
    types: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if not line.strip() or line.strip() == "---":
            continue
        if not line.startswith(" "):
            key, _, rest = line.partition(":")
            inside = key.strip() == "default_process_types" and rest.strip() == ""
            continue
        if inside:
            name, sep, command = line.strip().partition(":")
            if sep and command.strip():
                types[name.strip()] = command.strip()
    return types


def run_buildpack(settings: Settings, app: str, slug: Path,
                  config: Mapping[str, str], emit: Emit,
                  cancelled: threading.Event | None = None) -> BuildResult:
    """Detect, compile and release `slug` as the app's user, emitting output as it
    comes."""
    buildpack = settings.tools_dir / "buildpacks" / "python"
    paths = AppPaths.of(settings, app)
    env = build_environment(settings, paths.dir)
    # The Python the app asks for, fetched if the host lacks it, and mod_wsgi built for
    # it: Opus's work, before the slug is the app's.
    provide.prepare(settings, slug, env, emit, cancelled)
    env_dir = paths.build_env
    write_env_dir(env_dir, config)
    privileged.hand_over(settings, app)      # the slug and the ENV dir, in one request
    bin_dir = buildpack / "bin"
    detected = privileged.run_step(settings, app, [str(bin_dir / "detect"), str(slug)],
                                   cwd=slug, env=env)
    if detected.returncode != 0:
        for line in detected.stdout.splitlines():
            emit(line)
        raise BuildFailed("no buildpack recognised this app; see the messages above")
    compile_argv = [str(bin_dir / "compile"), str(slug), str(paths.cache), str(env_dir)]
    try:
        for line in privileged.stream(settings, app, compile_argv, cwd=slug, env=env,
                                      timeout=settings.build_timeout, cancelled=cancelled):
            emit(line)
    except subprocess.CalledProcessError as exc:
        code = exc.returncode
        how = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
        raise BuildFailed(f"the build failed ({how}); see the messages above") from None
    except ServiceError as exc:
        raise BuildFailed(f"the build was stopped: {exc.message}") from None
    released = privileged.run_step(settings, app, [str(bin_dir / "release"), str(slug)],
                                   cwd=slug, env=env)
    if released.returncode != 0:
        for line in (released.stdout + released.stderr).splitlines():
            emit(line)
        raise BuildFailed("the buildpack's release step failed; see the messages above")
    return BuildResult(slug, parse_release_output(released.stdout))
