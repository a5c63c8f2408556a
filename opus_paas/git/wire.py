"""Reading a client's bytes off an SSH channel, with a read timeout and a byte budget.

dulwich's Protocol reads exact byte counts (`read`); the pack receiver takes whatever
has arrived (`take_buffered`, `recv_some`) and waits on `fileno` with select().
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opus_paas.errors import ProtocolError

if TYPE_CHECKING:
    import paramiko

CHUNK = 64 * 1024


class ChannelReader:
    """Buffered reads from `channel`; a read that waits `read_timeout` seconds for the
    client raises ProtocolError instead of holding a thread forever."""

    def __init__(self, channel: paramiko.Channel, read_timeout: float) -> None:
        self.channel = channel
        self.read_timeout = read_timeout
        self._buffer = bytearray()
        channel.settimeout(read_timeout)

    def fileno(self) -> int:
        return self.channel.fileno()

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, or fewer if the client closed its side."""
        while len(self._buffer) < size:
            chunk = self._recv()
            if not chunk:
                break
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def take_buffered(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def recv_some(self) -> bytes:
        """What is buffered, else what the next read off the wire brings."""
        if self._buffer:
            return self.take_buffered()
        return self._recv()

    def _recv(self) -> bytes:
        try:
            return self.channel.recv(CHUNK)
        except TimeoutError:
            raise ProtocolError(f"the client sent nothing for {self.read_timeout:.0f} s; "
                                "the connection was closed; try again") from None
