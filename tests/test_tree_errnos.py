"""Every tree operation against a native directory: same outcome, same errno.

Each case runs one operation twice on identical worlds (``tests/plugins/tree.py``):
natively with ``*at`` syscalls, and through the Tree. The tree must give exactly what
Linux gives — success or the same errno. Callers here are root: a non-root caller's
permissions are its client kernel's to check (the tree's permission model), so those
cases go through a real kernel (the host mount) in tests/test_hostmount_errno.py.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from msbfs._native import lib

from msbfs.tree import (
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_GID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Attr,
    Ctx,
    Entry,
    SetAttr,
)
from tests.plugins.hostmount import wait_for
from tests.plugins.tree import OTHER, ROOT, USER, Twin, err, errname, open_twin

Op = Callable[[], Any]
# A case builds (native op, tree op) for a twin; both run as the same caller.
Case = Callable[[Twin, Ctx], tuple[Op, Op]]

CASES: dict[str, tuple[Ctx, Case]] = {}


def case(name: str, ctx: Ctx = ROOT) -> Callable[[Case], Case]:
    def deco(fn: Case) -> Case:
        assert name not in CASES, f"two cases named {name!r}: one would never run"
        # The permission model (msbfs/tree/tree.py): a non-root caller's permissions
        # are checked by its client kernel (default_permissions), not by the tree, so
        # a tree call alone is not what Linux does for that caller: such cases run
        # through a real kernel instead (tests/test_hostmount_errno.py).
        if ctx == ROOT:
            CASES[name] = (ctx, fn)
        return fn
    return deco


def _split(path: str) -> tuple[str, bytes]:
    parent, _, name = path.rpartition("/")
    return parent, name.encode()


# ---- lookup / readlink ---------------------------------------------------------------
for _path, _who in [("file", ROOT), ("missing", ROOT), ("file/x", ROOT), ("link", ROOT),
                    ("abs", ROOT), ("private/secret", USER), ("private/secret", ROOT),
                    ("sub/inner", USER), ("a" * 256, ROOT)]:
    def _lookup(t: Twin, c: Ctx, path: str = _path) -> tuple[Op, Op]:
        parent, name = _split(path)
        return (lambda: os.stat(path, dir_fd=t.native_fd, follow_symlinks=False),
                lambda: t.tree.lookup(t.node(parent), name, c))
    case(f"lookup {_path[:20]} as {_who.uid}", _who)(_lookup)


@case("readlink of a file")
def _readlink_file(t: Twin, c: Ctx) -> tuple[Op, Op]:
    return (lambda: os.readlink("file", dir_fd=t.native_fd),
            lambda: t.tree.readlink(t.node("file"), c))


# ---- namespace -------------------------------------------------------------------------
for _path, _who in [("newdir", ROOT), ("file", ROOT), ("sub", ROOT), ("file/x", ROOT),
                    ("private/d", USER), ("shared/d", USER), ("link", ROOT)]:
    def _mkdir(t: Twin, c: Ctx, path: str = _path) -> tuple[Op, Op]:
        parent, name = _split(path)
        def tree_op() -> Any:
            return t.tree.mkdir(t.node(parent), name, 0o755, 0o022, c)
        return (lambda: os.mkdir(path, 0o755, dir_fd=t.native_fd), tree_op)
    case(f"mkdir {_path} as {_who.uid}", _who)(_mkdir)

for _path, _who in [("file", ROOT), ("sub", ROOT), ("missing", ROOT), ("link", ROOT),
                    ("sticky/rootfile", USER), ("private/secret", USER), ("shared", USER)]:
    def _unlink(t: Twin, c: Ctx, path: str = _path) -> tuple[Op, Op]:
        parent, name = _split(path)
        return (lambda: os.unlink(path, dir_fd=t.native_fd),
                lambda: t.tree.unlink(t.node(parent), name, c))
    case(f"unlink {_path} as {_who.uid}", _who)(_unlink)

for _path, _who in [("empty", ROOT), ("sub", ROOT), ("file", ROOT), ("missing", ROOT),
                    ("link", ROOT), ("empty", USER)]:
    def _rmdir(t: Twin, c: Ctx, path: str = _path) -> tuple[Op, Op]:
        parent, name = _split(path)
        return (lambda: os.rmdir(path, dir_fd=t.native_fd),
                lambda: t.tree.rmdir(t.node(parent), name, c))
    case(f"rmdir {_path} as {_who.uid}", _who)(_rmdir)

for _src, _dst, _flags, _who in [
    ("file", "renamed", 0, ROOT), ("file", "sub", 0, ROOT), ("sub", "file", 0, ROOT),
    ("empty", "sub", 0, ROOT), ("sub", "empty", 0, ROOT), ("sub", "sub/inner2", 0, ROOT),
    ("file", "link", RENAME_NOREPLACE, ROOT), ("file", "new", RENAME_NOREPLACE, ROOT),
    ("file", "sub", RENAME_EXCHANGE, ROOT), ("file", "missing", RENAME_EXCHANGE, ROOT),
    ("missing", "x", 0, ROOT), ("file", "x", 0, USER), ("sticky/rootfile", "shared/x", 0, USER),
    ("file", "x", 8, ROOT), ("file", "wh", 4, ROOT), ("shared", "shared2", 4, USER),
    ("file", "sub", RENAME_NOREPLACE | RENAME_EXCHANGE, ROOT),
]:
    def _rename(t: Twin, c: Ctx, src: str = _src, dst: str = _dst,
                flags: int = _flags) -> tuple[Op, Op]:
        sp, sn = _split(src)
        dp, dn = _split(dst)
        def native() -> None:
            r = lib.msb_renameat2(t.native_fd, src.encode(), t.native_fd, dst.encode(), flags)
            if r < 0:
                raise OSError(-r, os.strerror(-r))
        return native, lambda: t.tree.rename(t.node(sp), sn, t.node(dp), dn, flags, c)
    case(f"rename {_src}->{_dst} flags={_flags} as {_who.uid}", _who)(_rename)

for _src, _dst, _who in [("file", "hard", ROOT), ("sub", "hard", ROOT), ("file", "link", ROOT),
                         ("link", "hardlink", ROOT), ("ro0600", "shared/h", USER),
                         ("userfile", "shared/h", USER)]:
    def _link(t: Twin, c: Ctx, src: str = _src, dst: str = _dst) -> tuple[Op, Op]:
        dp, dn = _split(dst)
        return (lambda: os.link(src, dst, src_dir_fd=t.native_fd, dst_dir_fd=t.native_fd,
                                follow_symlinks=False),
                lambda: t.tree.link(t.node(src), t.node(dp), dn, c))
    case(f"link {_src}->{_dst} as {_who.uid}", _who)(_link)

for _path, _who in [("sym", ROOT), ("file", ROOT), ("private/sym", USER), ("shared/sym", USER)]:
    def _symlink(t: Twin, c: Ctx, path: str = _path) -> tuple[Op, Op]:
        parent, name = _split(path)
        return (lambda: os.symlink("target", path, dir_fd=t.native_fd),
                lambda: t.tree.symlink(t.node(parent), name, b"target", c))
    case(f"symlink {_path} as {_who.uid}", _who)(_symlink)

for _path, _mode, _who in [("fifo", 0o10644, ROOT), ("chr", 0o20644, ROOT),
                           ("shared/chr", 0o20644, USER), ("shared/fifo", 0o10644, USER),
                           ("file", 0o10644, ROOT), ("dirnode", 0o40755, ROOT)]:
    def _mknod(t: Twin, c: Ctx, path: str = _path, mode: int = _mode) -> tuple[Op, Op]:
        parent, name = _split(path)
        return (lambda: os.mknod(path, mode, os.makedev(1, 3), dir_fd=t.native_fd),
                lambda: t.tree.mknod(t.node(parent), name, mode, os.makedev(1, 3), 0, c))
    case(f"mknod {_path} {oct(_mode)} as {_who.uid}", _who)(_mknod)


# ---- open / create ---------------------------------------------------------------------
def _native_open(t: Twin, path: str, flags: int, mode: int = 0o644) -> Op:
    def op() -> None:
        os.close(os.open(path, flags | os.O_NOFOLLOW, mode, dir_fd=t.native_fd))
    return op


for _path, _flags, _who in [
    ("file", os.O_RDONLY, ROOT), ("file", os.O_RDWR, ROOT), ("sub", os.O_WRONLY, ROOT),
    ("ro0600", os.O_RDONLY, USER), ("userfile", os.O_RDWR, USER),
    ("file", os.O_WRONLY, USER), ("sub", os.O_RDONLY, ROOT),
]:
    def _open(t: Twin, c: Ctx, path: str = _path, flags: int = _flags) -> tuple[Op, Op]:
        def tree_op() -> None:
            t.tree.release(t.tree.open(t.node(path), flags, c).fh)
        return _native_open(t, path, flags), tree_op
    case(f"open {_path} {_flags:o} as {_who.uid}", _who)(_open)

for _path, _flags, _who in [
    ("new", os.O_CREAT | os.O_WRONLY, ROOT), ("file", os.O_CREAT | os.O_EXCL | os.O_RDWR, ROOT),
    ("private/new", os.O_CREAT | os.O_WRONLY, USER), ("shared/new", os.O_CREAT | os.O_RDWR, USER),
    ("sub", os.O_CREAT | os.O_WRONLY, ROOT), ("file/x", os.O_CREAT | os.O_WRONLY, ROOT),
]:
    def _create(t: Twin, c: Ctx, path: str = _path, flags: int = _flags) -> tuple[Op, Op]:
        parent, name = _split(path)

        def tree_op() -> None:
            _entry, opened = t.tree.create(t.node(parent), name, 0o644, flags, 0o022, c)
            t.tree.release(opened.fh)
        return _native_open(t, path, flags), tree_op
    case(f"create {_path} {_flags:o} as {_who.uid}", _who)(_create)


# ---- attributes ------------------------------------------------------------------------
_TIME_MAX_NS = (1 << 63) * 10**9 - 1  # the last nanosecond of a 64-bit tv_sec
_TIME_MIN_NS = -(1 << 63) * 10**9

for _i, (_path, _attr, _who) in enumerate([
    ("file", SetAttr(valid=FATTR_MODE, mode=0o600), USER),
    ("userfile", SetAttr(valid=FATTR_MODE, mode=0o600), USER),
    ("userfile", SetAttr(valid=FATTR_UID, uid=1001), USER),
    ("userfile", SetAttr(valid=FATTR_GID, gid=1000), USER),
    ("userfile", SetAttr(valid=FATTR_GID, gid=0), USER),
    ("file", SetAttr(valid=FATTR_UID | FATTR_GID, uid=5, gid=6), ROOT),
    ("file", SetAttr(valid=FATTR_SIZE, size=3), USER),
    ("file", SetAttr(valid=FATTR_SIZE, size=3), ROOT),
    ("sub", SetAttr(valid=FATTR_SIZE, size=3), ROOT),
    ("file", SetAttr(valid=FATTR_MTIME_NOW), USER),
    ("file", SetAttr(valid=FATTR_MTIME | FATTR_ATIME, mtime_ns=5, atime_ns=7), USER),
    ("userfile", SetAttr(valid=FATTR_MTIME | FATTR_ATIME, mtime_ns=5, atime_ns=7), USER),
    ("userfile", SetAttr(valid=FATTR_MTIME_NOW), OTHER),
    ("file", SetAttr(valid=FATTR_MTIME_NOW | FATTR_ATIME_NOW), USER),
    ("shared", SetAttr(valid=FATTR_MTIME_NOW | FATTR_ATIME_NOW), USER),
    ("userfile", SetAttr(valid=FATTR_MTIME_NOW | FATTR_ATIME_NOW), OTHER),
    ("userfile", SetAttr(valid=FATTR_ATIME, atime_ns=-5), USER),
    # Any 64-bit second is accepted; the host filesystem clamps it to what it can store.
    ("file", SetAttr(valid=FATTR_MTIME | FATTR_ATIME, mtime_ns=_TIME_MAX_NS,
                     atime_ns=_TIME_MIN_NS), ROOT),
]):
    def _setattr(t: Twin, c: Ctx, path: str = _path, a: SetAttr = _attr) -> tuple[Op, Op]:
        def native() -> None:
            p = _np(t, path)
            if a.valid & FATTR_MODE:
                os.chmod(p, a.mode)
            if a.valid & (FATTR_UID | FATTR_GID):
                os.chown(p, a.uid if a.valid & FATTR_UID else -1,
                         a.gid if a.valid & FATTR_GID else -1)
            if a.valid & FATTR_SIZE:
                os.truncate(p, a.size)
            if a.valid & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW):
                ts = [_ts(a.valid, FATTR_ATIME, FATTR_ATIME_NOW, a.atime_ns),
                      _ts(a.valid, FATTR_MTIME, FATTR_MTIME_NOW, a.mtime_ns)]
                r = lib.msb_utimensat(-100, p.encode(), *ts[0], *ts[1], 0)
                if r < 0:
                    raise OSError(-r, os.strerror(-r))
        return native, lambda: t.tree.setattr(t.node(path), a, c)
    case(f"setattr#{_i} {_path} valid={_attr.valid:#x} as {_who.uid}", _who)(_setattr)

def _ts(valid: int, bit: int, now_bit: int, ns: int) -> tuple[int, int]:
    if valid & now_bit:
        return 0, (1 << 30) - 1
    if valid & bit:
        return ns // 10**9, ns % 10**9
    return 0, (1 << 30) - 2


for _path, _mask, _who in [("file", os.R_OK, ROOT), ("file", os.R_OK, USER), ("file", os.W_OK, USER),
                           ("file", os.X_OK, ROOT), ("sub", os.X_OK, USER),
                           ("private", os.R_OK, USER), ("userfile", os.W_OK, USER)]:
    def _access(t: Twin, c: Ctx, path: str = _path, mask: int = _mask) -> tuple[Op, Op]:
        def native() -> None:
            r = lib.msb_faccessat2(t.native_fd, path.encode(), mask, 0x200 | 0x100)
            if r < 0:
                raise OSError(-r, os.strerror(-r))
        return native, lambda: t.tree.access(t.node(path), mask, c)
    case(f"access {_path} {_mask} as {_who.uid}", _who)(_access)


# ---- xattrs ----------------------------------------------------------------------------
def _np(t: Twin, path: str) -> str:
    return os.path.join(f"/proc/self/fd/{t.native_fd}", path)


for _path, _name, _flags, _who in [
    ("file", b"user.a", 0, ROOT), ("file", b"user.a", os.XATTR_REPLACE, ROOT),
    ("file", b"user.pre", os.XATTR_CREATE, ROOT), ("file", b"user.a", 0, USER),
    ("userfile", b"user.a", 0, USER), ("link", b"user.a", 0, ROOT), ("sub", b"user.a", 0, ROOT),
]:
    def _setx(t: Twin, c: Ctx, path: str = _path, name: bytes = _name,
              flags: int = _flags) -> tuple[Op, Op]:
        os.setxattr(_np(t, "file"), b"user.pre", b"v")
        os.setxattr(t.served / "file", b"user.pre", b"v")
        return (lambda: os.setxattr(_np(t, path), name, b"val", flags, follow_symlinks=False),
                lambda: t.tree.setxattr(t.node(path), name, b"val", flags, c))
    case(f"setxattr {_path} {_name!r} {_flags} as {_who.uid}", _who)(_setx)

for _path, _name, _who in [("file", b"user.pre", ROOT), ("file", b"user.none", ROOT),
                           ("ro0600", b"user.pre", USER), ("link", b"user.pre", ROOT)]:
    def _getx(t: Twin, c: Ctx, path: str = _path, name: bytes = _name) -> tuple[Op, Op]:
        for root in (t.native, t.served):
            # Values of several bytes, so a reply that mangles them cannot pass.
            os.setxattr(root / path, b"user.pre", b"pre-value", follow_symlinks=False) \
                if path != "link" else None
            os.setxattr(root / "file", b"trusted.t", b"trusted-value")
            os.setxattr(root / "ro0600", b"user.pre", b"pre-value")
        return (lambda: os.getxattr(_np(t, path), name, follow_symlinks=False),
                lambda: t.tree.getxattr(t.node(path), name, 0, c))
    case(f"getxattr {_path} {_name!r} as {_who.uid}", _who)(_getx)


def test_privileged_xattrs_are_not_stored_for_clients(twin: Twin) -> None:
    """Where the tree differs from Linux on purpose: a client, even its root, never
    stores trusted.* or security.* xattrs with the daemon's privileges (Linux lets root)."""
    for name in (b"trusted.a", b"security.a"):
        got = err(lambda name=name: twin.tree.setxattr(twin.node("file"), name, b"val", 0, ROOT))
        assert got in (errno.EPERM, errno.EOPNOTSUPP), (name, got)
        assert os.fsdecode(name) not in os.listxattr(twin.served / "file")


