"""The vhost-user-fs device: a hiprio queue plus N request queues carrying FUSE requests
to one tree, each queue served by its own thread.

Per round, the C data path (``csrc/fuse_datapath.c``, without the GIL) pops the
available chains and answers well-formed READ/WRITE requests on open handles itself,
straight between the host fd and guest memory (big reads of a round on helper threads
at once, as virtiofsd's pool would); it hands every other chain back to the queue's
thread, where the request bytes go through the FUSE codec (``msbfs.fuse``) into the
tree and the reply is scattered into the chain's writable part. Each used element is
pushed as soon as it is answered; the driver is signalled once per round of pops, and
every few slow replies within one (EVENT_IDX-aware, in C). Measured through the
frontend, a signal per fast reply halves 4 KiB throughput; a signal per round of ~10 us
slow replies wastes overlap.

Threads. ``handle_kick`` hands the queue to a long-lived thread (``trio.to_thread`` with
a limiter of one per queue) that serves, then waits for the next kick itself in C
(``msb_fs_serve_loop``: rounds, signals and kick waits stay in C, GIL released, until a
slow chain, a wake-up or a broken ring brings it back to Python), and returns only when the backend interrupts it
(``interrupt``: the ring stops, or guest memory, ring addresses or the call/err fds are
about to change; the backend waits for the return, so its guarantees hold: nothing
popped is abandoned, memory is not unmapped under a thread). Why not one hand-off per
kick: measured on this 2-CPU host, ``trio.to_thread.run_sync`` costs ~89 us a round
trip, an eventfd ping-pong with a waiting thread ~19 us; a kick of 32 4 KiB READs is
served in ~100 us, so a per-kick hand-off would nearly halve small-request throughput.

What serializes:
- a queue's ring, its chain buffer and its stats are used by its one serving thread; a
  deferred reply is pushed by that thread too (see SETLKW below), never by another;
- the slow path (FUSE codec, session, tree: not written for concurrency) runs one
  request at a time under ``self.lock``, whichever queue it came from; C fast paths of
  different queues run in parallel, and in parallel with the slow path; a FORGET the C
  path answers meanwhile drops no inode before the slow request ends (it holds the
  inode table: ``msb_inodes_hold``);
- the handle table has its own reader-writer lock (lookups read; opens and releases,
  C's on any queue thread and the tree's, write);
- a directory handle's stream: each READDIR in C holds its handle's batch slot, and every
  read of the fd (C's or DirHandle's) is a seek to an explicit cookie and a getdents64
  under the stream's lock (csrc/fuse_readdir.h), so no reader relies on the fd's position.

fd lifetimes. Each C round and each slow request runs inside a grace section
(``csrc/grace.h``); the slow path takes ``self.lock`` before entering its section, so
no section ever waits for that lock. When RELEASE/DESTROY takes handles out of the
handle table, their fds are closed only once every section open at that moment has
ended (``msb_grace_defer_close``): a round that looked an fd up never reads through a
number a new open has reused (that would return another file's data).

The handle table is the tree's own (``Tree.c_handles``, csrc/handles.h): the C paths
read the very table the tree opens and releases through, so nothing is mirrored. A
handle whose writes the tree must see (quota: ``data_fd`` raises EAGAIN) carries no
write permission for C; its writes take the slow path.

SETLKW may block: it runs on a thread of its own (at most ``MAX_DEFERRED`` at once,
ENOLCK past them), outside the lock and outside any section (it may wait for a RELEASE,
which waits for sections). What it needs from the handle is resolved while parking it,
under the lock (``begin_setlkw``): the thread never uses a handle's fd, whose number a
RELEASE meanwhile may close and an OPEN reuse (msbfs/tree/record_locks.py). Its reply is queued on
its ring and the ring's thread is woken to push it, unless the ring was stopped or its
guest memory remapped meanwhile (then it is dropped). The queue goes on serving other
requests while it waits.

The device uses the Virtqueue API (``push``, ``notify``, ``generation``); only the C entry
points that walk the ring themselves (``msb_fs_serve``, ``msb_fs_answer``,
``msb_fs_slow_end_answer``) get the raw ring, through ``msbfs.vring.c_ring``.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from msbfs._native import ffi, lib
from msbfs.fastmeta import CMetadata
from msbfs.fuse import abi
from msbfs.fuse.replies import error_reply
from msbfs.fuse.server import Deferred, FuseSession
from msbfs.tree.api import TreeOps
from msbfs.tree.tree import Tree
from msbfs.vring import c_ring
from vhost.device import VhostUserDevice
from vhost.virtqueue import QueueBroken, Virtqueue

log = logging.getLogger(__name__)

#: Chains handed to Python per C call (each struct msb_chain is ~16 KiB).
SLOW_BATCH = 32
#: Slow-path replies between signals to the driver within one round.
SLOW_NOTIFY_EVERY = 8
#: Chains popped per C call before Python gets to run again (fairness between queues).
BUDGET = 256
#: The largest request we read into Python: a 1 MiB WRITE plus its headers, or a 64 KiB
#: xattr value plus a name. Anything longer is answered EINVAL from its header alone.
MAX_REQUEST = (1 << 20) + 4096 + (64 << 10)
HIPRIO = 0
VIRTIO_FS_TAG_LEN = 36
#: SETLKWs parked at once (a thread each, ~30 KiB). A parked request's chain leaves the
#: ring when the ring stops, so without a bound a frontend that stops and restarts rings
#: (GET_VRING_BASE, SET_VRING_KICK) parks threads without end; past it, ENOLCK.
MAX_DEFERRED = 256
#: struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
virtio_fs_config = struct.Struct("<36sI")


@dataclass
class _Ring:
    """One queue's serving state (its thread's, but for the fields marked otherwise)."""

    index: int
    chains: Any                      # struct msb_chain[SLOW_BATCH], reused every round
    stats: Any                       # struct msb_fs_stats, written by this ring's thread only
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    #: set by the backend's thread (``interrupt``): return after the current round
    stop: bool = False
    #: wakes the serving thread's kick wait (interrupt, a deferred reply); -1 when closed
    wake_fd: int = -1
    #: (epoch, saved chain, reply) of finished SETLKWs, pushed by the serving thread
    deferred: list[tuple[tuple[int, int], Any, bytes]] = field(default_factory=list)
    deferred_lock: threading.Lock = field(default_factory=threading.Lock)
    #: times the thread returned with chains still available (interrupted mid-work)
    yields: int = 0
    #: times the C kick cycle (msb_fs_serve_loop) came back to Python
    c_returns: int = 0


class VirtioFsDevice(VhostUserDevice):
    """vhost-user-fs over ``tree``. ``num_request_queues`` is what we offer; the guest
    kernel uses as many as the frontend sets up."""

    serves_on_threads = True  # each request queue's C loop runs on a thread of its own

    def __init__(self, tree: TreeOps, *, tag: str = "msbfs", num_request_queues: int = 1,
                 writeback: bool = False, posix_acl: bool = False, posix_lock: bool = True,
                 flock: bool = True, read_helpers: int | None = None) -> None:
        tb = tag.encode()
        if not tb or len(tb) > VIRTIO_FS_TAG_LEN:
            raise ValueError(f"tag must be 1..{VIRTIO_FS_TAG_LEN} bytes")
        super().__init__()
        self.tree = tree
        self.tag = tb
        self.num_request_queues = num_request_queues
        self.num_queues = 1 + num_request_queues
        if read_helpers is not None:
            # --thread-pool-size: the process's big-read helpers (csrc/fuse_datapath.h),
            # settable until the first big read starts them.
            if lib.msb_fs_set_helpers(read_helpers) == -errno.EINVAL:
                raise ValueError(f"read_helpers {read_helpers}: 0..64")
        # The tree's own handle table; a tree that is not a Tree (a wrapper: its
        # methods are the truth) gets an empty one: every handle request is Python's.
        self.table = tree.c_handles() if type(tree) is Tree else \
            ffi.gc(lib.msb_fs_table_new(), lib.msb_fs_table_free)
        if self.table == ffi.NULL:
            raise MemoryError("handle table")
        self.session = FuseSession(tree, writeback=writeback, posix_acl=posix_acl,
                                   posix_lock=posix_lock, flock=flock,
                                   on_destroy=self._destroyed)
        # LOOKUP/GETATTR/FORGET answered in C from the tree's inode table (fastmeta.py).
        self.meta = CMetadata(self.table, tree, self.session._open_flags)
        self.session.on_init = self.meta.session_began
        #: The slow path's lock: one request at a time through codec, session and tree.
        self.lock = threading.Lock()
        # Serving state per queue, made at its first start and kept (stats accumulate).
        self._rings: dict[int, _Ring] = {}
        # Bumped when a queue stops: a deferred reply for an older epoch is dropped (its
        # ring and maybe its guest memory are gone).
        self._epoch: dict[int, int] = {}
        self._deferred_count = threading.Lock()
        self.deferred_running = 0
        # One request buffer for the device, used under self.lock only: a request is
        # gathered, parsed and answered before the lock is let go, and the codec keeps
        # no view of it (names and values are copied out; a deferred SETLKW holds parsed
        # numbers only).
        self._req = bytearray(MAX_REQUEST)
        self._req_view = memoryview(self._req)
        self._req_ptr = ffi.from_buffer(self._req)
        #: opcode -> requests the slow path answered (under self.lock): which ones the
        #: C paths handed back, logged at exit (``slow_opcodes``), the first thing to
        #: look at when a workload costs more daemon CPU than expected. -1: any opcode
        #: the ABI does not know, and headers too short to carry one.
        self.slow_ops: Counter[int] = Counter()

    # ---- VhostUserDevice -----------------------------------------------------------------
    def device_features(self) -> int:
        return 0  # virtio-fs has no feature bits of its own that we offer

    def protocol_features(self) -> int:
        return 0

    def get_config(self, offset: int, size: int) -> bytes:
        cfg = virtio_fs_config.pack(self.tag, self.num_request_queues)
        return cfg[offset:offset + size].ljust(size, b"\0") if offset >= 0 else b"\0" * size

    def set_config(self, offset: int, data: bytes) -> None:
        pass  # read-only config space: writes are ignored, as in virtio-fs devices

    def reset(self) -> None:
        """A new driver (device reset, or the next frontend): nothing of the old FUSE
        session survives: handles and inodes are released, INIT is needed again."""
        self.end_session()

    def end_session(self) -> None:
        with self.lock:
            self.session.end()  # the C paths stop first (on_destroy), then the tree

    def _ring(self, index: int) -> _Ring:
        ring = self._rings.get(index)
        if ring is None:
            ring = self._rings[index] = _Ring(index, ffi.new("struct msb_chain[]", SLOW_BATCH),
                                              ffi.new("struct msb_fs_stats *"))
        return ring

    def queue_started(self, index: int, vq: Virtqueue) -> None:
        ring = self._ring(index)
        ring.stop = False
        with ring.deferred_lock:
            if ring.wake_fd < 0:
                ring.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def queue_stopped(self, index: int, vq: Virtqueue) -> None:
        self._epoch[index] = self._epoch.get(index, 0) + 1
        ring = self._rings.get(index)
        if ring is not None:
            # The thread has returned (the backend waited for handle_kick). A SETLKW
            # finishing later must not write a closed (maybe reused) fd number.
            with ring.deferred_lock:
                if ring.wake_fd >= 0:
                    os.close(ring.wake_fd)
                    ring.wake_fd = -1

    def interrupt(self, index: int, vq: Virtqueue) -> None:
        """The backend's thread: make the serving thread return after its round."""
        ring = self._rings.get(index)
        if ring is not None:
            ring.stop = True
            with ring.deferred_lock:
                if ring.wake_fd >= 0:
                    os.eventfd_write(ring.wake_fd, 1)

    async def handle_kick(self, index: int, vq: Virtqueue) -> None:
        ring = self._ring(index)
        try:
            await trio.to_thread.run_sync(self._serve_ring, ring, vq, limiter=ring.limiter)
        finally:
            ring.stop = False

    # ---- the serving thread ------------------------------------------------------------------
    def _serve_ring(self, ring: _Ring, vq: Virtqueue) -> None:
        """Serve until interrupted. The kick cycle (rounds, signals, the wait for the
        next kick, all without the GIL) runs in C (``msb_fs_serve_loop``) for as long as
        only fast chains come; it returns here for slow chains, for a wake-up (a stop or
        a deferred reply) and when the ring breaks."""
        cvq = c_ring(vq)
        drained = ffi.new("int *")
        why = ffi.new("int *")
        while not ring.stop:
            self._push_deferred(ring, vq, cvq)
            n = lib.msb_fs_serve_loop(cvq, self.table, ring.chains, SLOW_BATCH, BUDGET,
                                      ring.stats, vq.kick_fd, ring.wake_fd, drained, why)
            ring.c_returns += 1
            if why[0] == lib.MSB_LOOP_SLOW:
                if not self._round(ring, vq, cvq, n):
                    return  # the ring broke: the backend waits for the next kick
            elif why[0] == lib.MSB_LOOP_BROKEN:
                st = vq.statistics()
                log.warning("queue %d broken by the driver (%s): avail idx %s, last avail "
                            "%d, used %d", ring.index, errno.errorcode.get(-n, n),
                            cvq.avail.idx if cvq.avail != ffi.NULL else "-",
                            st["last_avail_idx"], st["used_idx"])
                return
            elif why[0] == lib.MSB_LOOP_WAIT_FAILED:
                log.warning("queue %d: waiting for kicks failed (%s); no longer served",
                            ring.index, errno.errorcode.get(-n, n))
                return
            elif why[0] == lib.MSB_LOOP_NOTIFY_FAILED:
                raise OSError(-n, os.strerror(-n))  # as vq.notify() raises it
            if ring.stop and not drained[0]:
                ring.yields += 1  # returning with chains still available

    def _round(self, ring: _Ring, vq: Virtqueue, cvq: Any, n: int) -> bool:
        """Answer a C round's n slow chains and signal; False when the ring broke."""
        chains = ring.chains
        for i in range(n):
            used = self._serve_slow(ring, cvq, vq, chains + i)
            if used < 0:
                log.warning("push on queue %d failed: the ring is broken", ring.index)
                return False
            if i % SLOW_NOTIFY_EVERY == SLOW_NOTIFY_EVERY - 1:
                # Slow requests take ~10 us each: let a waiting driver start on the
                # first replies while we serve the rest (fast ones are signalled once
                # per round: there a signal per reply costs more than it overlaps).
                vq.notify()
        vq.notify()
        return True

    # ---- the slow path -------------------------------------------------------------------------
    def _serve_slow(self, ring: _Ring, cvq: Any, vq: Virtqueue, c: Any) -> int:
        """Answer one chain through the codec and push it: the used length, 0 when
        deferred (pushed when it completes), < 0 when the ring broke."""
        inodes = self.meta.inodes
        with self.lock:
            # Lock first, section second: a section never waits for the lock (a
            # RELEASE holding it waits for sections). The inode table held: no FORGET
            # of another queue's C path drops an inode half-way through the request.
            # One C call holds, enters and gathers; one leaves, unholds (and answers).
            n = lib.msb_fs_slow_begin(inodes, c, self._req_ptr, MAX_REQUEST)
            op = int.from_bytes(self._req[4:8], "little") if n >= 8 else -1
            # Opcodes the ABI does not know share one key: a guest sending every 32-bit
            # number must not grow the daemon's memory by a counter each.
            self.slow_ops[op if op in abi.Opcode._value2member_map_ else -1] += 1
            try:
                if n > MAX_REQUEST:
                    # Too long to be a request of ours: answer from the header alone.
                    unique = int.from_bytes(self._req[8:16], "little")
                    reply: bytes | Deferred | None = error_reply(unique, errno.EINVAL)
                else:
                    reply = self.session.dispatch(self._req_view[:n], c.in_len)
            except BaseException:
                lib.msb_fs_slow_end(inodes)
                raise
            if type(reply) is bytes:
                r = lib.msb_fs_slow_end_answer(inodes, cvq, c, reply, len(reply))
                if r != -errno.EMSGSIZE:
                    return r
            else:
                lib.msb_fs_slow_end(inodes)
        if type(reply) is bytes:
            return self._answer(cvq, vq, c, reply)
        if reply is None:
            return _push_empty(vq, c.head)
        assert isinstance(reply, Deferred)
        if not self._defer(ring, vq, c, reply):
            reply.cancel()  # it pinned a lock description for the wait that will not run
            return self._answer(cvq, vq, c, error_reply(reply.unique, errno.ENOLCK))
        return 0

    @staticmethod
    def _answer(cvq: Any, vq: Virtqueue, c: Any, reply: bytes) -> int:
        r = lib.msb_fs_answer(cvq, c, reply, len(reply))
        if r == -errno.EMSGSIZE:
            # The driver gave too little room (the codec already clamps sizes): say so
            # if even a header fits, else give the buffer back empty.
            unique = int.from_bytes(reply[8:16], "little")
            r = lib.msb_fs_answer(cvq, c, error_reply(unique, errno.EINVAL),
                                     abi.fuse_out_header.size)
            if r == -errno.EMSGSIZE:
                r = _push_empty(vq, c.head)
        return r

    def _defer(self, ring: _Ring, vq: Virtqueue, chain: Any, d: Deferred) -> bool:
        """Park ``d`` on a thread of its own; False past MAX_DEFERRED parked."""
        with self._deferred_count:
            if self.deferred_running >= MAX_DEFERRED:
                return False
            self.deferred_running += 1
        # The chain buffer is reused by the next round: keep a private copy of it.
        saved = ffi.new("struct msb_chain *")
        ffi.memmove(saved, chain, ffi.sizeof("struct msb_chain"))
        # generation moves on a stop and on a memory table change (vhost/virtqueue.py).
        epoch = (self._epoch.get(vq.index, 0), vq.generation)
        # A daemon thread: it may block for as long as the lock holder keeps the lock
        # (process exit abandons it, as virtiofsd's would be).
        try:
            threading.Thread(target=self._run_deferred, args=(ring, saved, d, epoch),
                             name="msbfs-setlkw", daemon=True).start()
        except RuntimeError:  # no thread to be had (process limits): refused, as past the bound
            with self._deferred_count:
                self.deferred_running -= 1
            return False
        return True

    def _run_deferred(self, ring: _Ring, saved: Any, d: Deferred,
                      epoch: tuple[int, int]) -> None:
        try:
            reply = d.run()
        finally:
            with self._deferred_count:
                self.deferred_running -= 1
        with ring.deferred_lock:
            ring.deferred.append((epoch, saved, reply))
            if ring.wake_fd >= 0:
                os.eventfd_write(ring.wake_fd, 1)  # the ring's thread pushes it

    def _push_deferred(self, ring: _Ring, vq: Virtqueue, cvq: Any) -> None:
        """The serving thread: push the SETLKW replies that finished meanwhile."""
        with ring.deferred_lock:
            done, ring.deferred = ring.deferred, []
        pushed = False
        for epoch, saved, reply in done:
            if (self._epoch.get(vq.index, 0), vq.generation) != epoch:
                # The ring stopped or guest memory was remapped meanwhile: the saved
                # iovecs may point at nothing now. Drop the reply rather than touch them.
                log.info("dropping a SETLKW reply: queue %d changed while it waited",
                         vq.index)
                continue
            pushed |= self._answer(cvq, vq, saved, reply) >= 0
        if pushed:
            vq.notify()

    # ---- the C handle table ----------------------------------------------------------------------
    def _destroyed(self) -> None:
        # The C paths answer nothing more, and a round of another queue that saw the
        # session still ready has ended (a grace period) before the tree's destroy
        # empties the tables: no C OPEN or LOOKUP of the old session lands after it.
        self.meta.session_ends()
        lib.msb_grace_synchronize()

    def statistics(self) -> dict[str, int]:
        totals = dict.fromkeys(("reads", "writes", "read_bytes", "write_bytes", "slow",
                                "errors"), 0)
        for ring in list(self._rings.values()):
            for k in totals:
                totals[k] += getattr(ring.stats, k)
        return {"fast_reads": totals["reads"], "fast_writes": totals["writes"],
                "read_bytes": totals["read_bytes"], "write_bytes": totals["write_bytes"],
                "slow": totals["slow"], "fast_errors": totals["errors"],
                "handles": self.table.count, "deferred_running": self.deferred_running,
                "yields": sum(r.yields for r in list(self._rings.values())),
                "c_returns": sum(r.c_returns for r in list(self._rings.values()))}

    def slow_opcodes(self) -> str:
        """The slow path's requests by opcode name, most first (``LOOKUP=3 ...``)."""
        with self.lock:
            ops = self.slow_ops.most_common()
        return " ".join(f"{abi.opcode_name(op) if op >= 0 else 'unknown'}={n}" for op, n in ops)


def _push_empty(vq: Virtqueue, head: int) -> int:
    """Give a chain back with nothing written: 0, or -errno as the C pushes report it."""
    try:
        vq.push(head, 0)
    except QueueBroken as e:
        return -e.errno
    except OSError as e:
        return -(e.errno or errno.EIO)
    return 0
