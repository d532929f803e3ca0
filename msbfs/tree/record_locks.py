"""File locks of open handles: POSIX record locks (FUSE GETLK/SETLK/SETLKW) and flock.

POSIX locks belong to a lock *owner* (the client's process), not to a handle: two
handles of one owner never conflict, closing any of them drops all the owner's locks
on the file. Open file description (OFD) locks have exactly those semantics per
description, so each (inode, owner) pair gets its own description of the file (a
re-open of a handle's fd) and its OFD locks stand for the owner's POSIX locks. They
are real host locks: native processes on the host see them and conflict with them.
flock locks belong to the handle's own description, which is what flock means.

The re-open never has more access than the handle it comes from (issue 9, point 3: a
read lock on a read-only handle used to re-open the file read-write as root, and a
host binary locked that way could no longer be executed: ETXTBSY, even in a readonly
share). So an owner holds one description per access mode it locked through; the one
thing this gives up is an owner whose read lock (through a read-only handle) and
write lock (through a writable one) overlap: those two conflict with each other.
Non-regular files are re-opened O_NONBLOCK (a FIFO's open must not wait for a peer).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading
from collections.abc import Callable

from msbfs.errors import os_error
from msbfs.tree.handles import FileHandle
from msbfs.tree.inodes import Inode
from msbfs.tree.types import OFFSET_MAX, Lock

_FLOCK = struct.Struct("@hhqqi4x")  # struct flock (x86-64 / aarch64 layout)
_ACCMODES = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR)
_FLOCK_OPS = {fcntl.F_RDLCK: fcntl.LOCK_SH, fcntl.F_WRLCK: fcntl.LOCK_EX,
              fcntl.F_UNLCK: fcntl.LOCK_UN}


def _flock_struct(lock: Lock) -> bytes:
    """FUSE's inclusive [start, end] (end OFFSET_MAX: to EOF) as a struct flock."""
    start, end = lock.start, lock.end
    if type(start) is not int or type(end) is not int or not 0 <= start <= end <= OFFSET_MAX:
        raise os_error(errno.EINVAL)
    if lock.type not in _FLOCK_OPS:
        raise os_error(errno.EINVAL)
    length = 0 if end == OFFSET_MAX else end - start + 1
    return _FLOCK.pack(lock.type, os.SEEK_SET, start, length, 0)


class RecordLocks:
    """The owners' lock descriptions: at most ``max_fds`` (ENOLCK past it)."""

    def __init__(self, max_fds: int | None = None) -> None:
        self.max_fds = max_fds
        # (node id, owner, access mode) -> description
        self._fds: dict[tuple[int, int, int], int] = {}
        # SETLKW runs on a worker thread while the loop thread opens and drops owners.
        self._lock = threading.Lock()
        #: told the number of descriptions whenever it changes, under ``_lock`` (the C
        #: metadata path answers FLUSH only while there are none: msbfs/fastmeta.py)
        self.on_count: Callable[[int], None] | None = None

    def _counted(self) -> None:
        if self.on_count is not None:
            self.on_count(len(self._fds))

    def __len__(self) -> int:
        return len(self._fds)

    def _owner_fd(self, h: FileHandle, owner: int, create: bool) -> int | None:
        """The owner's description for locks through ``h``: same access mode as ``h``."""
        acc = h.flags & os.O_ACCMODE
        key = (h.inode.nodeid, owner, acc)
        with self._lock:
            fd = self._fds.get(key)
            if fd is not None or not create:
                return fd
            if self.max_fds is not None and len(self._fds) >= self.max_fds:
                raise os_error(errno.ENOLCK)
            flags = acc | os.O_CLOEXEC | os.O_NOCTTY
            if h.inode.kind != stat.S_IFREG:
                flags |= os.O_NONBLOCK
            fd = os.open(b"/proc/self/fd/%d" % h.fd, flags)
            self._fds[key] = fd
            # Published before the lock is taken through it (the caller's fcntl): a
            # FLUSH C answers meanwhile had nothing to drop yet.
            self._counted()
            return fd

    def _any_owner_fd(self, h: FileHandle, owner: int) -> int | None:
        """A description of the owner's on ``h``'s inode, preferring ``h``'s mode."""
        fd = self._owner_fd(h, owner, create=False)
        if fd is not None:
            return fd
        nodeid = h.inode.nodeid
        with self._lock:
            for acc in _ACCMODES:
                fd = self._fds.get((nodeid, owner, acc))
                if fd is not None:
                    return fd
        return None

    def drop_owner(self, inode: Inode, owner: int) -> None:
        """The owner closed the file (FLUSH): its POSIX locks on it are gone."""
        with self._lock:
            fds = [self._fds.pop((inode.nodeid, owner, acc), -1) for acc in _ACCMODES]
            self._counted()
        for fd in fds:
            if fd >= 0:
                os.close(fd)  # closing the description releases its OFD locks

    def getlk(self, h: FileHandle, owner: int, lock: Lock) -> Lock:
        arg = _flock_struct(lock)
        fd = self._any_owner_fd(h, owner)
        # An owner without a description holds no locks: ask through the handle's fd.
        res = fcntl.fcntl(h.fd if fd is None else fd, fcntl.F_OFD_GETLK, arg)
        typ, _whence, start, length, _pid = _FLOCK.unpack(res)
        if typ == fcntl.F_UNLCK:
            return Lock(lock.start, lock.end, fcntl.F_UNLCK, 0)
        end = OFFSET_MAX if length == 0 else start + length - 1
        return Lock(start, end, typ, 0)

    def setlk(self, h: FileHandle, owner: int, lock: Lock, is_flock: bool,
              wait: bool) -> None:
        """EAGAIN when held elsewhere, unless ``wait`` (then it blocks: worker thread)."""
        if is_flock:
            op = _FLOCK_OPS.get(lock.type)
            if op is None:
                raise os_error(errno.EINVAL)
            fcntl.flock(h.fd, op if wait or op == fcntl.LOCK_UN else op | fcntl.LOCK_NB)
            return
        arg = _flock_struct(lock)
        if lock.type == fcntl.F_RDLCK and not h.readable:
            raise os_error(errno.EBADF)
        if lock.type == fcntl.F_WRLCK and not h.writable:
            raise os_error(errno.EBADF)
        fd = self._owner_fd(h, owner, create=lock.type != fcntl.F_UNLCK)
        if fd is None:
            return  # unlocking what this owner never locked
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, arg)

    def close_all(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
            self._counted()
        for fd in fds.values():
            os.close(fd)
