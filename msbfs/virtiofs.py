"""The vhost-user-fs device: a hiprio queue plus N request queues carrying FUSE requests
to one tree.

Per kick, the C data path (``csrc/fuse_datapath.c``) pops the available chains and answers
well-formed READ/WRITE requests on open handles itself, straight between the host fd and
guest memory (big reads of a round on two threads at once, as virtiofsd's pool would);
it hands every other chain back here, where the request bytes go through
the FUSE codec (``msbfs.fuse``) into the tree, inline on the trio loop, and the reply is
scattered into the chain's writable part. Each used element is pushed as soon as it is
answered; the driver is signalled once per round of pops, and every few slow replies
within one (EVENT_IDX-aware, in C). Measured through the frontend, a signal per fast
reply halves 4 KiB throughput; a signal per round of ~10 us slow replies wastes overlap.

The C handle table mirrors the session's open files: filled from ``tree.data_fd`` when
OPEN/CREATE/TMPFILE succeed, emptied before RELEASE and DESTROY, so C never touches an
fd the tree has closed. A handle whose writes the tree must see (quota: ``data_fd``
raises EAGAIN) is only registered for reading; its writes take the slow path.

SETLKW may block: it runs in a worker thread and its reply is pushed when it returns,
unless its ring was stopped or its guest memory remapped meanwhile (then it is dropped).
The queue goes on serving other requests while it waits.

The device uses the Virtqueue API (``push``, ``notify``, ``generation``); only the two
C entry points that walk the ring themselves (``msb_fs_serve``, ``msb_fs_answer``) get
the raw ring, through ``msbfs.vring.c_ring``.
"""

from __future__ import annotations

import errno
import logging
import struct
from typing import Any

import trio

from msbfs._native import ffi, lib
from msbfs.fuse import abi
from msbfs.fuse.server import Deferred, FuseSession, error_reply
from msbfs.tree.api import TreeOps
from msbfs.tree.policy import FAST_WRITE_FORBIDDEN_BITS
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
#: struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
virtio_fs_config = struct.Struct("<36sI")


