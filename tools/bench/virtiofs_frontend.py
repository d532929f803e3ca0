"""msbfs serve vs Debian's C virtiofsd, through the in-tree vhost-user frontend (no guest):
the daemons' own ceiling, side by side in one run, same shared directory, same frontend.

    python -m tools.bench.virtiofs_frontend [--quick] [--rounds N] [--dir DIR] [--client c|python]
                                            [--only TEXT] [--inodes N]

Workloads (each daemon gets its own file names inside the one shared directory):
4 KiB and 1 MiB READ and WRITE on an open handle, LOOKUP+GETATTR storms, SETATTR of a
mode then of both times per file (an untar's chmod and utimensat after each file), and
CREATE+RELEASE+UNLINK cycles, CREATE+RELEASE+RENAME over one target (an atomic write's
namespace half), SYMLINK+READLINK+UNLINK cycles, READDIRPLUS of a 10,000-entry directory (entries/s),
GETXATTR of security.capability answered ENODATA (size 0, as the kernel asks before
every write: file_remove_privs; virtiofsd runs with ``-o xattr`` so it answers it, as
msbfs serves xattrs by default), and GETATTR and LOOKUP spread over ``--queues`` request
queues at once (msbfs serves each request queue on its own thread; Debian's virtiofsd
takes one request queue, so it gets the same requests on that one). Requests are posted ``--depth`` at a time with one kick
(indirect descriptors, as the guest driver uses), the way a busy guest keeps the queue
full. Both daemons run at once; every workload runs ``--rounds`` times alternating
between them and the best round of each counts (the machine is shared: the best round
is the least disturbed one). Prints ops/s or MiB/s, the msbfs/virtiofsd ratio and both
daemons' resident memory at the end (of the whole process tree: their own, anon + file,
apart from the guest RAM they touched, and VmHWM).

First come the memory rows (``--only memory`` runs them alone): each daemon started
afresh, idle once a frontend set up its memory and queues, then holding ``--inodes``
inodes (LOOKUPs kept), then after forgetting them (``memory_rows`` says what counts).

The client: this Python driver costs 8-15 us of CPU per request, more than either daemon
spends on a GETATTR or LOOKUP, so on those rows it would set both daemons' throughput.
With ``--client c`` (the default) every row is posted by the C request loop instead
(vhost/cdriver.py: chains laid out once, each reply's header checked in C, one thread
per queue with the GIL released; marked * in the table), ``--n-c`` requests a round
(1 MiB READ and WRITE a hundredth of it, LOOKUP+GETATTR half of it in pairs, the
CREATE/SYMLINK cycles a tenth of it in cycles): READ and WRITE chains each on their own
block, again and again; LOOKUP+GETATTR and the CREATE/SYMLINK cycles as steps, each
waiting for the one before and taking the node id and fh from its reply in C, names
fresh per cycle, node ids forgotten every ``CHUNK`` cycles; READDIRPLUS one request in
flight, C reading each reply's records to the next offset. ``--client python`` runs
every row with this driver. The "client with each" column is the benchmark process's
own CPU per op, C loop threads included.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from msbfs.fuse import abi
from msbfs.fuse.kernel import Requests, parse_dirents, parse_entry, parse_open, parse_reply
from msbfs.launcher.daemon import VIRTIOFSD
from msbfs.store import MIB
from msbfs.tree.types import FATTR_ATIME, FATTR_MODE, FATTR_MTIME
from tools.bench.proc import fields_kib, process_tree, pss_kib, status_kib
from vhost.cdriver import Carry, CLoop, Step
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

ROOT = abi.FUSE_ROOT_ID
HDR = 16
IN_HDR = abi.fuse_in_header.size   # 40
IN_NODEID = 16                     # fuse_in_header.nodeid
ENTRY_NODEID = HDR                 # a reply's fuse_entry_out.nodeid
OPEN_FH = HDR + abi.FUSE_ENTRY_OUT_SIZE  # CREATE's fuse_open_out.fh, after its entry
HEX = b"0" * 16                    # a name's part each C cycle rewrites (Step.name_at)
ENODATA = 61
KINDS = ("virtiofsd", "msbfs")


def start_daemon(kind: str, shared: Path, sock: Path, queues: int = 1,
                 extra: Sequence[str] = ()) -> subprocess.Popen:
    if kind == "msbfs":
        argv = [sys.executable, "-m", "msbfs", "serve", f"--socket-path={sock}",
                f"--shared-dir={shared}", "--cache=auto", "--log-level=error",
                f"--num-request-queues={queues}"]
    else:
        argv = [VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={shared}",
                "-o", "cache=auto", "-o", "log_level=err", "-o", "xattr", *extra]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 30
    while not sock.exists():  # both daemons create the socket once they listen
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{kind} did not start")
        time.sleep(0.01)
    return proc


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) summed over the daemon's process tree, in KiB."""
    kib = status_kib(pid, ("VmRSS", "VmHWM"))
    return kib["VmRSS"], kib["VmHWM"]


Batch = list[tuple[list[bytes], list[int]]]
_out_header = abi.fuse_out_header.unpack_from


@dataclass
class CWork:
    """A workload the C request loop can post: its first ``k`` requests (all alike: each
    chain is posted again and again), each reply's used length (header included) and
    error field, and whether it is spread over every request queue or on queue 1.
    With ``steps``, ``requests(c, k)`` are ``k`` slots of one request per step (a cycle:
    each step posted once the one before was answered, ``carries`` taking node ids and
    fhs from replies into later requests, names fresh per cycle), and the node ids the
    steps log are forgotten after every ``CHUNK`` cycles, as the Python rows forget after
    each batch. A cycle counts as ``ops`` operations."""

    requests: Callable[[Client, int], Batch]
    reply_len: int = 0
    error: int = 0
    spread: bool = True
    steps: tuple[Step, ...] = ()
    carries: tuple[Carry, ...] = ()
    ops: int = 1
    check: tuple[int, int] | None = None  # CLoop.run's (reply offset, 32-bit value)


