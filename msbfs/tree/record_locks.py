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

A blocking SETLKW waits on a thread of its own while the slow path goes on serving the
guest, RELEASEs and FLUSHes of the same handle included. So ``begin_setlkw`` (called
under the slow-path lock, before the request is parked) resolves everything the wait
needs, and the waiting thread (``LockWait.wait``) never looks at the handle or its fd
number again: a RELEASE may close that number and an OPEN reuse it for another file
(red-team finding 4: the lock then landed on a file the guest never opened). The wait
uses an fd it owns: for POSIX locks the owner's description, *pinned*; for flock a dup
of the handle's fd (the same description, which is what flock locks).

The pin rule: a description a waiter uses is never closed under it. A FLUSH/RELEASE that
drops the owner meanwhile takes it out of the table at once (the owner's next lock gets
a fresh description), but the close, and with it the release of whatever the waiter
got, happens when the last waiter returns; that waiter then answers EBADF, as Linux does
for a SETLKW racing a close of its fd. Closing earlier would not wake the waiter (it
holds its own reference to the file) and would free the number for reuse while the
waiter may not have entered fcntl yet. Pinned fds are bounded by the parked SETLKWs
(MAX_DEFERRED in msbfs/virtiofs.py).
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
        # description -> SETLKWs waiting through it; and those dropped meanwhile (closed
        # by their last waiter: see the module docstring, "the pin rule")
        self._pins: dict[int, int] = {}
        self._orphans: set[int] = set()
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
        with self._lock:
            return self._owner_fd_locked(h, owner, create)

    def _owner_fd_locked(self, h: FileHandle, owner: int, create: bool) -> int | None:
        """``_owner_fd`` with ``_lock`` already held."""
        acc = h.flags & os.O_ACCMODE
        key = (h.inode.nodeid, owner, acc)
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
            fds = self._unpinned(fds)
        for fd in fds:
            os.close(fd)  # closing the description releases its OFD locks

    def _unpinned(self, fds: list[int]) -> list[int]:
        """Under ``_lock``: which of the dropped ``fds`` to close now; a pinned one is
        left to its last waiter (the pin rule, module docstring)."""
        now = []
        for fd in fds:
            if fd in self._pins:
                self._orphans.add(fd)
            elif fd >= 0:
                now.append(fd)
        return now

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

    def _checked(self, h: FileHandle, lock: Lock) -> bytes:
        """The struct flock for a POSIX ``lock`` through ``h``, EBADF past its access."""
        arg = _flock_struct(lock)
        if lock.type == fcntl.F_RDLCK and not h.readable:
            raise os_error(errno.EBADF)
        if lock.type == fcntl.F_WRLCK and not h.writable:
            raise os_error(errno.EBADF)
        return arg

    @staticmethod
    def _flock_op(lock: Lock) -> int:
        op = _FLOCK_OPS.get(lock.type)
        if op is None:
            raise os_error(errno.EINVAL)
        return op

    def setlk(self, h: FileHandle, owner: int, lock: Lock, is_flock: bool) -> None:
        """Never blocks: EAGAIN when held elsewhere."""
        if is_flock:
            op = self._flock_op(lock)
            fcntl.flock(h.fd, op if op == fcntl.LOCK_UN else op | fcntl.LOCK_NB)
            return
        arg = self._checked(h, lock)
        fd = self._owner_fd(h, owner, create=lock.type != fcntl.F_UNLCK)
        if fd is None:
            return  # unlocking what this owner never locked
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, arg)

    def begin_setlkw(self, h: FileHandle, owner: int, lock: Lock, is_flock: bool) -> LockWait:
        """Everything a blocking SETLKW needs from ``h``, resolved now (under the caller's
        slow-path lock, while ``h`` is surely open): the returned wait, run on another
        thread, touches only fds it owns. Exactly one of its ``wait``/``cancel`` must run."""
        if is_flock:
            op = self._flock_op(lock)
            # A dup is the handle's description (flock's lock owner) under a number of
            # the wait's own, closed by it: RELEASE closing h.fd cannot pull it away.
            return LockWait(self, os.dup(h.fd), None, op)
        arg = self._checked(h, lock)
        with self._lock:
            fd = self._owner_fd_locked(h, owner, create=lock.type != fcntl.F_UNLCK)
            if fd is None:
                return LockWait(self, -1, None, 0)  # unlocking what this owner never locked
            self._pins[fd] = self._pins.get(fd, 0) + 1
        return LockWait(self, fd, arg, 0)

    def _unpin(self, fd: int) -> bool:
        """A waiter is done with ``fd``: True when the owner dropped it meanwhile (then
        the last waiter closes it, releasing what it got)."""
        with self._lock:
            n = self._pins[fd] - 1
            if n:
                self._pins[fd] = n
                return fd in self._orphans
            del self._pins[fd]
            if fd not in self._orphans:
                return False
            self._orphans.discard(fd)
        os.close(fd)
        return True

    def close_all(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
            self._counted()
            closing = self._unpinned(list(fds.values()))
        for fd in closing:
            os.close(fd)


class LockWait:
    """A parked SETLKW: ``wait()`` blocks on a worker thread, ``cancel()`` when it will
    never run (the transport refused to park it). Either releases what it holds."""

    def __init__(self, locks: RecordLocks, fd: int, arg: bytes | None, flock_op: int) -> None:
        self._locks = locks
        self._fd = fd  # -1: nothing to do; else pinned (POSIX) or a dup of our own (flock)
        self._arg = arg
        self._flock_op = flock_op

    def _done(self) -> bool:
        """Release the fd; True when the owner's description was dropped meanwhile."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return False
        if self._arg is None:
            os.close(fd)
            return False
        return self._locks._unpin(fd)

    def wait(self) -> None:
        if self._fd < 0:
            return
        try:
            if self._arg is None:
                fcntl.flock(self._fd, self._flock_op)
            else:
                fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, self._arg)
        finally:
            dropped = self._done()
        if dropped:
            # The owner closed the file while we waited: the lock went with its
            # description (Linux answers a SETLKW that races close() the same way).
            raise os_error(errno.EBADF)

    def cancel(self) -> None:
        self._done()
