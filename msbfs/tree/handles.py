"""Open file and directory handles: the ``fh`` numbers clients pass back.

A file handle owns a real (non-``O_PATH``) fd opened through the inode's fd. A
directory handle owns a directory fd and reads it with ``getdents64``: the cookies
(``d_off``) come from the host filesystem itself, so readdir can resume at any cookie
with ``lseek`` and offset 0 re-reads the directory (rewinddir) like Linux does.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable, Iterator

from msbfs._native import ffi, lib
from msbfs.tree.inodes import Inode
from msbfs.tree.types import DirEntry

_DIRENT = struct.Struct("=QqHB")  # struct linux_dirent64 up to d_name
_DIRBUF = 32768
# One getdents buffer for the process: each batch is copied out at once.
_buf = ffi.new("char[]", _DIRBUF)
_buf_lock = threading.Lock()

Convert = Callable[[int, int, int, bytes], DirEntry]


class FileHandle:
    __slots__ = ("fd", "flags", "inode", "readable", "writable")

    def __init__(self, fd: int, inode: Inode, flags: int) -> None:
        self.fd = fd
        self.inode = inode
        self.flags = flags
        acc = flags & os.O_ACCMODE
        self.readable = acc in (os.O_RDONLY, os.O_RDWR)
        self.writable = acc in (os.O_WRONLY, os.O_RDWR)


class DirHandle:
    """A directory stream. Keeps the last getdents64 batch decoded, because a transport
    resumes at the cookie of the last entry it could fit, which is nearly always inside
    that batch: the next request is then served without a syscall, and the fd's position
    (just after the batch) is still right for what follows."""

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
            yield from self._chunk[i + 1:]
        else:
            os.lseek(self.fd, offset, os.SEEK_SET)
            self._chunk, self._index = [], {}
        while True:
            chunk = self._read_batch(convert)
            if not chunk:
                return
            yield from chunk

    def _read_batch(self, convert: Convert) -> list[DirEntry]:
        with _buf_lock:
            n = lib.msb_getdents64(self.fd, _buf, _DIRBUF)
            if n < 0:
                raise OSError(-n, os.strerror(-n))
            data = ffi.buffer(_buf, n)[:]
        chunk = []
        pos = 0
        while pos < n:
            d_ino, d_off, reclen, d_type = _DIRENT.unpack_from(data, pos)
            start = pos + _DIRENT.size
            chunk.append(convert(d_ino, d_off, d_type, data[start:data.index(b"\0", start)]))
            pos += reclen
        self._chunk = chunk
        self._index = {e.off: k for k, e in enumerate(chunk)}
        return chunk


class HandleTable:
    """Handle numbers to open handles; at most ``max_handles`` at once: past that, the
    client's next open is EMFILE (it is the client's fd table that is full, in effect)
    and the daemon keeps the fds it needs."""

    def __init__(self, max_handles: int | None = None) -> None:
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._next = 1
        self.max_handles = max_handles

    def __len__(self) -> int:
        return len(self._handles)

    def check_room(self) -> None:
        """Before opening an fd for a new handle: EMFILE when the client has its fill."""
        if self.max_handles is not None and len(self._handles) >= self.max_handles:
            raise OSError(errno.EMFILE, "the client holds too many open handles")

    def add(self, handle: FileHandle | DirHandle) -> int:
        fh = self._next
        self._next += 1
        self._handles[fh] = handle
        return fh

    def get(self, fh: int) -> FileHandle | DirHandle | None:
        return self._handles.get(fh)

    def files_on(self, nodeid: int) -> int:
        """Open file handles on node id ``nodeid`` (a scan: only for an inode the client
        forgot while files were open, when the inode table no longer counts them)."""
        return sum(1 for h in self._handles.values()
                   if type(h) is FileHandle and h.inode.nodeid == nodeid)

    def file(self, fh: int) -> FileHandle:
        h = self._handles.get(fh)
        if type(h) is not FileHandle:
            raise OSError(errno.EBADF, "not an open file handle")
        return h

    def dir(self, fh: int) -> DirHandle:
        h = self._handles.get(fh)
        if type(h) is not DirHandle:
            raise OSError(errno.EBADF, "not an open directory handle")
        return h

    def pop(self, fh: int, kind: type) -> FileHandle | DirHandle:
        h = self._handles.get(fh)
        if type(h) is not kind:
            raise OSError(errno.EBADF, "unknown handle")
        del self._handles[fh]
        return h

    def close_all(self) -> None:
        handles, self._handles = self._handles, {}
        for h in handles.values():
            try:
                os.close(h.fd)
            except OSError:
                pass
