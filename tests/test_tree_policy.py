"""Policy enforced by the tree itself (no kernel mount flag involved): readonly, noexec,
nosuid, nodev, owner squash, quota; and the cache option's timeouts/open flags."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from msbfs.tree import (
    FATTR_ATIME_NOW,
    FATTR_GID,
    FATTR_MODE,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    FMODE_EXEC,
    FOPEN_CACHE_DIR,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    ROOT_ID,
    Policy,
    SetAttr,
    Tree,
)
from msbfs.tree.policy import walk_usage
from tests.plugins.tree import ROOT, USER, err, walk

MakeTree = Callable[..., Tree]


def snapshot(root: Path) -> dict[str, Any]:
    """Everything a mutation could change: names, types, modes, owners, sizes, times,
    contents, link targets, user xattrs."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root):
        for name in sorted(dirnames + filenames):
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            item: list[Any] = [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                               st.st_nlink]
            if stat.S_ISREG(st.st_mode):
                item.append(Path(dirpath, name).read_bytes())
                item.append(sorted(os.listxattr(os.path.join(dirpath, name))))
            elif stat.S_ISLNK(st.st_mode):
                item.append(os.readlink(name, dir_fd=dirfd))
            out[rel] = item
    return out


def test_readonly_refuses_every_mutation(make_tree: MakeTree) -> None:
    tree = make_tree(Policy(readonly=True))
    root: Path = tree.path  # type: ignore[attr-defined]
    os.setxattr(root / "file", b"user.k", b"v")
    before = snapshot(root)
    f = walk(tree, "file")
    sub = walk(tree, "sub")
    ro = tree.open(f, os.O_RDONLY, ROOT).fh  # reading is fine
    assert tree.read(ro, 0, 5) == b"hello"
    mutations: dict[str, Callable[[], Any]] = {
        "mknod": lambda: tree.mknod(ROOT_ID, b"n", 0o10644, 0, 0, ROOT),
        "mkdir": lambda: tree.mkdir(ROOT_ID, b"d", 0o755, 0, ROOT),
        "symlink": lambda: tree.symlink(ROOT_ID, b"s", b"t", ROOT),
        "link": lambda: tree.link(f, ROOT_ID, b"h", ROOT),
        "unlink": lambda: tree.unlink(ROOT_ID, b"file", ROOT),
        "rmdir": lambda: tree.rmdir(ROOT_ID, b"empty", ROOT),
        "rename": lambda: tree.rename(ROOT_ID, b"file", sub, b"x", 0, ROOT),
        "create": lambda: tree.create(ROOT_ID, b"c", 0o644, os.O_WRONLY, 0, ROOT),
        "tmpfile": lambda: tree.tmpfile(ROOT_ID, 0o644, os.O_RDWR, 0, ROOT),
        "open wr": lambda: tree.open(f, os.O_WRONLY, ROOT),
        "open rdwr": lambda: tree.open(f, os.O_RDWR, ROOT),
        "open trunc": lambda: tree.open(f, os.O_RDONLY | os.O_TRUNC, ROOT),
        "open append": lambda: tree.open(f, os.O_RDONLY | os.O_APPEND, ROOT),
        "chmod": lambda: tree.setattr(f, SetAttr(valid=FATTR_MODE, mode=0o600), ROOT),
        "chown": lambda: tree.setattr(f, SetAttr(valid=FATTR_UID | FATTR_GID, uid=1), ROOT),
        "truncate": lambda: tree.setattr(f, SetAttr(valid=FATTR_SIZE, size=0), ROOT),
        "utimes": lambda: tree.setattr(f, SetAttr(valid=FATTR_ATIME_NOW | FATTR_MTIME_NOW),
                                       ROOT),
        "write": lambda: tree.write(ro, 0, b"x", ROOT),
        "fallocate": lambda: tree.fallocate(ro, 0, 0, 4096),
        "copy_file_range": lambda: tree.copy_file_range(ro, 0, ro, 100, 5, 0),
        "setxattr": lambda: tree.setxattr(f, b"user.n", b"v", 0, ROOT),
        "removexattr": lambda: tree.removexattr(f, b"user.k", ROOT),
        "access W_OK": lambda: tree.access(f, os.W_OK, ROOT),
    }
    got = {name: err(fn) for name, fn in mutations.items()}
    assert got == {name: errno.EROFS for name in mutations}
    assert err(lambda: tree.data_fd(ro, write=True)) == errno.EBADF
    tree.access(f, os.R_OK, ROOT)
    assert tree.getxattr(f, b"user.k", 0, ROOT) == b"v"
    tree.release(ro)
    assert snapshot(root) == before


