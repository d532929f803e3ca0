"""The inode table: one host inode per node id, reached through an ``O_PATH`` fd.

A lookup adds the inode it found by name (a *named* node: its statx and where it was
found, no fd), opened at its first use only if that name still holds the same object
(dev, ino, kind, birth time), else ESTALE; csrc/inodes.h says why and what keeps it
safe. ``Inode.fd`` is that first use.

The table itself is C (csrc/inodes.c, issue 11): the C metadata fast path of the
virtio-fs device answers LOOKUP/GETATTR/FORGET from it and the Python tree calls it
through this thin wrapper. No second copy lives here: an ``Inode`` is a short-lived
view carrying the node id and the fields that never change.

Inodes are keyed by the host's ``(st_dev, st_ino)`` so two names of one file (hard
links, ``.``/``..``) share a node id, and counted: every Entry the tree hands out adds
one lookup, FORGET takes them away, and at zero the inode is dropped. Node ids are the
table's own counter (never reused, never equal to ``st_ino`` by design), so the FUSE
generation stays 0.

The kernel decides how many lookups it holds (its dentry cache), which can be far more
than the process may have fds. So past ``max_fds`` open inode fds, a least recently
used one (CLOCK order) is closed and only its file handle (``name_to_handle_at``) kept; touching the
inode again re-opens it with ``open_by_handle_at`` (root only, like virtiofsd's
``--inode-file-handles``). Handles come only from our own fds, never from a client.
Inodes that cannot be re-opened that way stay pinned: filesystems without handles,
and files with no name left (an fd is all that keeps them alive).

The client decides how many inodes it holds, so the table has bounds of its own
(issue 9, point 7): ``max_inodes`` entries and ``fd_cap`` open inode fds (pinned ones
included). ``check_room`` is asked before an operation that may add an inode; past a
bound (after trying to evict one fd) the client's request fails with ENFILE, and the
daemon keeps the fds its own bookkeeping needs.
"""
from __future__ import annotations

import errno
import os
from typing import Any

from msbfs._native import ffi, lib
from msbfs.tree.types import ROOT_ID

AT_EMPTY_PATH = 0x1000
_NONE = lib.MSB_INODES_NONE  # no bound
SUBMOUNT = lib.MSB_INODE_SUBMOUNT  # in the kind bits of fd_traits
FD_SHIFT = lib.MSB_INODE_FD_SHIFT  # fd_traits: the fd above the kind bits
_U64 = (1 << 64) - 1
# Bound once: these run several times per request.
_fd_of = lib.msb_inodes_fd
_traits = lib.msb_inodes_traits
_find_id = lib.msb_inodes_find_id
_add_id = lib.msb_inodes_add_id
_fd_traits = lib.msb_inodes_fd_traits


def _raise(r: int) -> None:
    raise OSError(-r, os.strerror(-r))


class Inode:
    """A view of one inode: its node id and what never changes (kind, submount; the
    host key on demand). Counts and the fd are read from the C table each time."""

    __slots__ = ("_c", "_key", "kind", "nodeid", "submount", "table")

    def __init__(self, table: InodeTable, nodeid: int, traits: int,
                 key: tuple[int, int] | None = None) -> None:
        self.table = table
        self._c = table.c
        self.nodeid = nodeid
        self.kind = traits & 0o170000  # a file's type never changes
        self.submount = bool(traits & SUBMOUNT)
        self._key = key

    @property
    def fd(self) -> int:
        """The inode's O_PATH fd, re-opened from its handle if it was closed."""
        fd: int = _fd_of(self._c, self.nodeid)
        if fd < 0:
            _raise(-errno.ESTALE if fd == -errno.EBADF else fd)  # forgotten since
        return fd

    def _info(self) -> Any:
        info = ffi.new("struct msb_inode_info *")
        r = lib.msb_inodes_get(self._c, self.nodeid, info)
        if r < 0:
            _raise(-errno.ESTALE)  # forgotten since this view was made
        return info

    def _host_key(self) -> tuple[int, int]:
        key = self._key
        if key is None:
            info = self._info()
            key = self._key = (int(info.dev), int(info.ino))
        return key

    @property
    def dev(self) -> int:
        return self._host_key()[0]

    @property
    def ino(self) -> int:
        return self._host_key()[1]

    @property
    def nopen(self) -> int:
        """File handles of ours on it (the quota frees blocks at the last)."""
        return int(self._info().nopen)

    def __repr__(self) -> str:
        return f"Inode({self.nodeid}, kind={self.kind:o})"


