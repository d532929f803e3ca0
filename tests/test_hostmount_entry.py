"""msbfs/hostmount_entry.py: pyfuse3's EntryAttributes with the node id apart from
st_ino, written only where the C layout is the known one."""

from __future__ import annotations

import pyfuse3
import pytest
from msbfs._native import ffi

from msbfs import hostmount_entry
from msbfs.hostmount import entry_attributes
from msbfs.tree.types import Attr

pytestmark = pytest.mark.skipif(not hostmount_entry.APART,
                                reason="pyfuse3's EntryAttributes layout is not the known one")

ATTR = Attr(ino=123456, size=1, blocks=8, atime_ns=1, mtime_ns=2, ctime_ns=3,
            mode=0o100644, nlink=2, uid=5, gid=6, rdev=0, blksize=4096)


def test_node_id_apart_from_st_ino() -> None:
    e = entry_attributes(77, ATTR, entry_timeout=1.0, attr_timeout=1.0)
    assert e.st_ino == 77  # pyfuse3's getter reads the node id the kernel gets
    words = ffi.cast("uint64_t *", id(e))
    ino_word, st_ino_word = (o // 8 for o in hostmount_entry._LAYOUT or (0, 0))
    assert words[ino_word] == 77 and words[st_ino_word] == 123456  # stat(2) sees this
    assert (e.st_mode, e.st_nlink, e.st_uid, e.st_gid, e.st_size) == (0o100644, 2, 5, 6, 1)


def test_plain_record_has_node_id_0() -> None:
    p = hostmount_entry.PlainDirent()
    a = p.set(4242, 4)  # a directory
    assert a.st_ino == 0 and a.st_mode == 0o040000
    words = ffi.cast("uint64_t *", id(a))
    assert words[(hostmount_entry._LAYOUT or (0, 0))[1] // 8] == 4242


class _Other:
    """An EntryAttributes of another layout: the same names, as Python slots (object
    pointers where pyfuse3 has the C fields), as large as a struct worth scanning."""

    __slots__ = ("a", "b", "c", "d", "e", "f", "generation", "st_ino")

    def __init__(self) -> None:
        self.st_ino = 0
        self.generation = 0


def test_another_layout_is_refused() -> None:
    assert type(_Other()).__basicsize__ >= 64  # scanned, not refused for its size
    assert hostmount_entry._find_layout(_Other) is None
    assert hostmount_entry._find_layout(pyfuse3.EntryAttributes) == hostmount_entry._LAYOUT