@case("removexattr missing")
def _removex(t: Twin, c: Ctx) -> tuple[Op, Op]:
    return (lambda: os.removexattr(_np(t, "file"), b"user.none"),
            lambda: t.tree.removexattr(t.node("file"), b"user.none", c))


# ---- the comparison --------------------------------------------------------------------
# Times a case sets explicitly (far from now) are compared; times the kernel stamps "now"
# differ between the two worlds by construction and are only compared as "recent".
_RECENT_NS = 24 * 3600 * 10**9
# Kinds with a single case in the table: their one outcome is checked, not both.
_ONE_OUTCOME_KINDS = frozenset({"readlink", "removexattr"})


def _when(ns: int) -> int | str:
    return "recent" if abs(ns - time.time_ns()) < _RECENT_NS else ns


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """What a caller can observe of a world, path by path: type, mode, owner, links,
    device, size and contents (or link target), xattrs with values, set times. Inode
    numbers and directory sizes are the filesystem's and differ between the twins."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in [".", *dirnames, *filenames]:
            p = Path(dirpath) / n
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            if kind == stat.S_IFREG:
                body: Any = p.read_bytes()
            elif kind == stat.S_IFLNK:
                body = os.readlink(p)
            else:
                body = st.st_size if kind != stat.S_IFDIR else None
            xattrs = sorted((x, os.getxattr(p, x, follow_symlinks=False))
                            for x in os.listxattr(p, follow_symlinks=False))
            out[str(p.relative_to(root))] = (
                kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink, st.st_rdev,
                body, xattrs, _when(st.st_mtime_ns), _when(st.st_atime_ns))
    return out


def _attr_view(mode: int, uid: int, gid: int, nlink: int, rdev: int, size: int) -> tuple:
    return (mode, uid, gid, nlink, rdev, None if stat.S_ISDIR(mode) else size)


def _reported_attr(result: Any) -> Attr | None:
    """The attributes a successful tree call reported, if it reports any."""
    if isinstance(result, Entry):
        return result.attr
    if isinstance(result, tuple) and result and isinstance(result[0], Attr):
        return result[0]  # setattr: (attr, timeout)
    return None


def run_case(twin: Twin, name: str) -> str:
    """Run case ``name`` on both sides and check everything observable agrees: the
    outcome (ok or errno), what a successful call returned, and the state each world is
    left in. Returns the outcome."""
    ctx, build = CASES[name]
    native_op, tree_op = build(twin, ctx)
    native_result: Any = None
    tree_result: Any = None

    def native() -> None:
        nonlocal native_result
        native_result = native_op()

    def served() -> None:
        nonlocal tree_result
        tree_result = tree_op()

    with twin.as_caller(ctx):
        want = err(native)
    got = err(served)  # the tree switches credentials itself
    assert errname(got) == errname(want), name
    # Side effects: both worlds are left the same, after a success and after a failure.
    native_world, served_world = snapshot(twin.native), snapshot(twin.served)
    assert served_world == native_world, name
    if got is None:
        # The reply tells the truth: the attributes it reports are those of the host
        # object it names, and that object is where the native call left its twin.
        attr = _reported_attr(tree_result)
        if attr is not None:
            where = [p for p in served_world if os.lstat(twin.served / p).st_ino == attr.ino]
            assert where, (name, attr)  # hard links: several names, all checked
            for p in where:
                native_st = os.lstat(twin.native / p)
                assert _attr_view(attr.mode, attr.uid, attr.gid, attr.nlink, attr.rdev,
                                  attr.size) == _attr_view(
                    native_st.st_mode, native_st.st_uid, native_st.st_gid, native_st.st_nlink,
                    native_st.st_rdev, native_st.st_size), (name, p)
        if isinstance(native_result, os.stat_result):
            assert attr is not None, name
            assert (attr.mode, attr.uid, attr.gid, attr.size) == (
                native_result.st_mode, native_result.st_uid, native_result.st_gid,
                native_result.st_size), name
        elif isinstance(native_result, (bytes, str)):
            assert tree_result == os.fsencode(native_result), name
    return errname(got)


@pytest.mark.parametrize("name", list(CASES))
def test_same_errno_as_linux(twin: Twin, name: str) -> None:
    run_case(twin, name)


def test_cases_cover_both_outcomes(tmp_path: Path) -> None:
    """The table is not all-success or all-failure (a table that cannot fail): every
    case is run on a fresh twin and the outcomes are counted."""
    outcomes: dict[str, str] = {}
    for i, name in enumerate(CASES):
        with open_twin(tmp_path / str(i)) as t:
            outcomes[name] = run_case(t, name)
    ok = [n for n, o in outcomes.items() if o == "ok"]
    failed = [n for n, o in outcomes.items() if o != "ok"]
    assert len(ok) >= 25 and len(failed) >= 35, (len(ok), len(failed))
    # Each kind of operation is seen both succeeding and failing (the kind is the
    # case name's first word: lookup, mkdir, rename, setxattr, ...).
    kinds = {n.split()[0].split("#")[0] for n in CASES}
    for kind in kinds - _ONE_OUTCOME_KINDS:
        seen = {outcomes[n] == "ok" for n in CASES if n.split()[0].split("#")[0] == kind}
        assert seen == {True, False}, (kind, seen)


# ---- handle operations -----------------------------------------------------------------
def test_read_write_handles(twin: Twin) -> None:
    t = twin.tree
    node = twin.node("file")
    ro = t.open(node, os.O_RDONLY, ROOT).fh
    wo = t.open(node, os.O_WRONLY, ROOT).fh
    assert t.read(ro, 6, 100) == b"world"
    assert t.read(ro, 1000, 10) == b""
    assert err(lambda: t.read(wo, 0, 1)) == errno.EBADF
    assert err(lambda: t.write(ro, 0, b"x", ROOT)) == errno.EBADF
    assert err(lambda: t.read(ro, -1, 1)) == errno.EINVAL
    assert err(lambda: t.read(999, 0, 1)) == errno.EBADF
    assert err(lambda: t.read(ro, 1 << 70, 1)) == errno.EINVAL
    assert t.write(wo, 0, b"HELLO", ROOT) == 5
    assert t.read(ro, 0, 11) == b"HELLO world"
    assert t.data_fd(ro, write=False) >= 0
    assert err(lambda: t.data_fd(ro, write=True)) == errno.EBADF
    assert os.pread(t.data_fd(ro, write=False), 5, 0) == b"HELLO"
    assert t.data_fd(wo, write=True) >= 0
    t.fsync(wo, False)
    t.fsync(wo, True)
    t.flush(wo, 0)
    t.release(ro)
    t.release(wo)
    assert err(lambda: t.release(ro)) == errno.EBADF
    assert t.statistics().handles == 0


def test_lseek_data_hole_and_fallocate_copy(twin: Twin) -> None:
    t = twin.tree
    entry, opened = t.create(1, b"sparse", 0o644, os.O_RDWR, 0, ROOT)
    fh = opened.fh
    t.write(fh, 1 << 20, b"data", ROOT)
    assert t.lseek(fh, 0, os.SEEK_DATA) == (1 << 20) - ((1 << 20) % 4096)
    assert t.lseek(fh, 0, os.SEEK_HOLE) == 0
    assert err(lambda: t.lseek(fh, (1 << 20) + 10, os.SEEK_DATA)) == errno.ENXIO
    assert err(lambda: t.lseek(fh, 0, 9)) == errno.EINVAL
    assert err(lambda: t.lseek(fh, -1, os.SEEK_SET)) == errno.EINVAL
    t.fallocate(fh, 0, 0, 8192)
    assert t.getattr(entry.nodeid, fh, ROOT)[0].blocks >= 16
    t.fallocate(fh, 0x01 | 0x02, 0, 4096)  # punch a hole, keep size
    assert t.lseek(fh, 0, os.SEEK_HOLE) == 0
    assert err(lambda: t.fallocate(fh, 0, 0, 0)) == errno.EINVAL
    _e2, o2 = t.create(1, b"copy", 0o644, os.O_RDWR, 0, ROOT)
    n = t.copy_file_range(fh, 1 << 20, o2.fh, 0, 4, 0)
    assert n == 4 and t.read(o2.fh, 0, 10) == b"data"
    assert err(lambda: t.copy_file_range(fh, 0, o2.fh, 0, 4, 1)) == errno.EINVAL
    t.release(fh)
    t.release(o2.fh)


def test_tmpfile_then_link(twin: Twin) -> None:
    t = twin.tree
    entry, opened = t.tmpfile(twin.node("shared"), 0o640, os.O_RDWR, 0o022, USER)
    assert entry.attr.nlink == 0 and entry.attr.uid == 1000
    t.write(opened.fh, 0, b"anon", ROOT)
    assert os.listdir(twin.served / "shared") == []
    t.link(entry.nodeid, twin.node("shared"), b"named", USER)
    assert (twin.served / "shared" / "named").read_bytes() == b"anon"
    t.release(opened.fh)


def test_posix_locks_conflict_between_owners_only(twin: Twin) -> None:
    from msbfs.tree import Lock
    t = twin.tree
    node = twin.node("file")
    a = t.open(node, os.O_RDWR, ROOT).fh
    b = t.open(node, os.O_RDWR, ROOT).fh
    whole = Lock(0, (1 << 63) - 1, fcntl.F_WRLCK)
    t.setlk(a, 111, whole)
    t.setlk(b, 111, Lock(0, 9, fcntl.F_WRLCK))  # same owner, other handle: no conflict
    assert err(lambda: t.setlk(b, 222, Lock(5, 5, fcntl.F_RDLCK))) == errno.EAGAIN
    held = t.getlk(b, 222, Lock(5, 5, fcntl.F_RDLCK))
    assert held.type == fcntl.F_WRLCK and held.start == 0
    assert t.getlk(a, 111, Lock(5, 5, fcntl.F_WRLCK)).type == fcntl.F_UNLCK
    # A native process sees the lock too (it is a real host lock).
    fd = os.open(twin.served / "file", os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 3)
        assert e.value.errno in (errno.EAGAIN, errno.EACCES)
        t.flush(a, 111)  # close by the owner drops its POSIX locks
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 3)
    finally:
        os.close(fd)
    t.setlk(b, 222, Lock(20, 30, fcntl.F_UNLCK))  # unlock of nothing is fine
    assert err(lambda: t.setlk(b, 222, Lock(5, 4, fcntl.F_WRLCK))) == errno.EINVAL
    ro = t.open(node, os.O_RDONLY, ROOT).fh
    assert err(lambda: t.setlk(ro, 333, Lock(0, 1, fcntl.F_WRLCK))) == errno.EBADF
    for fh in (a, b, ro):
        t.release(fh)


def test_flock_and_blocking_setlkw(twin: Twin) -> None:
    import threading

    from msbfs.tree import Lock
    t = twin.tree
    node = twin.node("file")
    a = t.open(node, os.O_RDWR, ROOT).fh
    b = t.open(node, os.O_RDWR, ROOT).fh
    t.setlk(a, 1, Lock(0, 0, fcntl.F_WRLCK), is_flock=True)
    assert err(lambda: t.setlk(b, 2, Lock(0, 0, fcntl.F_RDLCK), is_flock=True)) == errno.EAGAIN
    got = threading.Event()

    def waiter() -> None:
        t.setlkw(b, 2, Lock(0, 0, fcntl.F_RDLCK), is_flock=True)
        got.set()

    th = threading.Thread(target=waiter)
    th.start()
    # Poll (with a deadline) until the waiter really sleeps in the kernel's lock wait.
    assert wait_for(lambda: th.native_id is not None and "lock" in Path(
        f"/proc/self/task/{th.native_id}/wchan").read_text())
    assert not got.is_set()
    t.release(a, flock_release=True)
    th.join(timeout=30)
    assert got.is_set()
    t.release(b, flock_release=True)


def test_readdir_cookies_resume_and_rewind(twin: Twin) -> None:
    t = twin.tree
    node = twin.node("sub")
    for i in range(300):
        (twin.served / "sub" / f"f{i:03}").write_bytes(b"")
    fh = t.opendir(node, 0, ROOT).fh
    names: list[bytes] = []
    offset = 0
    while True:  # take 7 entries at a time, resuming from the last cookie
        batch = []
        for ent in t.readdir(fh, offset):
            batch.append(ent)
            if len(batch) == 7:
                break
        if not batch:
            break
        names += [e.name for e in batch]
        offset = batch[-1].off
    want = {b".", b"..", b"inner", *(f"f{i:03}".encode() for i in range(300))}
    assert sorted(names) == sorted(want)
    (twin.served / "sub" / "late").write_bytes(b"")
    assert b"late" in {e.name for e in t.readdir(fh, 0)}  # offset 0 re-reads
    inner = next(e for e in t.readdir(fh, 0) if e.name == b"inner")
    assert inner.ino == os.stat(twin.served / "sub" / "inner").st_ino
    assert inner.type == 8
    assert err(lambda: t.readdir(fh, -5)) == errno.EINVAL
    t.releasedir(fh)
    assert err(lambda: t.readdir(fh, 0)) == errno.EBADF
    assert err(lambda: t.opendir(twin.node("file"), 0, ROOT)) == errno.ENOTDIR


def test_root_dotdot_in_readdir_is_the_root(twin: Twin) -> None:
    t = twin.tree
    fh = t.opendir(1, 0, ROOT).fh
    ents = {e.name: e for e in t.readdir(fh, 0)}
    assert ents[b".."].ino == ents[b"."].ino == os.stat(twin.served).st_ino
    t.fsyncdir(fh, False)
    t.releasedir(fh)


def test_xattr_list_size_and_remove(twin: Twin) -> None:
    t = twin.tree
    node = twin.node("file")
    t.setxattr(node, b"user.one", b"12345", 0, ROOT)
    assert b"user.one" in t.listxattr(node, ROOT)
    assert t.getxattr(node, b"user.one", 0, ROOT) == b"12345"
    assert err(lambda: t.getxattr(node, b"user.one", 2, ROOT)) == errno.ERANGE
    assert err(lambda: t.getxattr(node, b"", 0, ROOT)) == errno.ERANGE
    assert err(lambda: t.setxattr(node, b"user.x", b"v" * 70000, 0, ROOT)) == errno.E2BIG
    # Set on the host (clients may not store trusted.*): never listed to a non-root caller.
    os.setxattr(twin.served / "file", b"trusted.hidden", b"1")
    assert b"trusted.hidden" not in t.listxattr(node, USER)
    t.removexattr(node, b"user.one", ROOT)
    assert err(lambda: t.getxattr(node, b"user.one", 0, ROOT)) == errno.ENODATA


@pytest.mark.parametrize("ns", [(1 << 62) + 1, (1 << 63) - 1, 1 << 63, 15032385536 * 10**9,
                                _TIME_MAX_NS, -(1 << 62) - 1, -(1 << 31) * 10**9 - 1,
                                _TIME_MIN_NS])
def test_large_times_are_stored_as_the_host_stores_them(twin: Twin, ns: int) -> None:
    """utimensat takes any 64-bit tv_sec and the filesystem clamps it to its own range
    (ext4: 1901..2446, tmpfs: all of it): the tree must neither refuse nor wrap it."""
    os.utime(twin.native / "file", ns=(ns, ns))
    attr, _t = twin.tree.setattr(twin.node("file"), SetAttr(valid=FATTR_MTIME | FATTR_ATIME,
                                                           mtime_ns=ns, atime_ns=ns), ROOT)
    want = os.stat(twin.native / "file")
    assert (attr.mtime_ns, attr.atime_ns) == (want.st_mtime_ns, want.st_atime_ns)
    assert os.stat(twin.served / "file").st_mtime_ns == want.st_mtime_ns


def test_times_beyond_64_bit_seconds_are_einval(twin: Twin) -> None:
    """No client can send a tv_sec past 64 bits (FUSE: u64 seconds; pyfuse3: s64 ns);
    a caller of the tree that tries gets EINVAL, never an OverflowError."""
    for ns in (_TIME_MAX_NS + 1, _TIME_MIN_NS - 1):
        assert err(lambda ns=ns: twin.tree.setattr(
            twin.node("file"), SetAttr(valid=FATTR_MTIME, mtime_ns=ns), ROOT)) == errno.EINVAL


def test_bad_client_input_is_only_oserror(twin: Twin) -> None:
    t = twin.tree
    for call in [
        lambda: t.lookup(1, b"a/b", ROOT), lambda: t.lookup(1, b"a\0b", ROOT),
        lambda: t.lookup(1, b"", ROOT), lambda: t.lookup(12345, b"x", ROOT),
        lambda: t.lookup(1, 17, ROOT), lambda: t.mkdir(1, b".", 0o755, 0, ROOT),
        lambda: t.mkdir(1, b"x", -1, 0, ROOT), lambda: t.symlink(1, b"s", b"a\0", ROOT),
        lambda: t.read(1, 0, -3), lambda: t.lseek(1, 1 << 80, 0),
        lambda: t.setattr(twin.node("file"), SetAttr(valid=FATTR_SIZE, size=-1), ROOT),
        lambda: t.setattr(twin.node("file"), SetAttr(valid=FATTR_UID, uid=1 << 40), ROOT),
        lambda: t.mknod(1, b"n", 0o170000, 0, 0, ROOT), lambda: t.access(1, 99, ROOT),
        lambda: t.rename(1, b"file", 1, b"x", 1 << 40, ROOT),
        lambda: t.rmdir(1, b"..", ROOT), lambda: t.unlink(1, b".", ROOT),
        lambda: t.setxattr(1, b"user.x", b"v", 7, ROOT),
    ]:
        assert isinstance(err(call), int)
    assert err(lambda: t.lookup(1, b"a" * 256, ROOT)) == errno.ENAMETOOLONG
    assert err(lambda: t.lookup(1, b"a/b", ROOT)) == errno.EINVAL
    assert err(lambda: t.mkdir(1, b"..", 0o755, 0, ROOT)) == errno.EEXIST
    assert err(lambda: t.rmdir(1, b".", ROOT)) == errno.EINVAL
    t.syncfs()
    t.batch_forget([(999999, 1), (1,), None, ("x", "y"), (1, None)])  # all ignored
    t.forget(999999, 1)  # unknown node ids are ignored
    t.forget(1, 10**9)  # the root is never forgotten
    assert t.getattr(1, None, ROOT)[0].ino == os.stat(twin.served).st_ino


def test_readdir_resumes_at_any_cookie_across_batches(twin: Twin) -> None:
    """A directory larger than one getdents batch: resuming at any earlier cookie (not
    only inside the last batch) continues exactly after that entry."""
    import random
    t = twin.tree
    big = twin.served / "big"
    big.mkdir()
    for i in range(1500):
        (big / (f"{i:05}-" + "n" * 120)).write_bytes(b"")
    fh = t.opendir(twin.node("big"), 0, ROOT).fh
    full = [(e.off, e.name) for e in t.readdir(fh, 0)]
    assert len(full) == 1502 and len({n for _o, n in full}) == 1502
    rng = random.Random(7)
    for k in [0, 1, 700, 1499, 1500, 1501, *rng.sample(range(1502), 20)]:
        got = []
        for e in t.readdir(fh, full[k][0]):
            got.append(e.name)
            if len(got) == 3:
                break
        assert got == [n for _o, n in full[k + 1:k + 4]], k
    t.releasedir(fh)


def test_fifos_never_block_the_daemon(twin: Twin) -> None:
    """open/create of a FIFO with no peer must return at once (ENXIO or a handle),
    never wait in the daemon for a writer or reader."""
    t = twin.tree
    os.mkfifo(twin.served / "fifo")
    node = twin.node("fifo")
    fh = t.open(node, os.O_RDONLY, ROOT).fh  # no writer: a non-blocking open succeeds
    assert err(lambda: t.read(fh, 0, 10)) == errno.ESPIPE  # pread on a pipe, as Linux
    t.release(fh)
    assert err(lambda: t.open(node, os.O_WRONLY, ROOT)) == errno.ENXIO  # no reader
    assert err(lambda: t.create(1, b"fifo", 0o644, os.O_WRONLY | os.O_CREAT, 0, ROOT)) \
        == errno.ENXIO
    _e, o = t.create(1, b"regular", 0o644, os.O_WRONLY, 0, ROOT)
    assert not fcntl.fcntl(t.data_fd(o.fh, write=True), fcntl.F_GETFL) & os.O_NONBLOCK
    t.release(o.fh)


def test_writeback_opens_readable_and_without_append(tmp_path: Path) -> None:
    """With a writeback cache the kernel reads pages of write-only files and computes
    append offsets itself: the host fd must be readable and not O_APPEND."""
    from msbfs.tree import Tree
    (tmp_path / "f").write_bytes(b"0123456789")
    with Tree(tmp_path, writeback=True) as t:
        node = t.lookup(1, b"f", ROOT).nodeid
        fh = t.open(node, os.O_WRONLY | os.O_APPEND, ROOT).fh
        fd = t.data_fd(fh, write=True)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_ACCMODE | os.O_APPEND) == os.O_RDWR
        t.write(fh, 2, b"ab", ROOT)  # lands at the offset the kernel chose
        assert (tmp_path / "f").read_bytes() == b"01ab456789"
        t.release(fh)
    with Tree(tmp_path) as t:
        node = t.lookup(1, b"f", ROOT).nodeid
        fh = t.open(node, os.O_WRONLY | os.O_APPEND, ROOT).fh
        assert fcntl.fcntl(t.data_fd(fh, write=True), fcntl.F_GETFL) & os.O_APPEND
        assert err(lambda: t.read(fh, 0, 1)) == errno.EBADF
        t.write(fh, 0, b"Z", ROOT)  # O_APPEND kept: appends, as the client asked
        assert (tmp_path / "f").read_bytes() == b"01ab456789Z"
        t.release(fh)


def test_writeback_handles_of_write_only_opens_are_readable(tmp_path: Path) -> None:
    """The kernel fills a partially written page by READ through the handle the
    application opened write-only (seed 11 of the differential run on ``-o writeback``
    got EBADF here): open, create and tmpfile must all hand out readable handles, and
    a file the caller may write but not read still opens write-only, as natively."""
    from msbfs.tree import Tree
    (tmp_path / "f").write_bytes(b"0123456789")
    (tmp_path / "wo").write_bytes(b"secret")
    os.chown(tmp_path / "wo", 1000, 1000)
    os.chmod(tmp_path / "wo", 0o200)
    os.chmod(tmp_path, 0o755)
    with Tree(tmp_path, writeback=True) as t:
        node = t.lookup(1, b"f", ROOT).nodeid
        fh = t.open(node, os.O_WRONLY, ROOT).fh
        assert t.read(fh, 0, 4) == b"0123"
        assert t.data_fd(fh, write=False) == t.data_fd(fh, write=True)
        t.release(fh)
        for name, flags in [(b"f", os.O_WRONLY | os.O_APPEND), (b"new", os.O_WRONLY | os.O_APPEND)]:
            _e, o = t.create(1, name, 0o644, flags | os.O_CREAT, 0, ROOT)
            fd = t.data_fd(o.fh, write=True)
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_ACCMODE | os.O_APPEND) == os.O_RDWR
            t.write(o.fh, 1, b"W", ROOT)  # at the kernel's offset, not appended
            assert t.read(o.fh, 0, 2)[1:] == b"W"
            t.release(o.fh)
        _e, o = t.tmpfile(1, 0o600, os.O_WRONLY, 0, ROOT)
        t.write(o.fh, 0, b"tmp", ROOT)
        assert t.read(o.fh, 0, 3) == b"tmp"
        t.release(o.fh)
        # write-only to its owner: the daemon opens it (the client kernel checked the
        # caller's write permission), readable for the kernel's page fills
        node = t.lookup(1, b"wo", USER).nodeid
        fh = t.open(node, os.O_WRONLY, USER).fh
        assert t.read(fh, 0, 1) == b"s"
        t.write(fh, 0, b"S", USER)
        t.release(fh)
        _e, o = t.create(1, b"wo", 0o200, os.O_WRONLY | os.O_CREAT, 0, USER)
        t.write(o.fh, 1, b"E", USER)
        t.release(o.fh)
        # a FIFO has no pages: write-only with no reader stays ENXIO, as natively
        os.mkfifo(tmp_path / "fifo")
        node = t.lookup(1, b"fifo", ROOT).nodeid
        assert err(lambda: t.open(node, os.O_WRONLY, ROOT)) == errno.ENXIO
        assert err(lambda: t.create(1, b"fifo", 0o644, os.O_WRONLY | os.O_CREAT, 0, ROOT)) \
            == errno.ENXIO
    assert (tmp_path / "wo").read_bytes() == b"SEcret"


def test_getattr_through_handle_of_unlinked_file(twin: Twin) -> None:
    t = twin.tree
    node = twin.node("file")
    fh = t.open(node, os.O_RDWR, ROOT).fh
    t.unlink(1, b"file", ROOT)
    t.write(fh, 0, b"still here, longer", ROOT)
    attr, _timeout = t.getattr(node, fh, ROOT)
    assert attr.nlink == 0 and attr.size == 18
    assert t.getattr(node, None, ROOT)[0].size == 18  # the O_PATH fd holds the inode too
    t.release(fh)
