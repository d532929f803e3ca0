"""Open file and directory handles: the ``fh`` numbers clients pass back.

The table itself is C (csrc/handles.h, issue 11): the virtio-fs C paths read it and
answer OPEN/RELEASE with it, and the Python tree opens and releases through this thin
wrapper. No second copy lives here: a ``FileHandle`` is a short-lived view of a slot
(its fd, its open flags, its inode), made for one request. The one thing Python keeps
is state C has no use for: a directory handle's decoded getdents batch (the handle is
then marked, and C leaves its RELEASEDIR to Python).

A file handle owns a real (non-``O_PATH``) fd opened through the inode's fd. A
directory handle owns a directory fd and reads it with ``getdents64``: the cookies
(``d_off``) come from the host filesystem itself, so readdir can resume at any cookie
with ``lseek`` and offset 0 re-reads the directory (rewinddir) like Linux does.

A handle leaves the table first; its fd is closed after a grace period (``retire``,
csrc/grace.h): a queue thread that looked the fd up a moment earlier never reads
through a number a new open has reused.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

from msbfs._native import ffi, lib
from msbfs.tree.inodes import SUBMOUNT, Inode, InodeTable
from msbfs.tree.policy import FAST_WRITE_FORBIDDEN_BITS
from msbfs.tree.types import DirEntry

_DIRENT = struct.Struct("=QqHB")  # struct linux_dirent64 up to d_name
_DIRBUF = 32768
# One getdents buffer for the process: each batch is copied out at once.
_buf = ffi.new("char[]", _DIRBUF)
_buf_lock = threading.Lock()

Convert = Callable[[int, int, int, bytes], DirEntry]

_NO_BOUND = lib.MSB_HANDLES_NONE
_ACCMODE = os.O_ACCMODE
_READABLE = (os.O_RDONLY, os.O_RDWR)  # O_ACCMODE itself (ioctl only) does neither
_WRITABLE = (os.O_WRONLY, os.O_RDWR)
_HANDLE = ffi.typeof("struct msb_handle *")
_DIR = lib.MSB_FS_DIR
_get = lib.msb_handles_get
_remove = lib.msb_handles_remove
_add_c = lib.msb_handles_add
_file = lib.msb_handles_file
#: a handle's fd, closed once no queue thread can still hold its number (grace.h)
retire = lib.msb_grace_defer_close


class FileHandle:
    """A view of one file handle of the table, for one request: its fd and open flags;
    its inode's view is looked up only when asked for (most requests want the fd)."""

    __slots__ = ("_inode", "_table", "fd", "fh", "flags")

    def __init__(self, fd: int, flags: int, fh: int, table: HandleTable,
                 inode: Inode | None = None) -> None:
        self.fd = fd
        self.flags = flags
        self.fh = fh
        self._table = table
        self._inode = inode

    @property
    def readable(self) -> bool:
        return self.flags & _ACCMODE in _READABLE

    @property
    def writable(self) -> bool:
        return self.flags & _ACCMODE in _WRITABLE

    @property
    def inode(self) -> Inode:
        if self._inode is None:
            c = self._table._slot(self.fh)
            if c is None:  # released on another queue since (the client raced itself)
                raise OSError(errno.EBADF, "not an open file handle")
            self._inode = self._table._inode_of(c)
        return self._inode


