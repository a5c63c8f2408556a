"""A raw SSH client for the git wire protocol: what a hostile or broken client sends,
byte for byte, over a real SSH connection to the running Opus."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator

import paramiko

from tests.conftest import Opus, SshKey

ZERO = "0" * 40


def pkt(data: bytes) -> bytes:
    return f"{len(data) + 4:04x}".encode() + data


def update_commands(*updates: tuple[str, str, bytes],
                    caps: bytes = b"report-status side-band-64k") -> bytes:
    """pkt-lines `old new ref`, capabilities after the first, then a flush."""
    lines = b""
    for i, (old, new, ref) in enumerate(updates):
        line = f"{old} {new} ".encode() + ref
        lines += pkt(line + (b"\0" + caps if i == 0 else b"") + b"\n")
    return lines + b"0000"


@dataclasses.dataclass
class RawResult:
    status: int | None     # None: the server closed without an exit status
    stdout: bytes
    stderr: str
    seconds: float

    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def connect(opus: Opus, key: SshKey) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", port=opus.ssh_port, username="git",
                   key_filename=str(key.private), look_for_keys=False, allow_agent=False,
                   timeout=30)
    return client


@contextlib.contextmanager
def authenticated(opus: Opus, key: SshKey) -> Iterator[paramiko.Transport]:
    """An authenticated SSH transport to Opus, closed afterwards."""
    client = connect(opus, key)
    try:
        transport = client.get_transport()
        assert transport is not None
        yield transport
    finally:
        client.close()


def raw_exec(opus: Opus, key: SshKey, command: str, payload: bytes = b"", *,
             close_stdin: bool = True, timeout: float = 60) -> RawResult:
    """Exec `command`, send `payload`, and read everything until the server is done."""
    started = time.monotonic()
    client = connect(opus, key)
    try:
        channel = client.get_transport().open_session()   # type: ignore[union-attr]
        channel.settimeout(timeout)
        channel.exec_command(command)
        if payload:
            # The server may refuse before it has read everything.
            with contextlib.suppress(OSError, EOFError):
                channel.sendall(payload)
        if close_stdin:
            channel.shutdown_write()
        stdout = _read_all(channel.recv)
        stderr = _read_all(channel.recv_stderr)
        status = channel.recv_exit_status() if channel.exit_status_ready() else None
        return RawResult(status, stdout, stderr.decode("utf-8", "replace"),
                         time.monotonic() - started)
    finally:
        client.close()


def _read_all(recv: Callable[[int], bytes]) -> bytes:
    data = b""
    while True:
        try:
            chunk = recv(65536)
        except TimeoutError:
            return data
        if not chunk:
            return data
        data += chunk
