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
from collections.abc import Iterator

from msbfs._native import ffi, lib
from msbfs.tree.inodes import Inode

_DIRENT = struct.Struct("=QqHB")  # struct linux_dirent64 up to d_name
_DIRBUF = 32768


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
    __slots__ = ("fd", "inode")

    def __init__(self, fd: int, inode: Inode) -> None:
        self.fd = fd
        self.inode = inode

    def entries(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(d_ino, d_off, d_type, name) from the fd's current position on; lazy, so a
        transport that stops early leaves the rest unread."""
        buf = ffi.new("char[]", _DIRBUF)
        while True:
            n = lib.msb_getdents64(self.fd, buf, _DIRBUF)
            if n < 0:
                raise OSError(-n, os.strerror(-n))
            if n == 0:
                return
            data = ffi.buffer(buf, n)[:]
            pos = 0
            while pos < n:
                d_ino, d_off, reclen, d_type = _DIRENT.unpack_from(data, pos)
                start = pos + _DIRENT.size
                yield d_ino, d_off, d_type, data[start:data.index(b"\0", start)]
                pos += reclen


class HandleTable:
    def __init__(self) -> None:
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, handle: FileHandle | DirHandle) -> int:
        fh = self._next
        self._next += 1
        self._handles[fh] = handle
        return fh

    def get(self, fh: int) -> FileHandle | DirHandle | None:
        return self._handles.get(fh)

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
