"""A release becomes an image in Opus's registry, built without Docker (docs/scale-out.md,
Images).

Three layers, each a deterministic tar (layers.py), so the same release always gives
the same digest and unchanged layers are never sent again:

1. the base: Debian's Python (the host's /usr/bin/python3.X, its stdlib less tests and
   build files, the shared libraries it and bash load), bash for Procfile lines, the CA
   bundle, zoneinfo, gunicorn (from Opus's own environment) and /opus/entrypoint.py;
2. the virtualenv, materialised at /app/.opus/venv (shebangs rewritten, its python a
   link to the base's): keyed by its contents, so a code-only push reuses it;
3. the slug at /app (the built source, .opus/build.json, static files), and /data owned
   by the app's uid (where a pinned app's volume is mounted).

`publish` pushes the blobs and a schema-2 manifest through the registry's HTTP API and
returns `REGISTRY/opus/APP@sha256:…`; the image config and manifest are built here too
(fixed `created`), which is what makes the digest reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gunicorn

from opus_paas import locks
from opus_paas.errors import ServiceError
from opus_paas.layout import AppPaths
from opus_paas.settings import Settings
from opus_paas.store import App
from opus_paas.store.records import Release
from opus_paas.swarm import bytecode, entrypoint, layers, registry, services, volumes
from opus_paas.swarm.layers import (
    Entry,
    Layer,
    LayerError,
    layer,
    tree_entries,
)

EPOCH = "1970-01-01T00:00:00Z"
# Outside opus/<app>, so no app name meets them.
BASE_REPO = "opus-shared/base"
VENV_REPO = "opus-shared/venv"
# Left out of the base: tests, IDLE, Tk, build files, pip's bootstrap, 2to3, pydoc's data.
STDLIB_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "pydoc_data", "site-packages", "dist-packages", "sitecustomize.py")
# Plus what nothing needs at run time (pyc files of skipped modules would be dead weight).
ZONEINFO_SKIP = ("right", "posix", "localtime")
USERS_FILE = ("root:x:0:0:root:/root:/usr/sbin/nologin\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUPS_FILE = "root:x:0:\nnogroup:x:65534:\n"
CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def base_python() -> Path:
    """Debian's interpreter (its real file, e.g. /usr/bin/python3.11)."""
    return Path("/usr/bin/python3").resolve()


def _ldd(binaries: list[Path]) -> list[str]:
    """The shared libraries the binaries load, as paths on this host (one ldd call:
    with several files it heads each one's list with `FILE:`)."""
    result = subprocess.run(["/usr/bin/ldd", *map(str, binaries)], capture_output=True,
                            text=True, check=False, timeout=60)
    found: set[str] = set()
    for line in result.stdout.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1:
            found.add(words[words.index("=>") + 1])
        elif words and not line.endswith(":"):
            found.add(words[0])              # the loader itself (and linux-vdso: dropped)
    return sorted(path for path in found if path.startswith("/"))


def _canonical(path: str) -> str:
    """The path with its directory resolved (/lib64/x → /usr/lib64/x), no leading /."""
    return os.path.join(os.path.realpath(os.path.dirname(path)),
                        os.path.basename(path)).lstrip("/")


def _host_file(path: str, entries: list[Entry]) -> None:
    """The host file at `path` into `entries`, every symlink on its way too."""
    current = path
    for _ in range(16):
        if not os.path.islink(current):
            break
        target = os.readlink(current)
        entries.append(Entry(_canonical(current), "link", target=target))
        current = os.path.join(os.path.dirname(current), target)
    mode = 0o755 if os.access(current, os.X_OK) else 0o644
    entries.append(Entry(_canonical(current), "file", mode, Path(current).read_bytes()))


def base_entries() -> list[Entry]:
    """The base image's files (Debian's Python and what it loads), from this host."""
    python = base_python()
    stdlib = Path("/usr/lib") / python.name
    dynload = sorted((stdlib / "lib-dynload").glob("*.so"))
    entries = [Entry(name, "link", target=f"usr/{name}")
               for name in ("bin", "sbin", "lib", "lib64")]
    entries += [Entry(name, "dir") for name in ("app", "data", "opus", "proc", "sys", "dev",
                                                  "run", "etc", "usr/sbin", "root")]
    entries.append(Entry("tmp", "dir", 0o1777))
    for path in [str(python), "/usr/bin/bash", *_ldd([python, Path("/usr/bin/bash"),
                                                       *dynload])]:
        _host_file(path, entries)
    entries.append(Entry("usr/bin/python3", "link", target=python.name))
    entries.append(Entry("usr/bin/sh", "link", target="bash"))

    def stdlib_skip(name: str) -> bool:
        parts = name.split("/")
        return len(parts) == 4 and (parts[3] in STDLIB_SKIP or parts[3].startswith("config-"))
    entries += tree_entries(stdlib, stdlib.as_posix(),
                            allowed_link=lambda t: t.startswith(f"{stdlib}/"),
                            skip=stdlib_skip, keep_mtime=True)
    zoneinfo = Path("/usr/share/zoneinfo")
    if zoneinfo.is_dir():
        entries += tree_entries(
            zoneinfo, "usr/share/zoneinfo", allowed_link=lambda t: t.startswith(
                "/usr/share/zoneinfo/"),
            skip=lambda n: n.split("/")[3:4] in ([s] for s in ZONEINFO_SKIP))
    for name in ("etc/ssl/certs/ca-certificates.crt", "etc/ssl/openssl.cnf"):
        if Path("/" + name).is_file():
            entries.append(Entry(name, "file", 0o644, Path("/" + name).read_bytes()))
    entries += [Entry("etc/passwd", "file", 0o644, USERS_FILE.encode()),
                Entry("etc/group", "file", 0o644, GROUPS_FILE.encode()),
                Entry("etc/hostname", "file", 0o644, b""),
                Entry("etc/hosts", "file", 0o644, b"127.0.0.1 localhost\n"),
                Entry("etc/resolv.conf", "file", 0o644, b"")]
    entries.append(Entry("opus/entrypoint.py", "file", 0o644,
                         Path(entrypoint.__file__).read_bytes()))
    entries += tree_entries(Path(gunicorn.__file__).parent, "opus/site/gunicorn",
                            allowed_link=lambda _t: False,
                            skip=lambda n: n.endswith("__pycache__"))
    return entries


