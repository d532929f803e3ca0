"""Class 1: vhost-user protocol messages, malformed on purpose, on a fresh connection.

A session starts from nothing, from a partial handshake or from a full one (REPLY_ACK
negotiated, so most failures are answered rather than ending the connection), then sends
messages drawn from every request type with: values out of range (queue indexes, sizes,
bases, feature bits), rings outside or across guest regions, bad memory tables (zero,
huge, overlapping, wrapping regions, offsets past the fd's end, too few or too many
fds), fds of the wrong kind (pipe, socket, /dev/null, O_PATH, zero-sized memfd), payloads
of the wrong size, bad version or reply flags, unknown request types, out-of-order
starts and stops; and, rarely, a header whose size lies (the stream desynchronises) or
more fds than a message may carry.

While the stream is in sync every message that must be answered (a GET, or NEED_REPLY
with REPLY_ACK in force) must get an answer or a hang-up before the deadline, else it is
a hang. A step of the log is one message: its bytes and the kinds of fds sent with it.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from tools.fuzz.findings import Stats
from tools.fuzz.session import DEADLINE, Hang, Result, connected
from vhost.guest_ram import GuestRam
from vhost.messages import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HAS_REPLY,
    HEADER,
    MEM_REGION,
    VERSION,
    ProtocolFeature,
    Request,
)

NQUEUES = 2
RING_QSIZE = 16
FD_KINDS = ("eventfd", "memfd", "memfd0", "pipe", "devnull", "socket", "opath", "file")
LAYOUT = ((0, 2 << 20), (4 << 20, 1 << 20))
#: What the backend implements (the rest is answered ENOSYS): drawn most often.
SUPPORTED = [Request.GET_FEATURES, Request.SET_FEATURES, Request.SET_OWNER,
             Request.RESET_OWNER, Request.SET_MEM_TABLE, Request.SET_VRING_NUM,
             Request.SET_VRING_ADDR, Request.SET_VRING_BASE, Request.GET_VRING_BASE,
             Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR,
             Request.GET_PROTOCOL_FEATURES, Request.SET_PROTOCOL_FEATURES,
             Request.GET_QUEUE_NUM, Request.SET_VRING_ENABLE, Request.SET_BACKEND_REQ_FD,
             Request.GET_CONFIG, Request.SET_CONFIG, Request.RESET_DEVICE,
             Request.GET_MAX_MEM_SLOTS, Request.ADD_MEM_REG, Request.REM_MEM_REG]


@contextmanager
def make_fds(kinds: list[str], ram: GuestRam, tmp: Path) -> Iterator[list[int]]:
    """Fds of the given kinds ("ram" is the guest memory's own memfd, not closed here)."""
    fds: list[int] = []
    extra: list[int] = []
    try:
        for k in kinds:
            if k == "ram":
                fds.append(ram.fd)
                continue
            if k == "eventfd":
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            elif k in ("memfd", "memfd0"):
                fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
                os.ftruncate(fd, 0 if k == "memfd0" else 1 << 16)
            elif k == "pipe":
                fd, w = os.pipe()
                extra.append(w)
            elif k == "devnull":
                fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            elif k == "socket":
                a, b = socket.socketpair()
                fd = a.detach()
                extra.append(b.detach())
            elif k == "opath":
                fd = os.open(tmp, os.O_PATH | os.O_CLOEXEC)
            else:
                fd = os.open(tmp / "file", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                os.ftruncate(fd, 1 << 16)
            fds.append(fd)
        yield fds
    finally:
        for fd, k in zip(fds, kinds, strict=False):
            if k != "ram":
                os.close(fd)
        for fd in extra:
            os.close(fd)


class Gen:
    """Draws one message: (request, flags, payload, fd kinds, header size or None)."""

    def __init__(self, rng: random.Random, ram: GuestRam) -> None:
        self.rng = rng
        self.ram = ram

    def addr(self) -> int:
        """A ring or region address: mostly inside guest memory, often at its edges."""
        rng, ram = self.rng, self.ram
        r = rng.choice(ram.regions)
        return rng.choice((
            r.host, r.host + rng.randrange(0, r.size, 16), r.host + r.size - 8,
            r.host + r.size, r.host - 16, r.host + rng.randrange(r.size), 0, 2**64 - 16,
            rng.randrange(0, 2**64), r.gpa, r.gpa + r.size // 2))

    def queue(self) -> int:
        return self.rng.choice((0, 1, 1, 2, 255, self.rng.randrange(0, 256)))

    def regions(self) -> tuple[bytes, list[str]]:
        rng, ram = self.rng, self.ram
        n = rng.choice((1, 1, 2, 2, 3, 8, 9, 0))
        body, fds = b"", []
        for i in range(n):
            if ram.regions and rng.random() < 0.6:
                r = ram.regions[i % len(ram.regions)]
                gpa, size, uaddr, off = r.gpa, r.size, r.host, r.offset
            else:
                gpa, size, uaddr, off = 0, 1 << 20, 1 << 30, 4096
            x = rng.randrange(10)
            if x == 0:
                size = rng.choice((0, 1, 2**64 - 1, 1 << 40))
            elif x == 1:
                gpa = rng.choice((2**64 - 4096, gpa + 4096, 1 << 20))
            elif x == 2:
                off = rng.choice((1 << 30, 2**64 - 4096, 1, off + 1))
            elif x == 3:
                uaddr = rng.choice((0, 2**64 - 4096, uaddr + 1))
            body += MEM_REGION.pack(gpa, size, uaddr, off)
            fds.append("ram" if rng.random() < 0.8 else rng.choice(FD_KINDS))
        count = n if rng.random() < 0.9 else rng.choice((0, n + 1, 2**32 - 1))
        if rng.random() < 0.1:
            fds = fds[:-1] if fds and rng.random() < 0.5 else [*fds, "memfd"]
        return struct.pack("<II", count, 0) + body, fds

    def message(self) -> tuple[int, int, bytes, list[str], int | None]:
        rng = self.rng
        x = rng.random()
        req = (rng.choice(SUPPORTED) if x < 0.8 else rng.choice(list(Request)) if x < 0.97
               else rng.randrange(0, 2**32))
        fds: list[str] = []
        q = self.queue()
        if req in (Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.GET_VRING_BASE,
                   Request.SET_VRING_ENABLE, Request.SET_VRING_ENDIAN, Request.VRING_KICK):
            num = rng.choice((0, 1, 2, 3, 16, 64, 1024, 2048, 0xFFFF, 0x10000, 2**32 - 1))
            payload = struct.pack("<II", q, num)
        elif req == Request.SET_VRING_ADDR:
            payload = struct.pack("<IIQQQQ", q, rng.choice((0, 0, 0, 1, 2)), self.addr(),
                                  self.addr(), self.addr(), rng.choice((0, self.addr())))
        elif req in (Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR):
            nofd = rng.random() < 0.15
            v = q | (0x100 if nofd else 0) | (rng.choice((0x200, 1 << 40)) if rng.random() < 0.05 else 0)
            payload = struct.pack("<Q", v)
            if not nofd or rng.random() < 0.1:
                fds = [rng.choice(("eventfd",) * 4 + FD_KINDS)]
        elif req == Request.SET_MEM_TABLE:
            payload, fds = self.regions()
        elif req in (Request.ADD_MEM_REG, Request.REM_MEM_REG):
            body, fds = self.regions()
            payload = struct.pack("<Q", 0) + body[8:8 + 32].ljust(32, b"\0")
            fds = fds[:1] if req == Request.ADD_MEM_REG or rng.random() < 0.5 else []
        elif req in (Request.SET_FEATURES, Request.SET_PROTOCOL_FEATURES, Request.SET_LOG_BASE,
                     Request.SET_STATUS, Request.SEND_RARP, Request.NET_SET_MTU):
            v = rng.choice((0, 1 << 32 | 1 << 30 | 1 << 29 | 1 << 28, 0xFFFF, 2**64 - 1,
                            (1 << 32) | (1 << 30), int(ProtocolFeature.REPLY_ACK | ProtocolFeature.MQ),
                            rng.randrange(0, 2**64)))
            payload = struct.pack("<Q", v)
        elif req in (Request.GET_CONFIG, Request.SET_CONFIG):
            off = rng.choice((0, 0, 36, 40, 255, 256, 2**32 - 1))
            size = rng.choice((0, 4, 36, 40, 256, 257, 2**32 - 1))
            real = min(size, 300) if rng.random() < 0.9 else rng.randrange(0, 300)
            payload = struct.pack("<III", off, size, rng.choice((0, 1))) + rng.randbytes(real)
        elif req in (Request.SET_BACKEND_REQ_FD, Request.SET_LOG_FD, Request.GPU_SET_SOCKET):
            payload = b""
            fds = [rng.choice(FD_KINDS)]
        else:
            payload = rng.randbytes(rng.choice((0, 0, 8, 16, 40)))
        # structural damage
        x = rng.random()
        if x < 0.08:
            payload = payload[:rng.randrange(0, len(payload) + 1)] if payload else b"\0" * 8
        elif x < 0.14:
            payload += rng.randbytes(rng.choice((1, 8, 64)))
        if rng.random() < 0.05:
            fds = fds + [rng.choice(FD_KINDS)] * rng.randrange(1, 4)
        flags = VERSION | FLAG_NEED_REPLY
        y = rng.random()
        if y < 0.04:
            flags = rng.choice((0, 2, 3, VERSION | FLAG_REPLY, 0xFFFFFFFF))
        elif y < 0.07:
            flags = VERSION
        size: int | None = None
        z = rng.random()
        if z < 0.01:
            size = rng.choice((len(payload) + 1, 4097, 2**32 - 1))   # the header lies
        elif z < 0.015:
            fds = ["eventfd"] * rng.choice((9, 16, 253))             # more than MAX_FDS
        return int(req), flags, payload, fds, size


async def run(sock: Path, rng: random.Random, budget: int, stats: Stats,
              replay: list[Any] | None = None) -> Result:
    """Connections one after another until ``budget`` messages are sent: a hostile
    frontend that gets hung up on simply comes back. Each connection's steps start with
    ["start", how]."""
    res = Result()
    todo = iter(replay) if replay is not None else None
    pending: list[Any] | None = None
    while res.inputs < budget:
        if todo is not None:
            first = pending or next(todo, None)
            if first is None:
                break
            start = first[1]
        else:
            start = rng.choice(("none", "features", "full", "full", "full", "full"))
            res.steps.append(["start", start])
        pending = await _connection(sock, rng, start, budget, stats, res, todo)
        if todo is not None and pending is None:
            break
    return res


async def _connection(sock: Path, rng: random.Random, start: str, budget: int,
                      stats: Stats, res: Result, todo: Iterator[Any] | None) -> list[Any] | None:
    """One connection. Returns the next connection's start step when replaying."""
    ram = GuestRam(LAYOUT)
    tmp = sock.parent
    try:
        async with connected(sock, ram) as fe:
            acks = False
            offered: int | None = None
            with trio.fail_after(DEADLINE):
                if start == "features":
                    await fe.get_u64(Request.GET_FEATURES)
                    await fe.request(Request.SET_FEATURES, struct.pack("<Q", (1 << 32) | (1 << 30)))
                    offered = await fe.get_u64(Request.GET_PROTOCOL_FEATURES)
                    await fe.request(Request.SET_PROTOCOL_FEATURES,
                                     struct.pack("<Q", int(ProtocolFeature.REPLY_ACK)))
                    acks = True
                elif start == "full":
                    await fe.handshake([RING_QSIZE] * NQUEUES, slot_size=4096)
                    acks = fe.need_reply
                    offered = fe.backend_protocol_features
            gen = Gen(rng, ram)
            in_sync = True
            while res.inputs < budget:
                if todo is not None:
                    step = next(todo, None)
                    if step is None:
                        return None
                    if step[0] == "start":
                        return step
                    data, kinds = bytes.fromhex(step[0]), step[1]
                    req, flags, size = HEADER.unpack_from(data)
                    payload = data[HEADER.size:]
                    lies = size != len(payload)
                else:
                    req, flags, payload, kinds, lie = gen.message()
                    lies = lie is not None
                    data = HEADER.pack(req, flags, len(payload) if lie is None else lie) + payload
                    res.steps.append([data.hex(), kinds])
                res.inputs += 1
                with make_fds(kinds, ram, tmp) as fds:
                    try:
                        await fe.send_raw(data, fds)
                    except (BrokenPipeError, ConnectionResetError):
                        stats.outcomes["hung up before the message"] += 1
                        return _skip_to_start(todo)
                if lies or len(kinds) > 8 or len(payload) > 4096:
                    in_sync = False  # the backend's framing is off (or it hangs up)
                if not in_sync:
                    continue
                expect, acks = _expect_answer(req, flags, payload, acks, offered)
                if not expect:
                    stats.replies[(_name(req), "no answer asked")] += 1
                    continue
                with trio.move_on_after(DEADLINE) as cs:
                    try:
                        raw = await fe.conn.recv_message()
                    except OSError:
                        raw = None
                if cs.cancelled_caught:
                    res.hang = f"message {res.inputs - 1} ({_name(req)}) unanswered"
                    raise Hang(res.hang)
                if raw is None:
                    stats.outcomes["hung up"] += 1
                    return _skip_to_start(todo)
                rreq, _rflags, rpayload, rfds = raw
                for fd in rfds:
                    os.close(fd)
                if rreq != req:
                    stats.replies[(_name(req), "answer to another request")] += 1
                elif rreq not in HAS_REPLY and len(rpayload) == 8:
                    ok = struct.unpack("<Q", rpayload)[0] == 0
                    stats.replies[(_name(req), "OK" if ok else "ack failed")] += 1
                else:
                    stats.replies[(_name(req), "OK")] += 1
            stats.outcomes["connection ran to the session's end"] += 1
    finally:
        with contextlib.suppress(Exception):
            ram.close()
    return None


def _skip_to_start(todo: Iterator[Any] | None) -> list[Any] | None:
    """Replaying: the rest of this connection's steps were never sent (it hung up)."""
    if todo is None:
        return None
    for step in todo:
        if step[0] == "start":
            return step
    return None


def _expect_answer(req: int, flags: int, payload: bytes, acks: bool,
                   offered: int | None) -> tuple[bool, bool]:
    """Must the backend answer this in-sync message (or hang up)? And is REPLY_ACK in
    force after it? A GET is always answered; anything else only when it asks for an
    ack and acks are on: as they are *after* the message for SET_PROTOCOL_FEATURES that
    succeeds (the backend acks with its new features), before it when it fails."""
    need = bool(flags & FLAG_NEED_REPLY)
    if req in HAS_REPLY:
        return True, acks
    if req == Request.SET_PROTOCOL_FEATURES:
        valid = flags & 3 == VERSION and not flags & FLAG_REPLY and len(payload) == 8
        if not valid:
            return need and acks, acks
        if offered is None:
            return False, False  # cannot tell whether it took: expect no acks from now
        value = struct.unpack("<Q", payload)[0]
        if value & ~offered:
            return need and acks, acks
        after = bool(value & ProtocolFeature.REPLY_ACK)
        return need and after, after
    return need and acks, acks


def _name(req: int) -> str:
    try:
        return Request(req).name
    except ValueError:
        return "UNKNOWN"
