"""The caller's identity: what a non-root caller creates is theirs, what they may not do
fails as the kernel says, set-id bits are cleared by the kernel's rules, and the
daemon's own identity is back after every call."""

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
from tests.plugins.tree import ROOT, USER, as_unprivileged_daemon, err, walk

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


def test_permission_denied_as_non_root(make_tree: MakeTree) -> None:
    tree = make_tree()
    daemon_ids = thread_fs_ids()
    assert daemon_ids[:2] == (0, 0)
    private = walk(tree, "private")  # 0700 root
    assert err(lambda: tree.lookup(private, b"secret", USER)) == errno.EACCES
    assert err(lambda: tree.create(private, b"x", 0o644, os.O_WRONLY, 0, USER)) == errno.EACCES
    assert err(lambda: tree.opendir(private, 0, USER)) == errno.EACCES
    assert err(lambda: tree.access(private, os.R_OK, USER)) == errno.EACCES
    assert err(lambda: tree.open(walk(tree, "ro0600"), os.O_RDONLY, USER)) == errno.EACCES
    assert err(lambda: tree.mknod(walk(tree, "shared"), b"c", stat.S_IFCHR | 0o600,
                                  os.makedev(1, 3), 0, USER)) == errno.EPERM
    # Root gets through all of these.
    tree.lookup(private, b"secret", ROOT)
    tree.access(private, os.R_OK | os.W_OK | os.X_OK, ROOT)
    # USER carries no groups of its own: the daemon's group list must come back as it was.
    assert thread_fs_ids() == daemon_ids


def test_supplementary_groups(make_tree: MakeTree) -> None:
    tree = make_tree()
    own_groups = thread_fs_ids()[2]
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "team").mkdir()
    os.chown(root / "team", 0, 2000)
    os.chmod(root / "team", 0o770)
    (root / "wheel").mkdir()
    os.chmod(root / "wheel", 0o770)  # root:root
    team, wheel = walk(tree, "team"), walk(tree, "wheel")
    member = Ctx(1000, 1000, groups=(2000,))
    _e, o = tree.create(team, b"ok", 0o640, os.O_WRONLY, 0, member)
    tree.release(o.fh)
    assert os.stat(root / "team" / "ok").st_uid == 1000
    assert err(lambda: tree.create(team, b"no", 0o640, os.O_WRONLY, 0, USER)) == errno.EACCES
    # Unknown groups (FUSE does not send them) never borrow the daemon's own groups:
    # root's group 0 must not open root:root 0770 to uid 1000.
    unknown = Ctx(1000, 1000, groups=None)
    assert err(lambda: tree.lookup(wheel, b"x", unknown)) == errno.EACCES
    assert err(lambda: tree.mkdir(wheel, b"x", 0o755, 0, unknown)) == errno.EACCES
    assert thread_fs_ids()[2] == own_groups


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
        assert err(lambda: tree.create(walk(tree, "private"), b"x", 0o644, os.O_WRONLY, 0,
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


@pytest.mark.parametrize("mode", [0o700, 0o701, 0o710, 0o070, 0o007, 0o750, 0o705, 0o000])
@pytest.mark.parametrize("owner", [(0, 0), (1000, 0), (0, 1000), (1000, 2000)])
def test_lookup_search_permission_matches_kernel(make_tree: MakeTree, mode: int,
                                                 owner: tuple[int, int]) -> None:
    """The lookup's own search check (mode bits, as generic_permission) against the host
    kernel's answer for the same caller."""
    from msbfs import syscalls
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "d").mkdir()
    (root / "d" / "x").write_bytes(b"")
    os.chown(root / "d", *owner)
    os.chmod(root / "d", mode)
    node = walk(tree, "d")
    rfd = os.open(root, os.O_PATH)
    try:
        for ctx in (USER, Ctx(1000, 1000, groups=(2000,)), Ctx(1001, 0), Ctx(1001, 1001)):
            with syscalls.credentials(ctx.uid, ctx.gid, ctx.groups or ()):
                want = err(lambda: os.stat("d/x", dir_fd=rfd, follow_symlinks=False))
            got = err(lambda c=ctx: tree.lookup(node, b"x", c))
            assert got == want, (oct(mode), owner, ctx)
    finally:
        os.close(rfd)


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


def test_lookup_honours_acls_with_posix_acl(make_tree: MakeTree) -> None:
    """A directory closed by its mode bits but opened to uid 1000 by an ACL entry: with
    posix_acl the lookup asks the host kernel, which honours the ACL."""
    import struct
    tree = make_tree(posix_acl=True)
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "acl").mkdir()
    (root / "acl" / "x").write_bytes(b"")
    os.chmod(root / "acl", 0o700)
    # system.posix_acl_access: USER_OBJ rwx, USER 1000 --x, GROUP_OBJ ---, MASK --x, OTHER ---
    entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 1, 1000), (0x04, 0, 0xFFFFFFFF),
               (0x10, 1, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(root / "acl", "system.posix_acl_access", acl)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs here: {e}")
    node = walk(tree, "acl")
    assert tree.lookup(node, b"x", USER).attr.size == 0
    assert err(lambda: tree.lookup(node, b"x", Ctx(1001, 1001))) == errno.EACCES
