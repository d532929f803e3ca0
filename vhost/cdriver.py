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

While a loop runs, nothing else may use its queue (the C loop owns the ring's shadow
indexes; they are copied back to the ``FrontendQueue`` when it returns).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from vhost._native import ffi, lib
from vhost.driver import DESC, F_INDIRECT, F_WRITE, FrontendQueue

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


class CLoop:
    """``requests`` (readable buffers, writable sizes) laid out as chains on ``q``: one
    chain per request, each posted again and again by ``run``."""

    def __init__(self, q: FrontendQueue, requests: Sequence[tuple[Sequence[bytes], Sequence[int]]],
                 indirect: bool = True) -> None:
        if not 0 < len(requests) <= q.size:
            raise ValueError(f"{len(requests)} chains on a queue of {q.size}")
        self.q = q
        self.pending = [q.lay_out(r, w, indirect) for r, w in requests]
        ram = q.ram
        n = len(self.pending)
        self._heads = ffi.new("uint16_t[]", [p.head for p in self.pending])
        self._requests = ffi.new("uint8_t *[]", [ffi.cast("uint8_t *", ram.uaddr(self._request_gpa(p.head)))
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

    def _request_gpa(self, head: int) -> int:
        """Where the chain's first readable buffer (its fuse_in_header) lies: read back
        from the descriptors ``lay_out`` wrote, through an indirect table if any."""
        addr, length, flags, _ = DESC.unpack(self.q.ram.read(self.q.desc + 16 * head, 16))
        if flags & F_INDIRECT:
            addr, length, flags, _ = DESC.unpack(self.q.ram.read(addr, 16))
        if flags & F_WRITE or length < 16:
            raise ValueError("a chain must start with a request header")
        return addr

    def run_blocking(self, count: int, *, batch: int | None = None, expect_error: int = 0,
                     expect_len: int, timeout: float = 60.0) -> LoopResult:
        """Post ``count`` requests; each reply must carry ``expect_error`` (0 or a
        negative errno) and, if it does, ``expect_len`` used bytes. ``batch``: re-post
        once that many chains are free (default: all of them, in lockstep, as
        ``Frontend.submit_many`` posts). Blocks; the GIL is released inside."""
        q, d = self.q, self.d
        d.avail_idx, d.kicked_idx, d.last_used = q.avail_idx, q.kicked_idx, q.last_used
        rc = lib.msb_vdrv_run(d, count, batch or d.nchains, expect_error, expect_len,
                              int(timeout * 1000))
        q.avail_idx, q.kicked_idx, q.last_used = d.avail_idx, d.kicked_idx, d.last_used
        q.kicks += d.kicks
        res = LoopResult(d.completed, d.errors, d.bad, d.kicks, d.waits, d.last_error)
        if rc < 0:
            raise OSError(-rc, f"queue {q.index}: {os.strerror(-rc)} after {res}")
        return res

    async def run(self, count: int, **kw: Any) -> LoopResult:
        """``run_blocking`` in a worker thread (loops on other queues run meanwhile)."""
        return await trio.to_thread.run_sync(lambda: self.run_blocking(count, **kw))

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
