"""The SSH server's host key, in a module of its own: `opus up` makes it without importing
the server (which imports the command table, which imports `opus up`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paramiko


def load_or_create_host_key(path: Path) -> paramiko.PKey:
    """The server's host key: generated once, then kept (clients pin it). paramiko is
    imported here, not at the top: every `opus` command imports this module, and
    paramiko alone costs 0.1 s of each start."""
    import paramiko
    if path.exists():
        return paramiko.ECDSAKey(filename=str(path))
    key = paramiko.ECDSAKey.generate(bits=256)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    key.write_private_key_file(str(tmp))
    tmp.chmod(0o600)
    tmp.replace(path)
    return key
