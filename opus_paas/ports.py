"""Who listens on a port of this host: read from the kernel's socket tables. Deploys
check an app's port with it (run/health.py), and so does an app's Redis (data/redis.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def listening_uids(table: str, port: int) -> set[int]:
    """The uids of the sockets listening on `port` in a /proc/net/tcp{,6} table (pure)."""
    found = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[3] == "0A" and \
                fields[1].rpartition(":")[2].upper() == f"{port:04X}":
            found.add(int(fields[7]))
    return found


def listeners(port: int) -> set[int]:
    """The uids of the sockets listening on `port` on this host now (IPv4 and IPv6)."""
    tables = ""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            tables += Path(name).read_text()
    return listening_uids(tables, port)
