"""System mode's network isolation: an nftables table (`inet opus`) that keeps each
loopback port Opus hands out to its owner, rendered here (pure) from the front's checked
spec and the users' ids, and applied whole in one transaction.

Every app instance, the dashboard and the front's balancer-manager listen on loopback,
where any local user can connect, and on ports above 1024, which any local user can bind
while their owner is down. The output hook sees every packet a local socket sends, with
the uid of the socket's owner (`meta skuid`; a SYN-ACK counts as its listener's), so:

- to an app's instance ports (blue and green) only root, the opus user, the front's
  user and the app's own user may connect; packets *from* those ports are dropped unless
  the app's user sends them, so another app that binds an idle or crashed instance port
  never completes a handshake, never reads a request, never answers the front;
- to the dashboard's port only root, the opus user and the front's user may connect,
  and only the opus user (gunicorn) may answer from it;
- to the balancer-manager's ports only root and the opus user may connect, and only
  root (the front's master made the listening socket: the handshake) and the front's
  user (its children accept the connections: the kernel gives an accepted socket to
  the user who accepts it) may answer from them.

A refused connection gets a reset at once (no timeout). Nothing else is touched: the
table's chain accepts what no rule names.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterable

from secureops.layout import Denied

NFT = "/usr/sbin/nft"
TABLE = "inet opus"
APT_HINT = "apt-get install nftables"


@dataclasses.dataclass(frozen=True)
class Guard:
    """Ports that only `clients` may connect to and only `owners` may answer from."""

    what: str                   # a comment: whose ports
    ports: tuple[int, ...]
    clients: frozenset[int]
    owners: frozenset[int]


def _set(values: Iterable[int]) -> str:
    items = sorted(set(values))
    if not items:
        raise Denied("an nftables rule needs at least one value")
    if not all(isinstance(v, int) and 0 <= v < 2**32 for v in items):
        raise Denied("an nftables value must be a non-negative 32-bit number")
    return str(items[0]) if len(items) == 1 else "{ " + ", ".join(map(str, items)) + " }"


def render(guards: list[Guard]) -> str:
    """The whole table, replacing whatever was there in the same transaction (pure)."""
    lines = [
        "# Rendered by secureops (front-install); replaced whole at each render.",
        f"add table {TABLE}",
        f"delete table {TABLE}",
        f"table {TABLE} {{",
        "    chain output {",
        "        type filter hook output priority filter; policy accept;",
    ]
    for guard in guards:
        if not 1 <= len(guard.what) <= 80 or not guard.what.replace("-", "").replace(
                " ", "").replace("'", "").isalnum():
            raise Denied("a rule's comment must be short plain text")
        ports = _set(guard.ports)
        lines += [
            f"        # {guard.what}",
            f"        tcp dport {ports} meta skuid != {_set(guard.clients)} "
            "reject with tcp reset",
            f"        tcp sport {ports} meta skuid != {_set(guard.owners)} drop",
        ]
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"


def apply(text: str) -> None:
    """Load the table (all or nothing: nft applies a file as one transaction)."""
    try:
        done = subprocess.run([NFT, "-f", "-"], input=text, capture_output=True, text=True,
                              check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                "LANG": "C"})
    except FileNotFoundError:
        raise Denied(f"nftables is missing ({NFT}); install it ({APT_HINT}): system mode "
                     "keeps each app's ports its own with it") from None
    if done.returncode != 0:
        raise Denied("nftables refused the rules (nothing was changed): "
                     + " ".join(done.stderr.split())[:400])