def venv_dir(paths: AppPaths, slug: Path) -> Path:
    """The slug's virtualenv (its .opus/venv link resolved), which must be the app's."""
    real = (slug / ".opus" / "venv").resolve()
    if not real.is_dir() or not (real == paths.dir or paths.dir in real.parents):
        raise LayerError(f"the release's virtualenv ({slug / '.opus' / 'venv'}) is not "
                         "inside the app's directory; build the release again (git push)")
    return real


def venv_entries(paths: AppPaths, slug: Path) -> list[Entry]:
    """The slug's virtualenv at /app/.opus/venv: its python a link to the base's,
    its scripts' shebangs and activate files naming /app/.opus/venv, no __pycache__."""
    link = slug / ".opus" / "venv"
    real = venv_dir(paths, slug)
    cfg = (real / "pyvenv.cfg").read_text() if (real / "pyvenv.cfg").is_file() else ""
    home = next((line.split("=", 1)[1].strip() for line in cfg.splitlines()
                 if line.split("=", 1)[0].strip() == "home"), "")
    python = base_python()
    if home != str(python.parent) or not (real / "bin" / python.name).exists():
        raise LayerError(f"the app's virtualenv runs on a Python from {home or '?'}, which "
                         f"the nodes' base image lacks: only Debian's {python} runs on "
                         "nodes for now; set the app's Python to it (runtime.txt / "
                         ".python-version) or keep the app on one host (scheduler:set local)")
    dest = "app/.opus/venv"
    hosts = sorted({str(real), str(link)}, key=len, reverse=True)

    def rewrite(name: str, data: bytes) -> bytes:
        if name.startswith(f"{dest}/bin/"):
            for host in hosts:
                data = data.replace(host.encode(), b"/" + dest.encode())
        return data

    def allowed(target: str) -> bool:
        return target.startswith(f"/{dest}/") or target == str(python)

    return tree_entries(real, dest, allowed_link=allowed, rewrite=rewrite,
                        skip=lambda n: n.endswith("/__pycache__"))


def slug_entries(slug: Path) -> list[Entry]:
    """The built source at /app, without the virtualenv's link and byte code."""
    return tree_entries(slug, "app", allowed_link=lambda t: t.startswith("/app/"),
                        skip=lambda n: n == "app/.opus/venv" or n.endswith("/__pycache__"))


