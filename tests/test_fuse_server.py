"""The FUSE codec against a REAL tree over a tmp dir: request bytes in, reply bytes
checked (and the host directory checked behind it)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from pathlib import Path

import pytest

from msbfs.fuse import abi
from msbfs.fuse.abi import Opcode
from msbfs.fuse.kernel import (
    Requests,
    parse_attr_out,
    parse_dirents,
    parse_entry,
    parse_open,
    parse_reply,
    u32,
)
from msbfs.fuse.server import BASE_FLAGS, Deferred, FuseSession
from msbfs.tree import FATTR_ATIME, FATTR_MTIME, Policy, Tree
from tests.plugins.hostmount import wait_for
from tests.plugins.threads import waits_on_lock

ROOT = 1


def make(tmp_path: Path, policy: Policy | None = None) -> tuple[FuseSession, Requests, Tree, Path]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    tree = Tree(src, policy or Policy())
    s = FuseSession(tree)
    r = Requests()
    rep = parse_reply(s.dispatch(r.init()))  # type: ignore[arg-type]
    assert rep.error == 0
    return s, r, tree, src


@pytest.fixture
def fs(tmp_path: Path):
    s, r, tree, src = make(tmp_path)
    yield s, r, src
    tree.close()


def call(s: FuseSession, req: bytes, room: int | None = None):
    out = s.dispatch(req, room)
    assert isinstance(out, bytes)
    rep = parse_reply(out)
    return rep


def ok(s: FuseSession, req: bytes) -> bytes:
    rep = call(s, req)
    assert rep.error == 0, os.strerror(rep.error)
    return rep.payload


# ---- INIT -------------------------------------------------------------------------------

@pytest.mark.parametrize("minor", [27, 31, 36, 38, 41])
def test_init_negotiates_down_to_the_kernel(tmp_path: Path, minor: int) -> None:
    tree = Tree(tmp_path)
    s = FuseSession(tree)
    r = Requests()
    offered = abi.FUSE_ASYNC_READ | abi.FUSE_MAX_PAGES | abi.FUSE_SPLICE_READ | abi.FUSE_WRITEBACK_CACHE
    rep = call(s, r.init(minor=minor, flags=offered))
    assert rep.error == 0 and rep.unique == r.last_unique
    major, got_minor, _ra, flags, _bg, _ct, max_write, _tg, max_pages, _ma, flags2 = abi.fuse_init_out.unpack(rep.payload)
    assert (major, got_minor) == (7, min(minor, 38))
    assert flags == abi.FUSE_ASYNC_READ | abi.FUSE_MAX_PAGES  # never more than offered; no splice; no writeback
    assert flags2 == 0 and max_write == 1 << 20 and max_pages == 256
    tree.close()


def test_init_full_flag_set_and_old_kernels(tmp_path: Path) -> None:
    tree = Tree(tmp_path, writeback=True)
    s = FuseSession(tree, writeback=True, posix_acl=True)
    r = Requests()
    payload = call(s, r.init()).payload
    flags = abi.fuse_init_out.unpack(payload)[3]
    want = BASE_FLAGS | abi.FUSE_WRITEBACK_CACHE | abi.FUSE_POSIX_ACL | abi.FUSE_SETXATTR_EXT
    assert flags == want & 0xFFFFFFFF
    assert call(s, r.init(minor=26)).error == errno.EPROTO
    # a newer major hears ours and nothing else (8 bytes), then retries
    rep = call(s, r.init(major=8))
    assert rep.error == 0 and rep.payload == abi.fuse_init_out_compat.pack(7, 38)
    tree.close()


def test_requests_before_init_are_eio(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    s = FuseSession(tree)
    assert call(s, Requests().getattr(ROOT)).error == errno.EIO
    tree.close()


# ---- malformed input ----------------------------------------------------------------------

def test_malformed_requests_get_einval_never_an_exception(fs) -> None:
    s, r, _ = fs
    good = r.lookup(ROOT, b"x")
    cases = [
        r.raw(Opcode.GETATTR, ROOT, b"\0" * 4),                 # body shorter than getattr_in
        r.raw(Opcode.LOOKUP, ROOT, b"noterminator"),             # name without NUL
        r.raw(Opcode.LOOKUP, ROOT, b"x\0", length=100),          # header longer than message
        r.raw(Opcode.LOOKUP, ROOT, b"x\0", length=41),           # header shorter than message
        r.raw(Opcode.WRITE, ROOT, abi.fuse_write_in.pack(1, 0, 100, 0, 0, 0) + b"abc"),  # lying size
        r.raw(Opcode.BATCH_FORGET, 0, abi.fuse_batch_forget_in.pack(1 << 30)),  # lying count: no reply
        r.raw(Opcode.SETXATTR, ROOT, abi.fuse_setxattr_in_compat.pack(99, 0) + b"user.a\0v"),
        r.raw(Opcode.RENAME, ROOT, abi.fuse_rename_in.pack(1) + b"a\0b"),
        r.raw(Opcode.LOOKUP, ROOT, b"x\0", extlen=1000),         # extensions longer than message
    ]
    for req in cases:
        out = s.dispatch(req)
        if out is None:
            assert int.from_bytes(req[4:8], "little") == Opcode.BATCH_FORGET
            continue
        rep = parse_reply(out)
        assert rep.error == errno.EINVAL, req
    assert s.dispatch(b"") is None and s.dispatch(b"\0" * 10) is None
    short = r.raw(Opcode.GETATTR, ROOT)[:20]
    assert parse_reply(s.dispatch(short)).error == errno.EINVAL  # type: ignore[arg-type]
    assert call(s, r.raw(999, ROOT)).error == errno.ENOSYS
    assert call(s, r.raw(Opcode.BMAP, ROOT, b"\0" * 16)).error == errno.ENOSYS
    assert call(s, good).error == errno.ENOENT  # still serving


# ---- inodes and namespace -------------------------------------------------------------------

def test_namespace_ops(fs) -> None:
    s, r, src = fs
    d = parse_entry(ok(s, r.mkdir(ROOT, b"d", 0o750)))
    assert stat.S_ISDIR(d.mode) and (src / "d").is_dir()
    f = parse_entry(ok(s, r.mknod(d.nodeid, b"f", stat.S_IFREG | 0o640)))
    assert stat.S_ISREG(f.mode) and (src / "d/f").is_file()
    ln = parse_entry(ok(s, r.symlink(ROOT, b"ln", b"d/f")))
    assert stat.S_ISLNK(ln.mode)
    assert ok(s, r.readlink(ln.nodeid)) == b"d/f"
    hl = parse_entry(ok(s, r.link(f.nodeid, ROOT, b"hard")))
    assert hl.attr[10] == 2 and os.stat(src / "hard").st_nlink == 2
    looked = parse_entry(ok(s, r.lookup(d.nodeid, b"f")))
    assert looked.nodeid == f.nodeid and looked.ino == os.stat(src / "d/f").st_ino
    _, attr = parse_attr_out(ok(s, r.getattr(f.nodeid)))
    assert attr[0] == os.stat(src / "d/f").st_ino and stat.S_IMODE(attr[9]) == 0o640
    _, attr = parse_attr_out(ok(s, r.setattr(f.nodeid, valid=1, mode=0o600)))
    assert stat.S_IMODE(os.stat(src / "d/f").st_mode) == 0o600 == stat.S_IMODE(attr[9])
    ok(s, r.rename(d.nodeid, b"f", ROOT, b"g"))
    assert (src / "g").exists() and not (src / "d/f").exists()
    (src / "h").write_text("h")
    assert call(s, r.rename2(ROOT, b"g", ROOT, b"h", 1)).error == errno.EEXIST  # NOREPLACE
    ok(s, r.rename2(ROOT, b"g", ROOT, b"h", 2))  # EXCHANGE
    assert (src / "g").read_text() == "h"
    ok(s, r.unlink(ROOT, b"g"))
    ok(s, r.rmdir(ROOT, b"d"))
    assert not (src / "d").exists()
    assert call(s, r.rmdir(ROOT, b"nope")).error == errno.ENOENT
    assert call(s, r.lookup(ROOT, b"../..")).error in (errno.EINVAL, errno.ENOENT)
    assert s.dispatch(r.forget(f.nodeid, 1)) is None
    assert s.dispatch(r.batch_forget([(hl.nodeid, 1), (looked.nodeid, 1), (12345, 1)])) is None
    st = parse_reply(s.dispatch(r.statfs())).payload  # type: ignore[arg-type]
    assert len(st) == abi.fuse_kstatfs.size and abi.fuse_kstatfs.unpack(st)[5] > 0
    ok(s, r.access(ROOT, os.R_OK | os.W_OK))
    ok(s, r.syncfs())


# ---- files ------------------------------------------------------------------------------------

def test_file_io_ops(fs) -> None:
    s, r, src = fs
    p = ok(s, r.create(ROOT, b"f", 0o644, os.O_RDWR))
    e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
    fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
    assert u32(ok(s, r.write(e.nodeid, fh, 0, b"hello world"))) == 11
    assert (src / "f").read_bytes() == b"hello world"
    assert ok(s, r.read(e.nodeid, fh, 6, 100)) == b"world"
    # the reply room caps what is read
    assert call(s, r.read(e.nodeid, fh, 0, 100), room=16 + 4).payload == b"hell"
    ok(s, r.flush(e.nodeid, fh))
    ok(s, r.fsync(e.nodeid, fh, True))
    ok(s, r.fallocate(e.nodeid, fh, 0, 65536))
    assert os.stat(src / "f").st_size == 65536
    assert abi.fuse_lseek_out.unpack(ok(s, r.lseek(e.nodeid, fh, 0, os.SEEK_DATA)))[0] == 0
    p2 = ok(s, r.create(ROOT, b"g", 0o644, os.O_RDWR))
    fh2, _ = parse_open(p2[abi.FUSE_ENTRY_OUT_SIZE:])
    n = u32(ok(s, r.copy_file_range(e.nodeid, fh, 0, 0, fh2, 0, 11)))
    assert n == 11 and (src / "g").read_bytes() == b"hello world"
    _, attr = parse_attr_out(ok(s, r.setattr(e.nodeid, valid=abi_FATTR_SIZE | 64, fh=fh, size=5)))
    assert attr[1] == 5 and (src / "f").read_bytes() == b"hello"
    ok(s, r.release(e.nodeid, fh))
    ok(s, r.release(e.nodeid, fh2))
    assert call(s, r.read(e.nodeid, fh, 0, 10)).error == errno.EBADF
    o = parse_open(ok(s, r.open(e.nodeid, os.O_RDONLY)))
    assert call(s, r.write(e.nodeid, o[0], 0, b"x")).error == errno.EBADF
    ok(s, r.release(e.nodeid, o[0]))
    t = ok(s, r.tmpfile(ROOT))
    te = parse_entry(t[:abi.FUSE_ENTRY_OUT_SIZE])
    tfh, _ = parse_open(t[abi.FUSE_ENTRY_OUT_SIZE:])
    assert u32(ok(s, r.write(te.nodeid, tfh, 0, b"tmp"))) == 3
    ok(s, r.release(te.nodeid, tfh))
    assert sorted(os.listdir(src)) == ["f", "g"]  # the tmpfile has no name


abi_FATTR_SIZE = 1 << 3


def test_writeback_handles_like_the_host_mount(tmp_path: Path) -> None:
    """Under a negotiated writeback cache the guest kernel READs through write-only
    handles and appends itself. The tree does that (the host mount shares it): a
    write-only open is readable (the daemon opens it: the guest kernel checked the
    caller's write permission), O_APPEND is dropped, and a file write-only to its owner
    still opens for them."""
    src = tmp_path / "src"
    src.mkdir(mode=0o755)
    (src / "f").write_bytes(b"0123456789")
    (src / "wo").write_bytes(b"secret")
    for name in ("f", "wo"):
        os.chown(src / name, 1000, 1000)
    os.chmod(src / "wo", 0o200)
    with Tree(src, writeback=True) as tree:
        s = FuseSession(tree, writeback=True)
        r = Requests(uid=1000, gid=1000)
        assert call(s, r.init()).error == 0
        assert s.flags & abi.FUSE_WRITEBACK_CACHE
        f = parse_entry(ok(s, r.lookup(ROOT, b"f"))).nodeid
        fh, _ = parse_open(ok(s, r.open(f, os.O_WRONLY | os.O_APPEND)))
        assert ok(s, r.read(f, fh, 0, 4)) == b"0123"
        ok(s, r.write(f, fh, 2, b"ab"))  # at the kernel's offset: it did the append
        ok(s, r.release(f, fh))
        assert (src / "f").read_bytes() == b"01ab456789"
        wo = parse_entry(ok(s, r.lookup(ROOT, b"wo"))).nodeid
        fh, _ = parse_open(ok(s, r.open(wo, os.O_WRONLY)))
        assert ok(s, r.read(wo, fh, 0, 1)) == b"s"
        ok(s, r.write(wo, fh, 0, b"S"))
        ok(s, r.release(wo, fh))
        assert (src / "wo").read_bytes() == b"Secret"
    with pytest.raises(ValueError, match="writeback"), Tree(src) as plain:
        FuseSession(plain, writeback=True)  # its write-only handles would not be readable


@pytest.mark.parametrize("sec", [-5, -(1 << 31) - 1, (1 << 62) // 10**9 + 1, (1 << 34) + 7,
                                 (1 << 63) - 1])
def test_setattr_times_are_signed_seconds(fs, sec: int) -> None:
    """fuse_setattr_in carries the kernel's time64_t tv_sec in a u64: times before 1970
    arrive with the top bit set. Stored as utimensat stores them (ext4 clamps to its
    range), as in the host mount."""
    s, r, src = fs
    (src / "t").write_bytes(b"")
    (src / "native").write_bytes(b"")
    node = parse_entry(ok(s, r.lookup(ROOT, b"t"))).nodeid
    times = (sec & 0xFFFFFFFFFFFFFFFF, 7)
    _, attr = parse_attr_out(ok(s, r.setattr(node, valid=FATTR_ATIME | FATTR_MTIME,
                                             atime=times, mtime=times)))
    os.utime(src / "native", ns=(sec * 10**9 + 7, sec * 10**9 + 7))
    want = os.stat(src / "native").st_mtime_ns
    assert os.stat(src / "t").st_mtime_ns == os.stat(src / "t").st_atime_ns == want
    assert want != 0
    # the reply carries what was stored, wrapped into the u64 field as the kernel reads it
    assert (attr[4], attr[7]) == ((want // 10**9) & 0xFFFFFFFFFFFFFFFF, want % 10**9)


def test_xattrs(fs) -> None:
    s, r, src = fs
    e = parse_entry(ok(s, r.mknod(ROOT, b"f", stat.S_IFREG | 0o644)))
    ok(s, r.setxattr(e.nodeid, b"user.k", b"value"))
    assert os.getxattr(src / "f", "user.k") == b"value"
    assert u32(ok(s, r.getxattr(e.nodeid, b"user.k", 0))) == 5
    assert ok(s, r.getxattr(e.nodeid, b"user.k", 64)) == b"value"
    assert call(s, r.getxattr(e.nodeid, b"user.k", 2)).error == errno.ERANGE
    assert call(s, r.getxattr(e.nodeid, b"user.nope", 64)).error == errno.ENODATA
    names = ok(s, r.listxattr(e.nodeid, 4096))
    assert b"user.k\0" in names
    assert u32(ok(s, r.listxattr(e.nodeid, 0))) == len(names)
    ok(s, r.removexattr(e.nodeid, b"user.k"))
    assert "user.k" not in os.listxattr(src / "f")


def test_readdir_and_readdirplus(fs) -> None:
    s, r, src = fs
    names = {f"file{i:03}".encode() for i in range(100)}
    for n in names:
        (src / n.decode()).write_bytes(b"")
    for plus in (False, True):
        fh, _ = parse_open(ok(s, r.opendir(ROOT)))
        seen: list[bytes] = []
        off = 0
        while True:
            recs = parse_dirents(ok(s, r.readdir(ROOT, fh, off, 1024, plus=plus)), plus=plus)
            if not recs:
                break
            for name, ino, roff, entry in recs:
                seen.append(name)
                if plus:
                    assert entry is not None
                    if name in (b".", b".."):
                        assert entry.nodeid == 0
                    else:
                        assert entry.nodeid > 1 and entry.ino == ino == os.stat(src / name.decode()).st_ino
                        s.dispatch(r.forget(entry.nodeid, 1))
                off = roff
        assert set(seen) == names | {b".", b".."} and len(seen) == len(set(seen))
        ok(s, r.fsyncdir(ROOT, fh))
        ok(s, r.releasedir(ROOT, fh))
    # a buffer too small for even one record returns no records (not an error)
    fh, _ = parse_open(ok(s, r.opendir(ROOT)))
    assert ok(s, r.readdir(ROOT, fh, 0, 10, plus=True)) == b""
    ok(s, r.releasedir(ROOT, fh))


def test_readdirplus_counts_one_lookup_per_delivered_entry(fs) -> None:
    s, r, src = fs
    for i in range(50):
        (src / f"n{i}").write_bytes(b"")
    base = s.tree.statistics().inodes
    fh, _ = parse_open(ok(s, r.opendir(ROOT)))
    recs = parse_dirents(ok(s, r.readdir(ROOT, fh, 0, 2000, plus=True)), plus=True)
    delivered = [e for n, _, _, e in recs if n not in (b".", b"..")]
    assert 0 < len(delivered) < 50
    assert s.tree.statistics().inodes == base + len(delivered)
    for e in delivered:
        assert e is not None
        s.dispatch(r.forget(e.nodeid, 1))
    assert s.tree.statistics().inodes == base
    ok(s, r.releasedir(ROOT, fh))


def test_locks_posix_flock_and_blocking_setlkw(fs) -> None:
    s, r, _ = fs
    p = ok(s, r.create(ROOT, b"f", 0o644, os.O_RDWR))
    e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
    fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
    ok(s, r.lk(Opcode.SETLK, e.nodeid, fh, 1, 0, 99, fcntl.F_WRLCK))
    lk = abi.fuse_file_lock.unpack(ok(s, r.lk(Opcode.GETLK, e.nodeid, fh, 2, 0, 10, fcntl.F_WRLCK)))
    assert lk[2] == fcntl.F_WRLCK  # owner 2 sees owner 1's lock
    assert call(s, r.lk(Opcode.SETLK, e.nodeid, fh, 2, 0, 10, fcntl.F_WRLCK)).error == errno.EAGAIN
    d = s.dispatch(r.lk(Opcode.SETLKW, e.nodeid, fh, 2, 0, 10, fcntl.F_WRLCK))
    assert isinstance(d, Deferred) and d.opcode == Opcode.SETLKW
    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(d.run()))
    t.start()
    # Blocked behind owner 1: the thread sleeps in the kernel's lock wait (polled).
    assert wait_for(lambda: waits_on_lock(t.native_id))
    assert not result
    ok(s, r.lk(Opcode.SETLK, e.nodeid, fh, 1, 0, 99, fcntl.F_UNLCK))
    t.join(30)
    assert parse_reply(result[0]).error == 0 and parse_reply(result[0]).unique == d.unique
    ok(s, r.lk(Opcode.SETLK, e.nodeid, fh, 3, 0, 0, fcntl.F_WRLCK, flock=True))
    assert s.dispatch(r.interrupt(12345)) is None
    ok(s, r.release(e.nodeid, fh, release_flags=abi.FUSE_RELEASE_FLOCK_UNLOCK))


def test_policy_through_the_codec(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    (src / "f").chmod(0o755)
    tree = Tree(src, Policy(readonly=True, noexec=True))
    s = FuseSession(tree)
    r = Requests()
    ok(s, r.init())
    e = parse_entry(ok(s, r.lookup(ROOT, b"f")))
    assert call(s, r.mkdir(ROOT, b"d")).error == errno.EROFS
    assert call(s, r.create(ROOT, b"new")).error == errno.EROFS
    assert call(s, r.open(e.nodeid, os.O_RDWR)).error == errno.EROFS
    assert call(s, r.setxattr(e.nodeid, b"user.a", b"b")).error == errno.EROFS
    assert call(s, r.open(e.nodeid, os.O_RDONLY | abi.FMODE_EXEC)).error == errno.EACCES
    fh, _ = parse_open(ok(s, r.open(e.nodeid, os.O_RDONLY)))
    assert ok(s, r.read(e.nodeid, fh, 0, 10)) == b"data"
    ok(s, r.release(e.nodeid, fh))
    ok(s, r.destroy())
    assert call(s, r.getattr(ROOT)).error == errno.EIO  # destroyed: until the next INIT
    ok(s, r.init())
    ok(s, r.getattr(ROOT))
    tree.close()


def test_destroy_hook_runs_when_the_session_ends(fs) -> None:
    s, r, _ = fs
    events: list[str] = []
    s.on_destroy = lambda: events.append("destroy")
    p = ok(s, r.create(ROOT, b"f"))
    fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
    ok(s, r.release(1, fh))
    assert events == []
    ok(s, r.destroy())
    assert events == ["destroy"]


def test_setxattr_ext_layout_when_posix_acl_is_negotiated(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"")
    tree = Tree(src, posix_acl=True)
    s = FuseSession(tree, posix_acl=True)
    r = Requests()
    flags = abi.fuse_init_out.unpack(ok(s, r.init()))[3]
    assert flags & abi.FUSE_SETXATTR_EXT and flags & abi.FUSE_POSIX_ACL
    e = parse_entry(ok(s, r.lookup(ROOT, b"f")))
    ok(s, r.setxattr(e.nodeid, b"user.ext", b"v2", ext=True))  # 16-byte fuse_setxattr_in
    assert os.getxattr(src / "f", "user.ext") == b"v2"
    # the 8-byte layout is now misread (its name taken for flags): an error, nothing set
    assert call(s, r.setxattr(e.nodeid, b"user.old", b"v1", ext=False)).error != 0
    assert "user.old" not in os.listxattr(src / "f")
    tree.close()


def test_init_again_without_destroy_releases_the_old_session(fs) -> None:
    s, r, src = fs
    for i in range(20):
        (src / f"n{i}").write_bytes(b"")
        parse_entry(ok(s, r.lookup(ROOT, f"n{i}".encode())))
    p = ok(s, r.create(ROOT, b"open"))
    fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
    before = s.tree.statistics()
    assert before.inodes >= 21 and before.handles >= 1
    ok(s, r.init())  # a rebooted guest mounts again
    after = s.tree.statistics()
    assert after.inodes < before.inodes and after.handles == 0
    assert call(s, r.read(1, fh, 0, 10)).error == errno.EBADF


def test_no_effect_without_room_for_the_answer(fs) -> None:
    s, r, src = fs
    (src / "f").write_bytes(b"abc")
    base = s.tree.statistics().inodes
    assert call(s, r.lookup(ROOT, b"f"), room=100).error == errno.EINVAL
    assert s.tree.statistics().inodes == base  # no lookup counted
    assert call(s, r.create(ROOT, b"g"), room=150).error == errno.EINVAL
    assert not (src / "g").exists()
    e = parse_entry(ok(s, r.lookup(ROOT, b"f")))
    fh, _ = parse_open(ok(s, r.open(e.nodeid, os.O_RDWR)))
    assert call(s, r.write(e.nodeid, fh, 0, b"XYZ"), room=20).error == errno.EINVAL
    assert (src / "f").read_bytes() == b"abc"
    ok(s, r.release(e.nodeid, fh))


@pytest.mark.parametrize("xattr", [True, False])
def test_xattr_requests_without_xattrs_are_enosys(tmp_path: Path, xattr: bool) -> None:
    """Without xattrs every xattr request is ENOSYS, as virtiofsd answers without
    -o xattr: the kernel remembers ENOSYS and stops asking (it answers applications
    EOPNOTSUPP itself), where an EOPNOTSUPP from us costs a request per write's
    security.capability check. With xattrs on, the tree's own answers."""
    src = tmp_path / "src"
    src.mkdir()
    tree = Tree(src, xattr=xattr)
    s, r = FuseSession(tree), Requests()
    assert parse_reply(s.dispatch(r.init())).error == 0  # type: ignore[arg-type]
    try:
        got = [call(s, req).error for req in (
            r.setxattr(ROOT, b"user.k", b"v"), r.getxattr(ROOT, b"security.capability", 0),
            r.listxattr(ROOT, 0), r.removexattr(ROOT, b"user.k"))]
        if xattr:
            assert got == [0, errno.ENODATA, 0, 0]
        else:
            assert got == [errno.ENOSYS] * 4
    finally:
        tree.close()
