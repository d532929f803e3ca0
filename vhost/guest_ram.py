"""memfd-backed "guest" memory for the in-tree frontend (``vhost.frontend``) and its
virtio driver (``vhost.driver``): one or several regions at non-zero offsets of one
memfd, each mapped here with PROT_NONE guard pages around it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vhost._native import ffi, lib
from vhost.messages import MemRegion

PAGE = 4096


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