def image_config(app: str, version: int, parts: list[Layer]) -> bytes:
    """The image config (what `docker inspect` shows): fixed times, no secrets."""
    config = {
        "architecture": "amd64", "os": "linux", "created": EPOCH,
        "config": {
            "Entrypoint": [str(base_python()), "-I", "/opus/entrypoint.py"],
            "Cmd": ["web"],
            "WorkingDir": entrypoint.APP,
            "Env": [f"PATH={entrypoint.VENV}/bin:/usr/bin:/bin", "LANG=C.UTF-8",
                    "HOME=/tmp", "TMPDIR=/tmp"],
            "Labels": {services.LABEL_APP: app, services.LABEL_RELEASE: str(version)},
        },
        "rootfs": {"type": "layers", "diff_ids": [item.diff_id for item in parts]},
        "history": [{"created": EPOCH, "created_by": f"opus {what}"}
                    for what in ("base", "virtualenv", f"{app} v{version}")][:len(parts)],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def manifest(config: bytes, parts: list[Layer]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": registry.MANIFEST_V2,
        "config": {"mediaType": CONFIG_MEDIA, "size": len(config),
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
        "layers": [{"mediaType": LAYER_MEDIA, "size": item.size, "digest": item.digest}
                   for item in parts],
    }, sort_keys=True, indent=3).encode()


def fingerprint(*paths: Path, extra: bytes = b"") -> str:
    """A cheap stand-in for the contents of `paths` (files and whole trees, walked
    without following links): names, modes, sizes, inodes and mtimes, plus `extra`. A
    package upgrade or a rebuilt virtualenv changes it; reading every byte is what the
    layer cache saves."""
    digest = hashlib.sha256(extra)
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in [dirpath, *(os.path.join(dirpath, f) for f in sorted(filenames))]:
                info = os.lstat(name)
                digest.update(f"{name}\0{info.st_mode}\0{info.st_size}\0{info.st_ino}\0"
                              f"{info.st_mtime_ns}\0{info.st_uid}\n".encode())
        if not os.path.isdir(top) and os.path.lexists(top):
            info = os.lstat(top)
            digest.update(f"{top}\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\n"
                          .encode())
    return digest.hexdigest()


def _code_version() -> bytes:
    """What makes the layers, so a changed Opus never reuses an old layer."""
    return b"".join(Path(module.__file__ or "").read_bytes()
                    for module in (sys.modules[__name__], layers, bytecode, entrypoint))


def cached_layer(settings: Settings, key: str, make: Callable[[], Layer]) -> Layer:
    """The layer `make` builds, kept in OPUS_HOME/images under `key` (a fingerprint of
    its sources): reading, compiling and compressing are a layer's whole cost, and the
    base and an unchanged virtualenv are the same every time."""
    directory = settings.home / "images"
    directory.mkdir(mode=0o700, exist_ok=True)
    blob, meta = directory / f"{key}.tar.gz", directory / f"{key}.json"
    if blob.is_file() and meta.is_file():
        gzipped = blob.read_bytes()
        os.utime(blob)           # used now: kept by the cache's pruning (prune.py)
        return Layer(gzipped, "sha256:" + hashlib.sha256(gzipped).hexdigest(),
                     str(json.loads(meta.read_text())["diff_id"]))
    made = make()
    for path, data in ((blob, made.gzipped), (meta, json.dumps(
            {"diff_id": made.diff_id}).encode())):
        temp = path.with_suffix(".new")
        temp.write_bytes(data)
        temp.replace(path)
    return made


def base_layer(settings: Settings) -> Layer:
    python = base_python()
    key = fingerprint(python, Path("/usr/bin/bash"), Path("/usr/lib") / python.name,
                      Path("/usr/share/zoneinfo"), Path(gunicorn.__file__).parent,
                      Path("/usr/lib/x86_64-linux-gnu"), Path("/etc/ssl/certs"),
                      extra=b"base\0" + _code_version())
    return cached_layer(settings, f"base-{key}", lambda: layer(base_entries()))


def build(settings: Settings, app: App, release: Release) -> tuple[list[Layer], bytes]:
    """The release's layers and image config (nothing sent)."""
    paths = AppPaths.of(settings, app.name)
    slug = paths.slug(release.slug_version or release.version)
    if not (slug / ".opus" / "build.json").is_file():
        raise ServiceError(f"release v{release.version} of {app.name} has no built slug "
                           f"({slug}); build it again with a push")
    python = base_python()
    base = base_layer(settings)
    venv_key = fingerprint(venv_dir(paths, slug), python,
                           extra=b"venv\0" + _code_version())
    venv = cached_layer(settings, f"venv-{venv_key}", lambda: layer(
        bytecode.with_bytecode(venv_entries(paths, slug), python)))
    # /data, the app's own: a pinned app's volume mounted there starts as it (volumes.py).
    code = layer([*bytecode.with_bytecode(slug_entries(slug), python),
                  volumes.data_dir_entry(services.task_uid(settings, app))])
    parts = [base, venv, code]
    return parts, image_config(app.name, release.version, parts)


def publish(settings: Settings, app: App, release: Release,
            timings: dict[str, float] | None = None) -> str:
    """Builds the release's image and pushes it; returns `REGISTRY/opus/APP@sha256:…`.
    Layers the registry holds already (the base, an unchanged virtualenv) are not sent."""
    started = time.monotonic()
    address = registry.address(settings)
    parts, config = build(settings, app, release)
    built = time.monotonic()
    # No garbage collection while blobs are sent before their manifest (prune.py).
    with locks.registry_lock(settings, exclusive=False):
        return _send(settings, address, app, release, parts, config, timings, started, built)


def _send(settings: Settings, address: str, app: App, release: Release, parts: list[Layer],
          config: bytes, timings: dict[str, float] | None, started: float,
          built: float) -> str:
    client = registry.client_for(settings)
    repo = f"opus/{app.name}"
    sent = 0
    for item, shared in zip(parts, (BASE_REPO, VENV_REPO, None), strict=True):
        if client.ensure_blob(repo, item.digest, item.gzipped, shared):
            sent += item.size
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    client.ensure_blob(repo, config_digest, config)
    body = manifest(config, parts)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    stored = client.put_manifest(repo, f"v{release.version}", body)
    if stored and stored != digest:
        raise ServiceError(f"the registry stored {repo}:v{release.version} as {stored}, "
                           f"not {digest}; check that {address} is Opus's registry")
    if timings is not None:
        timings.update(build=built - started, push=time.monotonic() - built,
                       sent_bytes=float(sent))
    return f"{address}/{repo}@{digest}"
