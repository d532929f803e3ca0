"""What a hostile client must not get from the tree (issue 9): set-id bits stripped
without a change it may make, a create that widens an existing file, inodes past the
quota."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from msbfs.tree import (
    FATTR_KILL_SUIDGID,
    FATTR_SIZE,
    ROOT_ID,
    Ctx,
    Lock,
    Policy,
    SetAttr,
    Tree,
)
from msbfs.tree.policy import MIN_DEFAULT_INODES, walk_counts
from msbfs.tree.types import OFFSET_MAX
from tests.plugins.tree import OTHER, ROOT, USER, err, walk

MakeTree = Callable[..., Tree]


def _setid_file(root: Path, name: str, owner: int = 0) -> Path:
    f = root / name
    f.write_bytes(b"#!/bin/sh\n")
    os.chown(f, owner, owner)
    os.chmod(f, 0o6755)
    return f


def test_kill_suidgid_alone_changes_nothing(make_tree: MakeTree) -> None:
    ro = make_tree(Policy(readonly=True))
    f = _setid_file(ro.path, "suid")  # type: ignore[attr-defined]
    node = walk(ro, "suid")
    for ctx in (ROOT, USER):
        ro.setattr(node, SetAttr(valid=FATTR_KILL_SUIDGID), ctx)
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o6755
    # Nor in a writable tree by someone who may not chmod it.
    rw = make_tree()
    g = _setid_file(rw.path, "suid", owner=OTHER.uid)  # type: ignore[attr-defined]
    rw.setattr(walk(rw, "suid"), SetAttr(valid=FATTR_KILL_SUIDGID), USER)
    assert stat.S_IMODE(os.stat(g).st_mode) == 0o6755


def test_kill_suidgid_beside_a_permitted_truncate(make_tree: MakeTree) -> None:
    tree = make_tree()
    f = _setid_file(tree.path, "suid", owner=USER.uid)  # type: ignore[attr-defined]
    tree.setattr(walk(tree, "suid"), SetAttr(valid=FATTR_SIZE | FATTR_KILL_SUIDGID, size=0),
                 USER)
    assert os.stat(f).st_size == 0
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755


def test_create_of_an_existing_name_keeps_its_mode(make_tree: MakeTree) -> None:
    tree = make_tree()
    f = tree.path / "tight"  # type: ignore[attr-defined]
    f.write_bytes(b"secret")
    os.chmod(f, 0o600)
    _, o = tree.create(ROOT_ID, b"tight", 0o777, os.O_RDWR, 0, ROOT)
    tree.release(o.fh)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert f.read_bytes() == b"secret"
    # a new name still gets the mode asked for
    _, o = tree.create(ROOT_ID, b"loose", 0o666, os.O_RDWR, 0, ROOT)
    tree.release(o.fh)
    assert stat.S_IMODE(os.stat(tree.path / "loose").st_mode) == 0o666  # type: ignore[attr-defined]


def _used(tree: Tree) -> tuple[int, int]:
    fd = os.open(tree.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return walk_counts(fd)
    finally:
        os.close(fd)


def test_inode_quota(make_tree: MakeTree) -> None:
    probe = make_tree()
    start = _used(probe)[1]
    limit = start + 6
    tree = make_tree(Policy(quota_inodes=limit))
    assert tree.quota is not None and tree.quota.inodes == start
    sf = tree.statfs(ROOT_ID)
    assert (sf.files, sf.ffree) == (limit, 6)
    d = tree.mkdir(ROOT_ID, b"d", 0o755, 0, ROOT).nodeid
    tree.mknod(d, b"fifo", stat.S_IFIFO | 0o600, 0, 0, ROOT)
    tree.symlink(d, b"ln", b"fifo", ROOT)
    _, o = tree.create(d, b"f", 0o644, os.O_RDWR, 0, ROOT)
    tree.release(o.fh)
    _, o = tree.tmpfile(d, 0o600, os.O_RDWR, 0, ROOT)
    assert tree.quota.inodes == limit - 1
    tree.link(walk(tree, "d/f"), d, b"hard", ROOT)  # a link is no new inode
    tree.mkdir(d, b"last", 0o755, 0, ROOT)
    assert tree.statfs(ROOT_ID).ffree == 0
    full = {
        "mkdir": lambda: tree.mkdir(d, b"x1", 0o755, 0, ROOT),
        "mknod": lambda: tree.mknod(d, b"x2", stat.S_IFREG | 0o644, 0, 0, ROOT),
        "symlink": lambda: tree.symlink(d, b"x3", b"t", ROOT),
        "create": lambda: tree.create(d, b"x4", 0o644, os.O_RDWR, 0, ROOT),
        "tmpfile": lambda: tree.tmpfile(d, 0o600, os.O_RDWR, 0, ROOT),
    }
    for op, fn in full.items():
        assert err(fn) == errno.ENOSPC, op
    assert sorted(os.listdir(tree.path / "d")) == ["f", "fifo", "hard", "last", "ln"]  # type: ignore[operator]
    # an existing name still opens when there is no room for a new one
    _, o2 = tree.create(d, b"f", 0o644, os.O_RDWR, 0, ROOT)
    tree.release(o2.fh)
    assert err(lambda: tree.create(d, b"f", 0o644, os.O_RDWR | os.O_EXCL, 0, ROOT)) == errno.EEXIST
    # the tmpfile's inode returns at its release; a removal returns one
    tree.release(o.fh)
    tree.unlink(d, b"fifo", ROOT)
    assert tree.quota.inodes == limit - 2 == _used(tree)[1]
    tree.unlink(d, b"hard", ROOT)  # f keeps its other name: still one inode
    assert tree.quota.inodes == limit - 2
    tree.mkdir(d, b"again", 0o755, 0, ROOT)
    tree.rmdir(d, b"again", ROOT)
    assert tree.quota.inodes == _used(tree)[1]


def test_default_inode_limit_follows_the_byte_quota() -> None:
    assert Policy().inode_limit is None
    assert Policy(quota_bytes=1 << 20).inode_limit == MIN_DEFAULT_INODES
    assert Policy(quota_bytes=1 << 30).inode_limit == (1 << 30) // 4096
    assert Policy(quota_bytes=1 << 30, quota_inodes=7).inode_limit == 7


def _write_fds_on(path: Path) -> list[int]:
    """Our own fds open for writing on ``path`` (what makes exec fail with ETXTBSY)."""
    found = []
    ino = os.stat(path).st_ino
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.stat(f"/proc/self/fd/{fd}").st_ino != ino:
                continue
            flags = int(Path(f"/proc/self/fdinfo/{fd}").read_text().split()[3], 8)
        except (OSError, ValueError, IndexError):
            continue
        if flags & os.O_ACCMODE != os.O_RDONLY:
            found.append(int(fd))
    return found


@pytest.mark.parametrize("readonly", [False, True])
def test_read_lock_never_reopens_for_writing(make_tree: MakeTree, readonly: bool) -> None:
    """A read lock through a read-only handle must not leave a writable description of
    the file behind: the host could no longer execute it (ETXTBSY)."""
    tree = make_tree(Policy(readonly=readonly))
    exe = tree.path / "tool"  # type: ignore[attr-defined]
    shutil.copy("/bin/true", exe)
    os.chmod(exe, 0o755)
    node = walk(tree, "tool")
    fh = tree.open(node, os.O_RDONLY, ROOT).fh
    tree.setlk(fh, 7, Lock(0, OFFSET_MAX, fcntl.F_RDLCK))
    assert tree.statistics().extra["lock_fds"] == 1  # the lock really took a description
    assert _write_fds_on(exe) == []
    subprocess.run([str(exe)], check=True)  # ETXTBSY before the fix
    # a write lock needs a writable handle, as POSIX says
    assert err(lambda: tree.setlk(fh, 7, Lock(0, 10, fcntl.F_WRLCK))) == errno.EBADF
    # the lock is a real host lock: a native writer-lock attempt conflicts
    probe = os.open(exe, os.O_RDONLY)
    try:
        got = fcntl.fcntl(probe, fcntl.F_OFD_GETLK,
                          struct.pack("@hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))
        assert struct.unpack("@hhqqi4x", got)[0] == fcntl.F_RDLCK
    finally:
        os.close(probe)
    tree.flush(fh, 7)
    assert tree.statistics().extra["lock_fds"] == 0
    tree.release(fh)


def test_handle_budget(make_tree: MakeTree) -> None:
    """Past its handle budget a client's opens fail with EMFILE; the daemon keeps its fds,
    and a release makes room again (issue 9, point 7)."""
    tree = make_tree(max_handles=4)
    f = walk(tree, "file")
    fhs = [tree.open(f, os.O_RDONLY, ROOT).fh for _ in range(3)]
    fhs.append(tree.opendir(ROOT_ID, os.O_RDONLY, ROOT).fh)
    before = len(os.listdir("/proc/self/fd"))
    assert err(lambda: tree.open(f, os.O_RDONLY, ROOT)) == errno.EMFILE
    assert err(lambda: tree.opendir(ROOT_ID, os.O_RDONLY, ROOT)) == errno.EMFILE
    assert err(lambda: tree.create(ROOT_ID, b"new", 0o644, os.O_RDWR, 0, ROOT)) == errno.EMFILE
    assert err(lambda: tree.tmpfile(ROOT_ID, 0o600, os.O_RDWR, 0, ROOT)) == errno.EMFILE
    assert not (tree.path / "new").exists()  # type: ignore[attr-defined]
    assert len(os.listdir("/proc/self/fd")) == before
    tree.getattr(f, None, ROOT)  # everything else goes on
    tree.release(fhs.pop(0))
    tree.release(tree.open(f, os.O_RDONLY, ROOT).fh)


def test_inode_budget(make_tree: MakeTree) -> None:
    tree = make_tree(max_inodes=6)
    root: Path = tree.path  # type: ignore[attr-defined]
    for i in range(10):
        (root / f"n{i}").write_bytes(b"")
    held = tree.statistics().inodes
    got = []
    for i in range(10):
        try:
            got.append(tree.lookup(ROOT_ID, b"n%d" % i, ROOT).nodeid)
        except OSError as e:
            assert e.errno == errno.ENFILE
            break
    assert len(got) == 6 - held and tree.statistics().inodes == 6
    assert err(lambda: tree.mkdir(ROOT_ID, b"d", 0o755, 0, ROOT)) == errno.ENFILE
    assert not (root / "d").exists()
    # known inodes still resolve; a forget makes room
    assert tree.lookup(ROOT_ID, b"n0", ROOT).nodeid == got[0]
    tree.forget(got[0], 2)
    tree.lookup(ROOT_ID, b"n9", ROOT)


def test_kill_suidgid_on_o_trunc_opens_and_by_group_membership(make_tree: MakeTree) -> None:
    """An O_TRUNC open by a caller without CAP_FSETID (FUSE_OPEN_KILL_SUIDGID) clears
    set-id bits as a truncate does; S_ISGID without group-exec goes only for a caller
    outside the file's group (setattr_should_drop_sgid)."""
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    f = _setid_file(root, "suid", owner=USER.uid)
    fh = tree.open(walk(tree, "suid"), os.O_WRONLY | os.O_TRUNC, USER).fh
    tree.release(fh)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6755  # no flag: the caller may keep them
    fh = tree.open(walk(tree, "suid"), os.O_WRONLY | os.O_TRUNC, USER, kill_suidgid=True).fh
    tree.release(fh)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    g = root / "lockmark"
    g.write_bytes(b"x")
    os.chown(g, 0, 2000)
    os.chmod(g, 0o2666)  # S_ISGID without group-exec
    node = walk(tree, "lockmark")
    member = Ctx(1000, 1000, groups=(2000,))
    tree.setattr(node, SetAttr(valid=FATTR_SIZE | FATTR_KILL_SUIDGID, size=0), member)
    assert stat.S_IMODE(os.stat(g).st_mode) == 0o2666
    tree.setattr(node, SetAttr(valid=FATTR_SIZE | FATTR_KILL_SUIDGID, size=0), USER)
    assert stat.S_IMODE(os.stat(g).st_mode) == 0o666