def test_noexec_refuses_exec_opens_only(make_tree: MakeTree) -> None:
    tree = make_tree(Policy(noexec=True))
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "script").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "script", 0o755)
    node = walk(tree, "script")
    assert err(lambda: tree.open(node, os.O_RDONLY | FMODE_EXEC, ROOT)) == errno.EACCES
    assert err(lambda: tree.access(node, os.X_OK, ROOT)) == errno.EACCES
    tree.release(tree.open(node, os.O_RDONLY, ROOT).fh)  # reading the script is fine
    assert tree.getattr(node, None, ROOT)[0].mode & 0o777 == 0o755  # x bits still shown
    tree.access(walk(tree, "sub"), os.X_OK, ROOT)  # directories stay searchable
    # Without the policy, the same open works.
    plain = make_tree()
    pn = walk(plain, "sub/inner")
    os.chmod(plain.path / "sub" / "inner", 0o755)  # type: ignore[attr-defined]
    plain.release(plain.open(pn, os.O_RDONLY | FMODE_EXEC, ROOT).fh)


def test_nosuid_never_stores_or_reports_setid(make_tree: MakeTree) -> None:
    tree = make_tree(Policy(nosuid=True))
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "suid").write_bytes(b"")
    os.chmod(root / "suid", 0o4755)
    os.chmod(root / "shared", 0o2777)  # a set-gid directory made behind the tree's back
    assert tree.lookup(ROOT_ID, b"suid", ROOT).attr.mode & 0o7777 == 0o755
    e, o = tree.create(ROOT_ID, b"c", 0o4755, os.O_WRONLY, 0, ROOT)
    tree.release(o.fh)
    assert os.stat(root / "c").st_mode & 0o7777 == 0o755
    tree.setattr(e.nodeid, SetAttr(valid=FATTR_MODE, mode=0o6755), ROOT)
    assert os.stat(root / "c").st_mode & 0o7777 == 0o755
    tree.mknod(ROOT_ID, b"n", stat.S_IFREG | 0o2755, 0, 0, ROOT)
    assert os.stat(root / "n").st_mode & 0o7777 == 0o755
    d = tree.mkdir(walk(tree, "shared"), b"d", 0o755, 0, ROOT)
    assert os.stat(root / "shared" / "d").st_mode & 0o7777 == 0o755
    assert d.attr.mode & 0o7777 == 0o755
    assert tree.lookup(ROOT_ID, b"shared", ROOT).attr.mode & 0o7777 == 0o777
    # Without the policy the same requests store the bits.
    plain = make_tree()
    plain.mknod(ROOT_ID, b"n", stat.S_IFREG | 0o4755, 0, 0, ROOT)
    assert os.stat(plain.path / "n").st_mode & 0o7777 == 0o4755  # type: ignore[attr-defined]


def test_nosuid_refuses_file_capabilities(make_tree: MakeTree) -> None:
    import struct
    # VFS_CAP_REVISION_2 with CAP_NET_RAW (13) permitted+effective.
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    tree = make_tree(Policy(nosuid=True))
    f = walk(tree, "file")
    assert err(lambda: tree.setxattr(f, b"security.capability", cap, 0, ROOT)) == errno.EPERM
    assert err(lambda: tree.getxattr(f, b"security.capability", 0, ROOT)) == errno.ENODATA
    # The default xattr map refuses security.* to everyone; a map that passes it is
    # what lets nosuid alone make the difference here.
    plain = make_tree(xattrmap=":ok:all:::")
    pf = walk(plain, "file")
    plain.setxattr(pf, b"security.capability", cap, 0, ROOT)
    assert plain.getxattr(pf, b"security.capability", 0, ROOT) == cap
    # Non-root callers may never set security.* (CAP_SETFCAP/CAP_SYS_ADMIN), even on
    # their own files, though the daemon itself could.
    uf = walk(plain, "userfile")
    assert err(lambda: plain.setxattr(uf, b"security.capability", cap, 0, USER)) == errno.EPERM
    assert err(lambda: plain.setxattr(uf, b"security.x", b"1", 0, USER)) == errno.EPERM
    assert err(lambda: plain.removexattr(pf, b"security.capability", USER)) == errno.EPERM
    assert plain.getxattr(pf, b"security.capability", 0, USER) == cap  # reading is fine


