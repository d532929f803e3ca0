"""vhost.memory: regions mapped at their offsets, checked, and never unmapped while
pinned."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from msbfs._native import ffi

from vhost.memory import GuestMemory, GuestMemoryError
from vhost.messages import MemRegion

MB = 1 << 20


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("test", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4 * MB)
    os.pwrite(fd, b"first", 4096)
    os.pwrite(fd, b"second", 2 * MB)
    yield fd
    os.close(fd)


def test_regions_map_at_their_offsets(memfd: int) -> None:
    mem = GuestMemory()
    regions = [MemRegion(0x1000_0000, MB, 0x7000_0000, 4096),
               MemRegion(0x2000_0000, MB, 0x8000_0000, 2 * MB)]
    mem.set_table(regions, [memfd, memfd])
    assert mem.read(0x1000_0000, 5) == b"first"
    assert mem.read(0x2000_0000, 6) == b"second"
    mem.write(0x2000_0000 + MB - 3, b"end")
    assert os.pread(memfd, 3, 3 * MB - 3) == b"end"  # shared with the frontend
    assert mem.translate(0x1000_0000 + MB - 1, 2) is None  # runs off the region
    assert mem.translate(0x1800_0000, 1) is None
    with pytest.raises(GuestMemoryError):
        mem.read(0x0, 1)
    mem.close()
    assert mem.statistics()["regions"] == 0


@pytest.mark.parametrize(("regions", "error"), [
    ([MemRegion(0, 0, 0, 0)], "size 0"),
    ([MemRegion((1 << 64) - 4096, 8192, 0, 0)], "wraps"),
    ([MemRegion(0, MB, 0, 0), MemRegion(MB // 2, MB, 4 * MB, 0)], "overlap at gpa"),
    ([MemRegion(0, MB, 0, 0), MemRegion(4 * MB, MB, MB // 2, 0)], "overlap at user"),
    ([MemRegion(0, 8 * MB, 0, 0)], "past the end of its file"),
    ([MemRegion(0, MB, 0, 4 * MB - 4096)], "past the end of its file"),
])
def test_bad_regions_refused(memfd: int, regions: list[MemRegion], error: str) -> None:
    mem = GuestMemory()
    good = [MemRegion(1 << 40, MB, 1 << 40, 0)]
    mem.set_table(good, [memfd])
    table = mem.table
    with pytest.raises(GuestMemoryError, match=error):
        mem.set_table(regions, [memfd] * len(regions))
    assert mem.table == table and mem.statistics()["regions"] == 1  # old table kept
    mem.close()


def test_failed_mapping_rolls_back(memfd: int) -> None:
    mem = GuestMemory()
    efd = os.eventfd(0)
    try:
        with pytest.raises(GuestMemoryError, match="cannot map"):
            mem.set_table([MemRegion(0, MB, 0, 0), MemRegion(MB, MB, MB, 0)], [memfd, efd])
    finally:
        os.close(efd)
    assert mem.statistics()["regions"] == 0


def test_replaced_regions_stay_mapped_while_pinned(memfd: int) -> None:
    mem = GuestMemory()
    mem.set_table([MemRegion(0, MB, 0, 4096)], [memfd])
    old = mem.translate(0, 5)
    assert old is not None
    with mem.pinned():
        mem.set_table([MemRegion(0, MB, 0, 2 * MB)], [memfd])
        assert mem.statistics()["retired"] == 1
        # a pointer handed out before the change still reads the old region
        assert ffi.buffer(ffi.cast("char *", old), 5)[:] == b"first"
        assert mem.read(0, 6) == b"second"
    assert mem.statistics()["retired"] == 0
    with pytest.raises(GuestMemoryError):
        mem.remove(MemRegion(0, 2 * MB, 0, 0))
    mem.remove(MemRegion(0, MB, 0, 0))
    assert mem.statistics()["regions"] == 0
    mem.close()


def test_add_region_checks_overlap(memfd: int) -> None:
    mem = GuestMemory()
    mem.add(MemRegion(0, MB, 0, 0), memfd)
    with pytest.raises(GuestMemoryError, match="overlap"):
        mem.add(MemRegion(MB - 4096, MB, 8 * MB, 0), memfd)
    mem.add(MemRegion(MB, MB, MB, MB), memfd)
    assert mem.statistics()["regions"] == 2
    mem.close()