class InodeTable:
    """Thin wrapper over ``struct msb_inodes`` (csrc/inodes.h): same semantics and
    errnos as the Python table it replaced."""

    def __init__(self, root_fd: int, root_st: os.stat_result,
                 max_fds: int | None = None, *, fd_cap: int | None = None,
                 max_inodes: int | None = None) -> None:
        c = lib.msb_inodes_new(root_fd, root_st.st_dev, root_st.st_ino, root_st.st_mode,
                               max_fds or 0, _NONE if fd_cap is None else fd_cap,
                               _NONE if max_inodes is None else max_inodes)
        if c == ffi.NULL:
            raise MemoryError("inode table")
        #: the C table; the fast path of the virtio-fs device takes this pointer too.
        self.c = ffi.gc(c, lib.msb_inodes_free)
        self.root = Inode(self, ROOT_ID, root_st.st_mode, (root_st.st_dev, root_st.st_ino))

    def _stats(self) -> Any:
        out = ffi.new("struct msb_inodes_stats *")
        lib.msb_inodes_stats(self.c, out)
        return out

    def __len__(self) -> int:
        return int(self._stats().inodes)

    @property
    def open_fds(self) -> int:
        return int(self._stats().nfds)

    @property
    def evictions(self) -> int:
        return int(self._stats().evictions)

    @property
    def reopens(self) -> int:
        return int(self._stats().reopens)

    @property
    def named(self) -> int:
        """Nodes a lookup added by name that nothing has used through an fd yet."""
        return int(self._stats().named)

    @property
    def named_opens(self) -> int:
        """Named nodes opened at their first use since the table was made."""
        return int(self._stats().opens)

    @property
    def trims(self) -> int:
        """Times the memory of forgotten nodes went back to the system (the table had
        shrunk to half of its peak: csrc/inodes.c, trim_due)."""
        return int(self._stats().trims)

    @property
    def max_fds(self) -> int | None:
        """None: every inode keeps its fd (no cache, or no handles to come back by)."""
        return int(self._stats().max_fds) or None

    def check_room(self) -> None:
        """ENFILE if one more inode would pass a bound (see the module doc)."""
        r = lib.msb_inodes_check_room(self.c)
        if r < 0:
            raise OSError(-r, "the client holds too many inodes or inode fds")

    def get(self, nodeid: int) -> Inode:
        traits = _traits(self.c, nodeid) if 0 <= nodeid <= _U64 else -1
        if traits < 0:
            raise OSError(errno.EBADF, "unknown node id")
        return Inode(self, nodeid, traits)

    def fd_traits(self, nodeid: int) -> int:
        """The hot paths' ``get(nodeid).fd`` in one call, with no view, packed as C
        packs it: the fd is ``r >> FD_SHIFT``, ``r & SUBMOUNT`` the submount flag (and
        the S_IFMT bits the kind). EBADF for a node id not in the table."""
        try:
            r: int = _fd_traits(self.c, nodeid)
        except (OverflowError, TypeError):  # not a u64: no such node id
            r = -errno.EBADF
        if r < 0:
            if r == -errno.EBADF:
                raise OSError(errno.EBADF, "unknown node id")
            _raise(r)
        return r

    def find_ref_id(self, st: os.stat_result) -> int:
        """``find_ref`` without a view: node id << 1 | submount, or -1 (not held)."""
        r: int = _find_id(self.c, st.st_dev, st.st_ino, 1)
        return r if r >= 0 else -1

    def find(self, st: os.stat_result) -> Inode | None:
        return self._found(_find_id(self.c, st.st_dev, st.st_ino, 0), st)

    def add(self, fd: int, st: os.stat_result, submount: bool = False) -> Inode:
        """Count one lookup of the inode ``fd`` (O_PATH) names. Takes ownership of
        ``fd``: it is kept for a new inode (or one whose fd was closed) and closed when
        the inode already has one."""
        r = _add_id(self.c, fd, st.st_dev, st.st_ino, st.st_mode, submount)
        if r < 0:
            _raise(r)
        return Inode(self, r >> 1, st.st_mode | (SUBMOUNT if r & 1 else 0),
                     (st.st_dev, st.st_ino))

    def find_ref(self, st: os.stat_result) -> Inode | None:
        """The inode ``st`` names, with one more lookup counted, if it is in the table
        (found and counted under one lock: a forget in between cannot drop it)."""
        return self._found(_find_id(self.c, st.st_dev, st.st_ino, 1), st)

    def _found(self, r: int, st: os.stat_result) -> Inode | None:
        if r < 0:
            return None
        return Inode(self, r >> 1, st.st_mode | (SUBMOUNT if r & 1 else 0),
                     (st.st_dev, st.st_ino))

    def ref(self, inode: Inode) -> None:
        """One more lookup of an inode already in the table (link, ``.``)."""
        lib.msb_inodes_ref(self.c, inode.nodeid)

    def forget(self, nodeid: int, nlookup: int) -> None:
        if 0 <= nodeid <= _U64:
            lib.msb_inodes_forget(self.c, nodeid, min(max(0, nlookup), _U64))

    def nopen(self, inode: Inode) -> int:
        """Open file handles on ``inode`` (counted by the handle table, csrc/handles.c,
        as handles come and go: an inode with open files is never evicted, it must
        outlive an unlink on the host); 0 once it was forgotten."""
        r = lib.msb_inodes_nopen_add(self.c, inode.nodeid, 0)
        return max(0, int(r))

    def clear(self) -> None:
        """Close every inode but the root (FUSE_DESTROY: the client forgot them all)."""
        lib.msb_inodes_clear(self.c)

    def close(self) -> None:
        """Everything, the root and the per-mount fds included (the tree is done)."""
        lib.msb_inodes_close(self.c)

