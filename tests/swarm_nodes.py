"""N Docker Swarm "nodes" on this one machine, for the scale-out tests (docs/scale-out.md).

Each node is a real dockerd (Debian's docker.io) in a network namespace of its own,
joined to the host by a veth pair on a bridge the helper creates (through tests/netns.py,
with the names and subnets of `LAYOUT`), in a mount namespace
of its own (a private tmpfs on /run, its own /etc/docker) and a UTS one (hostname
nodeK). Node 1 is the manager, the others join it as workers. `swarm_nodes(3)` yields
a `Swarm`; leaving the block tears everything down (swarm, dockerds and every process
left in a node's namespace, cgroups, netns, veths, bridge, temp dirs), whatever happened
inside.

`swarm_nodes(n, joined=k, ssh_key=PUB)`: only nodes 1..k form the swarm (the others are
fresh machines: dockerd up, not joined), and each node runs Debian's OpenSSH sshd in its
own namespaces (network, mount, UTS: a shell over SSH sees the node's /run/docker.sock
and /etc/docker), on its address port 22, letting in root with that public key.

Names carry a random run id, and the subnet (10.77.X.0/24) is one no interface on the
host uses, so a stale run left by a killed test never breaks the next; and the next run
sweeps it (`sweep_stale`: runs whose owning process is gone).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests import netns

DOCKER = "/usr/bin/docker"     # docker.io's client (another may come first on PATH)
DOCKERD = "/usr/sbin/dockerd"
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"

# Runs inside `nsenter --net=/run/netns/NS unshare --mount --uts --propagation private`
# (not `ip netns exec`, whose fresh /sys has no cgroup mounts for dockerd): the node's
# own hostname, /run (dockerd looks for a system containerd and plugins there) and
# /etc/docker (the engine's key.json and ID), then dockerd (exec: the pid is dockerd's).
_LAUNCH = ('hostname "$1" && mount -t tmpfs -o mode=0755 opus-node /run && '
           'mount --bind "$2" /etc/docker && shift 2 && exec "$@"')


# The nodes' network (tests/netns.py): bridge osbR, namespaces opus-swarm-R-nK, veths
# osvRnK, subnet 10.77.X.0/24 (the bridge .1, node K .1K).
LAYOUT = netns.Layout(octet=77, bridge="osb{run}", netns="opus-swarm-{run}-n{i}",
                      veth="osv{run}n{i}")


class SwarmError(RuntimeError):
    pass


@dataclasses.dataclass
class Node:
    index: int
    netns: str
    veth: str
    address: str
    root: Path
    process: subprocess.Popen[bytes] | None = None
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def hostname(self) -> str:
        return f"node{self.index}"

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.netns}"

    def docker(self, *args: str, check: bool = True, timeout: float = 60,
               input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Runs the docker client against this node's dockerd (from the host)."""
        result = subprocess.run(
            [DOCKER, "-H", f"unix://{self.socket}", *args], capture_output=True,
            timeout=timeout, check=False, input=input)
        out = subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"))
        if check and out.returncode != 0:
            raise SwarmError(f"node {self.index}: docker {' '.join(args)}: "
                             f"{out.stderr.strip() or out.stdout.strip()}")
        return out

    @property
    def host_key(self) -> Path:
        """The node sshd's host key (its .pub beside it)."""
        return self.root / "ssh" / "ssh_host_ed25519_key"

    def host_key_line(self) -> str:
        """The node's public host key as `ssh-ed25519 AAAA…`."""
        return " ".join(self.host_key.with_suffix(".pub").read_text().split()[:2])

    def start_sshd(self, authorized: str, new_host_key: bool = False) -> None:
        """(Re)starts OpenSSH's sshd in this node's namespaces on ADDRESS:22, letting in
        root with the `authorized` public key; `new_host_key`: as a reinstalled (or
        impostor) machine would, with a host key of its own."""
        assert self.process is not None and self.process.poll() is None
        self.stop_sshd()
        ssh = self.root / "ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        if new_host_key or not self.host_key.exists():
            self.host_key.unlink(missing_ok=True)
            self.host_key.with_suffix(".pub").unlink(missing_ok=True)
            subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", self.hostname,
                            "-f", str(self.host_key)], check=True, timeout=30)
        (ssh / "authorized_keys").write_text(authorized.strip() + "\n")
        (ssh / "authorized_keys").chmod(0o600)
        config = ssh / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.address}:22", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {ssh / 'authorized_keys'}", f"PidFile {ssh / 'sshd.pid'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "PrintMotd no", "UseDNS no", "LogLevel ERROR", ""]))
        log = open(ssh / "sshd.log", "ab")  # noqa: SIM115 (sshd keeps it)
        # Into dockerd's own namespaces (its /run tmpfs is where sshd's privilege
        # separation directory and /run/docker.sock live).
        self.sshd = subprocess.Popen(
            ["nsenter", f"--target={self.process.pid}", "--net", "--mount", "--uts",
             "sh", "-c", 'mkdir -p -m 0755 /run/sshd && exec "$@"', "opus-node-sshd",
             SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        log.close()
        _wait(f"node {self.index}'s sshd", functools.partial(_listens, self), 15)

    def stop_sshd(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            try:
                self.sshd.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
                self.sshd.wait(timeout=10)
        self.sshd = None

    def kill(self) -> None:
        """SIGKILLs this node's dockerd, as a crash would (its containers live on)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclasses.dataclass
class Swarm:
    run: str
    base: Path
    bridge: str
    gateway: str
    nodes: list[Node]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    def node_states(self) -> dict[str, tuple[str, str]]:
        """`docker node ls` on the manager: address -> (status, availability)."""
        ids = self.manager.docker("node", "ls", "-q").stdout.split()
        raw = self.manager.docker("node", "inspect", *ids).stdout
        return {n["Status"]["Addr"]: (n["Status"]["State"], n["Spec"]["Availability"])
                for n in json.loads(raw)}

    def trust_registry(self, registry: str, ca: Path) -> None:
        """Every node verifies `registry` (host:port) with the CA certificate `ca`, as
        `opus nodes:add` sets a real node up (/etc/docker/certs.d/REGISTRY/ca.crt)."""
        for node in self.nodes:
            directory = node.root / "etc-docker" / "certs.d" / registry
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ca, directory / "ca.crt")

    def load_image(self, tar: Path, tag: str) -> str:
        """`docker import`s the rootfs tar on the manager, then `save | load`s it on every
        other node (no registry), so the image ID is the same everywhere; returns it."""
        self.manager.docker("import", str(tar), tag)
        image_id = self.manager.docker("image", "inspect", "-f", "{{.Id}}",
                                       tag).stdout.strip()
        saved = self.base / "image.tar"
        self.manager.docker("save", "-o", str(saved), tag)
        for node in self.nodes[1:]:
            node.docker("load", "-i", str(saved))
            got = node.docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()
            if got != image_id:
                raise SwarmError(f"node {node.index} loaded {got}, expected {image_id}")
        return image_id


_ip = netns._ip


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.77.X.0/24 that no address on the host is in (a stale run's bridge keeps its)."""
    return netns.free_subnet(LAYOUT.octet)


def _wait(what: str, probe: Callable[[], bool], timeout: float,
          interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SwarmError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _start_node(node: Node, offline_images: bool = True) -> None:
    etc = node.root / "etc-docker"
    for sub in ("data", "exec", "etc-docker"):
        (node.root / sub).mkdir(parents=True, exist_ok=True)
    # Opus's registry (opus-registry) speaks TLS: a node trusts it once its CA is in
    # certs.d (`opus nodes:add`, or Swarm.trust_registry), as a real node does.
    (etc / "daemon.json").write_text("{}\n")
    log = open(node.root / "dockerd.log", "wb")  # noqa: SIM115 (dockerd keeps it)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if offline_images:
        # Swarm pulls a service's image before each task; with no registry the image
        # is loaded on each node (Swarm.load_image). Without: the node pulls, as a
        # real one does (from Opus's registry).
        env["DOCKER_SERVICE_PREFER_OFFLINE_IMAGE"] = "1"
    node.process = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{node.netns}",
         "unshare", "--mount", "--uts", "--propagation", "private",
         "sh", "-c", _LAUNCH, "opus-node", node.hostname, str(etc),
         DOCKERD, "--config-file", str(etc / "daemon.json"),
         "--data-root", str(node.root / "data"), "--exec-root", str(node.root / "exec"),
         "--pidfile", str(node.root / "dockerd.pid"), "-H", f"unix://{node.socket}",
         # And where a shell on the node (over SSH) finds it, in the node's own /run.
         "-H", "unix:///run/docker.sock",
         "--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none",
         "--cgroup-parent", node.cgroup_parent, "--shutdown-timeout", "2",
         "--storage-driver", "overlay2", "--log-level", "warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()


def _listens(node: Node) -> bool:
    if node.sshd is not None and node.sshd.poll() is not None:
        tail = (node.root / "ssh" / "sshd.log").read_text(errors="replace")[-2000:]
        raise SwarmError(f"node {node.index}: sshd exited ({node.sshd.returncode}):\n{tail}")
    try:
        with socket.create_connection((node.address, 22), timeout=1) as conn:
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _answers(node: Node) -> bool:
    if node.process is not None and node.process.poll() is not None:
        tail = (node.root / "dockerd.log").read_text(errors="replace")[-2000:]
        raise SwarmError(f"node {node.index}: dockerd exited "
                         f"({node.process.returncode}):\n{tail}")
    return node.socket.exists() and node.docker("version", check=False,
                                                timeout=5).returncode == 0


@contextlib.contextmanager
def swarm_nodes(count: int = 3, heartbeat: str = "1s", *, joined: int | None = None,
                ssh_key: str | None = None, offline_images: bool = True) -> Iterator[Swarm]:
    """Starts `count` node dockerds, forms a swarm of the first `joined` (default: all),
    yields it, and tears it all down. With `ssh_key` (a public key line) every node also
    runs sshd letting root in with it. `offline_images=False`: a task's image is pulled
    as on a real node (from a registry), not looked for among the loaded ones only."""
    joined = count if joined is None else joined
    sweep_stale()
    run = secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix=f"opus-swarm-{run}-"))
    base.chmod(0o700)
    (base / "owner").write_text(f"{os.getpid()}\n")
    swarm = Swarm(run=run, base=base, bridge=LAYOUT.bridge_name(run), gateway="", nodes=[])
    try:
        started = time.monotonic()
        with netns.network(count, LAYOUT, run) as net:
            swarm.gateway = net.gateway
            try:
                for i, space in enumerate(net.spaces, 1):
                    node = Node(index=i, netns=space.name, veth=space.veth,
                                address=space.address, root=base / f"n{i}")
                    swarm.nodes.append(node)
                    _start_node(node, offline_images)
                _form(swarm, started, heartbeat, joined, ssh_key)
                yield swarm
            finally:
                _stop_nodes(swarm)    # the nodes first; leaving the block, the network
    finally:
        shutil.rmtree(swarm.base, ignore_errors=True)


def _form(swarm: Swarm, started: float, heartbeat: str, joined: int,
          ssh_key: str | None) -> None:
    """Waits for the dockerds (and sshds), then makes a swarm of the first `joined`."""
    for node in swarm.nodes:
        _wait(f"node {node.index}'s dockerd", functools.partial(_answers, node), 30)
    swarm.timings["dockerds up"] = time.monotonic() - started
    if ssh_key is not None:
        for node in swarm.nodes:
            node.start_sshd(ssh_key)
        swarm.timings["sshds up"] = time.monotonic() - started
    swarm.manager.docker("swarm", "init", "--advertise-addr", swarm.manager.address,
                         "--dispatcher-heartbeat", heartbeat)
    token = swarm.manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    for node in swarm.nodes[1:joined]:
        try:
            node.docker("swarm", "join", "--token", token, "--advertise-addr",
                        node.address, f"{swarm.manager.address}:2377")
        except SwarmError as error:
            raise SwarmError(f"{error}\n(nodes talk across bridge {swarm.bridge}: with "
                             "br_netfilter loaded, iptables' FORWARD chain must accept "
                             "that traffic)") from error
    _wait(f"{joined} Ready nodes", lambda: sum(
        state == "ready" for state, _ in swarm.node_states().values()) == joined, 30, 0.2)
    swarm.timings["swarm up"] = time.monotonic() - started


def sweep_stale() -> list[str]:
    """Tears down the runs whose owning process is gone (a test killed before its
    teardown): their dockerds, namespaces, links and temp dirs. Returns their run ids."""
    swept = []
    names = _ip("netns", "list", check=False).stdout.split()
    for base in Path(tempfile.gettempdir()).glob("opus-swarm-*-*"):
        try:
            owner = int((base / "owner").read_text())
            os.kill(owner, 0)
            continue                      # still running (or its pid was reused: keep)
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        run = base.name.split("-")[2]
        prefix = LAYOUT.netns.format(run=run, i="")
        indexes = sorted(int(name[len(prefix):]) for name in names
                         if name.startswith(prefix) and name[len(prefix):].isdigit())
        spaces = [LAYOUT.space(run, i) for i in indexes]
        nodes = [Node(index=i, netns=space.name, veth=space.veth, address="",
                      root=base / f"n{i}") for i, space in zip(indexes, spaces, strict=True)]
        swarm = Swarm(run=run, base=base, bridge=LAYOUT.bridge_name(run), gateway="",
                      nodes=nodes)
        _stop_nodes(swarm)
        netns.teardown(netns.Net(run=run, bridge=swarm.bridge, gateway="", subnet="",
                                 spaces=spaces))
        shutil.rmtree(base, ignore_errors=True)
        swept.append(run)
    return swept


def _stop_nodes(swarm: Swarm) -> None:
    """Stops the nodes, best effort at every step so one failure never leaves the rest
    behind: sshds; swarm leave and dockerds; every process left in a node's network
    namespace; the node cgroups. (The network goes next: tests/netns.py's teardown.)"""
    for node in swarm.nodes:
        with contextlib.suppress(Exception):
            node.stop_sshd()
    alive = [n for n in swarm.nodes if n.process is not None and n.process.poll() is None]
    # Leave the swarm and stop the dockerds all at once (a worker's leave takes ~1.7 s).
    leaving = [subprocess.Popen([DOCKER, "-H", f"unix://{n.socket}", "swarm", "leave",
                                 "--force"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for n in alive]
    for leave in leaving:
        try:
            leave.wait(timeout=5)
        except subprocess.TimeoutExpired:
            leave.kill()
            leave.wait()
    for node in alive:
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
    for node in alive:
        assert node.process is not None
        try:
            node.process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(timeout=10)
    for node in swarm.nodes:
        # containerd, shims and task processes outlive a killed dockerd: every process
        # still in the node's network namespace is one this helper started.
        with contextlib.suppress(Exception):
            netns.kill_processes(netns.Space(node.netns, node.veth, node.address), 0.1)
        _remove_cgroups(node.cgroup_parent)


def _remove_cgroups(parent: str) -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent.lstrip("/")
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
