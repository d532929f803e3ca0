"""FUSE replies, encoded: the kernel's out structs from the tree's value types, as bytes.
Sans-I/O and tree-free: pure functions of their arguments (the tree's types are only
read, by attribute), so the C answers that must match them byte for byte
(``msbfs.fastmeta``) and the fuzzers can check them alone.

``entry_reply`` (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK; with an ``Opened`` CREATE and
TMPFILE) and ``attr_reply`` (GETATTR, SETATTR) build a whole reply in one pack; the
``encode_*`` functions build one struct (``encode_attr``: fuse_attr, ``encode_entry``:
fuse_entry_out, ``encode_attr_out``: fuse_attr_out, ``encode_open``: fuse_open_out) and
``_reply`` puts a header in front of parts; ``error_reply`` is a header alone.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from msbfs.fuse import abi

if TYPE_CHECKING:  # read by attribute only: importing the tree is not this module's
    from msbfs.tree.types import Attr, Entry, Opened

HEADER = abi.fuse_out_header.size


_timeouts: dict[float, tuple[int, int]] = {}


def _split_timeout(t: float) -> tuple[int, int]:
    """(seconds, nanoseconds) of a timeout; a tree uses a handful of values, so cached."""
    r = _timeouts.get(t)
    if r is None:
        if t <= 0:
            r = (0, 0)
        else:
            sec = int(t)
            r = (sec, min(int((t - sec) * 1e9), 999_999_999))
        if len(_timeouts) < 64:
            _timeouts[t] = r
    return r


_U64 = 0xFFFFFFFFFFFFFFFF
_U32 = 0xFFFFFFFF
_pack_attr = abi.fuse_attr.pack


def encode_attr(a: Attr) -> bytes:
    at, mt, ct = divmod(a.atime_ns, 1_000_000_000), divmod(a.mtime_ns, 1_000_000_000), \
        divmod(a.ctime_ns, 1_000_000_000)
    flags = abi.FUSE_ATTR_SUBMOUNT if a.submount else 0
    try:
        return _pack_attr(a.ino, a.size, a.blocks, at[0], mt[0], ct[0], at[1], mt[1], ct[1],
                          a.mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize, flags)
    except struct.error:
        # Out-of-range values (times before 1970, huge ids): wrap as the kernel's
        # unsigned fields would hold them.
        return _pack_attr(a.ino & _U64, max(a.size, 0), max(a.blocks, 0), at[0] & _U64,
                          mt[0] & _U64, ct[0] & _U64, at[1], mt[1], ct[1], a.mode & _U32,
                          a.nlink & _U32, a.uid & _U32, a.gid & _U32, a.rdev & _U32,
                          a.blksize & _U32, flags)


_pack_entry_head = abi.fuse_entry_out_head.pack


def encode_entry(e: Entry) -> bytes:
    es, ens = _split_timeout(e.entry_timeout)
    as_, ans = _split_timeout(e.attr_timeout)
    return _pack_entry_head(e.nodeid, e.generation, es, as_, ens, ans) + encode_attr(e.attr)


def encode_attr_out(attr: Attr, timeout: float) -> bytes:
    s, ns = _split_timeout(timeout)
    return abi.fuse_attr_out_head.pack(s, ns) + encode_attr(attr)


# Whole replies in one pack: fuse_out_header + fuse_entry_out (or fuse_attr_out) +
# fuse_attr. Lookup and getattr are most of a guest's requests; building the reply
# from parts cost three packs and two concatenations each.
def _joined(*parts: struct.Struct) -> struct.Struct:
    """The kernel's structs back to back (all little-endian, unpadded)."""
    return struct.Struct("<" + "".join(p.format.lstrip("<=") for p in parts))


_entry_reply = _joined(abi.fuse_out_header, abi.fuse_entry_out_head, abi.fuse_attr)
_create_reply = _joined(abi.fuse_out_header, abi.fuse_entry_out_head, abi.fuse_attr,
                        abi.fuse_open_out)
_attr_reply = _joined(abi.fuse_out_header, abi.fuse_attr_out_head, abi.fuse_attr)
_ENTRY_REPLY_LEN = _entry_reply.size
_ATTR_REPLY_LEN = _attr_reply.size
_CREATE_REPLY_LEN = _create_reply.size
assert _ENTRY_REPLY_LEN == HEADER + abi.FUSE_ENTRY_OUT_SIZE
assert _ATTR_REPLY_LEN == HEADER + abi.FUSE_ATTR_OUT_SIZE
_NS = 1_000_000_000


def entry_reply(unique: int, e: Entry, o: Opened | None = None) -> bytes:
    """The whole reply to LOOKUP/MKNOD/MKDIR/SYMLINK/LINK, or with ``o`` CREATE/TMPFILE."""
    a = e.attr
    es, ens = _split_timeout(e.entry_timeout)
    as_, ans = (es, ens) if e.attr_timeout == e.entry_timeout else _split_timeout(e.attr_timeout)
    at, mt, ct = a.atime_ns, a.mtime_ns, a.ctime_ns
    try:
        if o is None:
            return _entry_reply.pack(
                _ENTRY_REPLY_LEN, 0, unique, e.nodeid, e.generation, es, as_, ens, ans,
                a.ino, a.size, a.blocks, at // _NS, mt // _NS, ct // _NS, at % _NS,
                mt % _NS, ct % _NS, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize,
                abi.FUSE_ATTR_SUBMOUNT if a.submount else 0)
        return _create_reply.pack(
            _CREATE_REPLY_LEN, 0, unique, e.nodeid, e.generation, es, as_, ens, ans,
            a.ino, a.size, a.blocks, at // _NS, mt // _NS, ct // _NS, at % _NS,
            mt % _NS, ct % _NS, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize,
            abi.FUSE_ATTR_SUBMOUNT if a.submount else 0, o.fh, o.open_flags)
    except struct.error:
        # Out-of-range values (times before 1970, huge ids): wrapped there.
        if o is None:
            return _reply(unique, encode_entry(e))
        return _reply(unique, encode_entry(e), encode_open(o))


def attr_reply(unique: int, a: Attr, timeout: float) -> bytes:
    """The whole reply to GETATTR/SETATTR."""
    s, ns = _split_timeout(timeout)
    at, mt, ct = a.atime_ns, a.mtime_ns, a.ctime_ns
    try:
        return _attr_reply.pack(
            _ATTR_REPLY_LEN, 0, unique, s, ns,
            a.ino, a.size, a.blocks, at // _NS, mt // _NS, ct // _NS, at % _NS, mt % _NS,
            ct % _NS, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize,
            abi.FUSE_ATTR_SUBMOUNT if a.submount else 0)
    except struct.error:
        return _reply(unique, encode_attr_out(a, timeout))


def encode_open(o: Opened) -> bytes:
    return abi.fuse_open_out.pack(o.fh, o.open_flags)


def error_reply(unique: int, err: int) -> bytes:
    return abi.fuse_out_header.pack(HEADER, -err, unique)


_pack_out = abi.fuse_out_header.pack


def _reply(unique: int, *parts: bytes) -> bytes:
    if len(parts) == 1:
        p = parts[0]
        return _pack_out(HEADER + len(p), 0, unique) + p
    body = b"".join(parts)
    return _pack_out(HEADER + len(body), 0, unique) + body
