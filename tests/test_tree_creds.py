"""The caller's identity under the tree's permission model (msbfs/tree/tree.py): the
client kernel checks its users' permissions, the tree acts as the daemon; what a caller
creates is theirs (its uid, its gid or the setgid parent's, the mode it asked for), set-id
bits are cleared when the client asks, and the daemon's own identity never changes
(``access``, the one call made as the caller, switches back)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from msbfs.tree import (
    FATTR_GID,
    FATTR_KILL_SUIDGID,
    FATTR_SIZE,
    ROOT_ID,
    Ctx,
    SetAttr,
    Tree,
)
from tests.plugins.tree import ROOT, USER, as_unprivileged_daemon, err, opened, walk

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching identities needs root")

MakeTree = Callable[..., Tree]


def thread_fs_ids() -> tuple[int, int, list[int]]:
    status = Path("/proc/thread-self/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return (int(fields["Uid"].split()[3]), int(fields["Gid"].split()[3]),
            [int(g) for g in fields["Groups"].split()])


def test_created_files_belong_to_the_caller(make_tree: MakeTree) -> None:
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    shared = walk(tree, "shared")
    e, o = tree.create(shared, b"f", 0o644, os.O_WRONLY, 0o022, USER)
    tree.release(o.fh)
    d = tree.mkdir(shared, b"d", 0o755, 0o022, USER)
    s = tree.symlink(shared, b"s", b"f", USER)
    n = tree.mknod(shared, b"p", stat.S_IFIFO | 0o600, 0, 0, USER)
    for name, entry in (("f", e), ("d", d), ("s", s), ("p", n)):
        st = os.stat(root / "shared" / name, follow_symlinks=False)
        assert (st.st_uid, st.st_gid) == (1000, 1000), name
        assert (entry.attr.uid, entry.attr.gid) == (1000, 1000), name
    assert thread_fs_ids()[:2] == (0, 0)


def test_caller_umask_and_mode_are_exact(make_tree: MakeTree) -> None:
    """The daemon's own umask (022 here) must not eat bits the caller asked for."""
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    _e, o = tree.create(ROOT_ID, b"g", 0o666, os.O_WRONLY, 0o002, ROOT)
    tree.release(o.fh)
    assert os.stat(root / "g").st_mode & 0o777 == 0o664
    tree.mkdir(ROOT_ID, b"gd", 0o777, 0o002, ROOT)
    assert os.stat(root / "gd").st_mode & 0o777 == 0o775
    tree.mknod(ROOT_ID, b"gp", stat.S_IFIFO | 0o666, 0, 0o000, ROOT)
    assert os.stat(root / "gp").st_mode & 0o777 == 0o666
    tree.mkdir(ROOT_ID, b"strict", 0o777, 0o077, ROOT)
    assert os.stat(root / "strict").st_mode & 0o777 == 0o700


def test_the_tree_leaves_permission_checks_to_the_client_kernel(make_tree: MakeTree) -> None:
    """No second check with the half credentials FUSE sends (no supplementary groups):
    the client kernel (default_permissions) has decided before the request came."""
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    daemon_ids = thread_fs_ids()
    private = walk(tree, "private")  # 0700 root
    assert tree.lookup(private, b"secret", USER).attr.uid == 0
    fh = tree.open(walk(tree, "ro0600"), os.O_RDONLY, USER).fh
    tree.release(fh)
    _e, o = tree.create(private, b"x", 0o640, os.O_WRONLY, 0, USER)
    tree.release(o.fh)
    assert (os.stat(root / "private" / "x").st_uid, os.stat(root / "private" / "x").st_gid) \
        == (1000, 1000)
    # chown of one's own file to a supplementary group: the guest kernel allowed it with
    # the caller's full group list; a re-check without groups said EPERM (issue 10, 5).
    tree.setattr(walk(tree, "userfile"), SetAttr(valid=FATTR_GID, gid=2000),
                 Ctx(1000, 1000, groups=None))
    assert os.stat(root / "userfile").st_gid == 2000
    # access(2) is a question asked as the caller, with what FUSE knows of it
    assert err(lambda: tree.access(private, os.R_OK, USER)) == errno.EACCES
    tree.access(private, os.R_OK | os.W_OK | os.X_OK, ROOT)
    assert thread_fs_ids() == daemon_ids