#: Cycles a stepped C run posts before its logged node ids are forgotten: the daemons
#: hold an O_PATH fd per unforgotten node, so 10,000 cycles a round would hold 10,000.
CHUNK = 1024


class Client:
    """One daemon, its frontend, a data file open on it and a directory of names."""

    def __init__(self, kind: str, shared: Path, fe: Frontend, depth: int, proc: subprocess.Popen) -> None:
        self.kind = kind
        self.shared = shared
        self.fe = fe
        self.depth = depth
        self.proc = proc
        self.r = Requests()
        self.prefix = f"{kind}-"
        self.loops: list[CLoop] = []
        self.c_batch: int | None = None  # CLoop.run's batch (None: lockstep)
        self.room = 4096  # READDIRPLUS reply buffer, header included

    async def one(self, req: bytes, reply: int = 4096) -> bytes:
        done = await self.fe.submit(1, [req], [reply], indirect=True)
        return parse_reply(done.data).ok()

    async def batch(self, reqs: Batch, keep: int | None = None, queue: int = 1) -> list[tuple[int, bytes]]:
        """(used length, reply bytes: at most ``keep`` of them) of each request."""
        out = []
        for i in range(0, len(reqs), self.depth):
            for c in await self.fe.submit_many(queue, reqs[i:i + self.depth], indirect=True, keep=keep):
                out.append((c.used_len, c.data))
        return out

    async def spread(self, reqs: Batch, reply_len: int) -> None:
        """``reqs`` dealt round-robin over every request queue, all queues at once; each
        reply must be a success of ``reply_len`` payload bytes."""
        queues = range(1, len(self.fe.queues))
        parts = {q: reqs[i::len(queues)] for i, q in enumerate(queues)}

        async def one_queue(q: int) -> None:
            for used, d in await self.batch(parts[q], keep=HDR, queue=q):
                length, error, _unique = _out_header(d)
                if error or length != used or used - HDR != reply_len:
                    raise RuntimeError(f"{self.kind}: queue {q}: error {-error}, {used - HDR} bytes")

        async with trio.open_nursery() as nursery:
            for q in queues:
                nursery.start_soon(one_queue, q)

    async def checked(self, reqs: Batch, payload_len: int, first: int | None = None) -> None:
        """Each reply a success of ``payload_len`` bytes, whose first 32 bits are
        ``first`` if given (a WRITE's fuse_write_out.size)."""
        # Only the header is copied out: a guest kernel leaves READ data in the pages
        # the daemon wrote. Copying each 1 MiB reply (and its page faults) made this
        # client, not the daemon, set the 1 MiB READ figure.
        for used, d in await self.batch(reqs, keep=HDR if first is None else HDR + 4):
            length, error, _unique = _out_header(d)
            if error or length != used or used - HDR != payload_len:
                raise RuntimeError(f"{self.kind}: reply error {-error}, {used - HDR} bytes")
            if first is not None and int.from_bytes(d[HDR:HDR + 4], "little") != first:
                raise RuntimeError(f"{self.kind}: reply says {int.from_bytes(d[HDR:HDR + 4], 'little')}")

    async def setup(self, file_mib: int, listing: int) -> None:
        r = self.r
        await self.one(r.init())
        data = self.shared / f"{self.prefix}data"
        with open(data, "wb") as f:
            f.write(os.urandom(MIB) * file_mib)
        self.size = file_mib * MIB
        e = parse_entry(await self.one(r.lookup(ROOT, data.name.encode())))
        self.nodeid = e.nodeid
        self.fh, _ = parse_open(await self.one(r.open(e.nodeid, os.O_RDWR)))
        d = self.shared / f"{self.prefix}dir"
        d.mkdir()
        self.names = [f"f{i}".encode() for i in range(200)]
        for nm in self.names:
            (d / nm.decode()).write_bytes(b"")
        self.dir = parse_entry(await self.one(r.lookup(ROOT, d.name.encode()))).nodeid
        # one lookup each, kept for the GETATTR workload (forgotten with the session)
        self.ids = [parse_entry(await self.one(r.lookup(self.dir, nm))).nodeid for nm in self.names]
        self.cycle = 0
        # The READDIRPLUS directory, made once: its entries are never looked up outside
        # a round, so every round starts from the same state (forgotten at its end).
        big = self.shared / f"{self.prefix}big"
        big.mkdir()
        for i in range(listing):
            (big / f"e{i}").write_bytes(b"")
        self.big = parse_entry(await self.one(r.lookup(ROOT, big.name.encode()))).nodeid
        self.listing = listing

    # ---- workloads: each returns the count of operations it did ----------------------------
    async def read(self, n: int, sz: int) -> int:
        await self.checked(self.read_requests(n, sz), sz)
        return n

    async def write(self, n: int, sz: int) -> int:
        await self.checked(self.write_requests(n, sz), 8, first=sz)
        return n

    def read_requests(self, n: int, sz: int) -> Batch:
        blocks = self.size // sz
        return [([self.r.read(self.nodeid, self.fh, (i % blocks) * sz, sz)], [HDR, sz]) for i in range(n)]

    def write_requests(self, n: int, sz: int) -> Batch:
        blocks = self.size // sz
        payload = b"w" * sz
        return [([self.r.write_header(self.nodeid, self.fh, (i % blocks) * sz, sz), payload], [HDR + 8])
                for i in range(n)]

    async def lookup_getattr(self, n: int) -> int:
        r = self.r
        counts: dict[int, int] = {}
        ids = []
        for _, data in await self.batch([([r.lookup(self.dir, self.names[i % len(self.names)])],
                                          [HDR + abi.FUSE_ENTRY_OUT_SIZE]) for i in range(n)]):
            nid = parse_entry(parse_reply(data).ok()).nodeid
            counts[nid] = counts.get(nid, 0) + 1
            ids.append(nid)
        await self.checked([([r.getattr(nid)], [HDR + abi.FUSE_ATTR_OUT_SIZE]) for nid in ids],
                           abi.FUSE_ATTR_OUT_SIZE)
        await self.fe.submit(0, [r.batch_forget(list(counts.items()))], [HDR])
        return 2 * n

    def getxattr_requests(self, n: int) -> Batch:
        """GETXATTR security.capability with size 0 on files that have none (ENODATA)."""
        return [([self.r.getxattr(self.ids[i % len(self.ids)], b"security.capability", 0)], [HDR + 8])
                for i in range(n)]

    def getattr_requests(self, n: int) -> Batch:
        return [([self.r.getattr(self.ids[i % len(self.ids)])], [HDR + abi.FUSE_ATTR_OUT_SIZE])
                for i in range(n)]

    def lookup_requests(self, n: int) -> Batch:
        """LOOKUPs of names already looked up (each adds a lookup count the session's
        end forgets), as a guest whose dentries expire looks names up again."""
        return [([self.r.lookup(self.dir, self.names[i % len(self.names)])], [HDR + abi.FUSE_ENTRY_OUT_SIZE])
                for i in range(n)]

    async def getxattr_enodata(self, n: int) -> int:
        for _, d in await self.batch(self.getxattr_requests(n), keep=HDR):
            if _out_header(d)[1] != -ENODATA:
                raise RuntimeError(f"{self.kind}: GETXATTR error {-_out_header(d)[1]}")
        return n

    async def getattr_spread(self, n: int) -> int:
        await self.spread(self.getattr_requests(n), abi.FUSE_ATTR_OUT_SIZE)
        return n

    async def lookup_spread(self, n: int) -> int:
        await self.spread(self.lookup_requests(n), abi.FUSE_ENTRY_OUT_SIZE)
        return n

    # ---- the C request loop: one per queue, each on its own thread ---------------------------
    def c_prepare(self, w: CWork) -> None:
        """Lay out ``depth`` chains on each queue ``w`` uses, dealt round-robin from its
        requests as ``spread`` deals them (outside the timed rounds); with steps,
        ``depth`` slots of a chain per step on queue 1."""
        if w.steps:
            self.loops = [CLoop(self.fe.queues[1], w.requests(self, self.depth),
                                steps=w.steps, carries=w.carries)]
            return
        queues = list(range(1, len(self.fe.queues))) if w.spread else [1]
        reqs = w.requests(self, self.depth * len(queues))
        self.loops = [CLoop(self.fe.queues[q], reqs[i::len(queues)]) for i, q in enumerate(queues)]

    # The stepped forms' slots: each slot's requests, one per step, in step order.
    def lookup_getattr_slots(self, k: int) -> Batch:
        """LOOKUP of a name, then GETATTR of the node id it returned (carried in C)."""
        r = self.r
        out: Batch = []
        for i in range(k):
            out += [([r.lookup(self.dir, self.names[i % len(self.names)])], [HDR + abi.FUSE_ENTRY_OUT_SIZE]),
                    ([r.getattr(0)], [HDR + abi.FUSE_ATTR_OUT_SIZE])]
        return out

    def cycle_slots(self, k: int, prefix: bytes, then: Callable[[bytes], bytes]) -> Batch:
        """CREATE of a fresh name, RELEASE of its node id and fh (carried in C), then
        ``then(name)``'s request: the Python rows' ``_cycles`` with the cycle's number
        as the name's last 16 characters."""
        r = self.r
        nm = prefix + HEX
        out: Batch = []
        for _ in range(k):
            out += [([r.create(self.dir, nm)], [HDR + abi.FUSE_ENTRY_OUT_SIZE + 16]),
                    ([r.release(0, 0)], [HDR]),
                    ([then(nm)], [HDR])]
        return out

    def symlink_slots(self, k: int) -> Batch:
        """SYMLINK of a fresh name, READLINK of the node id it returned, UNLINK."""
        r = self.r
        nm = b"s" + HEX
        out: Batch = []
        for _ in range(k):
            out += [([r.symlink(self.dir, nm, SYMLINK_TARGET)], [HDR + abi.FUSE_ENTRY_OUT_SIZE]),
                    ([r.readlink(0)], [HDR + 256]),
                    ([r.unlink(self.dir, nm)], [HDR])]
        return out

    def listing_chain(self, _k: int) -> Batch:
        """The one READDIRPLUS chain ``c_listing`` posts (its fh patched each round)."""
        return [([self.r.readdir(self.big, 0, 0, self.room - HDR, plus=True)], [self.room])]

    async def forget(self, ids: Sequence[int]) -> None:
        await forget(self.fe, self.r, ids)

    async def c_cycles(self, n: int, w: CWork) -> int:
        """``n`` cycles of ``w``'s steps on the prepared loop, every reply checked in C
        against its step, the node ids it logged forgotten after each ``CHUNK``."""
        loop = self.loops[0]
        done = 0
        while done < n:
            k = min(CHUNK, n - done)
            res = await loop.run(k, batch=self.c_batch, timeout=args_timeout)
            await self.forget(res.log)
            if res.completed != k * len(w.steps) or res.errors or res.bad:
                raise RuntimeError(f"{self.kind}: {res.completed} of {k * len(w.steps)} replies,"
                                   f" {res.errors} errors (last {res.last_error}), {res.bad} bad")
            done += k
        return n * w.ops

    async def c_listing(self) -> int:
        """``readdirplus`` with the C loop posting the READDIRPLUS requests and reading
        their records (OPENDIR, RELEASEDIR and the forgets from here)."""
        loop = self.loops[0]
        fh, _ = parse_open(await self.one(self.r.opendir(self.big)))
        loop.patch(0, IN_HDR, fh.to_bytes(8, "little"))
        res = await loop.list_dir(IN_HDR + 8, self.room, most=self.listing + 2, timeout=args_timeout)
        await self.one(self.r.releasedir(self.big, fh))
        if res.errors or res.bad or res.entries != self.listing + 2:
            raise RuntimeError(f"{self.kind}: listed {res.entries} records, expected "
                               f"{self.listing + 2}: {res}")
        await self.forget(res.log)
        return res.entries

    def c_release(self) -> None:
        for loop in self.loops:
            loop.close()
        self.loops = []

    async def c_run(self, n: int, w: CWork) -> int:
        """``n`` requests dealt over the prepared loops, all queues at once; every reply
        must carry ``w``'s error and length."""
        if w.steps:
            return await self.c_cycles(n, w)
        share = [n // len(self.loops) + (i < n % len(self.loops)) for i in range(len(self.loops))]

        async def one(loop: CLoop, k: int) -> None:
            res = await loop.run(k, batch=self.c_batch, expect_error=w.error, expect_len=w.reply_len,
                                 check=w.check, timeout=args_timeout)
            if res.completed != k or res.errors or res.bad:
                raise RuntimeError(f"{self.kind}: queue {loop.q.index}: {res}")

        async with trio.open_nursery() as nursery:
            for loop, k in zip(self.loops, share, strict=True):
                nursery.start_soon(one, loop, k)
        return n

    async def setattr_mode_times(self, n: int) -> int:
        reqs = self.setattr_requests(n)
        await self.checked(reqs, abi.FUSE_ATTR_OUT_SIZE)
        return len(reqs)

    def setattr_requests(self, n: int) -> Batch:
        """Per file, a chmod then a utimensat of both times, as an untar does after each
        file: SETATTR FATTR_MODE, then FATTR_ATIME | FATTR_MTIME."""
        r = self.r
        reqs: Batch = []
        for i in range(n // 2):
            nid = self.ids[i % len(self.ids)]
            t = (1_600_000_000 + i, i)
            reqs += [([r.setattr(nid, valid=FATTR_MODE, mode=0o644 if i & 1 else 0o600)],
                      [HDR + abi.FUSE_ATTR_OUT_SIZE]),
                     ([r.setattr(nid, valid=FATTR_ATIME | FATTR_MTIME, atime=t, mtime=t)],
                      [HDR + abi.FUSE_ATTR_OUT_SIZE])]
        return reqs

    async def _cycles(self, n: int, prefix: str,
                      then: Callable[[bytes], bytes]) -> int:
        """``n`` fresh names: a CREATE of each, a RELEASE of each, ``then(name)``'s request
        for each (all expected to succeed with an empty reply), then a BATCH_FORGET of
        the node ids. Each stage is one batch."""
        r = self.r
        base = self.cycle
        self.cycle += n
        names = [f"{prefix}{base + i}".encode() for i in range(n)]
        rels, after, forgets = [], [], []
        for nm, (_, data) in zip(names, await self.batch(
                [([r.create(self.dir, nm)], [HDR + abi.FUSE_ENTRY_OUT_SIZE + 16]) for nm in names]),
                strict=True):
            p = parse_reply(data).ok()
            ent = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
            fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
            rels.append(([r.release(ent.nodeid, fh)], [HDR]))
            after.append(([then(nm)], [HDR]))
            forgets.append((ent.nodeid, 1))
        await self.checked(rels, 0)
        await self.checked(after, 0)
        await self.fe.submit(0, [r.batch_forget(forgets)], [HDR])
        return n

    async def create_cycles(self, n: int) -> int:
        """CREATE+RELEASE+UNLINK of fresh names."""
        return await self._cycles(n, "c", lambda nm: self.r.unlink(self.dir, nm))

    async def rename_cycles(self, n: int) -> int:
        """An atomic write's namespace half, as package managers, builds and git make it:
        CREATE a temporary name, RELEASE it, RENAME it over one target (the previous
        target unlinked by the rename). The renames are of distinct names onto one
        target, so any order a daemon answers them in succeeds."""
        return await self._cycles(n, "t",
                                  lambda nm: self.r.rename(self.dir, nm, self.dir, b"target"))

    async def symlink_cycles(self, n: int) -> int:
        """A package's symlinks as an unpack makes them and a loader reads them: SYMLINK
        of a fresh name, READLINK through its node id, UNLINK, then a BATCH_FORGET of
        the node ids (each stage one batch). Counts the cycles."""
        r = self.r
        base = self.cycle
        self.cycle += n
        names = [f"s{base + i}".encode() for i in range(n)]
        target = SYMLINK_TARGET
        made = await self.batch([([r.symlink(self.dir, nm, target)], [HDR + abi.FUSE_ENTRY_OUT_SIZE])
                                 for nm in names])
        ids = [parse_entry(parse_reply(d).ok()).nodeid for _, d in made]
        await self.checked([([r.readlink(i)], [HDR + 256]) for i in ids], len(target))
        await self.checked([([r.unlink(self.dir, nm)], [HDR]) for nm in names], 0)
        await self.fe.submit(0, [r.batch_forget([(i, 1) for i in ids])], [HDR])
        return n

    async def readdirplus(self, room: int) -> int:
        """One whole listing as a guest's ``ls -l`` makes it: OPENDIR, READDIRPLUS from
        each reply's last cookie until an empty reply (one request in flight: each asks
        from where the last ended), RELEASEDIR, then a BATCH_FORGET of every node id the
        listing returned, with its count, as a guest under memory pressure drops the
        dentries. Both daemons thus do the same requests every round (virtiofsd opens an
        O_PATH fd per entry; msbfs adds a named node per entry: one statx, no fd until
        a node is used, csrc/inodes.h). Returns the entries listed."""
        r = self.r
        fh, _ = parse_open(await self.one(r.opendir(self.big)))
        ids: list[int] = []
        offset = listed = 0
        while True:
            recs = parse_dirents(await self.one(r.readdir(self.big, fh, offset, room - HDR, plus=True),
                                                room), plus=True)
            if not recs:
                break
            for _name, _ino, off, ent in recs:
                offset = off
                listed += 1
                if ent is not None and ent.nodeid:  # "." and ".." carry node id 0
                    ids.append(ent.nodeid)
        await self.one(r.releasedir(self.big, fh))
        if listed != self.listing + 2:
            raise RuntimeError(f"{self.kind}: listed {listed} records, expected {self.listing + 2}")
        await self.forget(ids)
        return listed


#: Node ids per BATCH_FORGET: what one 4 KiB page of forget records holds, as the
#: guest kernel batches them (fuse_read_batch_forget fills the reader's buffer).
FORGET_BATCH = (4096 - 24) // 16


async def forget(fe: Frontend, r: Requests, ids: Sequence[int]) -> None:
    """BATCH_FORGETs on the hiprio queue of ``ids`` (repeats add up), a page each."""
    counts: dict[int, int] = {}
    for nid in ids:
        counts[nid] = counts.get(nid, 0) + 1
    items = list(counts.items())
    for i in range(0, len(items), FORGET_BATCH):
        await fe.submit(0, [r.batch_forget(items[i:i + FORGET_BATCH])], [HDR])


SYMLINK_TARGET = b"../lib/node_modules/pkg/bin/cli.js"


async def connect(kind: str, shared: Path, sock: Path, depth: int, file_mib: int,
                  queues: int = 1, listing: int = 10000, virtiofsd_args: Sequence[str] = ()) -> Client:
    """A client of ``kind``; msbfs gets ``queues`` request queues, virtiofsd its one
    (Debian's panics on a second: msbfs.launcher.daemon)."""
    queues = queues if kind == "msbfs" else 1
    proc = start_daemon(kind, shared, sock, queues, virtiofsd_args if kind == "virtiofsd" else ())
    # Queue 1 holds the C loop's stepped forms: ``depth`` slots of up to STEPS chains
    # (at most ``depth`` requests in flight, as on every row).
    # The hiprio queue takes the BATCH_FORGETs, posted back to back without a reply to
    # wait for: at least 32 slots, or --depth 1 filled it with the second ("queue full").
    sizes = [max(depth, 32), 1 << (STEPS * depth - 1).bit_length()] + [depth] * (queues - 1)
    ram = GuestRam(((0, ((sum(sizes) * (MIB + 8192)) >> 20) + 64 << 20),))
    fe = await Frontend.connect(str(sock), ram)
    await fe.handshake(sizes, slot_size=MIB + 8192)
    c = Client(kind, shared, fe, depth, proc)
    await c.setup(file_mib, listing)
    return c


def thread_cpu_seconds(pid: int) -> float:
    """CPU time of the process tree's live threads, in ns resolution (each task's
    schedstat): a workload round costs a daemon 10-100 ms, which utime/stime's 10 ms
    ticks measured to within a tick or two. Threads that exited mid-round are not
    counted (none do in these workloads)."""
    total = 0
    for p in process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total / 1e9


#: The most steps a C cycle has (CREATE, RELEASE, UNLINK).
STEPS = 3

#: A workload round that takes longer than this means a daemon stopped answering.
args_timeout = 120.0


async def best_of(rounds: int, clients: dict[str, Client],
                  work: Callable[[Client], Awaitable[int]],
                  cwork: CWork | None = None
                  ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Best throughput (ops/s), and the daemon's and this client's CPU time per op (us)
    over all rounds. When the client's CPU per op is several times the daemons', the
    throughput ratio says more about the client than about the daemons. With ``cwork``
    the C loops are laid out before the first round and released after the last (not
    timed): ``work`` then runs them."""
    if cwork is not None:
        for c in clients.values():
            c.c_prepare(cwork)
    try:
        return await _best_of(rounds, clients, work)
    finally:
        if cwork is not None:
            for c in clients.values():
                c.c_release()


async def _best_of(rounds: int, clients: dict[str, Client],
                   work: Callable[[Client], Awaitable[int]]
                   ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    best = dict.fromkeys(clients, 0.0)
    cpu = dict.fromkeys(clients, 0.0)
    mine = dict.fromkeys(clients, 0.0)
    ops = dict.fromkeys(clients, 0)
    for _ in range(rounds):
        for kind, c in clients.items():
            c0 = thread_cpu_seconds(c.proc.pid)
            m0 = time.process_time()
            t0 = time.perf_counter()
            with trio.move_on_after(args_timeout) as scope:
                n = await work(c)
            if scope.cancelled_caught:
                raise RuntimeError(f"{kind} did not answer within {args_timeout} s "
                                   f"(daemon {'alive' if c.proc.poll() is None else 'exited'})")
            best[kind] = max(best[kind], n / (time.perf_counter() - t0))
            cpu[kind] += thread_cpu_seconds(c.proc.pid) - c0
            mine[kind] += time.process_time() - m0
            ops[kind] += n
    return (best, {k: cpu[k] / ops[k] * 1e6 for k in clients},
            {k: mine[k] / ops[k] * 1e6 for k in clients})


#: /proc/PID/status fields of the memory rows, summed over the daemon's process tree.
#: The guest RAM the backend maps is a shared mapping of the frontend's memfd: the pages
#: a daemon touches there (rings, request and reply buffers) count as its RssShmem. They
#: are the guest's memory, not the daemon's, so the daemon's own footprint, what the
#: targets of issue #11 are about, is RssAnon + RssFile. RssFile is mostly the
#: executable's and shared libraries' pages (shared with every other process running
#: them; a tree of two Python processes, msbfs's supervisor and daemon, counts them twice).
MEMORY_KEYS = ("RssAnon", "RssFile", "RssShmem")


def memory_kib(pid: int) -> dict[str, int]:
    return status_kib(pid, MEMORY_KEYS)


def _mem(kib: dict[str, int]) -> str:
    own = (kib["RssAnon"] + kib["RssFile"]) / 1024
    return (f"{own:6.1f} ({kib['RssAnon'] / 1024:5.1f} + {kib['RssFile'] / 1024:4.1f}"
            f", shmem {kib['RssShmem'] / 1024:4.1f})")


def _per_process(pid: int) -> str:
    """Each process of the tree's own RSS, and the tree's PSS (own pages, shared ones
    split among the processes that map them)."""
    tree = process_tree(pid)
    parts = []
    for p in tree:
        kib = fields_kib(p, "status", ("RssAnon", "RssFile"))
        argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        what = ("supervisor" if any(a.endswith(b"supervisor.py") for a in argv)
                else "parent" if p == pid and len(tree) > 1 else "daemon")
        parts.append(f"{what} {(kib['RssAnon'] + kib['RssFile']) / 1024:.1f}")
    pss = pss_kib(pid)
    return f"{' + '.join(parts)}; PSS of the tree {(pss['Pss_Anon'] + pss['Pss_File']) / 1024:.1f}"


async def _lookups_kept(fe: Frontend, r: Requests, parent: int, n: int, depth: int
                        ) -> tuple[list[int], int]:
    """LOOKUP ``f0`` .. ``f{n-1}`` under ``parent``, ``depth`` at a time, keeping every
    lookup (no FORGET): the node ids, and the errno that stopped it early (0: none)."""
    ids: list[int] = []
    names = [f"f{i}".encode() for i in range(n)]
    for i in range(0, n, depth):
        done = await fe.submit_many(1, [([r.lookup(parent, nm)], [HDR + abi.FUSE_ENTRY_OUT_SIZE])
                                        for nm in names[i:i + depth]], indirect=True)
        for c in done:
            _length, error, _unique = _out_header(c.data)
            if error:
                return ids, -error
            ids.append(parse_entry(c.data[HDR:]).nodeid)
    return ids, 0


async def memory_rows(base: Path, shared: Path, args: argparse.Namespace) -> None:
    """Resident memory of each daemon's process tree (issue #11: idle <= 40 MiB, 100,000
    cached inodes <= 64 MiB), each daemon fresh and alone with its frontend, so nothing
    another row did is in it: (a) idle once the frontend connected, set the memory table
    and started every queue, and INIT was answered; (b) after LOOKUPs of ``--inodes``
    distinct files, every lookup kept (no FORGET), so the daemon holds that many inodes;
    (c) once one BATCH_FORGET storm gave every lookup back (what the daemon keeps of a
    walk it was told to forget). The C virtiofsd keeps an O_PATH fd per inode, so its
    RLIMIT_NOFILE (at most the hard limit, which it cannot raise without
    CAP_SYS_RESOURCE) bounds how many it holds: past it LOOKUP answers EMFILE and its row
    says at how many it stopped. Bytes per inode: (b) - (a) over the inodes held."""
    many = shared / "inodes"
    if not many.is_dir():  # both daemons look up the same files; each has its own table
        many.mkdir()
        for i in range(args.inodes):
            os.close(os.open(many / f"f{i}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    print(f"memory (MiB, RssAnon + RssFile of the daemon's process tree; guest RAM apart as "
          f"shmem), {args.queues} request queue(s) for msbfs:")
    for kind in KINDS:
        queues = args.queues if kind == "msbfs" else 1
        sock = base / f"{kind}-memory.sock"
        proc = start_daemon(kind, shared, sock, queues)
        ram = GuestRam(((0, (((1 + queues) * args.depth * 8192) >> 20) + 16 << 20),))
        fe = await Frontend.connect(str(sock), ram)
        try:
            await fe.handshake([args.depth] * (1 + queues), slot_size=8192)
            r = Requests()
            parse_reply((await fe.submit(1, [r.init()], [4096], indirect=True)).data).ok()
            await trio.sleep(0.5)  # the queue threads are up and waiting
            idle = memory_kib(proc.pid)
            idle_parts = _per_process(proc.pid)
            parent = parse_entry(parse_reply((await fe.submit(
                1, [r.lookup(ROOT, many.name.encode())], [4096], indirect=True)).data).ok()).nodeid
            ids, err = await _lookups_kept(fe, r, parent, args.inodes, args.depth)
            held = memory_kib(proc.pid)
            await forget(fe, r, ids)
            await fe.submit(1, [r.getattr(ROOT)], [4096], indirect=True)  # the forgets were taken
            forgot = memory_kib(proc.pid)
        finally:
            await fe.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        per = ((held["RssAnon"] + held["RssFile"]) - (idle["RssAnon"] + idle["RssFile"])) * 1024 / max(1, len(ids))
        stop = f"; stopped: {os.strerror(err)} after {len(ids)}" if err else ""
        print(f"  {kind:9} idle {_mem(idle)}   {len(ids)} inodes held {_mem(held)}, "
              f"{per:.0f} B/inode{stop}   all forgotten {_mem(forgot)}\n"
              f"  {'':9} idle by process: {idle_parts}", flush=True)


async def main_async(args: argparse.Namespace) -> None:
    # tmpfs by default: what is measured is the daemons, not this VM's shared disk
    # (ext4 creates here take anywhere from 70 us to 1.5 ms depending on other load).
    tmp_root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="msbfs-bench-", dir=tmp_root))
    shared = base / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    clients: dict[str, Client] = {}
    try:
        if not args.only or any(o.lower() in "memory" for o in args.only):
            await memory_rows(base, shared, args)
        if args.only and all(o.lower() in "memory" for o in args.only):
            return
        for kind in KINDS:
            clients[kind] = await connect(kind, shared, base / f"{kind}.sock", args.depth,
                                          args.file_mib, args.queues, args.listing,
                                          args.virtiofsd_arg or ())
        for c in clients.values():  # warm page cache and code paths
            c.c_batch = args.c_batch
            c.room = args.readdir_room
            await c.read(64, 4096)
        n4, n1, nm, nc = args.n_small, args.n_big, args.n_meta, args.n_c
        attr, entry = HDR + abi.FUSE_ATTR_OUT_SIZE, HDR + abi.FUSE_ENTRY_OUT_SIZE
        # CREATE's reply: an entry, then fuse_open_out; its name after fuse_create_in
        create = Step(entry + 16, name_at=IN_HDR + 16 + 1, log_at=ENTRY_NODEID)
        release = (Carry(0, ENTRY_NODEID, 1, IN_NODEID), Carry(0, OPEN_FH, 1, IN_HDR))
        c_forms: dict[str, tuple[CWork | None, int]] = {  # rows the C loop posts (--client c), count a round
            # each chain reads or writes its own block again and again (in the page cache)
            "4 KiB READ": (CWork(lambda c, k: c.read_requests(k, 4096), HDR + 4096, spread=False), nc),
            "1 MiB READ": (CWork(lambda c, k: c.read_requests(k, MIB), HDR + MIB, spread=False), nc // 100),
            # fuse_write_out.size: the whole block written
            "4 KiB WRITE": (CWork(lambda c, k: c.write_requests(k, 4096), HDR + 8, spread=False,
                                  check=(HDR, 4096)), nc),
            "1 MiB WRITE": (CWork(lambda c, k: c.write_requests(k, MIB), HDR + 8, spread=False,
                                  check=(HDR, MIB)), nc // 100),
            "LOOKUP+GETATTR": (CWork(Client.lookup_getattr_slots, ops=2, steps=(
                Step(entry, log_at=ENTRY_NODEID), Step(attr)),
                carries=(Carry(0, ENTRY_NODEID, 1, IN_NODEID),)), nc // 2),
            "GETXATTR": (CWork(Client.getxattr_requests, HDR, -ENODATA, spread=False), nc),
            # each chain repeats its chmod or utimensat: the same syscalls every time
            "SETATTR": (CWork(Client.setattr_requests, attr, spread=False), nc),
            # each name after its one-letter prefix: UNLINK's and SYMLINK's right after the
            # header, RENAME's after fuse_rename_in
            "CREATE+RELEASE+UNLINK": (CWork(
                lambda c, k: c.cycle_slots(k, b"c", lambda nm: c.r.unlink(c.dir, nm)),
                steps=(create, Step(HDR), Step(HDR, name_at=IN_HDR + 1)), carries=release), nc // 10),
            "CREATE+RELEASE+RENAME": (CWork(
                lambda c, k: c.cycle_slots(k, b"t", lambda nm: c.r.rename(c.dir, nm, c.dir, b"target")),
                steps=(create, Step(HDR), Step(HDR, name_at=IN_HDR + 8 + 1)), carries=release), nc // 10),
            "SYMLINK+READLINK+UNLINK": (CWork(Client.symlink_slots, steps=(
                Step(entry, name_at=IN_HDR + 1, log_at=ENTRY_NODEID),
                Step(HDR + len(SYMLINK_TARGET)), Step(HDR, name_at=IN_HDR + 1)),
                carries=(Carry(0, ENTRY_NODEID, 1, IN_NODEID),)), nc // 10),
            "GETATTR on": (CWork(Client.getattr_requests, attr), nc),
            "LOOKUP on": (CWork(Client.lookup_requests, entry), nc),
            "READDIRPLUS": (CWork(Client.listing_chain, spread=False), 0),
        }
        workloads: list[tuple[str, str, float, Callable[[Client], Awaitable[int]]]] = [
            ("4 KiB READ", "MiB/s", 4096 / MIB, lambda c: c.read(n4, 4096)),
            ("1 MiB READ", "MiB/s", 1.0, lambda c: c.read(n1, MIB)),
            ("4 KiB WRITE", "MiB/s", 4096 / MIB, lambda c: c.write(n4, 4096)),
            ("1 MiB WRITE", "MiB/s", 1.0, lambda c: c.write(n1, MIB)),
            ("LOOKUP+GETATTR", "ops/s", 1.0, lambda c: c.lookup_getattr(nm)),
            ("SETATTR mode+times", "ops/s", 1.0, lambda c: c.setattr_mode_times(nm)),
            ("CREATE+RELEASE+UNLINK", "cycles/s", 1.0, lambda c: c.create_cycles(nm // 4)),
            ("CREATE+RELEASE+RENAME over", "cycles/s", 1.0, lambda c: c.rename_cycles(nm // 4)),
            ("SYMLINK+READLINK+UNLINK", "cycles/s", 1.0, lambda c: c.symlink_cycles(nm // 4)),
            ("GETXATTR security.capability (ENODATA)", "ops/s", 1.0,
             lambda c: c.getxattr_enodata(nm)),
            (f"GETATTR on {args.queues} queues", "ops/s", 1.0, lambda c: c.getattr_spread(nm)),
            (f"LOOKUP on {args.queues} queues", "ops/s", 1.0, lambda c: c.lookup_spread(nm)),
            (f"READDIRPLUS {args.listing} ({args.readdir_room // 1024} KiB)", "entries/s", 1.0,
             lambda c: c.readdirplus(args.readdir_room)),
        ]
        if args.only:
            workloads = [w for w in workloads if any(o.lower() in w[0].lower() for o in args.only)]
        print(f"client: {'C request loop (vhost/cdriver.py) on the rows marked *' if args.client == 'c' else 'Python'}"
              f", {args.depth} requests in flight per queue")
        print(f"{'workload':22} {'virtiofsd':>17} {'msbfs':>17} {'ratio':>6}   "
              f"CPU us/op: virtiofsd msbfs (client with each)")
        for label, unit, scale, work in workloads:
            cwork, cn = next((f for k, f in c_forms.items() if label.startswith(k)), (None, 0)) \
                if args.client == "c" else (None, 0)
            if cwork is not None:
                work = (Client.c_listing if cwork.requests == Client.listing_chain
                        else functools.partial(Client.c_run, n=cn, w=cwork))
                label += " *"
            best, cpu, client = await best_of(args.rounds, clients, work, cwork)
            v, m = best["virtiofsd"], best["msbfs"]
            print(f"{label:22} {v * scale:9.1f} {unit:>8}{m * scale:9.1f} {unit:>8}{m / v:6.2f}x"
                  f"   {cpu['virtiofsd']:8.2f} {cpu['msbfs']:8.2f}"
                  f"   ({client['virtiofsd']:.1f} {client['msbfs']:.1f})", flush=True)
        # VmRSS counts the guest RAM the 1 MiB rows touched (RssShmem, tens of MiB for
        # both daemons): the guest's memory, not theirs. Their own is anon + file.
        mem = {k: memory_kib(c.proc.pid) for k, c in clients.items()}
        peak = {k: rss_kib(c.proc.pid)[1] / 1024 for k, c in clients.items()}
        print("RSS now (MiB): own = anon + file (guest RAM apart as shmem); peak VmHWM\n"
              f"  virtiofsd {_mem(mem['virtiofsd'])}, VmHWM {peak['virtiofsd']:.1f}\n"
              f"  msbfs     {_mem(mem['msbfs'])}, VmHWM {peak['msbfs']:.1f}")
    finally:
        for c in clients.values():
            await c.fe.close()
            try:
                c.proc.wait(30)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", help="work directory (default: a fresh one in /dev/shm)")
    p.add_argument("--depth", type=int, default=32, help="requests in flight per kick")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per workload (best counts)")
    p.add_argument("--file-mib", type=int, default=64)
    p.add_argument("--n-small", type=int, default=10000)
    p.add_argument("--n-big", type=int, default=256)
    p.add_argument("--n-meta", type=int, default=4000)
    p.add_argument("--client", choices=("c", "python"), default="c",
                   help="who posts the requests (default: the C request loop; python: this "
                        "driver, 8-15 us of CPU a request)")
    p.add_argument("--n-c", type=int, default=100_000,
                   help="requests a round for the rows the C request loop posts")
    p.add_argument("--c-batch", type=int, default=None,
                   help="the C loop re-posts once this many chains are free (default: all "
                        "--depth of them, in lockstep as the Python client posts; 1: refill "
                        "after every reap)")
    p.add_argument("--virtiofsd-arg", action="append", metavar="ARG",
                   help="an extra virtiofsd argument (repeatable), e.g. --thread-pool-size=0")
    p.add_argument("--queues", type=int, default=4,
                   help="msbfs request queues for the 'on N queues' workloads (virtiofsd: 1)")
    p.add_argument("--listing", type=int, default=10000,
                   help="entries in the READDIRPLUS workload's directory")
    p.add_argument("--readdir-room", type=int, default=4096,
                   help="reply buffer per READDIRPLUS, header included (default 4 KiB: a "
                        "Linux guest's fuse_readdir asks for one page per request)")
    p.add_argument("--inodes", type=int, default=100_000,
                   help="files the memory rows look up and keep (default 100,000: issue #11's "
                        "cached-inode target)")
    p.add_argument("--only", action="append", metavar="TEXT",
                   help="run only the workloads whose label contains TEXT (repeatable)")
    p.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.n_small, args.n_big, args.n_meta, args.file_mib, args.rounds = 1000, 32, 400, 16, 1
        args.n_c = 4000
        args.listing = 1000
        args.inodes = 10_000
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
