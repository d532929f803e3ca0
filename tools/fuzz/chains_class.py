"""Class 2: descriptor chains a hostile guest driver lays out in its own memory.

Guest RAM is two regions with a hole between them (gpa 0-2 MiB and 4-5 MiB). A session
opens a file (so READ and WRITE take the C data path), then each step posts one to four
chains on the request queue, each carrying a real FUSE request (GETATTR, LOOKUP, READ or
WRITE on the open handle) in scratch memory, and damages them: buffers outside guest
memory, in the hole, across a region's end or wrapping; zero and huge lengths; loops and
over-long chains; indirect tables that lie (size not a multiple of 16, empty, too big,
outside memory, nested, INDIRECT with NEXT); readable after writable parts; a writable
buffer over the rings themselves; headers split byte by byte; heads out of range or
posted twice; avail->idx jumping. Mostly one damage per step, so many chains are served
with an error rather than breaking the ring.

After a step every chain must be used or the queue's error eventfd must fire before the
deadline (else a hang); a broken queue is restarted (stop, wipe, start); then a good
GETATTR of the root on the queue must succeed. A step of the log is the attack as data
(descriptor writes, memory writes, heads, avail jump).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import trio

from msbfs.fuse import abi
from msbfs.fuse.kernel import Requests, parse_entry, parse_open, parse_reply
from tools.fuzz.findings import Stats
from tools.fuzz.session import DEADLINE, REQUESTS, Hang, Result, connected, fuse_start
from vhost.driver import F_INDIRECT, F_NEXT, F_WRITE, FrontendQueue
from vhost.guest_ram import GuestRam

QSIZE = 16
LAYOUT = ((0, 2 << 20), (4 << 20, 1 << 20))
SCRATCH = 1 << 20           # crafted buffers and indirect tables (region 0, above rings)
SCRATCH_END = 2 << 20
BAD_ADDRS = (2 << 20, (2 << 20) - 8, 3 << 20, (4 << 20) - 8, 5 << 20, (5 << 20) - 8,
             2**64 - 16, 2**63, 0xFFFF_FFFF, 6 << 20)


class Attack:
    """Builds one step: descriptor writes, memory writes, heads, avail jump."""

    def __init__(self, rng: random.Random, r: Requests, nodeid: int, fh: int,
                 q: FrontendQueue) -> None:
        self.rng, self.r, self.nodeid, self.fh, self.q = rng, r, nodeid, fh, q
        self.mem: list[tuple[int, bytes]] = []
        self.descs: list[tuple[int | None, int, int, int, int, int]] = []  # table, i, ...
        self.pos = SCRATCH
        self.next_desc = 0
        self.damage: list[str] = []

    def put(self, data: bytes) -> int:
        gpa = self.pos
        self.pos += (len(data) + 15) // 16 * 16 + 16
        self.mem.append((gpa, data))
        return gpa

    def request(self) -> tuple[list[bytes], list[int]]:
        rng, r = self.rng, self.r
        k = rng.randrange(4)
        if k == 0:
            return [r.getattr(1)], [16 + abi.FUSE_ATTR_OUT_SIZE]
        if k == 1:
            return [r.lookup(1, rng.choice((b"f1", b"big", b"d1", b"nope")))], [16 + 128]
        if k == 2:
            size = rng.choice((0, 1, 100, 4096, 8192))
            return [r.read(self.nodeid, self.fh, rng.choice((0, 100, 65536, 1 << 40)), size)], \
                [16, size] if rng.random() < 0.7 else [16 + size]
        data = rng.randbytes(rng.choice((0, 1, 100, 4096)))
        hdr = r.write_header(self.nodeid, self.fh, rng.randrange(0, 65536), len(data))
        return ([hdr, data] if rng.random() < 0.7 else [hdr + data]), [16 + 8]

    def chain(self) -> int:
        """Lay out one chain (maybe damaged); returns its head."""
        rng = self.rng
        readable, sizes = self.request()
        bufs: list[list[int]] = []
        for b in readable:
            if rng.random() < 0.1 and len(b) > 1:  # split into many small buffers
                for i in range(0, len(b), max(1, len(b) // 8)):
                    part = b[i:i + max(1, len(b) // 8)]
                    bufs.append([self.put(part), len(part), 0])
            else:
                bufs.append([self.put(b), len(b), 0])
        for s in sizes:
            bufs.append([self.put(bytes(s)), s, F_WRITE])
        if rng.random() < 0.6:
            self.damage_bufs(bufs)
        indirect = rng.random() < 0.3
        if indirect:
            return self.indirect_chain(bufs)
        n = len(bufs)
        first = self.next_desc
        idx = [(first + i) % QSIZE for i in range(n)]
        self.next_desc = (first + n) % QSIZE
        for i, (addr, length, flags) in enumerate(bufs):
            last = i == n - 1
            nxt = 0 if last else idx[i + 1]
            f = flags | (0 if last else F_NEXT)
            if not last and rng.random() < 0.03:
                nxt, what = rng.choice(((idx[0], "loop"), (QSIZE + 3, "next out of range"),
                                        (idx[i], "self loop")))
                self.damage.append(what)
            self.descs.append((None, idx[i], addr, length, f, nxt))
        head = idx[0]
        if rng.random() < 0.02:
            head = rng.choice((QSIZE, 0xFFFF))
            self.damage.append("head out of range")
        return head

    def indirect_chain(self, bufs: list[list[int]]) -> int:
        rng = self.rng
        n = len(bufs)
        table = self.put(bytes(16 * n))
        for i, (addr, length, flags) in enumerate(bufs):
            last = i == n - 1
            f = flags | (0 if last else F_NEXT)
            nxt = 0 if last else i + 1
            if rng.random() < 0.03:
                f |= F_INDIRECT
                self.damage.append("nested indirect")
            if not last and rng.random() < 0.03:
                nxt = rng.choice((0, n + 5))
                self.damage.append("indirect loop or next out of table")
            self.descs.append((table, i, addr, length, f, nxt))
        tlen, tflags, taddr = 16 * n, F_INDIRECT, table
        x = rng.random()
        if x < 0.05:
            tlen = rng.choice((0, 8, 16 * n + 1, 16 * n - 1, 16 * (QSIZE + 1), 2**32 - 16))
            self.damage.append(f"indirect table length {tlen}")
        elif x < 0.08:
            tflags |= F_NEXT
            self.damage.append("INDIRECT|NEXT")
        elif x < 0.11:
            taddr = rng.choice(BAD_ADDRS)
            self.damage.append("indirect table outside memory")
        elif x < 0.13:
            tflags |= F_WRITE
            self.damage.append("writable indirect descriptor")
        d = self.next_desc
        self.next_desc = (d + 1) % QSIZE
        self.descs.append((None, d, taddr, tlen, tflags, 0))
        return d

    def damage_bufs(self, bufs: list[list[int]]) -> None:
        rng = self.rng
        b = rng.choice(bufs)
        k = rng.randrange(9)
        if k == 0:
            b[0] = rng.choice(BAD_ADDRS)
            self.damage.append("buffer outside memory")
        elif k == 1:
            b[0], b[1] = (2 << 20) - 8, max(b[1], 16)
            self.damage.append("buffer across the end of region 0")
        elif k == 2:
            b[1] = 0
            self.damage.append("zero length")
        elif k == 3:
            b[1] = rng.choice((1 << 20, 2**32 - 1, (2 << 20) - SCRATCH + 1))
            self.damage.append("huge length")
        elif k == 4:
            rng.shuffle(bufs)
            self.damage.append("readable after writable")
        elif k == 5:
            b[2] ^= F_WRITE
            self.damage.append("readable/writable swapped")
        elif k == 6:
            b[0], b[2] = self.q.desc, F_WRITE
            b[1] = min(b[1], 16 * QSIZE) or 16
            self.damage.append("writable buffer over the descriptor table")
        elif k == 7:
            b[1] = max(0, b[1] - rng.randrange(1, 17))
            self.damage.append("buffer shorter than its content")
        else:
            b[0] += rng.randrange(-8, 9)
            self.damage.append("buffer shifted")

    def build(self) -> dict[str, Any]:
        rng = self.rng
        heads = [self.chain() for _ in range(rng.choice((1, 1, 2, 3, 4)))]
        if sum(1 for table, *_ in self.descs if table is None) > QSIZE:
            # More descriptors than the ring has: later chains overwrote earlier ones.
            self.damage.append("descriptor table overcommitted")
        if rng.random() < 0.03:
            heads.append(heads[0])
            self.damage.append("head posted twice")
        jump = 0
        if rng.random() < 0.04:
            jump = rng.choice((1, QSIZE, QSIZE + 1, 0x8000))
            self.damage.append(f"avail idx +{jump}")
        return {"mem": [[g, d.hex()] for g, d in self.mem], "descs": self.descs,
                "heads": heads, "jump": jump, "damage": self.damage}


def apply(q: FrontendQueue, ram: GuestRam, step: dict[str, Any]) -> None:
    for gpa, hexdata in step["mem"]:
        if gpa + len(hexdata) // 2 <= SCRATCH_END:
            ram.write(gpa, bytes.fromhex(hexdata))
    for table, i, addr, length, flags, nxt in step["descs"]:
        if table is None or table + 16 * i + 16 <= SCRATCH_END:
            q.write_desc(i, addr, length & 0xFFFF_FFFF, flags & 0xFFFF, nxt & 0xFFFF, table)
    q.publish(step["heads"])
    if step["jump"]:
        q.set_avail_idx(q.avail_idx + step["jump"])
    q.kick(force=True)


async def used_or_broken(q: FrontendQueue) -> bool:
    """Until every chain made available is used (False) or the queue's error eventfd
    fires (True). Raises Hang past the deadline."""
    with trio.move_on_after(DEADLINE) as cs:
        while True:
            if q.error_signalled():
                return True
            if q.used_idx() == q.avail_idx:
                return False
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as n:
                    async def wake(fd: int) -> None:
                        await trio.lowlevel.wait_readable(fd)
                        scope.cancel()
                    n.start_soon(wake, q.call_fd)
                    n.start_soon(wake, q.err_fd)
            try:
                os.eventfd_read(q.call_fd)
            except BlockingIOError:
                pass
    assert cs.cancelled_caught
    raise Hang(f"queue {q.index}: used idx {q.used_idx()}, avail idx {q.avail_idx}, "
               "no error signalled")


async def run(sock: Path, rng: random.Random, budget: int, stats: Stats,
              replay: list[Any] | None = None) -> Result:
    res = Result()
    ram = GuestRam(LAYOUT)
    async with connected(sock, ram) as fe:
        r = await fuse_start(fe, (QSIZE, QSIZE), 16 * 1024)
        with trio.fail_after(DEADLINE):
            e = parse_entry(parse_reply((await fe.submit(REQUESTS, [r.lookup(1, b"big")],
                                                          [4096])).data).ok())
            fh, _ = parse_open(parse_reply((await fe.submit(
                REQUESTS, [r.open(e.nodeid, os.O_RDWR)], [4096])).data).ok())
        q = fe.queues[REQUESTS]
        todo = iter(replay) if replay is not None else None
        while res.inputs < budget:
            if todo is not None:
                step = next(todo, None)
                if step is None:
                    break
            else:
                step = Attack(rng, r, e.nodeid, fh, q).build()
                res.steps.append(step)
            apply(q, ram, step)
            res.inputs += len(step["heads"])
            try:
                broken = await used_or_broken(q)
            except Hang as h:
                res.hang = f"step {len(res.steps) - 1} ({step['damage']}): {h}"
                return res
            kinds = step["damage"] or ["none"]
            for k in kinds:
                stats.replies[(k.split(" ")[0] if k.startswith("indirect table length")
                               else k, "ring broken" if broken else "OK")] += 1
            q.last_used = q.used_idx()
            with trio.move_on_after(DEADLINE) as cs:
                if broken:
                    await fe.restart_queue(REQUESTS)
                c = await fe.submit(REQUESTS, [r.getattr(1)], [4096])
            if cs.cancelled_caught:
                res.hang = f"step {len(res.steps) - 1}: restart or GETATTR after it unanswered"
                return res
            if parse_reply(c.data).error:
                stats.outcomes["GETATTR after an attack failed"] += 1
            stats.outcomes["ring broken" if broken else "served"] += 1
    return res


