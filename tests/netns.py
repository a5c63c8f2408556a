"""Network namespaces as stand-in hosts on a private subnet, for tests that need
addresses other than loopback (the front's members on nodes, …).

`namespaces(n)` makes a bridge with a free 10.78.X.0/24 (the host is .1 on it), and n
network namespaces, each joined to the bridge by a veth pair and holding one address
(.11, .12, …). A process started with `Space.popen` runs inside its namespace (as the
caller's user: only the network differs). Leaving the block tears it all down: every
process left in a namespace, the namespaces, the veths, the bridge. Needs root (`ip`).

Names carry the owning pid and a random run id, so a run killed before its teardown
never breaks the next one, which sweeps it (`sweep_stale`).

The one home of this pattern: tests/swarm_nodes.py builds its nodes' network with
`network(count, layout)` (a `Layout`: names and a subnet range of its own, 10.77.X.0/24)
and takes it down with `kill_processes` and `teardown` once its dockerds are stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import IO

PREFIX = "opus-ns-"
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([IP, *args], capture_output=True, text=True, check=False,
                            timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a run's parts are named and addressed: subnets 10.OCTET.X.0/24, and names
    from `str.format` templates with {run}, {pid} (the owner's) and {i} (1, 2, …)."""

    octet: int = 78
    bridge: str = "onb{run}"
    netns: str = PREFIX + "{pid}-{run}-{i}"
    veth: str = "onv{run}{i}"

    def space(self, run: str, i: int, address: str = "", pid: int | None = None) -> Space:
        pid = os.getpid() if pid is None else pid
        return Space(name=self.netns.format(run=run, pid=pid, i=i),
                     veth=self.veth.format(run=run, pid=pid, i=i), address=address)

    def bridge_name(self, run: str) -> str:
        return self.bridge.format(run=run)


DEFAULT = Layout()


@dataclasses.dataclass
class Space:
    """One namespace: a stand-in host at `address`."""

    name: str
    veth: str                   # the host's end of its veth pair (on the bridge)
    address: str

    def popen(self, argv: Sequence[str], output: int | IO[bytes] = subprocess.DEVNULL
              ) -> subprocess.Popen[bytes]:
        """Starts `argv` inside this namespace (`ip netns exec`), no input, its output
        (and errors) to `output`."""
        return subprocess.Popen([IP, "netns", "exec", self.name, *argv],
                                stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([IP, "netns", "exec", self.name, *argv], capture_output=True,
                              text=True, check=False, timeout=30)

    def link(self, up: bool) -> None:
        """Takes the namespace's link down (a host that vanished: packets to it are
        lost, connections time out) or back up."""
        _ip("link", "set", self.veth, "up" if up else "down")

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.name, check=False).stdout.split()
                if p.isdigit()]


@dataclasses.dataclass
class Net:
    run: str
    bridge: str
    gateway: str                # the host's address on the bridge
    subnet: str
    spaces: list[Space]


def free_subnet(octet: int = 78) -> ipaddress.IPv4Network:
    """A 10.OCTET.X.0/24 no address on the host is in (a stale run's bridge keeps its)."""
    used = [ipaddress.ip_interface(word) for line in _ip("-o", "-4", "addr").stdout.splitlines()
            for word in line.split()[3:4]]
    start = secrets.randbelow(250) + 1
    for third in [*range(start, 255), *range(1, start)]:
        net = ipaddress.IPv4Network(f"10.{octet}.{third}.0/24")
        if not any(iface.network.overlaps(net) for iface in used):
            return net
    raise NetnsError(f"no free 10.{octet}.X.0/24 subnet: remove stale opus bridges (ip link)")


_free_subnet = free_subnet


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[Net]:
    """`count` namespaces on a fresh bridge; torn down whatever happens inside."""
    sweep_stale()
    with network(count) as net:
        yield net


@contextlib.contextmanager
def network(count: int, layout: Layout = DEFAULT, run: str | None = None) -> Iterator[Net]:
    """`count` namespaces on a fresh bridge named by `layout` (run id: `run` or a random
    one); torn down (`teardown`) whatever happens inside. Sweeps nothing: the caller's
    own sweep knows how its runs are owned."""
    run = secrets.token_hex(3) if run is None else run
    net = Net(run=run, bridge=layout.bridge_name(run), gateway="", subnet="", spaces=[])
    try:
        subnet = free_subnet(layout.octet)
        hosts = list(subnet.hosts())
        net.gateway, net.subnet = str(hosts[0]), str(subnet)
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        for i in range(1, count + 1):
            space = layout.space(run, i, address=str(hosts[9 + i]))
            net.spaces.append(space)
            _ip("netns", "add", space.name)
            _ip("link", "add", space.veth, "type", "veth", "peer", "name", "eth0",
                "netns", space.name)
            _ip("link", "set", space.veth, "master", net.bridge, "up")
            for args in (("addr", "add", f"{space.address}/24", "dev", "eth0"),
                         ("link", "set", "eth0", "up"), ("link", "set", "lo", "up"),
                         ("route", "add", "default", "via", net.gateway)):
                _ip("-n", space.name, *args)
        yield net
    finally:
        teardown(net)


def kill_processes(space: Space, interval: float = 0.05) -> None:
    """SIGKILLs every process in the namespace until none is left (tries for 50
    rounds of `interval`)."""
    for _ in range(50):
        pids = space.pids()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(interval)


def teardown(net: Net) -> None:
    """Best effort at every step: one failure never leaves the rest behind. Every
    process left in a namespace, the namespaces, the veths, the bridge."""
    for space in net.spaces:
        with contextlib.suppress(Exception):
            kill_processes(space)
        _ip("netns", "del", space.name, check=False)
        _ip("link", "del", space.veth, check=False)   # gone with the netns, normally
    if net.bridge:
        _ip("link", "del", net.bridge, check=False)


_teardown = teardown


def sweep_stale() -> list[str]:
    """Tears down the runs whose owning process is gone; returns their run ids."""
    runs: dict[str, list[Space]] = {}
    for name in _ip("netns", "list", check=False).stdout.split():
        if not name.startswith(PREFIX):
            continue
        try:
            pid, run, index = name[len(PREFIX):].split("-")
            os.kill(int(pid), 0)
            continue                      # its owner lives (or the pid was reused: keep)
        except ProcessLookupError:
            runs.setdefault(run, []).append(Space(name, DEFAULT.veth.format(
                run=run, pid=pid, i=index), ""))
        except (ValueError, OSError):
            continue
    for run, spaces in runs.items():
        teardown(Net(run=run, bridge=DEFAULT.bridge_name(run), gateway="", subnet="",
                     spaces=spaces))
    return sorted(runs)