def test_setgid_directories(make_tree: MakeTree) -> None:
    """In a setgid directory a new node takes the directory's group, a new directory its
    S_ISGID too, whoever the caller is (member or not: the client kernel stripped what
    a non-member may not keep before it asked)."""
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "team").mkdir()
    os.chown(root / "team", 0, 2000)
    os.chmod(root / "team", 0o2775)
    team = walk(tree, "team")
    member = Ctx(1000, 1000, groups=(2000,))
    _e, o = tree.create(team, b"f", 0o2750, os.O_WRONLY, 0, member)
    tree.release(o.fh)
    d = tree.mkdir(team, b"d", 0o755, 0, USER)
    for name in ("f", "d"):
        st = os.stat(root / "team" / name)
        assert (st.st_uid, st.st_gid) == (1000, 2000), name
    assert os.stat(root / "team" / "f").st_mode & 0o7777 == 0o2750
    assert os.stat(root / "team" / "d").st_mode & 0o7777 == 0o2755
    assert d.attr.mode & 0o7777 == 0o2755 and d.attr.gid == 2000


def test_set_id_bits_asked_for_are_kept(make_tree: MakeTree) -> None:
    """The chown that hands a new file to its caller clears set-id bits; the tree puts
    back what the caller asked for (natively a user may create a 04755 file)."""
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    shared = walk(tree, "shared")
    _e, o = tree.create(shared, b"suid", 0o4755, os.O_WRONLY, 0, USER)
    tree.release(o.fh)
    n = tree.mknod(shared, b"sgid", stat.S_IFREG | 0o2775, 0, 0, USER)
    assert os.stat(root / "shared" / "suid").st_mode & 0o7777 == 0o4755
    assert os.stat(root / "shared" / "sgid").st_mode & 0o7777 == 0o2775
    assert n.attr.mode & 0o7777 == 0o2775 and n.attr.uid == 1000


def test_caller_ids_must_be_ids(make_tree: MakeTree) -> None:
    """(uid_t)-1 means "leave as is" to chown: a header carrying it would leave a new
    file the daemon's. Refused before anything is made."""
    tree = make_tree()
    bad = Ctx(0xFFFFFFFF, 1000)
    assert err(lambda: tree.mkdir(ROOT_ID, b"x", 0o755, 0, bad)) == errno.EINVAL
    assert err(lambda: tree.create(ROOT_ID, b"y", 0o644, os.O_WRONLY, 0,
                                   Ctx(1000, 0xFFFFFFFF))) == errno.EINVAL
    assert not (tree.path / "x").exists() and not (tree.path / "y").exists()  # type: ignore[attr-defined]


def test_chown_by_owner_clears_setid(make_tree: MakeTree) -> None:
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    os.chmod(root / "userfile", 0o6755)
    node = walk(tree, "userfile")
    tree.setattr(node, SetAttr(valid=FATTR_GID, gid=1000), USER)
    assert os.stat(root / "userfile").st_mode & 0o7777 == 0o755


