"""The contract between the tree and its transports (the virtio-fs codec, the host mount).

``msbfs.tree.Tree`` implements this protocol. Every method is synchronous and runs the
syscalls inline (local syscalls take microseconds; a thread hop costs more than it
saves) except where noted. Failures raise ``OSError`` whose ``errno`` is exactly what the
client must see (the transports turn it into ``-errno`` / ``FUSEError``); nothing else
escapes for bad client input.

Names are ``bytes`` (a single path component: no ``/``, not empty, not ``.``/``..`` for
creating ops: EINVAL/ENOENT as Linux gives). Node ids are FUSE node ids; the root is
``ROOT_ID``. ``fh`` values are the tree's handle numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from msbfs.tree.types import Attr, Ctx, DirEntry, Entry, Lock, Opened, SetAttr, StatFs, Statistics

if TYPE_CHECKING:
    from msbfs.tree.record_locks import LockWait


class TreeOps(Protocol):
    #: The client runs the kernel's writeback cache: write-only opens must be readable
    #: (the kernel fills partially written pages through them) and O_APPEND is dropped
    #: (the kernel computes append offsets itself).
    writeback: bool

    # ---- inodes -------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes, ctx: Ctx) -> Entry:
        """Resolve one component beneath ``parent`` without following symlinks; counts
        one lookup on success. ``..`` of the root is the root (never above it)."""
        ...

    def forget(self, nodeid: int, nlookup: int) -> None:
        """Drop ``nlookup`` lookups; at zero the inode's O_PATH fd is closed. Unknown
        node ids are ignored (FORGET has no reply)."""
        ...

    def batch_forget(self, items: Iterable[tuple[int, int]]) -> None: ...

    def getattr(self, nodeid: int, fh: int | None, ctx: Ctx) -> tuple[Attr, float]:
        """Attributes and their timeout (seconds)."""
        ...

    def setattr(self, nodeid: int, attr: SetAttr, ctx: Ctx) -> tuple[Attr, float]: ...

    def readlink(self, nodeid: int, ctx: Ctx) -> bytes: ...

    # ---- namespace ----------------------------------------------------------------
    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, umask: int, ctx: Ctx) -> Entry: ...
    def mkdir(self, parent: int, name: bytes, mode: int, umask: int, ctx: Ctx) -> Entry: ...
    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Entry: ...
    def link(self, nodeid: int, newparent: int, newname: bytes, ctx: Ctx) -> Entry: ...
    def unlink(self, parent: int, name: bytes, ctx: Ctx) -> None: ...
    def rmdir(self, parent: int, name: bytes, ctx: Ctx) -> None: ...

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes,
               flags: int, ctx: Ctx) -> None:
        """renameat2: ``flags`` is 0, RENAME_NOREPLACE (1), RENAME_EXCHANGE (2) or
        RENAME_WHITEOUT (4, EINVAL unless supported)."""
        ...

    # ---- files --------------------------------------------------------------------
    def open(self, nodeid: int, flags: int, ctx: Ctx, kill_suidgid: bool = False) -> Opened:
        """``flags`` are the open flags the kernel sends (may carry FMODE_EXEC 0x20 from
        execve: noexec policy refuses those with EACCES). ``kill_suidgid``: the caller
        lacks CAP_FSETID, so an O_TRUNC open clears set-id bits as a truncate does."""
        ...

    def create(self, parent: int, name: bytes, mode: int, flags: int, umask: int,
               ctx: Ctx, kill_suidgid: bool = False) -> tuple[Entry, Opened]: ...

    def tmpfile(self, parent: int, mode: int, flags: int, umask: int,
                ctx: Ctx) -> tuple[Entry, Opened]: ...

    def read(self, fh: int, offset: int, size: int) -> bytes: ...

    def write(self, fh: int, offset: int, data: bytes | memoryview, ctx: Ctx,
              kill_suidgid: bool = False) -> int:
        """Write and return the count written. Quota is charged here (ENOSPC past it)."""
        ...

    def data_fd(self, fh: int, *, write: bool) -> int:
        """The host fd of an open file handle, for transports that move READ/WRITE data
        themselves (virtio-fs: preadv/pwritev straight into guest memory). Raises EBADF
        for unknown handles and handles not open for that direction; raises EAGAIN
        (meaning "take the slow path through ``write()``") when writes must be charged
        against a quota or otherwise need the tree."""
        ...

    def flush(self, fh: int, lock_owner: int) -> None: ...
    def release(self, fh: int, flags: int = 0, lock_owner: int = 0, flock_release: bool = False) -> None: ...
    def fsync(self, fh: int, datasync: bool) -> None: ...
    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None: ...
    def lseek(self, fh: int, offset: int, whence: int) -> int: ...

    def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int,
                        length: int, flags: int) -> int: ...

    # ---- locks (POSIX record locks on the handle; flock when is_flock) -------------
    def getlk(self, fh: int, owner: int, lock: Lock) -> Lock: ...
    def setlk(self, fh: int, owner: int, lock: Lock, *, is_flock: bool = False) -> None:
        """Non-blocking: EAGAIN when held elsewhere."""
        ...

    def begin_setlkw(self, fh: int, owner: int, lock: Lock, *,
                     is_flock: bool = False) -> LockWait:
        """SETLKW resolved now, waited later: ``wait()`` (may sleep: a worker thread)
        never uses ``fh`` again, so a RELEASE meanwhile cannot redirect it."""
        ...

    def setlkw(self, fh: int, owner: int, lock: Lock, *, is_flock: bool = False) -> None:
        """Blocking variant. This one may sleep: transports call it from a worker thread
        (``trio.to_thread.run_sync``), never on the event loop."""
        ...

    # ---- directories ----------------------------------------------------------------
    def opendir(self, nodeid: int, flags: int, ctx: Ctx) -> Opened: ...

    def readdir(self, fh: int, offset: int) -> Iterator[DirEntry]:
        """Entries from cookie ``offset`` on (0 = start), including ``.`` and ``..``.
        Lazy: the transport stops iterating when its buffer is full and resumes with the
        last delivered entry's ``off``. Does NOT count lookups; for READDIRPLUS the
        transport calls ``lookup`` for each entry it actually delivers (except ``.``
        and ``..``, which it sends without attributes / with nodeid 0)."""
        ...

    def releasedir(self, fh: int) -> None: ...
    def fsyncdir(self, fh: int, datasync: bool) -> None: ...

    # ---- whole filesystem -----------------------------------------------------------
    def statfs(self, nodeid: int) -> StatFs:
        """With a quota, ``blocks``/``bfree``/``bavail`` describe the quota."""
        ...

    def access(self, nodeid: int, mask: int, ctx: Ctx) -> None: ...
    def syncfs(self) -> None: ...

    # ---- xattrs ---------------------------------------------------------------------
    def setxattr(self, nodeid: int, name: bytes, value: bytes, flags: int, ctx: Ctx) -> None: ...

    def getxattr(self, nodeid: int, name: bytes, size: int, ctx: Ctx) -> bytes:
        """``size`` 0 asks for the length only: the transport sends ``len(result)``."""
        ...

    def listxattr(self, nodeid: int, ctx: Ctx) -> list[bytes]: ...
    def removexattr(self, nodeid: int, name: bytes, ctx: Ctx) -> None: ...

    # ---- life cycle -----------------------------------------------------------------
    def destroy(self) -> None:
        """FUSE_DESTROY / unmount: release every handle and inode (the root's fd stays
        until ``close``)."""
        ...

    def close(self) -> None: ...
    def statistics(self) -> Statistics: ...
