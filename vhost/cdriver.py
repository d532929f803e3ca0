"""A request loop in C on one ``FrontendQueue`` (csrc/vdriver.c): for benchmarks and
tests that need a client cheaper than the device it drives.

The Python driver costs 8-15 us of CPU per request, more than a virtio-fs daemon spends
answering a GETATTR, so a Python client measures itself. Here Python lays out the
chains once (``FrontendQueue.lay_out``: request bytes, indirect table, reply buffer in
guest RAM), and ``msb_vdrv_run`` posts them ``count`` times in all, rewriting only each
request's unique, and checks each reply's header (unique, length, error field) in C with
the GIL released. Several loops on several queues therefore run in parallel threads.

    loop = CLoop(fe.queues[1], [([getattr_request], [16 + 104])] * 32)
    res = await loop.run(10_000, expect_len=16 + 104)   # in a worker thread
    assert res.completed == 10_000 and not res.errors and not res.bad
    loop.close()                                        # the slots go back to the queue

Chains in steps (``steps=``, ``carries=``): a cycle of requests where each waits for
the one before and takes from its reply, e.g. CREATE of a fresh name, RELEASE of the
fh it returned, UNLINK of the name; ``requests`` is then slot after slot, each slot its
steps' requests in order, and ``run`` counts cycles. ``listing`` lists a directory with
one READDIRPLUS chain, each request from the last reply's end.

While a loop runs, nothing else may use its queue (the C loop owns the ring's shadow
indexes; they are copied back to the ``FrontendQueue`` when it returns).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from vhost._native import ffi, lib
from vhost.driver import DESC, F_INDIRECT, F_WRITE, FrontendQueue

HDR = 16  # sizeof(struct fuse_out_header)

#: Uniques the loop posts start here, far above what ``Requests`` counts up to, so a
#: reply to a Python-posted request can never be taken for one of the loop's; each
#: queue's loop counts from its own 2**40 block, so uniques in flight are unique across
#: queues as a guest kernel's are.
FIRST_UNIQUE = 1 << 48


def first_unique(queue: int) -> int:
    return FIRST_UNIQUE + (queue << 40)


@dataclass
class LoopResult:
    completed: int   # replies reaped
    errors: int      # replies whose error field was not the expected one
    bad: int         # wrong unique, header length != used length, or wrong used length
    kicks: int
    waits: int       # sleeps on the call eventfd
    last_error: int  # error field of the last unexpected-error reply (negative errno)
    log: list[int] = field(default_factory=list)  # node ids the steps (or the listing) logged
    entries: int = 0  # listing: directory records listed


@dataclass(frozen=True)
class Step:
    """What step k of every cycle must be answered with, and what it leaves for later:
    ``name_at``: the offset in its request (fuse_in_header first) of 16 characters
    each cycle overwrites with its number in hex; ``log_at``: a reply offset whose 8
    bytes (a node id) ``run`` returns in ``LoopResult.log``."""

    len: int
    error: int = 0
    name_at: int = 0
    log_at: int = 0


@dataclass(frozen=True)
class Carry:
    """8 bytes of step ``from_step``'s reply at ``reply_at`` into the same cycle's
    request of step ``to_step`` at ``request_at`` (a node id, an fh)."""

    from_step: int
    reply_at: int
    to_step: int
    request_at: int


class CLoop:
    """``requests`` (readable buffers, writable sizes) laid out as chains on ``q``: one
    chain per request, each posted again and again by ``run``."""

    def __init__(self, q: FrontendQueue, requests: Sequence[tuple[Sequence[bytes], Sequence[int]]],
                 indirect: bool = True, *, steps: Sequence[Step] = (),
                 carries: Sequence[Carry] = ()) -> None:
        if not 0 < len(requests) <= q.size:
            raise ValueError(f"{len(requests)} chains on a queue of {q.size}")
        self._check_steps(requests, steps, carries)
        self.q = q
        self.pending = [q.lay_out(r, w, indirect) for r, w in requests]
        ram = q.ram
        n = len(self.pending)
        self._heads = ffi.new("uint16_t[]", [p.head for p in self.pending])
        self._requests = ffi.new("uint8_t *[]", [ffi.cast("uint8_t *", ram.uaddr(self._request_buf(p.head)[0]))
                                                 for p in self.pending])
        self._replies = ffi.new("uint8_t *[]", [ffi.cast("uint8_t *", ram.uaddr(p.writable[0][0]))
                                                for p in self.pending])
        self._uniques = ffi.new("uint64_t[]", n)
        d = self.d = ffi.new("struct msb_vdrv *")
        d.avail = ffi.cast("struct msb_vring_avail *", ram.uaddr(q.avail))
        d.used = ffi.cast("struct msb_vring_used *", ram.uaddr(q.used))
        d.num = q.size
        d.event_idx = q.event_idx
        d.kick_fd, d.call_fd, d.err_fd = q.kick_fd, q.call_fd, q.err_fd
        d.nchains = n
        d.heads, d.requests, d.replies, d.uniques = self._heads, self._requests, self._replies, self._uniques
        d.next_unique = first_unique(q.index)
        self.steps = tuple(steps)
        if steps:
            self._steps = ffi.new("struct msb_vdrv_step[]",
                                  [(st.error, st.len, st.name_at, st.log_at) for st in steps])
            self._carries = ffi.new("struct msb_vdrv_carry[]",
                                    [(c.from_step, c.to_step, c.reply_at, c.request_at)
                                     for c in carries] or 1)
            d.steps, d.nsteps = self._steps, len(steps)
            d.carries, d.ncarries = self._carries, len(carries)
        self._log = ffi.NULL

    @staticmethod
    def _check_steps(requests: Sequence[tuple[Sequence[bytes], Sequence[int]]],
                     steps: Sequence[Step], carries: Sequence[Carry]) -> None:
        """Every offset the C loop writes or reads inside the chain's first readable
        buffer or first writable one, for every slot (C checks only what it knows:
        offsets against the expected reply lengths)."""
        if not steps:
            if carries:
                raise ValueError("carries need steps")
            return
        n = len(steps)
        if len(requests) % n:
            raise ValueError(f"{len(requests)} chains are not slots of {n} steps")
        for i, (readable, writable) in enumerate(requests):
            st = steps[i % n]
            req, rep = len(readable[0]), writable[0] if writable else 0
            if st.name_at and not 40 <= st.name_at <= req - 16:
                raise ValueError(f"step {i % n}: name at {st.name_at} outside its {req}-byte request")
            if st.log_at and not HDR <= st.log_at <= min(rep, st.len) - 8:
                raise ValueError(f"step {i % n}: log at {st.log_at} outside its reply")
        for c in carries:
            if not 0 <= c.from_step < c.to_step < n:
                raise ValueError(f"carry {c}: from a step to a later one")
            for slot in range(0, len(requests), n):
                req = len(requests[slot + c.to_step][0][0])
                rep = requests[slot + c.from_step][1][0]
                if not 16 <= c.request_at <= req - 8 or not HDR <= c.reply_at <= min(rep, steps[c.from_step].len) - 8:
                    raise ValueError(f"carry {c}: outside a request or reply")

    def _request_buf(self, head: int) -> tuple[int, int]:
        """Where the chain's first readable buffer (its fuse_in_header) lies, and its
        length: read back from the descriptors ``lay_out`` wrote, through an indirect
        table if any."""
        addr, length, flags, _ = DESC.unpack(self.q.ram.read(self.q.desc + 16 * head, 16))
        if flags & F_INDIRECT:
            addr, length, flags, _ = DESC.unpack(self.q.ram.read(addr, 16))
        if flags & F_WRITE or length < 16:
            raise ValueError("a chain must start with a request header")
        return addr, length

    def run_blocking(self, count: int, *, batch: int | None = None, expect_error: int = 0,
                     expect_len: int | None = None, check: tuple[int, int] | None = None,
                     timeout: float = 60.0) -> LoopResult:
        """Post ``count`` requests (with steps: cycles); each reply must carry
        ``expect_error`` (0 or a negative errno) and, if it does, ``expect_len`` used
        bytes (with steps: its step's) and, with ``check`` (offset, value), the 32-bit
        ``value`` at that reply offset (a WRITE's size written). ``batch``: re-post once
        that many chains (with steps: slots) are ready (default: all of them, in
        lockstep, as ``Frontend.submit_many`` posts). Blocks; the GIL is released inside."""
        if (expect_len is None) != bool(self.steps):
            raise ValueError("expect_len without steps, and only then")
        at, value = check or (0, 0)
        if check and any(not HDR <= at <= p.writable[0][1] - 4 for p in self.pending):
            raise ValueError(f"check at {at}: outside a chain's first reply buffer")
        self.d.check_at, self.d.check_value = at, value
        logging = sum(1 for st in self.steps if st.log_at)
        self._set_log(count * logging)
        return self._call(lambda d: lib.msb_vdrv_run(
            d, count, batch or d.nchains // max(1, len(self.steps)), expect_error,
            expect_len or 0, int(timeout * 1000)))

    def listing(self, offset_at: int, room: int, *, most: int, timeout: float = 60.0) -> LoopResult:
        """One directory listed through chain 0, a READDIRPLUS whose 8 bytes at
        ``offset_at`` are its offset, ``room`` bytes of reply: from offset 0 until an
        empty reply, one request in flight. ``LoopResult.entries`` counts the records,
        ``log`` holds their node ids (up to ``most``). Blocks; the GIL is released."""
        if self.steps or not 16 < offset_at <= self._request_buf(self.pending[0].head)[1] - 8:
            raise ValueError("a listing is one plain chain, its offset inside its request")
        self._set_log(most)
        return self._call(lambda d: lib.msb_vdrv_listing(d, offset_at, room, int(timeout * 1000)))

    def patch(self, chain: int, at: int, data: bytes) -> None:
        """Rewrite bytes of chain ``chain``'s request (an fh a new OPENDIR returned)."""
        gpa, length = self._request_buf(self.pending[chain].head)
        if not 16 <= at <= length - len(data):
            raise ValueError(f"patch at {at} outside the request")
        self.q.ram.write(gpa + at, data)

    def _set_log(self, cap: int) -> None:
        self._log = ffi.new("uint64_t[]", cap) if cap else ffi.NULL
        self.d.log, self.d.log_cap = self._log, cap

    def _call(self, fn: Any) -> LoopResult:
        q, d = self.q, self.d
        d.avail_idx, d.kicked_idx, d.last_used = q.avail_idx, q.kicked_idx, q.last_used
        rc = fn(d)
        q.avail_idx, q.kicked_idx, q.last_used = d.avail_idx, d.kicked_idx, d.last_used
        q.kicks += d.kicks
        kept = min(d.nlog, d.log_cap)
        res = LoopResult(d.completed, d.errors, d.bad, d.kicks, d.waits, d.last_error,
                         list(self._log[0:kept]) if kept else [], d.entries)
        if rc < 0:
            raise OSError(-rc, f"queue {q.index}: {os.strerror(-rc)} after {res}")
        if d.nlog > d.log_cap:
            raise OverflowError(f"queue {q.index}: {d.nlog} node ids logged, room for {d.log_cap}")
        return res

    async def run(self, count: int, **kw: Any) -> LoopResult:
        """``run_blocking`` in a worker thread (loops on other queues run meanwhile)."""
        return await trio.to_thread.run_sync(lambda: self.run_blocking(count, **kw))

    async def list_dir(self, offset_at: int, room: int, **kw: Any) -> LoopResult:
        """``listing`` in a worker thread."""
        return await trio.to_thread.run_sync(lambda: self.listing(offset_at, room, **kw))

    def last_uniques(self) -> list[int]:
        """The unique each chain was last posted with."""
        return list(self._uniques)

    def close(self) -> None:
        """Give the chains' descriptors and slots back to the queue (none may be in
        flight: ``run`` returns only when every post was reaped; after a failed run
        the queue is unusable and must be restarted)."""
        for p in self.pending:
            self.q.free_descs.extend(p.descs)
            self.q.free_slots.append(p.slot)
        self.pending = []
