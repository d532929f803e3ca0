"""The virtio-fs data path's view of a vhost ring: the one place a ``struct msb_vq``
crosses from vhost's cffi extension into msbfs's.

Why two extensions share a struct: vhost/ is a package of its own (vhost._native, built
from csrc/virtq.c by csrc/build_vhost.py) and creates and configures every ring. The
data path (csrc/fuse_datapath.c, in msbfs._native) pops and pushes on that ring in C,
without crossing into Python per request; so msbfs._native compiles csrc/virtq.c too
(each .so binds to its own copy: hidden visibility, RTLD_LOCAL) and receives the ring
by address (``Virtqueue.ring_address``). Calling vhost's functions through pointers
instead would put an indirect call on every pop and push and a second C API to keep.

The cast is sound only while both extensions were built from the same csrc/virtq.h:
at import this module compares the size of every shared struct and the offset and
size of each member, and refuses to load if they differ (a stale .so of either).
"""

from __future__ import annotations

from typing import Any

from vhost._native import ffi as vhost_ffi

from msbfs._native import ffi
from vhost.virtqueue import Virtqueue

#: The structs a ring pointer leads C to (directly or through its members).
SHARED_STRUCTS = ("struct msb_vq", "struct msb_memtable", "struct msb_memreg",
                  "struct msb_vring_desc", "struct msb_vring_avail",
                  "struct msb_vring_used", "struct msb_vring_used_elem",
                  "struct msb_chain", "struct iovec")


class RingLayoutMismatch(ImportError):
    """msbfs._native and vhost._native disagree on a struct: rebuild both."""


def layout(ffi_: Any, name: str) -> list[tuple[str, int, int]]:
    """(member, offset, size) of every member of ``name`` in ``ffi_``, plus its size."""
    t = ffi_.typeof(name)
    rows = [("sizeof", 0, ffi_.sizeof(t))]
    for member, f in t.fields:
        # A flexible array member (ring[]) has no size of its own: its item's counts.
        size = ffi_.sizeof(f.type.item) if f.type.kind == "array" and f.type.length is None \
            else ffi_.sizeof(f.type)
        rows.append((member, f.offset, size))
    return rows


def check_layout(ours: Any = ffi, theirs: Any = vhost_ffi) -> None:
    for name in SHARED_STRUCTS:
        a, b = layout(ours, name), layout(theirs, name)
        if a != b:
            raise RingLayoutMismatch(f"{name}: msbfs._native has {a}, vhost._native has {b}")


check_layout()


def c_ring(vq: Virtqueue) -> Any:
    """``vq``'s ``struct msb_vq *`` as msbfs._native's functions take it."""
    return ffi.cast("struct msb_vq *", vq.ring_address)
