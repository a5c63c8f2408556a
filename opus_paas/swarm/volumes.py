"""A pinned app's data/ on its node (docs/scale-out.md, Pinned data).

An app pinned to one node by its data (pinning.py: SQLite, files in data/) keeps that
data in a Docker volume on the node, `opus-data-APP` (services.volume_name), mounted
read-write at /data in its tasks and in its release command's one-off task
(OPUS_DATA_DIR). The release image's /data is the app's own (its uid, 0700), so a new
volume starts as the app's.

The data moves with the app, never while it runs (a copy taken while the app writes
would lose what it writes meanwhile):

- to the swarm (the first deploy there): the app stops on this host, its data/ is packed
  as the app's user, sent over SSH to the node and unpacked into the volume by a
  container of the release's image running as the app's uid (no network, read-only root,
  no capabilities); what the volume held is replaced.
- back to this host (`scheduler:set APP local`, then a deploy): the app's tasks stop, the
  volume is packed on the node the same way and unpacked into data/ as the app's user.

Archives carry directories and regular files only, by relative names: packing skips
anything else (and says so), unpacking refuses anything else, on either side. An
archive is held in memory: data/ up to MAX_BYTES moves this way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from opus_paas import output
from opus_paas.errors import ServiceError, UsageError
from opus_paas.layout import AppPaths
from opus_paas.privileged import run_bytes
from opus_paas.settings import Settings
from opus_paas.store import App, Store, SwarmNode
from opus_paas.swarm import registry, ssh
from opus_paas.swarm.layers import Entry
from opus_paas.swarm.services import DATA_TARGET, IMAGE, VOLUME_PREFIX, volume_name

Emit = Callable[[str], None]

DOCKER = "/usr/bin/docker"      # on the node (nodes:add installs docker.io there)
PYTHON = "/usr/bin/python3"     # Debian's: the image's base and this host have it
MAX_BYTES = 512 * 1024 * 1024
MOVE_TIMEOUT = 600.0
STEP_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

# Run in the directory to pack (data/ here, /data on the node): a tar on stdout of its
# directories and regular files, sorted, owned by nobody in particular; anything else is
# named on stderr (the first SKIPPED_SHOWN) and left out. With the argument `size`, only
# the total size of its regular files, in bytes (nothing read). Over the limit given as
# the second argument, it exits with status 3 before writing anything.
PACK = r"""
import os, stat, sys, tarfile
def walk():
    for top, dirs, files in os.walk(".", followlinks=False):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(top, name)[2:]
            yield path, os.lstat(path)
total = sum(st.st_size for _, st in walk() if stat.S_ISREG(st.st_mode))
if sys.argv[1:2] == ["size"]:
    print(total)
    sys.exit(0)
if total > int(sys.argv[2]):
    sys.exit(3)
out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT)
skipped = 0
for path, st in walk():
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        skipped += 1
        if skipped <= SKIPPED_SHOWN:
            print("skipped " + path + ": not a directory or a regular file", file=sys.stderr)
        continue
    info = out.gettarinfo(path, arcname=path)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isreg():
        with open(path, "rb") as file:
            out.addfile(info, file)
    else:
        out.addfile(info)
if skipped > SKIPPED_SHOWN:
    print("skipped %d more" % (skipped - SKIPPED_SHOWN), file=sys.stderr)
out.close()
""".replace("SKIPPED_SHOWN", "20")

# Run in the directory to fill: checks every member of the tar on stdin (directories and
# regular files by plain relative names, nothing sparse), then empties the directory and
# unpacks it. A refused archive changes nothing.
UNPACK = r"""
import io, os, shutil, sys, tarfile
data = sys.stdin.buffer.read()
archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:") if data else None
members = archive.getmembers() if archive else []
for member in members:
    parts = member.name.split("/")
    if member.name.startswith("/") or ".." in parts or "" in parts or \
            not (member.isdir() or member.isreg()) or member.issparse():
        sys.exit("refused " + repr(member.name) + ": not a plain directory or file")
for name in os.listdir("."):
    if os.path.isdir(name) and not os.path.islink(name):
        shutil.rmtree(name)
    else:
        os.unlink(name)
