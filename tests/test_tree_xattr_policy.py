"""The tree's xattr policy (issue 9, points 2 and 5): privileged namespaces refused for
every caller by default, --xattrmap remapping stored under its prefix on the host,
security.capability under nosuid, and the quota charging what xattrs allocate."""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from msbfs.tree import ROOT_ID, Ctx, Policy, Tree
from msbfs.tree.policy import walk_usage
from tests.plugins.tree import ROOT, USER, err, walk

MakeTree = Callable[..., Tree]

# VFS_CAP_REVISION_2 with CAP_NET_RAW (13) permitted and effective.
CAP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
PASS_ALL = ":ok:all:::"
# system.posix_acl_default, version 2: USER_OBJ, GROUP_OBJ and OTHER rwx.
DEFAULT_ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, 7, 0xFFFFFFFF)
                                              for tag in (0x01, 0x04, 0x20))


def host_names(path: Path) -> set[str]:
    return set(os.listxattr(path, follow_symlinks=False))


def set_err(tree: Tree, node: int, name: bytes, value: bytes = b"y", ctx: Ctx = ROOT) -> int | None:
    return err(lambda: tree.setxattr(node, name, value, 0, ctx))


def get_err(tree: Tree, node: int, name: bytes, ctx: Ctx = ROOT) -> int | None:
    return err(lambda: tree.getxattr(node, name, 0, ctx))


def rm_err(tree: Tree, node: int, name: bytes, ctx: Ctx = ROOT) -> int | None:
    return err(lambda: tree.removexattr(node, name, ctx))


def test_default_refuses_trusted_and_security_even_for_root(make_tree: MakeTree) -> None:
    tree = make_tree()
    root: Path = tree.path  # type: ignore[attr-defined]
    f = walk(tree, "file")
    for name in (b"trusted.overlay.opaque", b"security.ima", b"security.capability"):
        assert set_err(tree, f, name, b"y") == errno.EPERM, name
        assert rm_err(tree, f, name) == errno.EPERM, name
    assert host_names(root / "file") == set()
    # What the host set is neither readable nor listed (the daemon could read it).
    os.setxattr(root / "file", "trusted.overlay.redirect", b"/etc")
    os.setxattr(root / "file", "security.capability", CAP)
    os.setxattr(root / "file", "user.mine", b"1")
    assert get_err(tree, f, b"trusted.overlay.redirect") == errno.ENODATA
    assert get_err(tree, f, b"security.capability") == errno.ENODATA
    assert tree.listxattr(f, ROOT) == [b"user.mine"]
    assert tree.getxattr(f, b"user.mine", 0, ROOT) == b"1"
    tree.setxattr(f, b"user.guest", b"2", 0, ROOT)
    assert os.getxattr(root / "file", "user.guest") == b"2"
    # ACLs stay behind --posix-acl, as before: neither read nor listed without it.
    assert get_err(tree, f, b"system.posix_acl_access") == errno.EOPNOTSUPP
    os.setxattr(root / "sub", "system.posix_acl_default", DEFAULT_ACL)
    assert tree.listxattr(walk(tree, "sub"), ROOT) == []
    acl_tree = make_tree(posix_acl=True)
    os.setxattr(acl_tree.path / "sub", "system.posix_acl_default", DEFAULT_ACL)  # type: ignore[attr-defined]
    assert acl_tree.listxattr(walk(acl_tree, "sub"), ROOT) == [b"system.posix_acl_default"]


def test_a_given_map_replaces_the_default(make_tree: MakeTree) -> None:
    tree = make_tree(xattrmap=PASS_ALL)
    root: Path = tree.path  # type: ignore[attr-defined]
    f = walk(tree, "file")
    tree.setxattr(f, b"trusted.t", b"v", 0, ROOT)
    assert os.getxattr(root / "file", "trusted.t") == b"v"
    assert b"trusted.t" in tree.listxattr(f, ROOT)
    # ... but a caller other than root never borrows the daemon's CAP_SYS_ADMIN.
    assert get_err(tree, f, b"trusted.t", USER) == errno.ENODATA
    assert b"trusted.t" not in tree.listxattr(f, USER)
    uf = walk(tree, "userfile")
    assert set_err(tree, uf, b"trusted.u", b"v", USER) == errno.EPERM
    assert set_err(tree, uf, b"security.u", b"v", USER) == errno.EPERM
    # The host's name is what counts: a map that puts user.* under trusted.* does not
    # let a user write the host's trusted.* either.
    odd = make_tree(xattrmap=":prefix:all:user.:trusted.: :ok:all:::")
    of = walk(odd, "userfile")
    assert set_err(odd, of, b"user.x", b"v", USER) == errno.EPERM
    odd.setxattr(of, b"user.x", b"v", 0, ROOT)
    assert os.getxattr(odd.path / "userfile", "trusted.user.x") == b"v"  # type: ignore[attr-defined]
    assert get_err(odd, of, b"user.x", USER) == errno.ENODATA


