"""CREATE's two fast paths (msbfs.tree.tree.Tree.create): a new file is made with
O_EXCL first, an existing one is opened the careful way; the new inode's O_PATH fd is
taken by name and checked against what was created, with the /proc re-open as the
fallback when the name no longer leads there."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from msbfs.tree import Tree
from tests.plugins.tree import ROOT


def test_create_of_an_existing_file_opens_that_file_blocking(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"keep")
    with Tree(tmp_path) as t:
        known = t.lookup(1, b"f", ROOT)
        e, o = t.create(1, b"f", 0o600, os.O_RDWR | os.O_CREAT, 0, ROOT)
        assert e.nodeid == known.nodeid and e.attr.size == 4  # same inode, not truncated
        fd = t.data_fd(o.fh, write=True)
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert t.read(o.fh, 0, 10) == b"keep"
        t.release(o.fh)
        # O_EXCL from the caller still fails on an existing name
        try:
            t.create(1, b"f", 0o600, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0, ROOT)
        except FileExistsError:
            pass
        else:
            raise AssertionError("O_EXCL create of an existing name succeeded")


def test_the_inode_fd_is_the_created_file_even_if_the_name_moved(tmp_path: Path) -> None:
    with Tree(tmp_path) as t:
        parent = t._inodes.root
        fd = os.open(tmp_path / "mine", os.O_RDWR | os.O_CREAT, 0o600)
        st = os.stat(fd)
        os.rename(tmp_path / "mine", tmp_path / "moved")
        (tmp_path / "mine").write_bytes(b"someone else's")
        pfd = t._path_fd_of(parent, b"mine", fd, st)  # by name: the wrong inode
        try:
            got = os.stat(pfd)
            assert (got.st_dev, got.st_ino) == (st.st_dev, st.st_ino)
        finally:
            os.close(pfd)
            os.close(fd)
