"""The virtio driver's side of split rings, the part a guest kernel plays: one queue's
descriptor table, avail and used rings laid out in ``GuestRam``, descriptor chains
posted, kicks, the call eventfd waited on and used elements read back (honouring
EVENT_IDX both ways). ``vhost.frontend`` hands the rings to a backend over vhost-user.

It also crafts bad input on purpose: ``FrontendQueue.write_desc``/``publish``/
``set_avail_idx`` write arbitrary descriptors and indexes.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from vhost._native import ffi, lib
from vhost.connection import close_fds
from vhost.guest_ram import PAGE, GuestRam

DESC = struct.Struct("<QIHH")
USED_ELEM = struct.Struct("<II")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


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
        p = self.lay_out(readable, writable_sizes, indirect, keep)
        self.inflight[p.head] = p
        self.publish([p.head])
        return p

    def lay_out(self, readable: Sequence[bytes], writable_sizes: Sequence[int],
                indirect: bool = False, keep: int | None = None) -> Pending:
        """One chain written into a free slot and free descriptors, not yet available:
        ``post`` publishes it; vhost/cdriver.py posts the chains it prepared itself."""
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
        return Pending(descs[0], descs, slot, writable, contiguous=True, keep=keep)

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