def test_remapping_stores_under_the_prefix_and_shows_the_client_name(make_tree: MakeTree) -> None:
    tree = make_tree(xattrmap="/map/trusted./user.virtiofs./")
    root: Path = tree.path  # type: ignore[attr-defined]
    d = walk(tree, "sub")
    tree.setxattr(d, b"trusted.overlay.opaque", b"y", 0, ROOT)
    assert host_names(root / "sub") == {"user.virtiofs.trusted.overlay.opaque"}
    assert os.getxattr(root / "sub", "user.virtiofs.trusted.overlay.opaque") == b"y"
    assert tree.getxattr(d, b"trusted.overlay.opaque", 0, ROOT) == b"y"
    os.setxattr(root / "sub", "trusted.host", b"h")  # the host's own: hidden
    assert sorted(tree.listxattr(d, ROOT)) == [b"trusted.overlay.opaque"]
    # The prefix's target is out of the guest's reach, under either name.
    assert set_err(tree, d, b"user.virtiofs.trusted.x", b"1") == errno.EPERM
    assert get_err(tree, d, b"user.virtiofs.trusted.overlay.opaque") == errno.ENODATA
    tree.removexattr(d, b"trusted.overlay.opaque", ROOT)
    assert host_names(root / "sub") == {"trusted.host"}


def test_listxattr_filtering(make_tree: MakeTree) -> None:
    tree = make_tree(xattrmap=":unsupported:all:security.selinux:security.selinux: "
                              ":prefix:server::user.shown.: :bad:server::user.: :ok:all:::")
    root: Path = tree.path  # type: ignore[attr-defined]
    f = walk(tree, "file")
    for name in ("user.shown.a", "user.plain", "security.selinux", "security.ima", "trusted.t"):
        os.setxattr(root / "file", name, b"x")
    assert sorted(tree.listxattr(f, ROOT)) == [b"a", b"security.ima", b"trusted.t"]
    assert get_err(tree, f, b"security.selinux") == errno.EOPNOTSUPP


def test_nosuid_never_stores_or_shows_file_capabilities(make_tree: MakeTree) -> None:
    for xmap in (PASS_ALL, ":map::user.virtiofs.:"):
        tree = make_tree(Policy(nosuid=True), xattrmap=xmap)
        root: Path = tree.path  # type: ignore[attr-defined]
        os.chmod(root / "file", 0o755)
        stored = "security.capability" if xmap == PASS_ALL else "user.virtiofs.security.capability"
        os.setxattr(root / "file", stored, CAP)  # a host binary with a capability
        f = walk(tree, "file")
        assert get_err(tree, f, b"security.capability") == errno.ENODATA
        assert b"security.capability" not in tree.listxattr(f, ROOT)
        s = walk(tree, "sub")
        assert set_err(tree, s, b"security.capability", CAP) == errno.EPERM
        assert host_names(root / "sub") == set(), xmap
        assert rm_err(tree, f, b"security.capability") == errno.EPERM
        assert stored in host_names(root / "file")
    # A map that makes some other client name land on the host's security.capability.
    tree = make_tree(Policy(nosuid=True), xattrmap=":prefix:client:capability:security.: :ok:all:::")
    s = walk(tree, "sub")
    assert set_err(tree, s, b"capability", CAP) == errno.EPERM
    assert host_names(tree.path / "sub") == set()  # type: ignore[attr-defined]
    # Without nosuid the same map shows and stores it: the rule above is what hides it.
    plain = make_tree(xattrmap=PASS_ALL)
    os.setxattr(plain.path / "file", "security.capability", CAP)  # type: ignore[attr-defined]
    pf = walk(plain, "file")
    assert plain.getxattr(pf, b"security.capability", 0, ROOT) == CAP
    assert b"security.capability" in plain.listxattr(pf, ROOT)


def test_quota_charges_xattr_blocks(tmp_path: Path) -> None:
    """New files given a large xattr each (a block of its own on ext4), every other one
    unlinked, until the quota refuses: the quota's count stays the fresh walk's and the
    real allocation never passes the quota. Before, unlink refunded blocks setxattr never
    charged, and the same loop ended at 1.57 MiB allocated under 1 MiB."""
    root = tmp_path / "q"
    root.mkdir()
    limit = 1 << 20
    value = b"v" * 3000  # too big for the inode: an xattr block
    with Tree(root, Policy(quota_bytes=limit)) as tree:
        q = tree.quota
        assert q is not None
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        kept: list[int] = []
        try:
            for i in range(2 * limit // 4096):
                name = b"f%d" % i
                e = tree.mknod(ROOT_ID, name, stat.S_IFREG | 0o644, 0, 0, ROOT)
                if set_err(tree, e.nodeid, b"user.big", value) == errno.ENOSPC:
                    break
                assert q.used == walk_usage(fd) <= limit, i
                if i % 2:
                    tree.unlink(ROOT_ID, name, ROOT)
                    tree.forget(e.nodeid, 1)
                    assert q.used == walk_usage(fd) <= limit, i
                else:
                    kept.append(e.nodeid)
            else:
                raise AssertionError("the loop never reached the quota")
            # Full: more xattrs on the files already there are refused too.
            for node in kept:
                assert set_err(tree, node, b"user.more", value) == errno.ENOSPC
            assert q.used == walk_usage(fd) <= limit
            # Removing an xattr gives its block back, and the count follows.
            tree.removexattr(kept[0], b"user.big", ROOT)
            assert q.used == walk_usage(fd) <= limit - 4096
        finally:
            os.close(fd)
