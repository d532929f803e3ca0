"""The handshake prelude: a frontend's device-realize questions answered while the
daemon is still starting.

QEMU realizes a vhost-user device before the guest runs a single instruction, and for
that it asks the backend, waiting for each answer: GET_FEATURES, GET_PROTOCOL_FEATURES,
SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, SET_BACKEND_REQ_FD (acked),
SET_OWNER, GET_FEATURES again, then SET_VRING_CALL/SET_VRING_ERR per queue. The C
virtiofsd answers within 2 ms of its exec; a Python daemon needs a few hundred ms of
imports and set-up before its backend runs, and all of it was QEMU's wait.

So a daemon starts a ``Prelude`` as soon as its socket is open: one thread, nothing
imported but the standard library and ``vhost.messages``, that accepts the frontend and
answers exactly those requests from values fixed before it started (``answers``),
recording every message it took, bytes and fds. It maps no memory and reads no ring;
it stops at the first message of any other kind (or of an unexpected size or flags) and
leaves it unread. The guest's memory and rings arrive with later messages
(ADD_MEM_REG/SET_MEM_TABLE, SET_VRING_*), which only the backend reads, after the
daemon has confined itself.

``finish`` stops and joins the thread (the daemon forks and installs its seccomp filter
after that: no thread may exist then) and hands over the connection and the record. The
backend replays the record through its own message loop (``vhost.replay``): every
message is handled as if it had just arrived, and each answer the prelude gave must be
the byte-for-byte answer the backend gives, or the connection is closed. The prelude
decides nothing the backend would not.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from vhost.messages import (
    FLAG_NEED_REPLY,
    HEADER,
    HEADER_SIZE,
    VERSION,
    VERSION_MASK,
    ProtocolFeature,
    Request,
    U64Payload,
    build_ack,
    build_reply,
)
from vhost.scm import ANC_SIZE, close_fds, fds_from

#: What the prelude takes: the request and the payload size it must have. A GET in
#: ``answers`` is answered; the others are recorded for the backend (the ones with
#: NEED_REPLY acked as success once REPLY_ACK is negotiated: the replay checks it).
EXPECTED_SIZE = {
    Request.GET_FEATURES: 0, Request.GET_PROTOCOL_FEATURES: 0, Request.GET_QUEUE_NUM: 0,
    Request.GET_MAX_MEM_SLOTS: 0, Request.SET_PROTOCOL_FEATURES: 8, Request.SET_OWNER: 0,
    Request.SET_BACKEND_REQ_FD: 0, Request.SET_VRING_CALL: 8, Request.SET_VRING_ERR: 8,
}
#: Realize takes 8 + 2 per queue; past this many the frontend is not realizing a device
#: (a bound on what the record holds).
MAX_TAKEN = 1024
#: While the prelude runs the main thread imports (holding the GIL): a short switch
#: interval lets the prelude answer within a millisecond instead of five.
_SWITCH_INTERVAL = 0.0005


@dataclass
class Taken:
    """One message the prelude took off the socket and what it answered (None: nothing)."""

    data: bytes
    fds: list[int]
    answer: bytes | None
    #: the ancillary data was truncated (more fds than MAX_FDS): a framing error to replay
    truncated: bool = False


@dataclass
class Record:
    """What the prelude hands over."""

    conn: socket.socket | None = None
    taken: list[Taken] = field(default_factory=list)

    def close(self) -> None:
        for t in self.taken:
            close_fds(t.fds)
        self.taken.clear()
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def realize_answers(num_queues: int, max_mem_slots: int, device_features: int = 0,
                    device_protocol_features: int = 0) -> dict[int, int]:
    """The GET answers, as ``vhost.backend.Backend`` gives them for a device with these
    properties (its replay refuses any other)."""
    from vhost.messages import BASE_FEATURES, BASE_PROTOCOL_FEATURES

    return {Request.GET_FEATURES: int(BASE_FEATURES) | device_features,
            Request.GET_PROTOCOL_FEATURES: int(BASE_PROTOCOL_FEATURES) | device_protocol_features,
            Request.GET_QUEUE_NUM: num_queues,
            Request.GET_MAX_MEM_SLOTS: max_mem_slots}


class Prelude:
    """Answers the realize handshake on ``sock`` (listening: the first connection is
    accepted; connected: used as it is) until ``finish``."""

    def __init__(self, sock: socket.socket, answers: Mapping[int, int]) -> None:
        self._sock = sock
        self._answers = {int(k): build_reply(k, U64Payload(v)) for k, v in answers.items()}
        self._offered_protocol = answers.get(Request.GET_PROTOCOL_FEATURES, 0)
        self._protocol = 0
        self._record = Record()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="vhost-prelude", daemon=True)
        self._switch = sys.getswitchinterval()
        #: why it stopped taking messages (for the daemon's debug log)
        self.stopped_by = "finish"

    def start(self) -> Prelude:
        sys.setswitchinterval(_SWITCH_INTERVAL)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Still taking messages (False once it stopped by itself, or finished)."""
        return self._thread.is_alive()

    def finish(self) -> Record:
        """Stop, join, and hand over the connection (None if no frontend connected yet)
        and the messages taken. The caller owns both from here (``Record.close``)."""
        os.write(self._wake_w, b"x")
        self._thread.join()
        sys.setswitchinterval(self._switch)
        os.close(self._wake_r)
        os.close(self._wake_w)
        return self._record

    # ---- the thread ----------------------------------------------------------------------

    def _readable(self, sock: socket.socket) -> bool:
        """Wait until ``sock`` is readable or hung up (True) or ``finish`` was called
        (False)."""
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        return all(fd != self._wake_r for fd, _ in poller.poll())

    def _run(self) -> None:
        try:
            self._serve()
        except OSError as e:
            # The backend meets the same error on its own first read: it decides.
            self.stopped_by = f"error: {e}"

    def _serve(self) -> None:
        if self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            if not self._readable(self._sock):
                return
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                self.stopped_by = "no connection to accept"
                return
            conn.setblocking(True)
        else:
            conn = self._sock.dup()
            conn.setblocking(True)
        self._record.conn = conn
        while self._readable(conn):
            why = self._take_one(conn)
            if why:
                self.stopped_by = why
                return

    def _take_one(self, conn: socket.socket) -> str | None:
        """Take and answer the next message; or, leaving it unread, say why not."""
        if len(self._record.taken) >= MAX_TAKEN:
            return f"{MAX_TAKEN} messages taken"
        head = conn.recv(HEADER_SIZE, socket.MSG_PEEK)
        if len(head) < HEADER_SIZE:
            return "end of stream or a partial header"
        request, flags, size = HEADER.unpack(head)
        if EXPECTED_SIZE.get(request) != size:
            return f"request {request} (size {size})"
        if flags & VERSION_MASK != VERSION or flags & ~(VERSION_MASK | FLAG_NEED_REPLY):
            return f"request {request} with flags {flags:#x}"
        if request in (Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                       Request.GET_QUEUE_NUM, Request.GET_MAX_MEM_SLOTS) \
                and request not in self._answers:
            return f"request {request} has no answer here"
        if len(conn.recv(HEADER_SIZE + size, socket.MSG_PEEK)) < HEADER_SIZE + size:
            return "a partial message"
        if (request in self._answers or flags & FLAG_NEED_REPLY) and not _writable(conn):
            # The thread must never block on a frontend that does not read its answers:
            # ``finish`` joins it. Writable, a Unix socket has room for a 20-byte answer.
            return "the frontend is not reading its answers"
        data, anc, msg_flags, _ = conn.recvmsg(HEADER_SIZE + size, ANC_SIZE,
                                               socket.MSG_CMSG_CLOEXEC)
        taken = Taken(data, fds_from(anc), None, truncated=bool(msg_flags & socket.MSG_CTRUNC))
        self._record.taken.append(taken)
        if taken.truncated:
            return "ancillary data truncated"
        if request == Request.SET_PROTOCOL_FEATURES:
            value = int.from_bytes(data[HEADER_SIZE:], "little")
            if value & ~self._offered_protocol:
                return "protocol features that were not offered"
            self._protocol = value
        answer = self._answers.get(request)
        if answer is None and flags & FLAG_NEED_REPLY \
                and self._protocol & ProtocolFeature.REPLY_ACK:
            answer = build_ack(request, True)
        if answer is not None:
            taken.answer = answer
            conn.sendall(answer)
        return None


def _writable(conn: socket.socket) -> bool:
    poller = select.poll()
    poller.register(conn, select.POLLOUT)
    return bool(poller.poll(0))
