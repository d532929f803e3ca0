"""Stateful fuzzing of ``msbfs.tree.Tree`` against a native twin (issue 13, point 4).

The machine is tests/plugins/stateful.py ``StatefulFs``: mostly-valid sequences of every
operation as root and uids 1000/1001, each done on the tree and natively; after every
step the served directory equals the twin, nothing outside the root changed and the fds
are what the model holds open; destroy brings them back to the baseline. This front
calls the tree directly."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from msbfs.tree import ROOT_ID, Attr, Ctx, Entry, Lock, SetAttr, Tree
from tests.plugins.stateful import Attrs, StatefulFs, assert_deep, run_machine
from tests.plugins.tree import ROOT, Twin, err


def _attrs(a: Attr) -> Attrs:
    return Attrs(a.mode, a.nlink, a.uid, a.gid, a.size, a.mtime_ns)


class TreeFront:
    """The Front protocol straight onto a Tree: node ids and handles are the tree's."""

    def __init__(self, tree: Tree) -> None:
        self.t = tree

    def _entry(self, e: Entry) -> tuple[int, Attrs]:
        return e.nodeid, _attrs(e.attr)

    def lookup(self, p: int, name: bytes, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self.t.lookup(p, name, c))

    def forget(self, n: int, k: int) -> None:
        self.t.forget(n, k)

    def batch_forget(self, items: list[tuple[int, int]]) -> None:
        self.t.batch_forget(items)

    def getattr(self, n: int, c: Ctx) -> Attrs:
        return _attrs(self.t.getattr(n, None, c)[0])

    def setattr(self, n: int, sa: SetAttr, c: Ctx) -> Attrs:
        return _attrs(self.t.setattr(n, sa, c)[0])

    def readlink(self, n: int, c: Ctx) -> bytes:
        return self.t.readlink(n, c)

    def mknod(self, p: int, name: bytes, mode: int, umask: int, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self.t.mknod(p, name, mode, 0, umask, c))

    def mkdir(self, p: int, name: bytes, mode: int, umask: int, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self.t.mkdir(p, name, mode, umask, c))

    def symlink(self, p: int, name: bytes, target: bytes, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self.t.symlink(p, name, target, c))

    def link(self, n: int, p: int, name: bytes, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self.t.link(n, p, name, c))

    def unlink(self, p: int, name: bytes, c: Ctx) -> None:
        self.t.unlink(p, name, c)

    def rmdir(self, p: int, name: bytes, c: Ctx) -> None:
        self.t.rmdir(p, name, c)

    def rename(self, p: int, name: bytes, np: int, newname: bytes, flags: int, c: Ctx) -> None:
        self.t.rename(p, name, np, newname, flags, c)

    def create(self, p: int, name: bytes, mode: int, flags: int, umask: int,
               c: Ctx) -> tuple[int, Attrs, int]:
        e, o = self.t.create(p, name, mode, flags, umask, c)
        return e.nodeid, _attrs(e.attr), o.fh

    def tmpfile(self, p: int, mode: int, flags: int, umask: int, c: Ctx) -> tuple[int, Attrs, int]:
        e, o = self.t.tmpfile(p, mode, flags, umask, c)
        return e.nodeid, _attrs(e.attr), o.fh

    def open(self, n: int, flags: int, c: Ctx) -> int:
        return self.t.open(n, flags, c).fh

    def read(self, n: int, fh: int, off: int, size: int) -> bytes:
        return self.t.read(fh, off, size)

    def write(self, n: int, fh: int, off: int, data: bytes, c: Ctx) -> int:
        return self.t.write(fh, off, data, c)

    def fallocate(self, n: int, fh: int, mode: int, off: int, length: int) -> None:
        self.t.fallocate(fh, mode, off, length)

    def copy_file_range(self, n: int, fh: int, off: int, n_out: int, fh_out: int,
                        off_out: int, length: int) -> int:
        return self.t.copy_file_range(fh, off, fh_out, off_out, length, 0)

    def lseek(self, n: int, fh: int, off: int, whence: int) -> int:
        return self.t.lseek(fh, off, whence)

    def flush(self, n: int, fh: int, owner: int) -> None:
        self.t.flush(fh, owner)

    def release(self, n: int, fh: int) -> None:
        self.t.release(fh)

    def getlk(self, n: int, fh: int, owner: int, lock: Lock) -> Lock:
        return self.t.getlk(fh, owner, lock)

    def setlk(self, n: int, fh: int, owner: int, lock: Lock) -> None:
        self.t.setlk(fh, owner, lock)

    def opendir(self, n: int, c: Ctx) -> int:
        return self.t.opendir(n, 0, c).fh

    def readdir(self, n: int, fh: int) -> list[bytes]:
        return [d.name for d in self.t.readdir(fh, 0)]

    def releasedir(self, n: int, fh: int) -> None:
        self.t.releasedir(fh)

    def statfs(self, n: int) -> tuple[int, int]:
        s = self.t.statfs(n)
        return s.bsize, s.namelen

    def setxattr(self, n: int, name: bytes, value: bytes, flags: int, c: Ctx) -> None:
        self.t.setxattr(n, name, value, flags, c)

    def getxattr(self, n: int, name: bytes, c: Ctx) -> bytes:
        return self.t.getxattr(n, name, 0, c)

    def listxattr(self, n: int, c: Ctx) -> list[bytes]:
        return self.t.listxattr(n, c)

    def removexattr(self, n: int, name: bytes, c: Ctx) -> None:
        self.t.removexattr(n, name, c)

    def destroy(self) -> None:
        self.t.destroy()


class TreeMachine(StatefulFs):
    front_name = "tree"

    def open_front(self, served: Path) -> tuple[TreeFront, Callable[[], None]]:
        tree = Tree(served)
        return TreeFront(tree), tree.close


def test_stateful_tree() -> None:
    run_machine(TreeMachine)
    assert_deep("tree")


def test_link_of_a_directory_onto_a_taken_name_is_eexist(twin: Twin) -> None:
    """Found by the stateful machine: linkat checks the new name (EEXIST) before the
    source's kind (EPERM for a directory)."""
    native = err(lambda: os.link(twin.native / "sub", "file", dst_dir_fd=twin.native_fd,
                                 follow_symlinks=False))
    served = err(lambda: twin.tree.link(twin.node("sub"), ROOT_ID, b"file", ROOT))
    assert native == errno.EEXIST
    assert served == native


def test_link_of_a_directory_into_a_removed_directory_is_enoent(twin: Twin) -> None:
    """Found by the stateful machine once its draws no longer depended on the process:
    linkat refuses a new name in a removed directory (ENOENT) before it looks at the
    source's kind (EPERM for a directory)."""
    gone = os.open(twin.native / "empty", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(twin.native / "empty")
        native = err(lambda: os.link(twin.native / "sub", "x", dst_dir_fd=gone,
                                     follow_symlinks=False))
    finally:
        os.close(gone)
    empty = twin.node("empty")  # the client still holds the node id of the removed one
    twin.tree.rmdir(ROOT_ID, b"empty", ROOT)
    served = err(lambda: twin.tree.link(twin.node("sub"), empty, b"x", ROOT))
    assert native == errno.ENOENT
    assert served == native
