"""One split virtqueue as a device sees it: a thin Python face over ``struct msb_vq``.

The walking, bounds checks and used-ring updates are C (csrc/virtq.c). Python crosses
into C once per ``pop``/``push_many``/``notify``, not once per descriptor.

C consumers: a device whose own C walks the ring (the virtio-fs data path calls
``msb_vq_pop``/``msb_vq_push`` itself) takes ``Virtqueue.ring_address``, the address of
this queue's ``struct msb_vq`` (layout: csrc/virtq.h), and casts it in its own FFI. It
must compile the same csrc/virtq.h and check the layout agrees (msbfs/vring.py does).
``Virtqueue.c`` is this package's own cdata handle (the backend configures it).

A popped ``Chain`` owns a copy of its iovec list, so it stays valid after later pops;
the guest memory it points at stays mapped while the backend has memory pinned (during
``handle_kick``; see ``GuestMemory.pinned``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Any

from vhost._native import ffi, lib

MAX_QUEUE_SIZE: int = lib.MSB_MAX_QUEUE
MAX_CHAIN: int = lib.MSB_MAX_CHAIN

_alloc_raw = ffi.new_allocator(should_clear_after_alloc=False)


class QueueBroken(Exception):
    """The guest broke the ring's rules; the queue serves nothing until set up again."""

    def __init__(self, index: int, err: int) -> None:
        super().__init__(f"virtqueue {index} is broken ({errno.errorcode.get(err, err)})")
        self.index = index
        self.errno = err


class Chain:
    """One popped descriptor chain: readable (driver->device) iovecs first, then
    writable ones. ``head`` is what goes back to ``push``."""

    __slots__ = ("head", "in_len", "iov", "nin", "nout", "out_len")

    def __init__(self, head: int, nout: int, nin: int, out_len: int, in_len: int,
                 iov: Any) -> None:
        self.head = head
        self.nout = nout
        self.nin = nin
        self.out_len = out_len
        self.in_len = in_len
        self.iov = iov  # cdata struct iovec[nout + nin]

    def read(self, offset: int = 0, size: int | None = None) -> bytes:
        """Copy readable bytes [offset, offset+size) out of guest memory."""
        if offset >= self.out_len:
            return b""
        n = self.out_len - offset if size is None else min(size, self.out_len - offset)
        if n <= 0:
            return b""
        buf = ffi.new("char[]", n)
        got = lib.msb_iov_copy_from(self.iov, self.nout, offset, buf, n)
        return ffi.buffer(buf, got)[:]

    def readinto(self, dst: bytearray | memoryview, offset: int = 0) -> int:
        """Copy readable bytes from ``offset`` into ``dst``; returns bytes copied."""
        if not len(dst):
            return 0
        return lib.msb_iov_copy_from(self.iov, self.nout, offset, ffi.from_buffer(dst),
                                     len(dst))

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Copy ``data`` into the writable part at ``offset``; returns bytes written
        (short if the writable part is smaller)."""
        if not len(data):
            return 0
        return lib.msb_iov_copy_to(self.iov + self.nout, self.nin, offset,
                                   ffi.from_buffer(data), len(data))

    def __repr__(self) -> str:
        return (f"Chain(head={self.head}, out={self.out_len}B/{self.nout}, "
                f"in={self.in_len}B/{self.nin})")


class Virtqueue:
    """Ring state of one queue. Built and configured by the backend; devices use
    ``pop``, ``push``/``push_many``, ``notify``, and each ``Chain``'s read/write."""

    def __init__(self, index: int, pop_batch: int = 64) -> None:
        self.index = index
        self.c: Any = ffi.new("struct msb_vq *")  # the C consumers' handle
        lib.msb_vq_init(self.c)
        self._batch = max(1, pop_batch)
        self._chains: Any = None  # 16 KiB per chain: allocated on the first pop()
        # protocol state, owned by the backend
        self.size = 0                       # SET_VRING_NUM (0 = not set)
        self.addrs: tuple[int, int, int] | None = None  # desc, avail, used (frontend VAs)
        self.base = 0                       # SET_VRING_BASE
        self.kick_fd = -1
        self.enabled = False
        self.started = False
        # Bumped whenever the memory or rings this queue's chains point into may have
        # changed (start, stop, memory table change). Something that holds a chain past
        # its handler compares it before touching the chain (a table pointer alone can
        # be reused by a later allocation).
        self.generation = 0

    # ---- used by devices -------------------------------------------------------

    @property
    def broken(self) -> bool:
        return bool(self.c.broken)

    @property
    def call_fd(self) -> int:
        return int(self.c.call_fd)

    @property
    def ring_address(self) -> int:
        """Address of this queue's ``struct msb_vq`` (csrc/virtq.h), for a device's own C.

        Valid while this Virtqueue lives; the ring it describes may be stopped or
        remapped between handler calls (compare ``generation``). Use it only from the
        thread serving the queue, as the Python methods are."""
        return int(ffi.cast("uintptr_t", self.c))

    def pop(self, max_chains: int | None = None) -> list[Chain]:
        """Pop up to ``max_chains`` available chains (default: the batch size).
        Raises QueueBroken if the guest broke the ring."""
        want = self._batch if max_chains is None else max(0, min(max_chains, self._batch))
        if self._chains is None:
            self._chains = _alloc_raw("struct msb_chain[]", self._batch)
        n = lib.msb_vq_pop(self.c, self._chains, want)
        if n < 0:
            raise QueueBroken(self.index, -n)
        out = []
        for i in range(n):
            c = self._chains[i]
            k = c.nout + c.nin
            iov = ffi.new("struct iovec[]", k) if k else ffi.NULL
            if k:
                ffi.memmove(iov, c.iov, k * ffi.sizeof("struct iovec"))
            out.append(Chain(c.head, c.nout, c.nin, c.out_len, c.in_len, iov))
        return out

    def push(self, head: int, length: int) -> None:
        """Return one chain to the driver with ``length`` bytes written."""
        r = lib.msb_vq_push(self.c, head, length)
        if r < 0:
            self._raise(r)

    def push_many(self, used: Iterable[tuple[int, int]]) -> None:
        """Return several chains at once (one used->idx update)."""
        pairs = list(used)
        if not pairs:
            return
        heads = ffi.new("uint16_t[]", [h for h, _ in pairs])
        lens = ffi.new("uint32_t[]", [n for _, n in pairs])
        r = lib.msb_vq_push_many(self.c, heads, lens, len(pairs))
        if r < 0:
            self._raise(r)

    def notify(self) -> bool:
        """Signal the call eventfd if the driver wants it (EVENT_IDX-aware)."""
        r = lib.msb_vq_notify(self.c)
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        return r > 0

    def pending(self) -> int:
        """Chains available but not yet popped."""
        return int(lib.msb_vq_pending(self.c))

    def statistics(self) -> dict[str, int]:
        c = self.c
        return {"popped": int(c.popped), "pushed": int(c.pushed), "calls": int(c.calls),
                "suppressed_calls": int(c.suppressed_calls),
                "last_avail_idx": int(c.last_avail_idx), "used_idx": int(c.used_idx),
                "broken": int(c.broken)}

    def _raise(self, r: int) -> None:
        if r == -errno.EIO:
            raise QueueBroken(self.index, -r)
        raise OSError(-r, os.strerror(-r))

    def __repr__(self) -> str:
        return (f"Virtqueue({self.index}, size={self.size}, started={self.started}, "
                f"enabled={self.enabled}, broken={self.broken})")
