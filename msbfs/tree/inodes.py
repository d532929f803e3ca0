"""The inode table: one host inode per node id, reached through an ``O_PATH`` fd.

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
import stat
import threading
from collections import OrderedDict

from msbfs._native import ffi, lib
from msbfs.tree.types import ROOT_ID

AT_EMPTY_PATH = 0x1000
_HANDLE_BUF = 8 + 128  # struct file_handle + MAX_HANDLE_SZ
_REOPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Inode:
    __slots__ = ("_fd", "dev", "handle", "ino", "kind", "mount_id", "nlookup", "nodeid",
                 "nopen", "submount", "table", "used")

    def __init__(self, table: InodeTable, nodeid: int, fd: int, st: os.stat_result,
                 submount: bool) -> None:
        self.table = table
        self.nodeid = nodeid
        self._fd = fd  # O_PATH, O_NOFOLLOW: the inode itself, even for a symlink; -1: closed
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.kind = stat.S_IFMT(st.st_mode)  # a file's type never changes
        self.nlookup = 0
        self.nopen = 0  # file handles of ours on it (the quota frees blocks at the last)
        self.submount = submount
        self.handle: bytes | None = None  # file handle, once the fd had to be closed
        self.mount_id = -1
        self.used = False  # the fd cache's reference bit (CLOCK: a second chance)

    @property
    def fd(self) -> int:
        """The inode's O_PATH fd, re-opened from its handle if it was closed."""
        fd = self._fd
        if fd < 0:
            return self.table.reopen(self)
        self.used = True
        return fd


