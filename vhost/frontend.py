"""A vhost-user frontend: the role QEMU plays, so devices are tested and benchmarked
without a VM.

It runs the handshake QEMU 7.2 runs for vhost-user-fs-pci over a real Unix socket,
handing the backend the memory table of its ``GuestRam`` (``vhost.guest_ram``) and the
rings its virtio driver (``vhost.driver``: ``FrontendQueue``) lays out there, and
submits requests through those rings.

It also crafts bad input on purpose: ``Frontend.send_raw`` sends arbitrary bytes and
fds (``FrontendQueue`` crafts bad rings).

Typical use:

    fe = await Frontend.connect(path)            # or Frontend(Connection(sock), GuestRam())
    await fe.handshake([128])                    # one queue of 128 entries
    done = await fe.submit(0, [b"hello"], [64]) # readable buffers, writable sizes
    assert done.data == b"hello"
    await fe.close()
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

import trio

from vhost.connection import Connection, close_fds
from vhost.driver import Completion, FrontendQueue
from vhost.guest_ram import GuestRam
from vhost.messages import (
    HAS_REPLY,
    Config,
    Feature,
    MemTable,
    MessageError,
    Payload,
    ProtocolFeature,
    Reply,
    Request,
    U64Payload,
    VringAddr,
    VringFile,
    VringState,
    build,
    encode,
    parse_reply,
)


class Frontend:
    """Drives one backend over a Unix socket."""

    def __init__(self, conn: Connection, ram: GuestRam | None = None) -> None:
        self.conn = conn
        self.ram = ram if ram is not None else GuestRam()
        self.queues: list[FrontendQueue] = []
        self.features = 0
        self.protocol_features = 0
        self.backend_features = 0
        self.backend_protocol_features = 0
        self.need_reply = False
        self._backend_req: socket.socket | None = None

    @classmethod
    async def connect(cls, path: str, ram: GuestRam | None = None) -> Frontend:
        s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await s.connect(path)
        except BaseException:
            s.close()
            raise
        return cls(Connection(s), ram)

    # ---- messages ----------------------------------------------------------------------

    async def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        await self.conn.send(data, fds)

    async def recv_reply(self, request: int) -> Reply:
        raw = await self.conn.recv_message()
        if raw is None:
            raise EOFError("backend closed the connection")
        req, flags, payload, fds = raw
        close_fds(fds)
        if req != request:
            raise MessageError(f"reply to {req}, expected {request}")
        return parse_reply(req, flags, payload)

    async def request(self, request: Request, body: Payload | bytes = b"",
                      fds: Sequence[int] = (), need_reply: bool | None = None) -> bytes | None:
        """Send one request; returns the reply payload if one is expected. A failed
        REPLY_ACK raises MessageError."""
        if need_reply is None:
            need_reply = self.need_reply and request not in HAS_REPLY
        payload = body if isinstance(body, bytes) else encode(body)
        await self.conn.send(build(request, payload, need_reply=need_reply), fds)
        if request in HAS_REPLY:
            return (await self.recv_reply(request)).payload
        if need_reply:
            reply = await self.recv_reply(request)
            (status,) = struct.unpack("<Q", reply.payload)
            if status:
                raise MessageError(f"{request.name} failed (ack {status})")
            return reply.payload
        return None

    async def get_u64(self, request: Request) -> int:
        payload = await self.request(request)
        assert payload is not None
        return struct.unpack("<Q", payload)[0]

    # ---- handshake -----------------------------------------------------------------------

    async def handshake(self, queue_sizes: Sequence[int] = (128,), *,
                        features: int | None = None, protocol_features: int | None = None,
                        mem_slots: bool = False, slot_size: int = 16 * 1024,
                        enable: bool = True) -> None:
        """QEMU 7.2's vhost-user-fs start sequence. ``features``/``protocol_features``
        default to everything the backend offers that this frontend implements."""
        self.backend_features = await self.get_u64(Request.GET_FEATURES)
        mine = (Feature.VERSION_1 | Feature.RING_INDIRECT_DESC | Feature.RING_EVENT_IDX
                | Feature.PROTOCOL_FEATURES)
        self.features = (self.backend_features & mine) if features is None else features
        if self.features & Feature.PROTOCOL_FEATURES:
            self.backend_protocol_features = await self.get_u64(Request.GET_PROTOCOL_FEATURES)
            my_proto = (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK
                        | ProtocolFeature.BACKEND_REQ | ProtocolFeature.CONFIG
                        | ProtocolFeature.RESET_DEVICE
                        | (ProtocolFeature.CONFIGURE_MEM_SLOTS if mem_slots else 0))
            self.protocol_features = (self.backend_protocol_features & my_proto
                                      if protocol_features is None else protocol_features)
            await self.request(Request.SET_PROTOCOL_FEATURES,
                               U64Payload(self.protocol_features))
            self.need_reply = bool(self.protocol_features & ProtocolFeature.REPLY_ACK)
        if self.protocol_features & ProtocolFeature.MQ:
            n = await self.get_u64(Request.GET_QUEUE_NUM)
            if n < len(queue_sizes):
                raise MessageError(f"backend has {n} queues, {len(queue_sizes)} wanted")
        if self.protocol_features & ProtocolFeature.CONFIGURE_MEM_SLOTS:
            slots = await self.get_u64(Request.GET_MAX_MEM_SLOTS)
            if slots < len(self.ram.regions):
                raise MessageError(f"backend takes {slots} memory slots")
        if self.protocol_features & ProtocolFeature.BACKEND_REQ:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._backend_req = ours
            try:
                await self.request(Request.SET_BACKEND_REQ_FD, fds=[theirs.fileno()])
            finally:
                theirs.close()
        await self.request(Request.SET_OWNER)
        await self.request(Request.SET_FEATURES, U64Payload(self.features))
        await self.set_memory()
        for i, size in enumerate(queue_sizes):
            q = FrontendQueue(i, size, self.ram, slot_size,
                              event_idx=bool(self.features & Feature.RING_EVENT_IDX))
            self.queues.append(q)
            await self.start_queue(i, enable=enable)

    async def set_memory(self) -> None:
        regions = [r.as_message() for r in self.ram.regions]
        if self.protocol_features & ProtocolFeature.CONFIGURE_MEM_SLOTS:
            for r in regions:
                await self.request(Request.ADD_MEM_REG, r, fds=[self.ram.fd])
        else:
            await self.request(Request.SET_MEM_TABLE, MemTable(tuple(regions)),
                               fds=[self.ram.fd] * len(regions))

    async def start_queue(self, i: int, base: int = 0, enable: bool = True) -> None:
        q = self.queues[i]
        await self.request(Request.SET_VRING_NUM, VringState(i, q.size))
        await self.request(Request.SET_VRING_BASE, VringState(i, base))
        r_desc, r_avail, r_used = (self.ram.uaddr(a) for a in (q.desc, q.avail, q.used))
        await self.request(Request.SET_VRING_ADDR, VringAddr(i, 0, r_desc, r_used, r_avail, 0))
        await self.request(Request.SET_VRING_KICK, VringFile(i, True), fds=[q.kick_fd])
        await self.request(Request.SET_VRING_CALL, VringFile(i, True), fds=[q.call_fd])
        await self.request(Request.SET_VRING_ERR, VringFile(i, True), fds=[q.err_fd])
        if enable and self.features & Feature.PROTOCOL_FEATURES:
            await self.request(Request.SET_VRING_ENABLE, VringState(i, 1))

    async def stop_queue(self, i: int) -> int:
        """SET_VRING_ENABLE 0 + GET_VRING_BASE (QEMU's stop); returns the base."""
        if self.features & Feature.PROTOCOL_FEATURES:
            await self.request(Request.SET_VRING_ENABLE, VringState(i, 0))
        payload = await self.request(Request.GET_VRING_BASE, VringState(i, 0))
        assert payload is not None
        index, base = struct.unpack("<II", payload)
        if index != i:
            raise MessageError(f"GET_VRING_BASE answered for queue {index}")
        return base

    async def restart_queue(self, i: int) -> None:
        """Stop, wipe the rings (e.g. after the guest broke them) and start afresh."""
        await self.stop_queue(i)
        self.queues[i].reset_rings()
        await self.start_queue(i)

    async def get_config(self, offset: int, size: int) -> bytes | None:
        payload = await self.request(Request.GET_CONFIG, Config(offset, size, 0, bytes(size)))
        assert payload is not None
        if not payload:
            return None
        return payload[12:]

    # ---- requests through the rings -----------------------------------------------------------

    async def submit(self, queue: int, readable: Sequence[bytes], writable_sizes: Sequence[int],
                     indirect: bool = False) -> Completion:
        """One chain: post, kick, wait for it to be used."""
        q = self.queues[queue]
        p = q.post(readable, writable_sizes, indirect)
        q.kick()
        return await q.wait(p)

    async def submit_many(self, queue: int,
                          requests: Sequence[tuple[Sequence[bytes], Sequence[int]]],
                          indirect: bool = False, keep: int | None = None) -> list[Completion]:
        """Several chains with one kick (at most the queue size at a time)."""
        q = self.queues[queue]
        pend = [q.post(r, w, indirect, keep) for r, w in requests]
        q.kick()
        return [await q.wait(p) for p in pend]

    async def close(self) -> None:
        self.conn.close()
        for q in self.queues:
            q.close()
        if self._backend_req is not None:
            self._backend_req.close()
        self.ram.close()