class VirtioFsDevice(VhostUserDevice):
    """vhost-user-fs over ``tree``. ``num_request_queues`` is what we offer; the guest
    kernel uses as many as the frontend sets up."""

    def __init__(self, tree: TreeOps, *, tag: str = "msbfs", num_request_queues: int = 1,
                 writeback: bool = False, posix_acl: bool = False, posix_lock: bool = True,
                 flock: bool = True) -> None:
        tb = tag.encode()
        if not tb or len(tb) > VIRTIO_FS_TAG_LEN:
            raise ValueError(f"tag must be 1..{VIRTIO_FS_TAG_LEN} bytes")
        super().__init__()
        self.tree = tree
        self.tag = tb
        self.num_request_queues = num_request_queues
        self.num_queues = 1 + num_request_queues
        self.table = ffi.gc(lib.msb_fs_table_new(), lib.msb_fs_table_free)
        if self.table == ffi.NULL:
            raise MemoryError("handle table")
        # The C data path knows no set-id rule: a write that must clear set-id bits on a
        # file that has any goes to the tree (msbfs/tree/policy.py defines which).
        self.table.slow_write_mode_bits = FAST_WRITE_FORBIDDEN_BITS
        self.stats = ffi.new("struct msb_fs_stats *")
        self._drained = ffi.new("int *")
        self.session = FuseSession(tree, writeback=writeback, posix_acl=posix_acl,
                                   posix_lock=posix_lock, flock=flock,
                                   on_open=self._opened, on_release=self._released,
                                   on_destroy=self._destroyed)
        # One chain buffer per queue, made at its first kick: queues are served by
        # separate tasks that may interleave at checkpoints.
        self._chains: dict[int, Any] = {}
        # Bumped when a queue stops: a deferred reply for an older epoch is dropped (its
        # ring and maybe its guest memory are gone).
        self._epoch: dict[int, int] = {}
        self.deferred_running = 0
        # One request buffer for the device: a request is parsed and answered before the
        # next is gathered (no checkpoint in between), and the codec keeps no view of it
        # (names and values are copied out; a deferred SETLKW holds parsed numbers only).
        self._req = bytearray(MAX_REQUEST)
        self._req_view = memoryview(self._req)
        self._req_ptr = ffi.from_buffer(self._req)

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
        self.session.end()  # clears the C handle table first (on_destroy)

    def queue_stopped(self, index: int, vq: Virtqueue) -> None:
        self._epoch[index] = self._epoch.get(index, 0) + 1

    async def handle_kick(self, index: int, vq: Virtqueue) -> None:
        chains = self._chains.get(index)
        if chains is None:
            chains = self._chains[index] = ffi.new("struct msb_chain[]", SLOW_BATCH)
        cvq = c_ring(vq)
        drained = self._drained
        while True:
            n = lib.msb_fs_serve(cvq, self.table, chains, SLOW_BATCH, BUDGET, self.stats, drained)
            if n < 0:
                st = vq.statistics()
                log.warning("queue %d broken by the driver (%s): avail idx %s, last avail %d, "
                            "used %d", index, errno.errorcode.get(-n, n),
                            cvq.avail.idx if cvq.avail != ffi.NULL else "-",
                            st["last_avail_idx"], st["used_idx"])
                return
            for i in range(n):
                c = chains + i
                used = self._serve_slow(cvq, vq, c)
                if used < 0:
                    log.warning("push on queue %d failed: the ring is broken", index)
                    return
                if i % SLOW_NOTIFY_EVERY == SLOW_NOTIFY_EVERY - 1:
                    # Slow requests take ~10 us each: let a waiting driver start on the
                    # first replies while we serve the rest (fast ones are signalled once
                    # per round: there a signal per reply costs more than it overlaps).
                    vq.notify()
            vq.notify()
            if drained[0]:
                # Popped until empty: that is what re-arms the driver's kick. Returning
                # on "nothing pending" instead loses kicks under EVENT_IDX.
                return
            await trio.lowlevel.checkpoint()

    # ---- the slow path -------------------------------------------------------------------------
    def _serve_slow(self, cvq: Any, vq: Virtqueue, c: Any) -> int:
        """Answer one chain through the codec and push it: the used length, 0 when
        deferred (pushed when it completes), < 0 when the ring broke."""
        n = lib.msb_fs_gather(c, self._req_ptr, MAX_REQUEST)
        if n > MAX_REQUEST:
            # Too long to be a request of ours: answer from the header alone.
            unique = int.from_bytes(self._req[8:16], "little")
            reply: bytes | Deferred | None = error_reply(unique, errno.EINVAL)
        else:
            reply = self.session.dispatch(self._req_view[:n], c.in_len)
        if type(reply) is bytes:
            return self._answer(cvq, vq, c, reply)
        if reply is None:
            return _push_empty(vq, c.head)
        assert isinstance(reply, Deferred)
        self._defer(vq, c, reply)
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

    def _defer(self, vq: Virtqueue, chain: Any, d: Deferred) -> None:
        # The chain buffer is reused by the next kick: keep a private copy of it.
        saved = ffi.new("struct msb_chain *")
        ffi.memmove(saved, chain, ffi.sizeof("struct msb_chain"))
        # generation moves on a stop and on a memory table change (vhost/virtqueue.py).
        epoch = (self._epoch.get(vq.index, 0), vq.generation)
        # A system task: it outlives this kick's handler, and is cancelled (its thread
        # abandoned) when the daemon's trio run ends.
        trio.lowlevel.spawn_system_task(self._run_deferred, vq, saved, d, epoch,
                                        name="msbfs-setlkw")

    async def _run_deferred(self, vq: Virtqueue, saved: Any, d: Deferred,
                            epoch: tuple[int, int]) -> None:
        self.deferred_running += 1
        try:
            reply = await trio.to_thread.run_sync(d.run, abandon_on_cancel=True)
        except trio.Cancelled:
            return
        finally:
            self.deferred_running -= 1
        if (self._epoch.get(vq.index, 0), vq.generation) != epoch:
            # The ring stopped or guest memory was remapped meanwhile: the saved iovecs
            # may point at nothing now. Drop the reply rather than touch them.
            log.info("dropping a SETLKW reply: queue %d changed while it waited", vq.index)
            return
        self._push_now(vq, saved, reply)

    def _push_now(self, vq: Virtqueue, chain: Any, reply: bytes) -> None:
        if self._answer(c_ring(vq), vq, chain, reply) >= 0:
            vq.notify()

    # ---- the C handle table ----------------------------------------------------------------------
    def _opened(self, fh: int, flags: int) -> None:
        for write, bit in ((False, lib.MSB_FS_READ), (True, lib.MSB_FS_WRITE)):
            try:
                fd = self.tree.data_fd(fh, write=write)
            except OSError:
                continue  # not open that way, or the tree must see it (quota): slow path
            if lib.msb_fs_table_set(self.table, fh, fd, bit) < 0:
                raise MemoryError("handle table")

    def _released(self, fh: int) -> None:
        lib.msb_fs_table_del(self.table, fh)

    def _destroyed(self) -> None:
        lib.msb_fs_table_clear(self.table)

    def statistics(self) -> dict[str, int]:
        s = self.stats
        return {"fast_reads": s.reads, "fast_writes": s.writes, "read_bytes": s.read_bytes,
                "write_bytes": s.write_bytes, "slow": s.slow, "fast_errors": s.errors,
                "handles": self.table.count, "deferred_running": self.deferred_running}


def _push_empty(vq: Virtqueue, head: int) -> int:
    """Give a chain back with nothing written: 0, or -errno as the C pushes report it."""
    try:
        vq.push(head, 0)
    except QueueBroken as e:
        return -e.errno
    except OSError as e:
        return -(e.errno or errno.EIO)
    return 0