class InodeTable:
    def __init__(self, root_fd: int, root_st: os.stat_result,
                 max_fds: int | None = None, *, fd_cap: int | None = None,
                 max_inodes: int | None = None) -> None:
        self.root = Inode(self, ROOT_ID, root_fd, root_st, False)
        self.root.nlookup = 1  # the root is never forgotten
        self._by_id: dict[int, Inode] = {ROOT_ID: self.root}
        self._by_key: dict[tuple[int, int], Inode] = {(root_st.st_dev, root_st.st_ino): self.root}
        self._next_id = ROOT_ID + 1
        self.nfds = 1  # open inode fds, the root's included
        self.fd_cap = fd_cap
        self.max_inodes = max_inodes
        # Lookups and forgets may come from different threads (a transport may serve
        # several queues); the count update and the close must not interleave.
        self._lock = threading.RLock()
        #: None: every inode keeps its fd. Else: open inode fds, least recently used first.
        self.max_fds = max_fds
        self.lru: OrderedDict[int, Inode] | None = OrderedDict() if max_fds else None
        # mount id -> a (non-O_PATH: the kernel insists) fd on that mount, for
        # open_by_handle_at; seeded with the root's mount, where most inodes live.
        self._mount_fds: dict[int, int] = {}
        self.evictions = 0
        self.reopens = 0
        if self.lru is not None and not self._probe_handles(root_fd):
            # No way back from a closed fd here (no CAP_DAC_READ_SEARCH, or no handles on
            # this filesystem): every inode keeps its fd, as without a cache.
            self.max_fds, self.lru = None, None

    def _probe_handles(self, root_fd: int) -> bool:
        """Can this process re-open the root from its handle? Seeds the root's mount fd."""
        try:
            handle, mount_id = self._handle_of(root_fd)
            mount_fd = os.open(b"/proc/self/fd/%d" % root_fd,
                               os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        fd = lib.msb_open_by_handle_at(mount_fd, ffi.from_buffer(handle), _REOPEN_FLAGS)
        if fd < 0:
            os.close(mount_fd)
            return False
        os.close(fd)
        self._mount_fds[mount_id] = mount_fd
        return True

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def open_fds(self) -> int:
        return self.nfds

    def check_room(self) -> None:
        """ENFILE if one more inode would pass a bound (see the module doc)."""
        if self.max_inodes is not None and len(self._by_id) >= self.max_inodes:
            raise OSError(errno.ENFILE, "the client holds too many inodes")
        cap = self.fd_cap
        if cap is not None and self.nfds >= cap:
            with self._lock:
                if self.lru is not None:
                    self._evict_one(self.lru, self.root)
                if self.nfds >= cap:
                    raise OSError(errno.ENFILE, "the client holds too many inode fds")

    def get(self, nodeid: int) -> Inode:
        inode = self._by_id.get(nodeid)
        if inode is None:
            raise OSError(errno.EBADF, "unknown node id")
        return inode

    def find(self, st: os.stat_result) -> Inode | None:
        return self._by_key.get((st.st_dev, st.st_ino))

    def add(self, fd: int, st: os.stat_result, submount: bool = False) -> Inode:
        """Count one lookup of the inode ``fd`` (O_PATH) names. Takes ownership of
        ``fd``: it is kept for a new inode (or one whose fd was closed) and closed when
        the inode already has one."""
        key = (st.st_dev, st.st_ino)
        with self._lock:
            inode = self._by_key.get(key)
            if inode is None:
                inode = Inode(self, self._next_id, fd, st, submount)
                self._next_id += 1
                self._by_id[inode.nodeid] = inode
                self._by_key[key] = inode
                self.nfds += 1
                self._opened(inode)
                fd = -1
            elif inode._fd < 0:
                inode._fd = fd
                self.nfds += 1
                self._opened(inode)
                fd = -1
            inode.nlookup += 1
        if fd >= 0:
            os.close(fd)
        return inode

    def find_ref(self, st: os.stat_result) -> Inode | None:
        """The inode ``st`` names, with one more lookup counted, if it is in the table
        (found and counted under one lock: a forget in between cannot drop it)."""
        key = (st.st_dev, st.st_ino)
        with self._lock:
            inode = self._by_key.get(key)
            if inode is not None:
                inode.nlookup += 1
        return inode

    def ref(self, inode: Inode) -> None:
        """One more lookup of an inode already in the table (link, ``.``)."""
        with self._lock:
            inode.nlookup += 1

    def forget(self, nodeid: int, nlookup: int) -> None:
        if nodeid == ROOT_ID:
            return
        with self._lock:
            inode = self._by_id.get(nodeid)
            if inode is None:
                return
            inode.nlookup -= max(0, nlookup)
            if inode.nlookup > 0:
                return
            del self._by_id[nodeid]
            del self._by_key[(inode.dev, inode.ino)]
            if self.lru is not None:
                self.lru.pop(nodeid, None)
            fd, inode._fd = inode._fd, -1
            if fd >= 0:
                self.nfds -= 1
        if fd >= 0:
            os.close(fd)

    def clear(self) -> None:
        """Close every inode but the root (FUSE_DESTROY: the client forgot them all)."""
        with self._lock:
            dead = [i for i in self._by_id.values() if i.nodeid != ROOT_ID]
            self._by_id = {ROOT_ID: self.root}
            self._by_key = {(self.root.dev, self.root.ino): self.root}
            self.root.nlookup = 1
            self.nfds = 1 if self.root._fd >= 0 else 0
            if self.lru is not None:
                self.lru.clear()
        for inode in dead:
            if inode._fd >= 0:
                os.close(inode._fd)
                inode._fd = -1

    def close(self) -> None:
        """Everything, the root and the per-mount fds included (the tree is done)."""
        self.clear()
        with self._lock:
            mount_fds, self._mount_fds = self._mount_fds, {}
            root_fd, self.root._fd = self.root._fd, -1
            self.nfds = 0
        for fd in [*mount_fds.values(), root_fd]:
            if fd >= 0:
                os.close(fd)

    # ---- the fd cache -----------------------------------------------------------------
    def _opened(self, inode: Inode) -> None:
        lru = self.lru
        if lru is None or inode.nodeid == ROOT_ID or inode.handle == b"":
            return
        lru[inode.nodeid] = inode
        inode.used = True
        while len(lru) > self.max_fds:  # type: ignore[operator]
            if not self._evict_one(lru, inode):
                break

    def _evict_one(self, lru: OrderedDict[int, Inode], keep: Inode) -> bool:
        """Close one inode fd (or pin one that cannot be closed); False: none can go."""
        # CLOCK: an inode used since the hand last passed gets a second chance, so the
        # hot path only sets a flag instead of reordering a list on every access. One
        # pass at most: an inode whose fd an operation fetched (flag set) survives the
        # eviction that a later step of the same operation may cause, so an fd number
        # in hand is never closed under it. Open files are passed over: their inode
        # must outlive an unlink on the host.
        for _ in range(len(lru)):
            nodeid, victim = lru.popitem(last=False)
            if not victim.used and not victim.nopen and victim is not keep:
                break
            victim.used = False
            lru[nodeid] = victim
        else:
            return False  # everything is in use: go over the limit rather than strand one
        fd = victim._fd
        if victim.handle is None:
            try:
                if os.stat(fd).st_nlink == 0:
                    raise OSError(errno.ESTALE, "no name left: only the fd keeps it")
                victim.handle, victim.mount_id = self._handle_of(fd)
            except OSError:
                victim.handle = b""  # pinned: keeps its fd, out of the cache
                return True
        if victim.mount_id not in self._mount_fds and not self._add_mount_fd(victim):
            victim.handle = b""  # no way back to that mount yet: keep the fd
            return True
        victim._fd = -1
        self.nfds -= 1
        os.close(fd)
        self.evictions += 1
        return True

    def _add_mount_fd(self, inode: Inode) -> bool:
        """A readable fd on the inode's mount, made from the inode itself when it is a
        directory or regular file (opening anything else could block or touch a device)."""
        if inode.kind == stat.S_IFDIR:
            flags = os.O_RDONLY | os.O_DIRECTORY
        elif inode.kind == stat.S_IFREG:
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
        else:
            return False
        try:
            fd = os.open(b"/proc/self/fd/%d" % inode._fd, flags | os.O_CLOEXEC)
        except OSError:
            return False
        self._mount_fds[inode.mount_id] = fd
        return True

    @staticmethod
    def _handle_of(fd: int) -> tuple[bytes, int]:
        buf = ffi.new("char[]", _HANDLE_BUF)
        mount_id = ffi.new("int *")
        r = lib.msb_name_to_handle_at(fd, b"", buf, _HANDLE_BUF, mount_id, AT_EMPTY_PATH)
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        size = 8 + ffi.cast("uint32_t *", buf)[0]
        return bytes(ffi.buffer(buf, size)), mount_id[0]

    def reopen(self, inode: Inode) -> int:
        with self._lock:
            if inode._fd >= 0:
                return inode._fd
            if inode.handle is None or inode.nodeid not in self._by_id:
                raise OSError(errno.ESTALE, "inode was forgotten")
            mount_fd = self._mount_fds[inode.mount_id]
            fd = lib.msb_open_by_handle_at(mount_fd, ffi.from_buffer(inode.handle),
                                           _REOPEN_FLAGS)
            if fd < 0:
                raise OSError(-fd, os.strerror(-fd))
            inode._fd = fd
            self.nfds += 1
            self.reopens += 1
            self._opened(inode)
            return fd
