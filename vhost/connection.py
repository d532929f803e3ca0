"""The vhost-user Unix stream socket under trio: framing and SCM_RIGHTS fd passing.

``recv_message`` returns (request, flags, payload, fds) for one whole message, or None
at a clean end of stream. Any fd received is either handed to the caller inside that
tuple or closed here (truncated ancillary data, a framing error, EOF mid-message):
nothing leaks. Used by both the backend and the in-tree frontend.
"""

from __future__ import annotations

import array
import socket
from collections.abc import Sequence

import trio

from vhost.messages import HEADER_SIZE, FramingError, parse_header
from vhost.scm import ANC_SIZE, close_fds, fds_from

__all__ = ["Connection", "close_fds"]


class Connection:
    """One vhost-user connection (either side)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.closed = False

    @classmethod
    def from_fd(cls, fd: int) -> Connection:
        """Adopt a connected Unix stream socket fd (virtiofsd's --fd, socketpair)."""
        s = socket.socket(fileno=fd)
        s.setblocking(False)
        return cls(trio.socket.from_stdlib_socket(s))

    async def _recv_exact(self, n: int, fds: list[int]) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            data, ancdata, msg_flags, _ = await self.sock.recvmsg(n - len(buf), ANC_SIZE,
                                                                  socket.MSG_CMSG_CLOEXEC)
            fds.extend(fds_from(ancdata))
            if msg_flags & socket.MSG_CTRUNC:
                raise FramingError("ancillary data truncated (too many fds)")
            if not data:
                if buf:
                    raise FramingError(f"end of stream after {len(buf)} of {n} bytes")
                return None
            buf += data
        return bytes(buf)

    async def recv_message(self) -> tuple[int, int, bytes, list[int]] | None:
        """Next whole message, or None at end of stream. FramingError (fds closed)
        when the stream is unusable."""
        fds: list[int] = []
        try:
            header = await self._recv_exact(HEADER_SIZE, fds)
            if header is None:
                close_fds(fds)
                return None
            request, flags, size = parse_header(header)
            payload = await self._recv_exact(size, fds) if size else b""
            if payload is None:
                raise FramingError("end of stream inside a message")
        except BaseException:
            close_fds(fds)
            raise
        return request, flags, payload, fds

    async def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send bytes (one message), with fds attached to the first byte."""
        view = memoryview(data)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] \
            if fds else []
        while view:
            sent = await self.sock.sendmsg([view], anc)
            anc = []
            view = view[sent:]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