class DirHandle:
    """A directory stream. Keeps the last getdents64 batch decoded, because a transport
    resumes at the cookie of the last entry it could fit, which is nearly always inside
    that batch: the next request is then served without a syscall.

    The fd's position is shared: the virtio-fs C path (csrc/fuse_readdir.h) reads the
    same fd from other threads, between two of our batches. So every batch is read as
    one step of seek-and-read under the stream's lock (``msb_dir_read``, the lock C
    takes too), from an explicit cookie: the one asked for, or the last entry's of the
    batch before. The fd's position is never relied on."""

    __slots__ = ("_chunk", "_index", "fd", "inode")

    def __init__(self, fd: int, inode: Inode) -> None:
        self.fd = fd
        self.inode = inode
        self._chunk: list[DirEntry] = []
        self._index: dict[int, int] = {}  # d_off -> position in _chunk

    def entries(self, offset: int, convert: Convert) -> Iterator[DirEntry]:
        """Entries after cookie ``offset`` (0: from the start, re-reading the directory
        as rewinddir does); lazy, so a transport that stops early leaves the rest."""
        i = self._index.get(offset) if offset else None
        if i is not None:
            chunk = self._chunk
            yield from chunk[i + 1:]
            offset = chunk[-1].off
        else:
            self._chunk, self._index = [], {}
        while True:
            chunk = self._read_batch(offset, convert)
            if not chunk:
                return
            yield from chunk
            offset = chunk[-1].off

    def _read_batch(self, offset: int, convert: Convert) -> list[DirEntry]:
        """The batch after cookie ``offset`` (0: from the start)."""
        with _buf_lock:
            n = lib.msb_dir_read(self.fd, offset, _buf, _DIRBUF)
            if n < 0:
                raise OSError(-n, os.strerror(-n))
            data = ffi.buffer(_buf, n)[:]
        # Bound locals: this loop runs once per listed name.
        chunk: list[DirEntry] = []
        append = chunk.append
        unpack = _DIRENT.unpack_from
        end_of = data.index
        head = _DIRENT.size
        pos = 0
        while pos < n:
            d_ino, d_off, reclen, d_type = unpack(data, pos)
            start = pos + head
            append(convert(d_ino, d_off, d_type, data[start:end_of(b"\0", start)]))
            pos += reclen
        self._chunk = chunk
        self._index = {e.off: k for k, e in enumerate(chunk)}
        return chunk