def test_nodev(make_tree: MakeTree) -> None:
    tree = make_tree(Policy(nodev=True))
    root: Path = tree.path  # type: ignore[attr-defined]
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert err(lambda: tree.mknod(ROOT_ID, b"c", stat.S_IFCHR | 0o600, os.makedev(1, 3), 0,
                                  ROOT)) == errno.EPERM
    assert err(lambda: tree.mknod(ROOT_ID, b"b", stat.S_IFBLK | 0o600, os.makedev(7, 0), 0,
                                  ROOT)) == errno.EPERM
    assert not (root / "c").exists() and not (root / "b").exists()
    tree.mknod(ROOT_ID, b"fifo", stat.S_IFIFO | 0o600, 0, 0, ROOT)
    null = walk(tree, "null")
    assert err(lambda: tree.open(null, os.O_RDWR, ROOT)) == errno.EACCES
    # Still visible, but naming no device: a client kernel that opens special files
    # itself (FUSE, virtio-fs) gets nowhere even without its own nodev flag.
    attr = tree.getattr(null, None, ROOT)[0]
    assert stat.S_ISCHR(attr.mode) and attr.rdev == 0
    assert tree.lookup(ROOT_ID, b"null", ROOT).attr.rdev == 0

def test_no_device_is_ever_opened(make_tree: MakeTree) -> None:
    """Whatever the policy, a client never gets a host device opened for it (issue 9,
    point 1): not by OPEN on the node, not by CREATE on its name. Its attributes stay
    visible (ls shows it), as with the C virtiofsd."""
    plain = make_tree()
    root: Path = plain.path  # type: ignore[attr-defined]
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "loop", stat.S_IFBLK | 0o666, os.makedev(7, 0))
    assert plain.getattr(walk(plain, "null"), None, ROOT)[0].rdev == os.makedev(1, 3)
    handles = plain.statistics().handles
    for name in (b"null", b"loop"):
        node = walk(plain, name.decode())
        for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
            assert err(lambda n=node, f=flags: plain.open(n, f, ROOT)) == errno.EBADF
            assert err(lambda b=name, f=flags: plain.create(ROOT_ID, b, 0o666, f, 0,
                                                                     ROOT)) == errno.EBADF
    assert plain.statistics().handles == handles
    # a device node made through the tree (no nodev) is just as closed
    e = plain.mknod(ROOT_ID, b"kmsg", stat.S_IFCHR | 0o600, os.makedev(1, 11), 0, ROOT)
    assert err(lambda: plain.open(e.nodeid, os.O_RDONLY, ROOT)) == errno.EBADF
    # FIFOs still open, without waiting for a peer
    fifo = plain.mknod(ROOT_ID, b"fifo", stat.S_IFIFO | 0o600, 0, 0, ROOT)
    plain.release(plain.open(fifo.nodeid, os.O_RDONLY, ROOT).fh)
    assert err(lambda: plain.open(fifo.nodeid, os.O_WRONLY, ROOT)) == errno.ENXIO


def test_owner_squash(make_tree: MakeTree) -> None:
    tree = make_tree(Policy(squash_uid=4242, squash_gid=4343))
    for path in ("file", "sub", "userfile", "link"):
        a = tree.lookup(ROOT_ID, path.encode(), ROOT).attr
        assert (a.uid, a.gid) == (4242, 4343)
    e = tree.mkdir(ROOT_ID, b"new", 0o755, 0, ROOT)
    assert (e.attr.uid, e.attr.gid) == (4242, 4343)
    assert tree.getattr(e.nodeid, None, ROOT)[0].uid == 4242