def test_write_and_truncate_kill_suidgid(make_tree: MakeTree) -> None:
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    shared = walk(tree, "shared")
    e, o = tree.create(shared, b"w", 0o644, os.O_RDWR, 0, USER)
    os.chmod(root / "shared" / "w", 0o6775)
    tree.write(o.fh, 0, b"data", USER, kill_suidgid=True)
    assert os.stat(root / "shared" / "w").st_mode & 0o7777 == 0o775
    # S_ISGID without group-exec is mandatory locking, not set-gid: it stays.
    os.chmod(root / "shared" / "w", 0o6764)
    tree.write(o.fh, 0, b"data", USER, kill_suidgid=True)
    assert os.stat(root / "shared" / "w").st_mode & 0o7777 == 0o2764
    os.chmod(root / "shared" / "w", 0o4755)
    tree.write(o.fh, 0, b"data", ROOT)  # no kill flag: root writes keep the bits
    assert os.stat(root / "shared" / "w").st_mode & 0o7777 == 0o4755
    tree.setattr(e.nodeid, SetAttr(valid=FATTR_SIZE | FATTR_KILL_SUIDGID, size=1), ROOT)
    assert os.stat(root / "shared" / "w").st_mode & 0o7777 == 0o755
    tree.release(o.fh)


def test_identity_restored_after_failures(make_tree: MakeTree) -> None:
    tree = make_tree()
    groups = thread_fs_ids()[2]
    for _ in range(3):
        assert err(lambda: tree.access(walk(tree, "private"), os.R_OK,
                                       Ctx(1000, 1000, groups=(5, 6)))) == errno.EACCES
        assert thread_fs_ids() == (0, 0, groups)


def test_default_acl_overrides_umask_with_posix_acl(make_tree: MakeTree) -> None:
    """With posix_acl, a parent's default ACL decides the new file's mode (no umask),
    as on a local filesystem; without it the caller's umask applies."""
    import struct
    tree = make_tree(posix_acl=True)
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "acl").mkdir()
    # system.posix_acl_default: version 2; USER_OBJ rwx, GROUP_OBJ rwx, OTHER rwx.
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, 7, 0xFFFFFFFF)
                                          for tag in (0x01, 0x04, 0x20))
    try:
        os.setxattr(root / "acl", "system.posix_acl_default", acl)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs here: {e}")
    node = walk(tree, "acl")
    _e, o = tree.create(node, b"f", 0o666, os.O_WRONLY, 0o077, ROOT)
    tree.release(o.fh)
    assert os.stat(root / "acl" / "f").st_mode & 0o777 == 0o666
    _e, o = tree.create(ROOT_ID, b"g", 0o666, os.O_WRONLY, 0o077, ROOT)
    tree.release(o.fh)
    assert os.stat(root / "g").st_mode & 0o777 == 0o600
    assert tree.getxattr(node, b"system.posix_acl_default", 0, ROOT) == acl
    plain = make_tree()
    assert err(lambda: plain.getxattr(walk(plain, "sub"), b"system.posix_acl_default", 0,
                                      ROOT)) == errno.EOPNOTSUPP  # ACLs off: not offered


def test_unprivileged_daemon_serves_its_own_user(tmp_path: Path) -> None:
    """A daemon that is not root cannot switch identities: it serves with its own, and
    a caller's ops (uid != 0) still work instead of failing on setgroups' EPERM."""
    src = tmp_path / "mine"
    src.mkdir()
    os.chown(src, 1000, 1000)
    os.chmod(tmp_path, 0o755)
    src_fd = os.open(src, os.O_PATH)  # the pytest tmp dir's parents are root-only

    def serve_as_1000() -> str:
        t = Tree(src_fd)
        me = Ctx(1000, 1000)
        _e, o = t.create(ROOT_ID, b"f", 0o644, os.O_WRONLY, 0o022, me)
        t.write(o.fh, 0, b"hi", me)
        t.release(o.fh)
        t.mkdir(ROOT_ID, b"d", 0o755, 0o022, Ctx(1000, 1000, groups=(1000,)))
        size = t.lookup(ROOT_ID, b"f", me).attr.size
        denied = err(lambda: t.mkdir(ROOT_ID, b"x", 0o755, 0, Ctx(0, 0)))
        return f"{size} {denied}"

    out = as_unprivileged_daemon(serve_as_1000)
    os.close(src_fd)
    # Root callers get nothing extra from an unprivileged daemon (None: src is 1000's).
    assert out == "2 None"
    assert os.stat(src / "f").st_uid == 1000 and (src / "d").is_dir()


