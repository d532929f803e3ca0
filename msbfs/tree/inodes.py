"""The inode table: one ``O_PATH`` fd per host inode a client holds a lookup on.

Inodes are keyed by the host's ``(st_dev, st_ino)`` so two names of one file (hard
links, ``.``/``..``) share a node id, and counted: every Entry the tree hands out adds
one lookup, FORGET takes them away, and at zero the fd is closed — the tree holds no
more descriptors than the kernel holds lookups. Node ids are the table's own counter
(never reused, never equal to ``st_ino`` by design), so the FUSE generation stays 0.
"""

from __future__ import annotations

import errno
import os
import stat
import threading

from msbfs.tree.types import ROOT_ID


class Inode:
    __slots__ = ("dev", "fd", "ino", "kind", "nlookup", "nodeid", "nopen", "submount")

    def __init__(self, nodeid: int, fd: int, st: os.stat_result, submount: bool) -> None:
        self.nodeid = nodeid
        self.fd = fd  # O_PATH, O_NOFOLLOW: the inode itself, even for a symlink
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.kind = stat.S_IFMT(st.st_mode)  # a file's type never changes
        self.nlookup = 0
        self.nopen = 0  # file handles of ours on it (the quota frees blocks at the last)
        self.submount = submount


class InodeTable:
    def __init__(self, root_fd: int, root_st: os.stat_result) -> None:
        self.root = Inode(ROOT_ID, root_fd, root_st, False)
        self.root.nlookup = 1  # the root is never forgotten
        self._by_id: dict[int, Inode] = {ROOT_ID: self.root}
        self._by_key: dict[tuple[int, int], Inode] = {(root_st.st_dev, root_st.st_ino): self.root}
        self._next_id = ROOT_ID + 1
        # Lookups and forgets may come from different threads (a transport may serve
        # several queues); the count update and the close must not interleave.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, nodeid: int) -> Inode:
        inode = self._by_id.get(nodeid)
        if inode is None:
            raise OSError(errno.EBADF, "unknown node id")
        return inode

    def find(self, st: os.stat_result) -> Inode | None:
        return self._by_key.get((st.st_dev, st.st_ino))

    def add(self, fd: int, st: os.stat_result, submount: bool = False) -> Inode:
        """Count one lookup of the inode ``fd`` (O_PATH) names. Takes ownership of
        ``fd``: it is kept for a new inode and closed when the inode is already known."""
        key = (st.st_dev, st.st_ino)
        with self._lock:
            inode = self._by_key.get(key)
            if inode is None:
                inode = Inode(self._next_id, fd, st, submount)
                self._next_id += 1
                self._by_id[inode.nodeid] = inode
                self._by_key[key] = inode
                fd = -1
            inode.nlookup += 1
        if fd >= 0:
            os.close(fd)
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
        os.close(inode.fd)

    def clear(self) -> None:
        """Close every inode but the root (FUSE_DESTROY: the client forgot them all)."""
        with self._lock:
            dead = [i for i in self._by_id.values() if i.nodeid != ROOT_ID]
            self._by_id = {ROOT_ID: self.root}
            self._by_key = {(self.root.dev, self.root.ino): self.root}
            self.root.nlookup = 1
        for inode in dead:
            os.close(inode.fd)