def test_quota_enospc_statfs_and_accounting(make_tree: MakeTree) -> None:
    quota = 1 << 20
    tree = make_tree(Policy(quota_bytes=quota))
    root: Path = tree.path  # type: ignore[attr-defined]
    rfd = os.open(root, os.O_PATH)
    try:
        assert tree.statistics().quota_used_bytes == walk_usage(rfd) > 0
    finally:
        os.close(rfd)
    e, o = tree.create(ROOT_ID, b"big", 0o644, os.O_RDWR, 0, ROOT)
    fh = o.fh
    assert err(lambda: tree.data_fd(fh, write=True)) == errno.EAGAIN  # writes must be charged
    chunk = b"z" * 65536
    written = 0
    while True:
        try:
            n = tree.write(fh, written, chunk, ROOT)
        except OSError as ex:
            assert ex.errno == errno.ENOSPC
            break
        assert n > 0
        written += n
        assert written < 2 * quota, "quota never enforced"
    used = tree.statistics().quota_used_bytes
    assert used is not None and used <= quota
    assert quota - used < 65536 + 8192  # filled up to the limit, not stopped early
    assert os.stat(root / "big").st_size == written
    sf = tree.statfs(ROOT_ID)
    assert sf.blocks * sf.frsize == quota
    assert sf.bavail * sf.frsize == quota - used - (quota - used) % sf.frsize
    # Other growth paths hit the same wall.
    assert err(lambda: tree.fallocate(fh, 0, written, 1 << 20)) == errno.ENOSPC
    _e2, o2 = tree.create(ROOT_ID, b"copy", 0o644, os.O_RDWR, 0, ROOT)
    try:
        copied = tree.copy_file_range(fh, 0, o2.fh, 0, 1 << 19, 0)
    except OSError as ex:
        assert ex.errno == errno.ENOSPC
    else:
        assert copied < 1 << 19  # a short copy up to the limit, as a full disk gives
    assert tree.statistics().quota_used_bytes <= quota  # type: ignore[operator]
    # Shrinking and unlinking give the space back.
    tree.setattr(e.nodeid, SetAttr(valid=FATTR_SIZE, size=0), ROOT)
    assert tree.statistics().quota_used_bytes < used  # type: ignore[operator]
    assert tree.write(fh, 0, chunk, ROOT) == len(chunk)
    tree.release(fh)
    tree.release(o2.fh)
    tree.unlink(ROOT_ID, b"big", ROOT)
    tree.mkdir(ROOT_ID, b"dir", 0o755, 0, ROOT)
    tree.symlink(ROOT_ID, b"sym", b"big", ROOT)
    tree.rename(ROOT_ID, b"copy", ROOT_ID, b"file", 0, ROOT)  # replaces a charged file
    # Incremental accounting agrees with a fresh walk of the same directory.
    fd = os.open(root, os.O_PATH)
    try:
        assert tree.statistics().quota_used_bytes == walk_usage(fd)
    finally:
        os.close(fd)


def test_quota_unlinked_open_files_and_tmpfiles(make_tree: MakeTree) -> None:
    """Blocks of a file unlinked while open (and of a tmpfile never linked) are in use
    until the last handle closes, as the host counts them, and free after."""
    tree = make_tree(Policy(quota_bytes=8 << 20))
    root: Path = tree.path  # type: ignore[attr-defined]
    base = tree.statistics().quota_used_bytes
    assert base is not None
    _e, o = tree.create(ROOT_ID, b"doomed", 0o644, os.O_RDWR, 0, ROOT)
    tree.write(o.fh, 0, b"d" * (1 << 20), ROOT)
    tree.unlink(ROOT_ID, b"doomed", ROOT)
    tree.write(o.fh, 1 << 20, b"d" * (1 << 20), ROOT)  # still growing after unlink
    assert tree.statistics().quota_used_bytes >= base + (2 << 20)  # type: ignore[operator]
    _t, to = tree.tmpfile(ROOT_ID, 0o600, os.O_RDWR, 0, ROOT)
    tree.write(to.fh, 0, b"t" * (1 << 20), ROOT)
    tree.release(o.fh)
    tree.release(to.fh)
    assert tree.statistics().quota_used_bytes == base
    fd = os.open(root, os.O_PATH)
    try:
        assert walk_usage(fd) == base
    finally:
        os.close(fd)