class HandleTable:
    """Thin wrapper over ``struct msb_fs_table`` (csrc/handles.h): handle numbers (the
    table's counter, never reused) to open handles; at most ``max_handles`` at once:
    past that, the client's next open is EMFILE (it is the client's fd table that is
    full, in effect) and the daemon keeps the fds it needs. ``fast_writes``: whether the
    C data path may write through a writable handle's fd (``Policy.writes_need_tree``
    says no: the tree must see every write)."""

    def __init__(self, inodes: InodeTable, max_handles: int | None = None, *,
                 fast_writes: bool = True) -> None:
        c = lib.msb_handles_new(inodes.c, _NO_BOUND if max_handles is None else max_handles)
        if c == ffi.NULL:
            raise MemoryError("handle table")
        #: the C table; the virtio-fs device's C paths take this pointer too.
        self.c = ffi.gc(c, lib.msb_fs_table_free)
        # The C data path knows no set-id rule: a write that must clear set-id bits on a
        # file that has any goes to the tree (msbfs/tree/policy.py defines which).
        self.c.slow_write_mode_bits = FAST_WRITE_FORBIDDEN_BITS
        self.c.write_perm = lib.MSB_FS_WRITE if fast_writes else 0
        self._inodes = inodes  # outlives the C table, which counts opens on it
        # The Python state of directory handles being read through Python (marked in C).
        self._dirs: dict[int, DirHandle] = {}

    def __len__(self) -> int:
        return int(self.c.count)

    def check_room(self) -> None:
        """Before opening an fd for a new handle: EMFILE when the client has its fill."""
        if lib.msb_handles_check_room(self.c) < 0:
            raise OSError(errno.EMFILE, "the client holds too many open handles")

    def _add(self, fd: int, flags: int, inode: Inode, kind: int) -> int:
        traits = inode.kind | (SUBMOUNT if inode.submount else 0)
        # Not enforced again: check_room ran before the fd was opened (a C OPEN of
        # another queue meanwhile may pass the bound by one per queue, never more).
        fh: int = _add_c(self.c, fd, flags, inode.nodeid, traits, kind, 0)
        if fh < 0:
            os.close(fd)
            raise OSError(-fh, os.strerror(-fh))
        return fh

    def add_file(self, fd: int, inode: Inode, flags: int) -> int:
        """A new file handle of ``fd`` (the table owns it from now on; closed if the
        handle cannot be added), open with ``flags``; its inode counts one more open, and
        C decides what its data path may do with the fd (csrc/handles.h)."""
        return self._add(fd, flags, inode, 0)

    def add_dir(self, fd: int, inode: Inode, flags: int) -> int:
        """A new directory handle of ``fd``, open with ``flags``."""
        return self._add(fd, flags & ~os.O_CLOEXEC, inode, _DIR)

    def _inode_of(self, c: Any) -> Inode:
        return Inode(self._inodes, c.nodeid, c.traits)

    def _view(self, fh: int, c: Any) -> FileHandle | DirHandle:
        if c.perms & _DIR:
            return DirHandle(c.fd, self._inode_of(c))
        return FileHandle(c.fd, c.flags, fh, self, self._inode_of(c))

    def _slot(self, fh: int) -> Any:
        """The slot of ``fh`` copied out, or None."""
        out = ffi.new(_HANDLE)
        try:
            found = _get(self.c, fh, out) == 0
        except (OverflowError, TypeError):  # not a u64: no such handle
            return None
        return out if found else None

    def get(self, fh: int) -> FileHandle | DirHandle | None:
        d = self._dirs.get(fh)
        if d is not None:
            return d
        c = self._slot(fh)
        return None if c is None else self._view(fh, c)

    def file(self, fh: int) -> FileHandle:
        try:
            r: int = _file(self.c, fh)
        except (OverflowError, TypeError):  # not a u64: no such handle
            r = -1
        if r < 0:
            raise OSError(errno.EBADF, "not an open file handle")
        return FileHandle(r & 0xFFFFFFFF, r >> 32, fh, self)

    def locking(self, fh: int) -> FileHandle:
        """File handle ``fh`` for a lock request: from now on C leaves its RELEASE to
        Python, which drops the owner's locks and waits for a lock request in flight
        (marked before the request takes any lock, so a RELEASE on another queue
        cannot overtake it)."""
        h = self.file(fh)
        if lib.msb_handles_mark_python(self.c, fh) < 0:
            # a C RELEASE on another queue took it since file(): a lock through its fd
            # (open until the grace period ends) would outlive every handle
            raise OSError(errno.EBADF, "not an open file handle")
        return h

    def dir(self, fh: int) -> DirHandle:
        """The directory handle ``fh``, with the Python state of its reading: from now
        on C leaves its RELEASEDIR to Python."""
        h = self.get(fh)
        if type(h) is not DirHandle:
            raise OSError(errno.EBADF, "not an open directory handle")
        if fh not in self._dirs:
            # A C RELEASEDIR on another queue may have taken the handle since get():
            # marked only if still in the table (from then on C leaves it alone), else
            # EBADF. Kept regardless, the stream would read its fd after the grace
            # period closed it and a new open reused the number (another directory).
            if lib.msb_handles_mark_python(self.c, fh) < 0:
                raise OSError(errno.EBADF, "not an open directory handle")
            h = self._dirs.setdefault(fh, h)
            if self._slot(fh) is None:   # a Python RELEASEDIR popped it before we kept it
                self._dirs.pop(fh, None)
                raise OSError(errno.EBADF, "not an open directory handle")
        return h

    def dir_fd(self, fh: int) -> int:
        """A directory handle's fd, for a request that keeps no state (FSYNCDIR)."""
        c = self._slot(fh)
        if c is None or not c.perms & _DIR:
            raise OSError(errno.EBADF, "not an open directory handle")
        return int(c.fd)

    def _pop(self, fh: int, kind: int) -> tuple[Any, int]:
        out = ffi.new(_HANDLE)
        try:
            left: int = _remove(self.c, fh, kind, out)
        except (OverflowError, TypeError):  # not a u64: no such handle
            left = -errno.EBADF
        if left < 0:
            raise OSError(errno.EBADF, "unknown handle")
        return out, left

    def pop_file(self, fh: int) -> tuple[FileHandle, int]:
        """Take file handle ``fh`` out of the table: the handle and how many file
        handles are left open on its inode. The caller ``retire``s its fd."""
        c, left = self._pop(fh, 0)
        return FileHandle(c.fd, c.flags, fh, self, self._inode_of(c)), left

    def pop_dir(self, fh: int) -> int:
        """Take directory handle ``fh`` out of the table: its fd, which the caller
        ``retire``s."""
        c, _ = self._pop(fh, _DIR)
        if self._dirs:
            self._dirs.pop(fh, None)
        return int(c.fd)

    def close_all(self) -> None:
        """Every handle out, its fd closed after a grace period (DESTROY)."""
        self._dirs.clear()
        lib.msb_handles_close_all(self.c)