def test_posix_acl_trees_show_acls_to_the_client_kernel(make_tree: MakeTree) -> None:
    """With posix_acl the client kernel checks ACLs itself: the tree hands it the ACL
    (system.posix_acl_access), and keeps it from clients otherwise."""
    import struct
    tree = make_tree(posix_acl=True)
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "acl").mkdir()
    os.chmod(root / "acl", 0o700)
    # system.posix_acl_access: USER_OBJ rwx, USER 1000 --x, GROUP_OBJ ---, MASK --x, OTHER ---
    entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 1, 1000), (0x04, 0, 0xFFFFFFFF),
               (0x10, 1, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(root / "acl", "system.posix_acl_access", acl)
    assert tree.getxattr(walk(tree, "acl"), b"system.posix_acl_access", 0, USER) == acl
    plain = make_tree()
    os.setxattr(plain.path / "sub", "system.posix_acl_access", acl)  # type: ignore[attr-defined]
    assert err(lambda: plain.getxattr(walk(plain, "sub"), b"system.posix_acl_access", 0,
                                      USER)) == errno.EOPNOTSUPP


def test_evicted_inodes_reopen_whoever_asks(make_tree: MakeTree) -> None:
    """An inode whose fd the cache closed is re-opened with the daemon's credentials
    (open_by_handle_at needs CAP_DAC_READ_SEARCH), then the operation runs: a walk
    larger than the cache works for an unprivileged caller (issue 10, point 4)."""
    tree = make_tree(max_inode_fds=16)
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "many").mkdir()
    for i in range(80):
        (root / "many" / f"f{i}").write_bytes(b"%d" % i)
    many = walk(tree, "many")
    nodes = [opened(tree, tree.lookup(many, b"f%d" % i, USER)).nodeid for i in range(80)]
    assert tree.statistics().extra["inode_fd_evictions"] > 0
    for i, node in enumerate(nodes):
        fh = tree.open(node, os.O_RDONLY, USER).fh
        assert tree.read(fh, 0, 8) == b"%d" % i
        tree.release(fh)
        tree.setxattr(node, b"user.seen", b"1", 0, USER)
    assert tree.statistics().extra["inode_fd_reopens"] > 0
    assert thread_fs_ids()[:2] == (0, 0)


_NO_SETID_ACCESS = r"""
import ctypes, errno, os, sys
from msbfs.tree import ROOT_ID, Ctx, Tree
# capset(2), version 3: every capability this process has, less CAP_SETGID (6) and
# CAP_SETUID (7): a daemon started with --modcaps=-setuid:-setgid.
hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)()
libc = ctypes.CDLL(None, use_errno=True)
assert libc.syscall(125, hdr, data) == 0  # capget
for i in (0, 1):  # effective, permitted of the low word
    data[i] &= ~((1 << 6) | (1 << 7))
assert libc.syscall(126, hdr, data) == 0  # capset
tree = Tree(sys.argv[1])
e = tree.lookup(ROOT_ID, b"secret", Ctx(0, 0, 0))
try:
    tree.access(e.nodeid, os.R_OK, Ctx(1000, 1000, 1))
except OSError as exc:
    print(errno.errorcode[exc.errno])
else:
    print("granted")
"""


def test_a_switch_the_kernel_refuses_is_an_error_not_the_daemon(tmp_path: Path) -> None:
    """setfsuid/setfsgid do not fail: they return the old id either way. A daemon
    without CAP_SETUID/CAP_SETGID that took that for success answered ACCESS as root:
    uid 1000 was told it may read a mode-000 file. The switch reads its ids back."""
    import subprocess
    import sys

    (tmp_path / "secret").write_bytes(b"x")
    os.chmod(tmp_path / "secret", 0)
    out = subprocess.run([sys.executable, "-c", _NO_SETID_ACCESS, str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "EPERM", out.stdout + out.stderr
