"""A vhost-user frontend: the role QEMU plays, so devices are tested and benchmarked
without a VM.

It owns memfd-backed "guest" memory (``GuestRam``: one or several regions at non-zero
offsets of one memfd, each mapped here with PROT_NONE guard pages around it), lays out
split rings inside it, runs the handshake QEMU 7.2 runs for vhost-user-fs-pci over a
real Unix socket, and plays the virtio driver: it posts descriptor chains, kicks, waits
on the call eventfd and reads used elements back (honouring EVENT_IDX both ways).

It also crafts bad input on purpose: ``FrontendQueue.write_desc``/``publish``/
``set_avail_idx`` write arbitrary descriptors and indexes, and ``Frontend.send_raw``
sends arbitrary bytes and fds.

Typical use:

    fe = await Frontend.connect(path)            # or Frontend(Connection(sock), GuestRam())
    await fe.handshake([128])                    # one queue of 128 entries
    done = await fe.submit(0, [b"hello"], [64]) # readable buffers, writable sizes
    assert done.data == b"hello"
    await fe.close()
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from vhost._native import ffi, lib
from vhost.connection import Connection, close_fds
from vhost.messages import (
    HAS_REPLY,
    Config,
    Feature,
    MemRegion,
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

PAGE = 4096
DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


@dataclass
class RamRegion:
    gpa: int
    size: int
    offset: int        # in the memfd
    host: int          # our mapping (also the "user address" we tell the backend)
    buf: Any           # memoryview over the mapping

    def as_message(self) -> MemRegion:
        return MemRegion(self.gpa, self.size, self.host, self.offset)


class GuestRam:
    """memfd-backed guest memory. ``layout`` is [(gpa, size), ...]; the regions live at
    increasing, page-separated offsets of one memfd (so mmap offsets are exercised)."""

    def __init__(self, layout: Sequence[tuple[int, int]] = ((0, 16 << 20),),
                 guard: int = 64 * 1024) -> None:
        self.fd = os.memfd_create("msbfs-guest", os.MFD_CLOEXEC)
        self.guard = guard
        self.regions: list[RamRegion] = []
        offset = PAGE  # never 0, on purpose
        try:
            for gpa, size in layout:
                os.ftruncate(self.fd, offset + size)
                p = lib.msb_map_guarded(self.fd, size, offset, guard)
                if p == ffi.NULL:
                    raise OSError(ffi.errno, os.strerror(ffi.errno))
                self.regions.append(RamRegion(gpa, size, offset,
                                              int(ffi.cast("uintptr_t", p)),
                                              memoryview(ffi.buffer(p, size))))
                offset += size + PAGE
        except BaseException:
            self.close()
            raise
        self._next = [0] * len(self.regions)  # bump allocator per region

    def region_of(self, gpa: int, length: int = 1) -> tuple[RamRegion, int]:
        for r in self.regions:
            if r.gpa <= gpa and gpa + length <= r.gpa + r.size:
                return r, gpa - r.gpa
        raise ValueError(f"[{gpa:#x}, +{length:#x}) is not guest RAM")

    def alloc(self, size: int, align: int = 16, region: int | None = None) -> int:
        """A never-freed block (rings, data arenas); returns its guest address."""
        order = range(len(self.regions)) if region is None else (region,)
        for i in order:
            r = self.regions[i]
            start = (self._next[i] + align - 1) // align * align
            if start + size <= r.size:
                self._next[i] = start + size
                return r.gpa + start
        raise MemoryError(f"guest RAM exhausted allocating {size} bytes")

    def uaddr(self, gpa: int) -> int:
        """Our address of guest address ``gpa``: what the backend is told for rings."""
        r, off = self.region_of(gpa)
        return r.host + off

    def view(self, gpa: int, length: int) -> memoryview:
        r, off = self.region_of(gpa, length)
        return r.buf[off:off + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        self.view(gpa, len(data))[:] = data

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.view(gpa, length)[:] = bytes([byte]) * length

    def end(self) -> int:
        """First guest address past every region."""
        return max(r.gpa + r.size for r in self.regions)

    def close(self) -> None:
        for r in self.regions:
            r.buf.release()
            lib.msb_unmap_guarded(ffi.cast("void *", r.host), r.size, r.offset, self.guard)
        self.regions.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Completion:
    used_len: int
    data: bytes        # the first used_len bytes of the writable buffers


@dataclass
class Pending:
    head: int
    descs: list[int]
    slot: int
    writable: list[tuple[int, int]]      # (gpa, size) of each writable buffer
    done: bool = False
    #: The writable buffers follow one another in the arena: the reply is copied out
    #: with one slice (a 1 MiB READ reply gathered from parts and joined cost two
    #: copies and, per fresh 1 MiB allocation, 256 page faults: the benchmark measured
    #: this frontend instead of the daemons).
    contiguous: bool = False
    #: Copy at most this many reply bytes into ``Completion.data`` (None: all of it).
    #: A guest kernel leaves READ data in the pages the device wrote and copies
    #: nothing out; a benchmark that only needs the header says so with this.
    keep: int | None = None
    result: Completion | None = None


@dataclass
class FrontendQueue:
    """The driver side of one split ring in GuestRam, plus its eventfds."""

    index: int
    size: int
    ram: GuestRam
    slot_size: int = 16 * 1024
    desc: int = 0
    avail: int = 0
    used: int = 0
    arena: int = 0
    kick_fd: int = -1
    call_fd: int = -1
    err_fd: int = -1
    event_idx: bool = True
    avail_idx: int = 0           # our shadow of avail->idx
    kicked_idx: int = 0          # avail idx at the last kick
    last_used: int = 0
    free_descs: list[int] = field(default_factory=list)
    free_slots: list[int] = field(default_factory=list)
    inflight: dict[int, Pending] = field(default_factory=dict)
    lock: trio.Lock = field(default_factory=trio.Lock)
    kicks: int = 0
    calls_seen: int = 0

    def __post_init__(self) -> None:
        n = self.size
        self.desc = self.ram.alloc(16 * n, PAGE)
        self.avail = self.ram.alloc(6 + 2 * n, 2)
        self.used = self.ram.alloc(6 + 8 * n, PAGE)
        self.arena = self.ram.alloc(self.slot_size * n, PAGE)
        self.kick_fd, self.call_fd, self.err_fd = _eventfd(), _eventfd(), _eventfd()
        # views of the rings and the arena, so the driver's hot path does no lookups
        self._desc_mv = self.ram.view(self.desc, 16 * n)
        self._avail_mv = self.ram.view(self.avail, 6 + 2 * n)
        self._used_mv = self.ram.view(self.used, 6 + 8 * n)
        self._arena_mv = self.ram.view(self.arena, self.slot_size * n)
        # Ring indexes and flags are shared with a device that may run in another process
        # at the same moment: they must be read and written with single 16-bit accesses.
        # struct.pack_into/unpack_from move one byte at a time, so a device could see
        # avail->idx torn (e.g. the low byte already 0, the high byte not yet written),
        # read it as a jump past the queue size and rightly mark the ring broken.
        self._ring_bufs = (ffi.from_buffer(self._avail_mv), ffi.from_buffer(self._used_mv))
        self._avail16 = ffi.cast("uint16_t *", self._ring_bufs[0])
        self._used16 = ffi.cast("uint16_t *", self._ring_bufs[1])
        self.reset_rings()

    def reset_rings(self) -> None:
        n = self.size
        for gpa, length in ((self.desc, 16 * n), (self.avail, 6 + 2 * n),
                            (self.used, 6 + 8 * n)):
            self.ram.fill(gpa, length)
        self.avail_idx = self.kicked_idx = self.last_used = 0
        self.free_descs = list(range(n - 1, -1, -1))
        self.free_slots = list(range(n - 1, -1, -1))
        self.inflight.clear()

    def close(self) -> None:
        for buf in self._ring_bufs:
            ffi.release(buf)
        for mv in (self._desc_mv, self._avail_mv, self._used_mv, self._arena_mv):
            mv.release()
        close_fds([self.kick_fd, self.call_fd, self.err_fd])
        self.kick_fd = self.call_fd = self.err_fd = -1

    # ---- raw ring access (also for crafting bad input) ------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
                   table: int | None = None) -> None:
        """Descriptor ``i`` of the ring's table (or of an indirect table at ``table``)."""
        if table is None:
            DESC.pack_into(self._desc_mv, 16 * i, addr, length, flags, nxt)
        else:
            DESC.pack_into(self.ram.view(table + 16 * i, 16), 0, addr, length, flags, nxt)

    def publish(self, heads: Sequence[int]) -> None:
        """Put heads in the avail ring and move avail->idx past them."""
        avail16 = self._avail16
        for h in heads:
            avail16[2 + self.avail_idx % self.size] = h
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        lib.msb_mb()
        avail16[1] = self.avail_idx

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self._avail16[1] = self.avail_idx

    def used_idx(self) -> int:
        return self._used16[1]

    def avail_event(self) -> int:
        return self._used16[2 + 4 * self.size]

    def set_used_event(self, value: int) -> None:
        self._avail16[2 + self.size] = value & 0xFFFF

    def set_no_interrupt(self, on: bool) -> None:
        self._avail16[0] = 1 if on else 0

    # ---- the driver -------------------------------------------------------------------

    def post(self, readable: Sequence[bytes], writable_sizes: Sequence[int],
             indirect: bool = False, keep: int | None = None) -> Pending:
        """Lay out one chain (data in this request's slot) and make it available."""
        nbuf = len(readable) + len(writable_sizes)
        if nbuf == 0:
            raise ValueError("a chain needs at least one buffer")
        table_bytes = 16 * nbuf if indirect else 0
        need = table_bytes + sum(len(b) for b in readable) + sum(writable_sizes)
        if need > self.slot_size:
            raise ValueError(f"request needs {need} bytes, slot is {self.slot_size}")
        ndesc = 1 if indirect else nbuf
        if len(self.free_descs) < ndesc or not self.free_slots:
            raise BlockingIOError("queue full")
        slot = self.free_slots.pop()
        base = self.arena + slot * self.slot_size
        pos = base + table_bytes
        bufs: list[tuple[int, int, int]] = []
        for b in readable:
            if b:
                o = pos - self.arena
                self._arena_mv[o:o + len(b)] = b
            bufs.append((pos, len(b), 0))
            pos += len(b)
        writable = []
        for size in writable_sizes:
            bufs.append((pos, size, F_WRITE))
            writable.append((pos, size))
            pos += size
        descs = [self.free_descs.pop() for _ in range(ndesc)]
        if indirect:
            for i, (addr, length, flags) in enumerate(bufs):
                last = i == nbuf - 1
                self.write_desc(i, addr, length, flags | (0 if last else F_NEXT),
                                0 if last else i + 1, table=base)
            self.write_desc(descs[0], base, table_bytes, F_INDIRECT)
        else:
            for i, (addr, length, flags) in enumerate(bufs):
                last = i == nbuf - 1
                self.write_desc(descs[i], addr, length, flags | (0 if last else F_NEXT),
                                0 if last else descs[i + 1])
        p = Pending(descs[0], descs, slot, writable, contiguous=True, keep=keep)
        self.inflight[p.head] = p
        self.publish([p.head])
        return p

    def need_kick(self) -> bool:
        if not self.event_idx:
            return True
        lib.msb_mb()
        event, new, old = self.avail_event(), self.avail_idx, self.kicked_idx
        return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def kick(self, force: bool = False) -> bool:
        """Signal the kick eventfd if the device asked for it (or ``force``)."""
        need = force or self.need_kick()
        self.kicked_idx = self.avail_idx
        if need:
            os.eventfd_write(self.kick_fd, 1)
            self.kicks += 1
        return need

    def _reply_bytes(self, p: Pending, length: int) -> bytes:
        """The first ``length`` bytes the device wrote into ``p``'s writable buffers
        (at most ``p.keep``)."""
        if p.keep is not None:
            length = min(length, p.keep)
        if p.contiguous and p.writable:
            o = p.writable[0][0] - self.arena
            return bytes(self._arena_mv[o:o + min(length, sum(s for _, s in p.writable))])
        parts, left = [], length
        for gpa, size in p.writable:
            k = min(size, left)
            if k:
                o = gpa - self.arena
                if 0 <= o and o + k <= len(self._arena_mv):
                    parts.append(bytes(self._arena_mv[o:o + k]))
                else:  # a hand-made Pending may point anywhere in RAM
                    parts.append(self.ram.read(gpa, k))
            left -= k
        return b"".join(parts)

    def reap(self) -> list[Pending]:
        """Collect used elements; returns the completed requests."""
        done = []
        while True:
            lib.msb_mb()
            used_idx = self.used_idx()
            if ((used_idx - self.last_used) & 0xFFFF) > self.size:
                raise RuntimeError(f"queue {self.index}: device moved used idx to {used_idx}"
                                   f" from {self.last_used}")
            while self.last_used != used_idx:
                head, length = USED_ELEM.unpack_from(self._used_mv,
                                                     4 + 8 * (self.last_used % self.size))
                self.last_used = (self.last_used + 1) & 0xFFFF
                p = self.inflight.pop(head, None)
                if p is None:
                    raise RuntimeError(f"queue {self.index}: device used unknown head {head}")
                p.result = Completion(length, self._reply_bytes(p, length))
                p.done = True
                self.free_descs.extend(p.descs)
                self.free_slots.append(p.slot)
                done.append(p)
            # ask for an interrupt at the next used element, then look once more
            self.set_used_event(self.last_used)
            lib.msb_mb()
            if self.used_idx() == self.last_used:
                return done

    async def wait(self, p: Pending) -> Completion:
        """Until ``p`` is used (driven by the call eventfd)."""
        while not p.done:
            async with self.lock:
                if p.done:
                    break
                self.reap()
                if p.done:
                    break
                await trio.lowlevel.wait_readable(self.call_fd)
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self.call_fd)
                    self.calls_seen += 1
        assert p.result is not None
        return p.result

    def error_signalled(self) -> bool:
        """Has the backend signalled this queue's error eventfd (queue broken)?"""
        try:
            os.eventfd_read(self.err_fd)
            return True
        except BlockingIOError:
            return False


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

