"""The backend's side of the handshake prelude (``vhost.prelude``): a connection whose
first messages are the ones the prelude took, replayed to the backend's message loop as
if they had just arrived, and whose replies to them are checked, not sent: each must be
byte for byte what the prelude already answered (and where the prelude answered
nothing, the backend must answer nothing). Any difference means the frontend was told
something the backend does not stand by, so the connection is closed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from vhost.connection import Connection, close_fds
from vhost.messages import HEADER_SIZE, FramingError, parse_header
from vhost.prelude import Taken

log = logging.getLogger("vhost.replay")


class PreludeMismatch(ConnectionAbortedError):
    """The backend's answer to a replayed message is not the one the prelude gave."""


class ReplayConnection(Connection):
    def __init__(self, sock: trio.socket.SocketType, taken: Sequence[Taken]) -> None:
        super().__init__(sock)
        self._pending = list(taken)
        self._replaying = False
        self._expect: bytes | None = None
        self._request = 0
        #: messages handed to the backend from the record so far
        self.replayed = 0

    def _mismatch(self, why: str) -> PreludeMismatch:
        log.error("vhost-user request %d: %s; closing the connection", self._request, why)
        return PreludeMismatch(why)

    async def recv_message(self) -> tuple[int, int, bytes, list[int]] | None:
        if self._replaying and self._expect is not None:
            raise self._mismatch("the prelude answered it, the backend did not")
        if not self._pending:
            self._replaying = False
            return await super().recv_message()
        t = self._pending.pop(0)
        self._replaying, self._expect = True, t.answer
        if t.truncated:
            close_fds(t.fds)
            raise FramingError("ancillary data truncated (too many fds)")
        request, flags, _ = parse_header(t.data[:HEADER_SIZE])
        self._request = request
        self.replayed += 1
        return request, flags, t.data[HEADER_SIZE:], t.fds

    async def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        if not self._replaying:
            await super().send(data, fds)
            return
        expect, self._expect = self._expect, None
        if fds or expect != bytes(data):
            raise self._mismatch(f"the backend answers {bytes(data).hex()}, the prelude "
                                 f"answered {expect.hex() if expect else 'nothing'}")

    def close(self) -> None:
        for t in self._pending:
            close_fds(t.fds)
        self._pending.clear()
        super().close()