def test_quota_walk_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10000)
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "d").mkdir()
    fd = os.open(tmp_path, os.O_PATH)
    try:
        expected = sum(os.stat(p, follow_symlinks=False).st_blocks * 512
                       for p in (tmp_path, tmp_path / "a", tmp_path / "d"))
        assert walk_usage(fd) == expected
    finally:
        os.close(fd)


@pytest.mark.parametrize("cache,timeout,file_flags,dir_flags", [
    ("never", 0.0, FOPEN_DIRECT_IO, 0),
    ("auto", 1.0, 0, 0),
    ("metadata", 86400.0, FOPEN_DIRECT_IO, 0),
    ("always", 86400.0, FOPEN_KEEP_CACHE, FOPEN_CACHE_DIR),
])
def test_cache_modes(make_tree: MakeTree, cache: str, timeout: float, file_flags: int,
                     dir_flags: int) -> None:
    tree = make_tree(cache=cache)
    e = tree.lookup(ROOT_ID, b"file", ROOT)
    assert (e.entry_timeout, e.attr_timeout) == (timeout, timeout)
    assert tree.getattr(e.nodeid, None, ROOT)[1] == timeout
    o = tree.open(e.nodeid, os.O_RDONLY, ROOT)
    assert o.open_flags == file_flags
    d = tree.opendir(ROOT_ID, 0, ROOT)
    assert d.open_flags == dir_flags
    tree.release(o.fh)
    tree.releasedir(d.fh)


def test_cache_mode_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Tree(tmp_path, cache="sometimes")


def test_xattr_disabled(make_tree: MakeTree) -> None:
    tree = make_tree(xattr=False)
    f = walk(tree, "file")
    assert err(lambda: tree.setxattr(f, b"user.a", b"1", 0, ROOT)) == errno.EOPNOTSUPP
    assert err(lambda: tree.getxattr(f, b"user.a", 0, ROOT)) == errno.EOPNOTSUPP
    assert err(lambda: tree.listxattr(f, ROOT)) == errno.EOPNOTSUPP
    assert err(lambda: tree.removexattr(f, b"user.a", ROOT)) == errno.EOPNOTSUPP


def test_quota_usage_agrees_with_volumefs(make_tree: MakeTree) -> None:
    """statfs inside a sandbox and ``msbfs volume`` must report the same usage: the
    tree's walk and VolumeFs's count are one definition."""
    from msbfs.volumefs import usage_bytes
    tree = make_tree(Policy(quota_bytes=64 << 20))
    root: Path = tree.path  # type: ignore[attr-defined]
    _e, o = tree.create(ROOT_ID, b"data", 0o644, os.O_RDWR, 0, ROOT)
    tree.write(o.fh, 0, b"q" * 300_000, ROOT)
    tree.write(o.fh, 5 << 20, b"sparse tail", ROOT)
    tree.release(o.fh)
    tree.link(walk(tree, "data"), ROOT_ID, b"data2", ROOT)
    tree.mkdir(ROOT_ID, b"d", 0o755, 0, ROOT)
    assert tree.statistics().quota_used_bytes == usage_bytes(root)


def test_quota_tracks_directory_growth(make_tree: MakeTree) -> None:
    """Thousands of long names grow their directory by many blocks: the tree charges
    that growth too, and still agrees with a fresh walk."""
    tree = make_tree(Policy(quota_bytes=256 << 20))
    root: Path = tree.path  # type: ignore[attr-defined]
    d = tree.mkdir(ROOT_ID, b"many", 0o755, 0, ROOT).nodeid
    for i in range(600):
        _e, o = tree.create(d, f"{i:04}-{'x' * 200}".encode(), 0o644, os.O_WRONLY, 0, ROOT)
        tree.release(o.fh)
    tree.symlink(d, b"s" * 200, b"t", ROOT)
    tree.link(walk(tree, "file"), d, b"l" * 200, ROOT)
    tree.rename(ROOT_ID, b"userfile", d, b"r" * 200, 0, ROOT)
    assert os.stat(root / "many").st_blocks * 512 > 4096 * 8  # it really grew
    fd = os.open(root, os.O_PATH)
    try:
        assert tree.statistics().quota_used_bytes == walk_usage(fd)
    finally:
        os.close(fd)
