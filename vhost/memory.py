"""Guest memory as the backend sees it: the frontend's regions mapped locally and the C
``struct msb_memtable`` that every guest address is translated through.

Each region's fd is mapped at its offset (csrc ``msb_map_guarded``: PROT_NONE guard
pages on both sides, so a stray access faults rather than touching a neighbour) and the
fd is closed at once; the mapping keeps the memory alive.

Replacing or removing regions never unmaps memory a queue may still be using:
- every change builds a NEW memtable; queues are re-pointed at it by the backend
  (``Backend._memory_changed``) before the old one is retired;
- retired tables and mappings are released only when no one holds ``pinned()``
  (the backend pins around every ``handle_kick``, and before a change it waits until
  no handler runs, threaded ones included: ``Backend._quiesced``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vhost._native import ffi, lib
from vhost.messages import MemRegion

MAX_REGIONS: int = lib.MSB_MAX_MEMREGS
GUARD = 64 * 1024


class GuestMemoryError(Exception):
    """A region set the frontend gave is unusable (overlap, bad size, mmap failure)."""


@dataclass
class Mapping:
    region: MemRegion
    host: int          # address of the region's first byte in this process
    guard: int

    def unmap(self) -> None:
        if self.host:
            lib.msb_unmap_guarded(ffi.cast("void *", self.host), self.region.size,
                                  self.region.mmap_offset, self.guard)
            self.host = 0


def _overlap(a0: int, an: int, b0: int, bn: int) -> bool:
    return a0 < b0 + bn and b0 < a0 + an


def check_regions(regions: Sequence[MemRegion]) -> None:
    """Reject sizes of 0, wrap-around and overlaps (in guest-physical or frontend space)."""
    if len(regions) > MAX_REGIONS:
        raise GuestMemoryError(f"{len(regions)} regions, at most {MAX_REGIONS}")
    for r in regions:
        if r.size == 0:
            raise GuestMemoryError("region of size 0")
        for start in (r.gpa, r.uaddr, r.mmap_offset):
            if start + r.size > 1 << 64:
                raise GuestMemoryError(f"region {r.gpa:#x}+{r.size:#x} wraps around")
    for i, a in enumerate(regions):
        for b in regions[i + 1:]:
            if _overlap(a.gpa, a.size, b.gpa, b.size):
                raise GuestMemoryError(f"regions overlap at gpa {b.gpa:#x}")
            if _overlap(a.uaddr, a.size, b.uaddr, b.size):
                raise GuestMemoryError(f"regions overlap at user address {b.uaddr:#x}")


def map_region(region: MemRegion, fd: int, guard: int = GUARD) -> Mapping:
    """mmap ``fd`` for ``region`` (does not close fd). A regular file (memfd) must be
    long enough: pages past its end would SIGBUS on first touch."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise GuestMemoryError(f"region fd: {e}") from None
    if stat.S_ISREG(st.st_mode) and region.mmap_offset + region.size > st.st_size:
        raise GuestMemoryError(f"region {region.gpa:#x}+{region.size:#x} at offset "
                               f"{region.mmap_offset:#x} runs past the end of its file "
                               f"({st.st_size:#x} bytes)")
    p = lib.msb_map_guarded(fd, region.size, region.mmap_offset, guard)
    if p == ffi.NULL:
        err = ffi.errno
        raise GuestMemoryError(f"cannot map region {region.gpa:#x}+{region.size:#x}: "
                           f"{os.strerror(err)}")
    return Mapping(region, int(ffi.cast("uintptr_t", p)), guard)


class GuestMemory:
    """The current region set, its C table, and deferred release of old ones."""

    def __init__(self, guard: int = GUARD) -> None:
        self.guard = guard
        self.mappings: list[Mapping] = []
        self.table: Any = self._build([])
        self._retired_tables: list[Any] = []
        self._retired_maps: list[Mapping] = []
        self._pins = 0

    # ---- changes (the backend re-points its queues after each) ---------------------

    def set_table(self, regions: Sequence[MemRegion], fds: Sequence[int]) -> None:
        """SET_MEM_TABLE: replace every region. All-or-nothing; fds are not closed."""
        check_regions(regions)
        new = self._map_all(regions, fds)
        self._replace(new, self.mappings)

    def add(self, region: MemRegion, fd: int) -> None:
        """ADD_MEM_REG."""
        check_regions([m.region for m in self.mappings] + [region])
        (m,) = self._map_all([region], [fd])
        self._replace([*self.mappings, m], [])

    def remove(self, region: MemRegion) -> None:
        """REM_MEM_REG: the region with the same gpa, size and user address."""
        for m in self.mappings:
            r = m.region
            if (r.gpa, r.size, r.uaddr) == (region.gpa, region.size, region.uaddr):
                self._replace([x for x in self.mappings if x is not m], [m])
                return
        raise GuestMemoryError(f"no region {region.gpa:#x}+{region.size:#x} to remove")

    def clear(self) -> None:
        self._replace([], self.mappings)

    def _map_all(self, regions: Sequence[MemRegion], fds: Sequence[int]) -> list[Mapping]:
        done: list[Mapping] = []
        try:
            for r, fd in zip(regions, fds, strict=True):
                done.append(map_region(r, fd, self.guard))
        except BaseException:
            for m in done:
                m.unmap()
            raise
        return done

    def _replace(self, new: list[Mapping], dropped: list[Mapping]) -> None:
        self._retired_tables.append(self.table)
        self._retired_maps.extend(dropped)
        self.mappings = new
        self.table = self._build(new)
        self.collect()

    @staticmethod
    def _build(mappings: list[Mapping]) -> Any:
        t = ffi.new("struct msb_memtable *")
        t.n = len(mappings)
        for i, m in enumerate(mappings):
            reg = t.regs[i]
            reg.gpa, reg.size, reg.uaddr = m.region.gpa, m.region.size, m.region.uaddr
            reg.host = ffi.cast("uint8_t *", m.host)
        return t

    # ---- pinning -------------------------------------------------------------------

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """While held, no retired mapping is unmapped (pointers from pops stay valid)."""
        self._pins += 1
        try:
            yield
        finally:
            self._pins -= 1
            if not self._pins:
                self.collect()

    def collect(self) -> None:
        """Release retired tables and mappings if nothing is pinned. The caller must
        have re-pointed its queues at ``self.table`` before calling this."""
        if self._pins:
            return
        for m in self._retired_maps:
            m.unmap()
        self._retired_maps.clear()
        self._retired_tables.clear()

    def close(self) -> None:
        self._pins = 0
        self.clear()

    # ---- Python-side access (tests, slow paths) -------------------------------------

    def translate(self, gpa: int, length: int) -> int | None:
        p = lib.msb_gpa_to_host(self.table, gpa, length)
        return None if p == ffi.NULL else int(ffi.cast("uintptr_t", p))

    def read(self, gpa: int, length: int) -> bytes:
        p = self.translate(gpa, length)
        if p is None:
            raise GuestMemoryError(f"[{gpa:#x}, +{length:#x}) is not guest memory")
        return ffi.buffer(ffi.cast("char *", p), length)[:]

    def write(self, gpa: int, data: bytes) -> None:
        p = self.translate(gpa, len(data))
        if p is None:
            raise GuestMemoryError(f"[{gpa:#x}, +{len(data):#x}) is not guest memory")
        ffi.memmove(ffi.cast("char *", p), data, len(data))

    def statistics(self) -> dict[str, int]:
        return {"regions": len(self.mappings), "bytes": sum(m.region.size for m in self.mappings),
                "retired": len(self._retired_maps), "pins": self._pins}
