"""Named nodes (csrc/inodes.h): a lookup adds the inode it found by name without
opening it; the first use through an fd opens that name beneath the parent's fd and
keeps the fd only if it is the inode the lookup found (dev, ino, kind, birth time).

The client is hostile and the host may change the tree at any time: what is checked
here is that a node never reaches another object than the one its lookup described (a
FIFO, a device, a symlink, a directory, a file moved out of the root, a reused inode
number), that a rename through the tree keeps the node usable, and that the fds and
bounds are those of a table whose lookups open nothing."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from msbfs.tree import RENAME_EXCHANGE, ROOT_ID, Tree
from tests.plugins.tree import ROOT, err, fd_count


def _extra(tree: Tree) -> dict[str, int]:
    return tree.statistics().extra


def test_a_lookup_opens_nothing_until_the_node_is_used(tmp_path: Path) -> None:
    for i in range(1000):
        (tmp_path / f"f{i}").write_bytes(b"x" * i)
    with Tree(tmp_path) as tree:
        base = fd_count()
        entries = [tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT) for i in range(1000)]
        assert fd_count() == base
        assert _extra(tree)["inode_named"] == 1000
        assert [e.attr.size for e in entries] == list(range(1000))
        attr, _t = tree.getattr(entries[7].nodeid, None, ROOT)
        assert attr.size == 7 and fd_count() == base + 1
        assert _extra(tree)["inode_named"] == 999 and _extra(tree)["inode_named_opens"] == 1
        fh = tree.open(entries[9].nodeid, os.O_RDONLY, ROOT).fh
        assert tree.read(fh, 0, 100) == b"x" * 9
        tree.release(fh)
        tree.batch_forget((e.nodeid, 1) for e in entries)
        assert len(tree._inodes) == 1 and fd_count() == base
        assert _extra(tree)["inode_named"] == 0


def test_a_rename_through_the_tree_keeps_the_node(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "a").write_bytes(b"data")
    (tmp_path / "x").write_bytes(b"x")
    (tmp_path / "y").write_bytes(b"yy")
    with Tree(tmp_path) as tree:
        a = tree.lookup(ROOT_ID, b"a", ROOT)
        d = tree.lookup(ROOT_ID, b"d", ROOT)
        tree.rename(ROOT_ID, b"a", d.nodeid, b"b", 0, ROOT)
        got, _t = tree.getattr(a.nodeid, None, ROOT)
        assert got.ino == a.attr.ino and got.size == 4
        x, y = (tree.lookup(ROOT_ID, n, ROOT) for n in (b"x", b"y"))
        tree.rename(ROOT_ID, b"x", ROOT_ID, b"y", RENAME_EXCHANGE, ROOT)
        assert tree.getattr(x.nodeid, None, ROOT)[0].size == 1
        assert tree.getattr(y.nodeid, None, ROOT)[0].size == 2
        assert _extra(tree)["inode_named"] == 0  # d too: the rename used its fd


def test_a_rename_behind_our_back_is_estale_until_found_again(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"data")
    with Tree(tmp_path) as tree:
        a = tree.lookup(ROOT_ID, b"a", ROOT)
        os.rename(tmp_path / "a", tmp_path / "b")
        assert err(lambda: tree.getattr(a.nodeid, None, ROOT)) == errno.ESTALE
        assert err(lambda: tree.open(a.nodeid, os.O_RDONLY, ROOT)) == errno.ESTALE
        # the client's kernel looks the name up again (LOOKUP_REVAL): the same node
        assert tree.lookup(ROOT_ID, b"b", ROOT).nodeid == a.nodeid
        assert tree.getattr(a.nodeid, None, ROOT)[0].ino == a.attr.ino


@pytest.mark.parametrize("swap", ["fifo", "symlink-out", "dir", "hardlink-out",
                                  "moved-out", "socket"])
def test_a_swapped_name_never_reaches_the_new_object(tmp_path: Path, swap: str) -> None:
    """The name a regular file was looked up by holds something else at its first use:
    the node says ESTALE for every use, opening nothing it could block on (a FIFO) or
    leak (a file outside the root, by a symlink or a hard link), and the file moved out
    of the root is never reached through it."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.write_bytes(b"host secret")
    (root / "f").write_bytes(b"inside")
    with Tree(root) as tree:
        f = tree.lookup(ROOT_ID, b"f", ROOT)
        if swap == "moved-out":
            os.rename(root / "f", tmp_path / "f-out")
        else:
            (root / "f").unlink()
        if swap == "fifo":
            os.mkfifo(root / "f")
        elif swap == "symlink-out":
            (root / "f").symlink_to(outside)
        elif swap == "dir":
            (root / "f").mkdir()
        elif swap == "hardlink-out":
            os.link(outside, root / "f")
        elif swap == "socket":
            os.mknod(root / "f", stat.S_IFSOCK | 0o600)
        for use in (lambda: tree.getattr(f.nodeid, None, ROOT),
                    lambda: tree.open(f.nodeid, os.O_RDONLY, ROOT),
                    lambda: tree.open(f.nodeid, os.O_WRONLY | os.O_TRUNC, ROOT),
                    lambda: tree.getxattr(f.nodeid, b"user.x", 64, ROOT)):
            assert err(use) == errno.ESTALE
        assert _extra(tree)["inode_named_opens"] == 0
    assert outside.read_bytes() == b"host secret"


def test_a_named_node_pins_its_parent(tmp_path: Path) -> None:
    """A named node is opened beneath its parent's fd: the parent stays while it is
    named, even forgotten by the client; taken away by a hostile count (more than it
    holds), the child says ESTALE, nothing else."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(b"x")
    (tmp_path / "d" / "y").write_bytes(b"yy")
    with Tree(tmp_path) as tree:
        d = tree.lookup(ROOT_ID, b"d", ROOT)
        x = tree.lookup(d.nodeid, b"x", ROOT)
        tree.forget(d.nodeid, 1)  # the parent before its child
        assert tree.getattr(x.nodeid, None, ROOT)[0].size == 1
        assert len(tree._inodes) == 2  # opened: x pins nothing, d went
        tree.forget(x.nodeid, 1)
        d = tree.lookup(ROOT_ID, b"d", ROOT)
        y = tree.lookup(d.nodeid, b"y", ROOT)
        tree.forget(d.nodeid, 1 << 40)
        assert err(lambda: tree.getattr(y.nodeid, None, ROOT)) == errno.ESTALE
        tree.forget(y.nodeid, 1)
        assert len(tree._inodes) == 1


def test_named_nodes_count_against_max_inodes(tmp_path: Path) -> None:
    for i in range(8):
        (tmp_path / f"f{i}").write_bytes(b"")
    with Tree(tmp_path, max_inodes=5) as tree:
        for i in range(4):
            tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT)
        assert err(lambda: tree.lookup(ROOT_ID, b"f7", ROOT)) == errno.ENFILE


def test_a_directory_is_opened_at_its_lookup(tmp_path: Path) -> None:
    """Directories are never named: a client's cwd is never looked up again, so a named
    directory the host renamed would say ESTALE to `ls .` for good. Its fd follows it."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"f")
    with Tree(tmp_path) as tree:
        d = tree.lookup(ROOT_ID, b"d", ROOT)
        assert _extra(tree)["inode_named"] == 0
        os.rename(tmp_path / "d", tmp_path / "d2")
        assert tree.getattr(d.nodeid, None, ROOT)[0].ino == d.attr.ino
        assert tree.lookup(d.nodeid, b"f", ROOT).attr.size == 1
