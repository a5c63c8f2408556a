"""Opus's SSH client to its swarm nodes (paramiko): one node key Opus keeps, host keys
pinned on the first `nodes:add` and checked on every connection after, commands run
with a fixed argv (quoted with shlex.join: sshd hands the line to the node's shell)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from opus_paas.errors import Conflict, OpusError, ServiceError
from opus_paas.settings import Settings

if TYPE_CHECKING:
    import paramiko
# paramiko is imported where it is used: every `opus` command imports this module (the
# nodes' commands), and paramiko alone costs 0.1 s of each start.

CONNECT_TIMEOUT = 15.0
# What Opus reads of one command's output on a node (stdout, stderr each): what Opus
# runs there prints a few lines; a node that floods is cut off.
OUTPUT_LIMIT = 1 << 20


def node_dir(settings: Settings) -> Path:
    return settings.home / "nodes"


def key_path(settings: Settings) -> Path:
    """Opus's private key for its nodes (0600)."""
    return node_dir(settings) / "id_ed25519"


def known_hosts_path(settings: Settings) -> Path:
    """The nodes' pinned host keys (OpenSSH known_hosts format)."""
    return node_dir(settings) / "known_hosts"


def load_or_create_key(settings: Settings) -> paramiko.PKey:
    """The node key: generated once (ed25519, written 0600 from the start), then kept."""
    path = key_path(settings)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        try:
            os.link(tmp, path)          # the first writer wins; a racing one reads it
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    import paramiko
    return paramiko.Ed25519Key(filename=str(path))


def public_key_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()} opus-nodes"


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def host_entry(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


@dataclasses.dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str


class _Pin:
    """Unknown host key: pinned (nodes:add) or refused (every other connection). A
    paramiko MissingHostKeyPolicy by its one method (paramiko calls it by name)."""

    def __init__(self, allow_new: bool) -> None:
        self.allow_new = allow_new
        self.pinned: paramiko.PKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        if not self.allow_new:
            raise Conflict(f"Opus has no pinned host key for {hostname}; add the node "
                           "with `opus nodes:add` first")
        self.pinned = key


class Node:
    """One SSH connection to a node, as root."""

    def __init__(self, settings: Settings, host: str, port: int = 22, *,
                 allow_new_host_key: bool = False) -> None:
        import paramiko
        self.host, self.port = host, port
        self._known = known_hosts_path(settings)
        self.client = paramiko.SSHClient()
        if self._known.exists():
            self.client.load_host_keys(str(self._known))
        policy = _Pin(allow_new_host_key)
        self.client.set_missing_host_key_policy(policy)  # type: ignore[arg-type]
        key = load_or_create_key(settings)
        try:
            self.client.connect(host, port=port, username="root", pkey=key,
                                allow_agent=False, look_for_keys=False,
                                timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT,
                                auth_timeout=CONNECT_TIMEOUT)
        except paramiko.BadHostKeyException as exc:
            self.client.close()
            raise Conflict(
                f"the host key of {host_entry(host, port)} changed: Opus pinned "
                f"{fingerprint(exc.expected_key)}, the machine offers "
                f"{fingerprint(exc.key)}. Opus refuses to log in (another machine may "
                "be answering at that address). If the node was reinstalled and you "
                "trust its new key, remove its line from $OPUS_HOME/nodes/known_hosts "
                "and run nodes:add again.") from None
        except paramiko.AuthenticationException:
            self.client.close()
            raise Conflict(
                f"{host_entry(host, port)} refused Opus's node key for root: append the "
                "line `opus nodes:key` prints to /root/.ssh/authorized_keys on the node, "
                "then run the command again") from None
        except (OSError, paramiko.SSHException) as exc:
            self.client.close()
            if isinstance(exc, OpusError):
                raise
            raise ServiceError(f"could not reach {host_entry(host, port)} over SSH "
                               f"({exc.__class__.__name__}: {exc}); check the address, "
                               "that sshd runs there and that this host may reach it") from None
        self.new_host_key = policy.pinned
        transport = self.client.get_transport()
        assert transport is not None
        self.host_key: paramiko.PKey = transport.get_remote_server_key()
        peer = transport.getpeername()
        self.peer_address: str = peer[0]

    def pin(self) -> None:
        """Keeps a host key seen for the first time (after the node was added)."""
        if self.new_host_key is None:
            return
        import paramiko
        keys = paramiko.HostKeys()
        if self._known.exists():
            keys.load(str(self._known))
        keys.add(host_entry(self.host, self.port), self.new_host_key.get_name(),
                 self.new_host_key)
        self._known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._known.with_name(f".{self._known.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        keys.save(str(tmp))
        os.replace(tmp, self._known)
        self.new_host_key = None

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            timeout: float = 120.0) -> Result:
        """Runs `argv` on the node (each word quoted: the node's shell sees exactly it)."""
        import paramiko
        try:
            channel_in, out, err = self.client.exec_command(shlex.join(argv), timeout=timeout)
            if stdin is not None:
                channel_in.write(stdin)
            channel_in.channel.shutdown_write()
            text = out.read(OUTPUT_LIMIT).decode(errors="replace")
            error = err.read(OUTPUT_LIMIT).decode(errors="replace")
            status = out.channel.recv_exit_status()
        except (OSError, paramiko.SSHException) as exc:
            raise ServiceError(f"{self.host}: `{shlex.join(argv[:2])} …` did not finish "
                               f"({exc.__class__.__name__}: {exc}); run it again") from None
        return Result(status, text, error)

    def run_bytes(self, argv: Sequence[str], *, stdin: bytes = b"", limit: int,
                  timeout: float = 300.0) -> tuple[int, bytes, str]:
        """Runs `argv` with `stdin`; (status, its output as bytes, its stderr). A
        ServiceError when the output passes `limit` bytes."""
        import paramiko
        try:
            channel_in, out, err = self.client.exec_command(shlex.join(argv), timeout=timeout)
            if stdin:
                channel_in.write(stdin)
            channel_in.channel.shutdown_write()
            data = out.read(limit + 1)
            error = err.read(OUTPUT_LIMIT).decode(errors="replace")
            if len(data) > limit:
                out.channel.close()
                raise ServiceError(f"{self.host}: `{shlex.join(argv[:2])} …` gave more than "
                                   f"{limit} bytes")
            status = out.channel.recv_exit_status()
        except (OSError, paramiko.SSHException) as exc:
            raise ServiceError(f"{self.host}: `{shlex.join(argv[:2])} …` did not finish "
                               f"({exc.__class__.__name__}: {exc}); run it again") from None
        return status, data, error

    def check(self, argv: Sequence[str], what: str, *, stdin: bytes | None = None,
              timeout: float = 120.0) -> str:
        """Runs `argv`; its output, or a ServiceError saying `what` failed and why."""
        result = self.run(argv, stdin=stdin, timeout=timeout)
        if result.status != 0:
            detail = (result.err.strip() or result.out.strip())[-800:]
            raise ServiceError(f"{self.host}: {what} failed (`{argv[0]}` exited "
                               f"{result.status}): {detail}")
        return result.out

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