for member in members:
    if member.isdir():
        os.makedirs(member.name, mode=0o700, exist_ok=True)
        continue
    os.makedirs(os.path.dirname(member.name) or ".", mode=0o700, exist_ok=True)
    fd = os.open(member.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file, archive.extractfile(member) as source:
        shutil.copyfileobj(source, file)
    os.chmod(member.name, member.mode & 0o777, follow_symlinks=False)
"""


def data_dir_entry(uid: int) -> Entry:
    """The image's /data: the app's own, so a volume mounted there starts as it."""
    return Entry(DATA_TARGET.lstrip("/"), "dir", mode=0o700, owner=uid)


def node_argv(image: str, uid: int, volume: str, script: str,
              args: Sequence[str] = ()) -> list[str]:
    """`docker run` on the node: `script` in the app's volume, as the app's uid, in a
    container of the app's release image with nothing else (pure)."""
    if not IMAGE.fullmatch(image) or not 1 <= uid <= 2**31 - 2 or \
            not volume.startswith(VOLUME_PREFIX):
        raise UsageError(f"not a release image, uid and data volume: {image[:80]!r}, "
                         f"{uid}, {volume[:80]!r}")
    return [DOCKER, "run", "--rm", "-i", "--network", "none", "--read-only",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--pids-limit", "64", "--user", f"{uid}:{uid}", "--log-driver", "none",
            "--mount", f"type=volume,source={volume},destination={DATA_TARGET}",
            "--workdir", DATA_TARGET, "--entrypoint", PYTHON, image, "-I", "-c", script,
            *args]


def data_node(store: Store, app: App) -> str | None:
    """The node holding the app's data, or None: its data/ is here. The store's record
    counts only while the app's live release runs on the swarm: a move cut short (a
    crash before the swarm release went live, or after the app went live here again)
    leaves the data here, and the stale record goes."""
    held = store.swarm_data_node(app)
    if held is None:
        return None
    live = store.get_swarm_release(app, app.live_version) if app.live_version else None
    if live is None or not live.services:
        store.set_swarm_data_node(app, None)
        return None
    return held


def apps_with_data_on(store: Store, node: str) -> list[str]:
    """The apps whose data is on `node`, by name."""
    found = []
    for name in store.apps_with_data_on(node):
        app = store.get_app(name)
        if app is not None and data_node(store, app) == node:
            found.append(name)
    return found


def _node(store: Store, name: str) -> SwarmNode:
    found = next((n for n in store.list_nodes() if n.name == name), None)
    if found is None:
        raise UsageError(f"node {name} holds the app's data but is not among Opus's nodes "
                         "(`opus nodes`); add it again with `opus nodes:add HOST`")
    return found


def _skipped(said: str, emit: Emit) -> None:
    for line in said.splitlines():
        if line.startswith("skipped "):
            emit(output.alert(line))


# The image pulled with the registry's credentials, given on stdin and kept for the pull
# only (a directory of root's, 0700, removed after).
PULL = ('umask 077 && d=$(mktemp -d) && cat > "$d/config.json" && '
        '/usr/bin/docker --config "$d" pull -q "$1" >/dev/null; s=$?; rm -rf "$d"; exit $s')


def pull_argv(image: str) -> list[str]:
    if not IMAGE.fullmatch(image):
        raise UsageError(f"{image[:80]!r} is not an image reference")
    return ["/bin/sh", "-c", PULL, "opus-pull", image]


def _on_node(settings: Settings, node: SwarmNode, argv: list[str], data: bytes,
             what: str, image: str) -> tuple[bytes, str]:
    found = registry.credentials(settings) if settings.swarm_registry else None
    with ssh.Node(settings, node.address, node.port) as reached:
        if found is not None:       # the image, from Opus's registry (it lets users in)
            reached.check(pull_argv(image), f"pulling {image} on {node.name}",
                          stdin=registry.auth_config(registry.address(settings), found),
                          timeout=MOVE_TIMEOUT)
        status, out, said = reached.run_bytes(argv, stdin=data, limit=MAX_BYTES + (1 << 20),
                                              timeout=MOVE_TIMEOUT)
    if status == 3:
        raise UsageError(f"the app's data on {node.name} is over {MAX_BYTES >> 20} MB: "
                         "move it by hand (docs/scale-out.md, Pinned data)")
    if status != 0:
        raise ServiceError(f"{what} on {node.name} failed (exit status {status}): "
                           f"{said.strip()[-600:]}")
    return out, said


def _too_big(app: App) -> UsageError:
    return UsageError(f"{app.name}'s data/ is over {MAX_BYTES >> 20} MB: Opus moves up to "
                      f"{MAX_BYTES >> 20} MB; move it by hand (docs/scale-out.md, Pinned "
                      "data) or keep the app on this host (`opus scheduler:set "
                      f"{app.name} local`)")


def check_size(settings: Settings, app: App) -> int:
    """The size of this host's data/ (its regular files), refused over MAX_BYTES before
    anything stops."""
    data_dir = AppPaths.of(settings, app.name).data
    if not data_dir.is_dir():
        return 0
    out, _said = run_bytes(settings, app.name, [PYTHON, "-I", "-c", PACK, "size"],
                           cwd=data_dir, env=STEP_ENV, timeout=MOVE_TIMEOUT, limit=100)
    size = int(out.decode().strip() or 0)
    if size > MAX_BYTES:
        raise _too_big(app)
    return size


def to_node(settings: Settings, store: Store, app: App, node_name: str, image: str,
            uid: int, emit: Emit) -> int:
    """This host's data/ into the app's volume on `node_name` (replacing what it held),
    through a container of `image` as `uid`; the bytes moved. The app must not run."""
    node = _node(store, node_name)
    data_dir = AppPaths.of(settings, app.name).data
    archive, said = b"", ""
    if data_dir.is_dir():
        try:
            archive, said = run_bytes(settings, app.name,
                                      [PYTHON, "-I", "-c", PACK, "pack", str(MAX_BYTES)],
                                      cwd=data_dir, env=STEP_ENV, timeout=MOVE_TIMEOUT,
                                      limit=MAX_BYTES + (1 << 20))
        except ServiceError as exc:
            if "exit status 3" in exc.message:
                raise _too_big(app) from None
            raise
    _skipped(said, emit)
    emit(output.detail(f"Moving data/ to {node.name} ({len(archive) / 1e6:.2f} MB)"))
    _on_node(settings, node, node_argv(image, uid, volume_name(app.name), UNPACK),
             archive, f"unpacking {app.name}'s data/", image)
    return len(archive)


def to_host(settings: Settings, store: Store, app: App, node_name: str, image: str,
            uid: int, emit: Emit) -> int:
    """The app's volume on `node_name` into this host's data/ (replacing what it held);
    the bytes moved. The app's tasks must not run."""
    node = _node(store, node_name)
    archive, said = _on_node(settings, node,
                             node_argv(image, uid, volume_name(app.name), PACK,
                                       ("pack", str(MAX_BYTES))),
                             b"", f"packing {app.name}'s data", image)
    _skipped(said, emit)
    emit(output.detail(f"Moving data/ back from {node.name} ({len(archive) / 1e6:.2f} MB)"))
    data_dir = AppPaths.of(settings, app.name).data
    run_bytes(settings, app.name, [PYTHON, "-I", "-c", UNPACK], cwd=data_dir,
              env=STEP_ENV, data=archive, timeout=MOVE_TIMEOUT, limit=1 << 20)
    return len(archive)


def remove_volume(settings: Settings, store: Store, app: App, node_name: str) -> bool:
    """The app's volume on its node goes (the app is destroyed; its tasks are gone or
    going): a few tries while Docker still counts it in use. True once gone."""
    node = _node(store, node_name)
    with ssh.Node(settings, node.address, node.port) as reached:
        for _ in range(30):
            result = reached.run([DOCKER, "volume", "rm", "--force", volume_name(app.name)],
                                 timeout=60)
            if result.status == 0:
                return True
            time.sleep(1)
    return False
