"""UNLINK, RMDIR and ACCESS answered in C (csrc/fuse_names.c) exactly as the Python
codec and tree answer them: the same ordinary and hostile request sequences go through
a device with the C path on and one with it off, through the in-tree vhost-user
frontend, and every reply must be the same bytes (tests/test_virtiofs_meta.py's rule).
The requests change the host, so each device serves its own copy of one directory
(made the same way, changed the same way between requests); only replies that carry
no inode numbers or times are compared. Also: C really answered (its counters), every
serving thread is back to the daemon's own fsuid/fsgid afterwards, and a quota keeps
UNLINK/RMDIR in Python."""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from msbfs.fuse import abi
from msbfs.fuse.kernel import Opcode, Requests, parse_entry
from msbfs.tree import Policy
from tests.test_virtiofs_meta import ENTRY_ROOM, REQ, ROOT, U64, HostStep, Step, _both

ATTR_REPLY = abi.fuse_out_header.size + abi.FUSE_ATTR_OUT_SIZE
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, switching fsuid)")


def _populate_names(root: Path) -> None:
    root.mkdir()
    (root / "f").write_bytes(b"x")
    (root / "g").write_bytes(b"")
    os.link(root / "g", root / "g2")
    (root / "d").mkdir()
    (root / "full").mkdir()
    (root / "full" / "x").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "y").write_bytes(b"")
    (root / "sub" / "z").write_bytes(b"")
    (root / "sub" / "e").mkdir()
    os.mkfifo(root / "fifo")
    if os.geteuid() == 0:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / ("n" * 255)).write_bytes(b"")
    (root / "link").symlink_to("f")
    (root / "dlink").symlink_to("d")
    (root / "locked").mkdir(mode=0o700)
    (root / "locked" / "q").write_bytes(b"")
    (root / "moving").write_bytes(b"")
    (root / "away").mkdir()
    (root / "away" / "w").write_bytes(b"")
    (root / "away" / "v").mkdir()


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@asynccontextmanager
async def _pair(fs_client: Callable[..., Any], tmp_path: Path, populate: Callable[[Path], None],
                policy: Policy, **tree_kw: Any) -> Any:
    """Two devices, C on and off, over two copies of one directory made alike."""
    roots = [tmp_path / "on" / "root", tmp_path / "off" / "root"]
    for root in roots:
        root.parent.mkdir()
        populate(root)
    async with fs_client(roots[0], policy, **tree_kw) as on, \
            fs_client(roots[1], policy, **tree_kw) as off:
        off.device.meta.enabled = False
        assert on.device.meta.enabled
        yield on, off, roots


async def _lookup_ids(on: Any, off: Any, names: list[bytes], *,
                      opened: bool = False) -> dict[bytes, int]:
    """Node ids of ``names`` in the root, the same on both devices (looked up in the
    same order; the entries themselves differ in inode numbers and times). ``opened``:
    each node is used once (a GETATTR) right after its lookup, so it holds an fd (a
    lookup alone adds a named node: csrc/inodes.h), as the fd cache tests need."""
    ids = {}
    for name in names:
        got = [await c.call(c.r.lookup(ROOT, name)) for c in (on, off)]
        assert got[0].error == got[1].error
        if got[0].error == 0:
            ids[name] = parse_entry(got[0].payload).nodeid
            assert parse_entry(got[1].payload).nodeid == ids[name]
            if opened:
                for c in (on, off):
                    await c.ok(c.r.getattr(ids[name]))
    return ids


def _names_script(r: Requests, ids: dict[bytes, int], roots: list[Path]) -> list[Step | HostStep]:
    def un(parent: int, name: bytes, room: int = 4096) -> Step:
        return (r.unlink(parent, name), [room], REQ)

    def rm(parent: int, name: bytes, room: int = 4096) -> Step:
        return (r.rmdir(parent, name), [room], REQ)

    def raw(op: int, parent: int, body: bytes, **kw: int) -> Step:
        return (r.raw(op, parent, body, **kw), [4096], REQ)

    def host(change: Callable[[Path], None]) -> HostStep:
        def both() -> None:
            for root in roots:
                change(root)
        return both

    f, link, fifo = ids[b"f"], ids[b"link"], ids[b"fifo"]
    sub, away, full, locked, d = (ids[n] for n in (b"sub", b"away", b"full", b"locked", b"d"))
    return [
        # errnos of the host's unlinkat, as Python replies them
        un(ROOT, b"missing"), rm(ROOT, b"missing"), un(ROOT, b"d"), rm(ROOT, b"f"),
        rm(ROOT, b"full"), rm(ROOT, b"link"), rm(ROOT, b"dlink"),
        # names C hands back (Python's EINVAL, ENOENT, EISDIR, ENAMETOOLONG, ...)
        un(ROOT, b"x/y"), rm(ROOT, b"full/x"), un(ROOT, b"."), un(ROOT, b".."),
        rm(ROOT, b"."), rm(ROOT, b".."), un(ROOT, b""), rm(ROOT, b""),
        un(ROOT, b"n" * 256), rm(ROOT, b"n" * 256),
        raw(Opcode.UNLINK, ROOT, b"f"), raw(Opcode.RMDIR, ROOT, b"d"),      # no NUL
        raw(Opcode.UNLINK, ROOT, b""), raw(Opcode.RMDIR, ROOT, b""),        # no body
        raw(Opcode.UNLINK, ROOT, b"f\0", length=30),                        # lying length
        raw(Opcode.UNLINK, ROOT, b"f\0", extlen=1), raw(Opcode.RMDIR, ROOT, b"d\0", extlen=1),
        raw(Opcode.UNLINK, ROOT, b"f" * 600 + b"\0"),                       # long body
        un(ROOT, b"f", room=15), un(ROOT, b"f", room=8), rm(ROOT, b"d", room=0),
        # parents: unknown, a file, a symlink, a fifo
        un(0, b"f"), un(U64, b"f"), un(999, b"f"), rm(999, b"d"),
        un(f, b"x"), rm(f, b"x"), un(link, b"x"), rm(fifo, b"x"),
        # ordinary removals, each kind, twice
        un(ROOT, b"f"), un(ROOT, b"f"), un(ROOT, b"g"), un(ROOT, b"g2"), un(ROOT, b"g"),
        un(ROOT, b"link"), un(ROOT, b"dlink"), un(ROOT, b"fifo"), un(ROOT, b"null"),
        un(ROOT, b"n" * 255), un(ROOT, b"n" * 255),
        raw(Opcode.UNLINK, sub, b"y\0trailing"),                           # bytes after the NUL
        un(sub, b"z"), un(sub, b"e"), rm(sub, b"e"), rm(sub, b"e"), rm(ROOT, b"sub"),
        un(sub, b"y"), rm(sub, b"e"),                 # inside a removed directory: ENOENT
        rm(ROOT, b"d"), rm(d, b"x"), rm(ROOT, b"d"),
        # a root-owned 0700 directory: the daemon removes as itself, whoever asks
        un(locked, b"q"), rm(ROOT, b"locked"),
        # host changes mid-sequence: a name renamed away, a parent moved out of the root
        # (its fd still names it: both answer through it)
        host(lambda root: os.rename(root / "moving", root / "away" / "moved")),
        un(ROOT, b"moving"),
        host(lambda root: os.rename(root / "away", root.parent / "away")),
        rm(ROOT, b"away"), un(away, b"w"), rm(away, b"v"), un(away, b"moved"), un(away, b"w"),
        un(full, b"x"), rm(ROOT, b"full"), rm(ROOT, b"full"),
    ]


NAMES_POLICIES = {
    "default": Policy(),
    "readonly": Policy(readonly=True),
    "nosuid-nodev": Policy(nosuid=True, nodev=True),
    "quota": Policy(quota_bytes=64 << 20, quota_inodes=500),  # UNLINK/RMDIR stay Python's
}


@pytest.mark.parametrize("policy", list(NAMES_POLICIES))
async def test_unlink_rmdir_c_and_python_reply_the_same_bytes(
        fs_client: Callable[..., Any], tmp_path: Path, policy: str) -> None:
    async with _pair(fs_client, tmp_path, _populate_names, NAMES_POLICIES[policy]) as (
            on, off, roots):
        ids = await _lookup_ids(on, off, [b"f", b"link", b"fifo", b"sub", b"away", b"full",
                                          b"locked", b"d"])
        steps = _names_script(Requests(uid=1000, gid=1000), ids, roots)
        assert await _both(on, off, steps) == len(steps)
        assert _listing(roots[0]) == _listing(roots[1])
        served = on.device.meta.names_statistics()
        if policy == "quota":  # the removals were charged (by Python) on both sides
            assert served["unlinks"] == served["rmdirs"] == 0
            used = [c.device.tree.statistics() for c in (on, off)]
            assert used[0].quota_used_inodes == used[1].quota_used_inodes
            assert used[0].quota_used_bytes == used[1].quota_used_bytes
        else:
            assert served["unlinks"] >= 20 and served["rmdirs"] >= 10
        assert on.device.meta.statistics()["handed"] >= 20
        assert off.device.meta.names_statistics()["unlinks"] == 0
        if policy == "readonly":  # nothing removed: only the host's renames happened
            ref = tmp_path / "ref" / "root"
            ref.parent.mkdir()
            _populate_names(ref)
            for step in _names_script(Requests(), ids, [ref]):
                if callable(step):
                    step()
            assert _listing(roots[0]) == _listing(ref)


# ---- ACCESS -------------------------------------------------------------------------
OWNER = 1000
CALLERS = [(0, 0), (OWNER, OWNER), (OWNER, 2000), (2000, OWNER), (3000, 3000), (0, OWNER),
           (OWNER, 0), (0xFFFFFFFF, 0), (0, 0xFFFFFFFF)]
ACCESS_NODES = [b"m000", b"m700", b"m070", b"m007", b"m755", b"m644", b"r700", b"d000",
                b"d700", b"d070", b"d007", b"link", b"fifo", b"null"]


def _populate_access(root: Path) -> None:
    root.mkdir()
    for mode in (0o000, 0o700, 0o070, 0o007, 0o755, 0o644):
        p = root / f"m{mode:03o}"
        p.write_bytes(b"#!/bin/sh\n")
        os.chown(p, OWNER, OWNER)
        os.chmod(p, mode)
    (root / "r700").write_bytes(b"")
    os.chmod(root / "r700", 0o700)
    for mode in (0o000, 0o700, 0o070, 0o007):
        p = root / f"d{mode:03o}"
        p.mkdir()
        os.chown(p, OWNER, OWNER)
        os.chmod(p, mode)
    (root / "link").symlink_to("m700")
    os.mkfifo(root / "fifo")
    os.chown(root / "fifo", OWNER, OWNER)
    os.chmod(root / "fifo", 0o600)
    os.mknod(root / "null", 0o660 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "locked").mkdir(mode=0o700)
    (root / "locked" / "q").write_bytes(b"")


def _access_script(ids: dict[bytes, int]) -> Iterator[Step]:
    for uid, gid in CALLERS:
        r = Requests(uid=uid, gid=gid)
        for name in ACCESS_NODES:
            for mask in range(8):
                yield (r.access(ids[name], mask), [4096], REQ)
        yield (r.access(ids[b"m755"], 8), [4096], REQ)              # not a mask: EINVAL
        yield (r.access(ids[b"m755"], 0xFFFFFFFF), [4096], REQ)
        yield (r.access(999, 4), [4096], REQ)                       # unknown node ids
        yield (r.access(0, 4), [4096], REQ)
        yield (r.access(U64, 4), [4096], REQ)
        yield (r.access(ROOT, 7), [4096], REQ)
        yield (r.raw(Opcode.ACCESS, ids[b"m755"], b"\4\0\0"), [4096], REQ)     # short body
        yield (r.raw(Opcode.ACCESS, ids[b"m755"], b""), [4096], REQ)
        yield (r.raw(Opcode.ACCESS, ids[b"m755"], b"\4\0\0\0\0\0\0\0trailing"), [4096], REQ)
        yield (r.raw(Opcode.ACCESS, ids[b"m755"], b"\4" + b"\0" * 7, extlen=1), [4096], REQ)
        yield (r.access(ids[b"m755"], 4), [15], REQ)                # no room for a reply
        # the daemon removes as itself right after a caller's ACCESS on the same thread:
        # the caller's fsuid is gone again (a root-owned 0700 directory)
        yield (r.unlink(ids[b"locked"], b"missing"), [4096], REQ)


def _fs_ids_of_threads() -> set[tuple[str, str]]:
    """Each thread's fsuid and fsgid (the fourth field of Uid:/Gid:)."""
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out.add((fields["Uid"].split()[3], fields["Gid"].split()[3]))
    return out


ACCESS_POLICIES = {
    "default": Policy(),
    "readonly": Policy(readonly=True),
    "noexec": Policy(noexec=True),
    "readonly-noexec": Policy(readonly=True, noexec=True),
}


@ROOT_ONLY
@pytest.mark.parametrize("policy", list(ACCESS_POLICIES))
async def test_access_c_and_python_reply_the_same_bytes(
        fs_client: Callable[..., Any], tmp_path: Path, policy: str) -> None:
    """Several callers (owner, group, other, root, root's group, ids that are no ids),
    modes 000/700/070/007 on files and directories, every mask: C switches to the
    caller as the tree does and replies the same errno; the policy's EROFS/EACCES come
    from the policy's own rule."""
    async with _pair(fs_client, tmp_path, _populate_access, ACCESS_POLICIES[policy]) as (
            on, off, _roots):
        ids = await _lookup_ids(on, off, [*ACCESS_NODES, b"locked"])
        steps: list[Step | HostStep] = list(_access_script(ids))
        assert await _both(on, off, steps) == len(steps)
        served = on.device.meta.names_statistics()
        assert served["accesses"] >= len(CALLERS[:-2]) * len(ACCESS_NODES) * 8
        assert off.device.meta.names_statistics()["accesses"] == 0
        assert _fs_ids_of_threads() == {("0", "0")}


@ROOT_ONLY
async def test_access_of_evicted_inodes_re_opens_as_the_daemon(
        fs_client: Callable[..., Any], tmp_path: Path) -> None:
    """An inode whose fd the cache closed is re-opened by handle, which only the daemon
    may do: both paths take the fd before switching to the caller. (The tree once
    re-opened it as the caller and answered EPERM: this comparison was red then.)"""
    def populate(root: Path) -> None:
        _populate_access(root)
        for i in range(40):
            (root / f"e{i}").write_bytes(b"")
            os.chmod(root / f"e{i}", 0o640)
    async with _pair(fs_client, tmp_path, populate, Policy(), max_inode_fds=16) as (
            on, off, _roots):
        names = [f"e{i}".encode() for i in range(40)]
        ids = await _lookup_ids(on, off, names, opened=True)
        assert on.device.tree.statistics().extra["inode_fd_evictions"] > 0
        steps: list[Step | HostStep] = []
        for uid, gid in ((OWNER, OWNER), (0, 0), (3000, 3000)):
            r = Requests(uid=uid, gid=gid)
            steps += [(r.access(ids[n], mask), [4096], REQ) for n in names for mask in (0, 4, 6)]
        assert await _both(on, off, steps) == len(steps)
        assert on.device.meta.names_statistics()["accesses"] >= len(steps)
        assert _fs_ids_of_threads() == {("0", "0")}


# ---- MKDIR --------------------------------------------------------------------------
def _masked(reply: bytes) -> bytes:
    """A reply less what two copies of one directory cannot share: an entry's (or an
    attribute reply's) inode number and times."""
    b = bytearray(reply)
    if len(b) == ENTRY_ROOM and b[4:8] == bytes(4):
        b[56:64] = bytes(8)       # fuse_entry_out.attr.ino
        b[80:116] = bytes(36)     # atime, mtime, ctime and their nsec
    elif len(b) == ATTR_REPLY and b[4:8] == bytes(4):
        b[32:40] = bytes(8)       # fuse_attr_out.attr.ino
        b[56:92] = bytes(36)
    return bytes(b)


async def _run_each(c: Any, root: Path, steps: list[Step | Callable[[Path], None]],
                    mask: Callable[[bytes, bytes], bytes] = lambda _q, a: _masked(a)
                    ) -> list[bytes]:
    """The whole sequence on one device over its own copy (host changes on that copy);
    each reply less what ``mask(request, reply)`` says two copies cannot share."""
    out = []
    for step in steps:
        if callable(step):
            step(root)
            continue
        request, sizes, queue = step
        done = await c.raw([request], sizes, queue=queue)
        out.append(mask(request, bytes(done.data[:done.used_len])))
    return out


def _host_view(root: Path) -> list[tuple[str, int, int, int]]:
    return [(str(p.relative_to(root)), p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_gid)
            for p in sorted(root.rglob("*"))]


def _populate_mkdir(root: Path) -> None:
    root.mkdir()
    (root / "f").write_bytes(b"")
    (root / "sg").mkdir()
    os.chown(root / "sg", 0, 3000)
    os.chmod(root / "sg", 0o2775)
    (root / "gone").mkdir()
    (root / "o").mkdir()
    os.chown(root / "o", OWNER, OWNER)
    os.chmod(root / "o", 0o700)
    (root / "acl").mkdir(mode=0o777)
    os.chmod(root / "acl", 0o777)
    # A default ACL (user::rwx group::r-x other::---): under it the mode comes from the
    # ACL, never from a umask (with posix_acl: Python's, Tree._creation_mode).
    os.setxattr(root / "acl", "system.posix_acl_default",
                struct.pack("<I" + "HHI" * 3, 2, 0x01, 7, 0xFFFFFFFF, 0x04, 5, 0xFFFFFFFF,
                            0x20, 0, 0xFFFFFFFF))


def _mkdir_script(ids: dict[bytes, int]) -> list[Step | Callable[[Path], None]]:
    f, sg, gone, o, acl = (ids[n] for n in (b"f", b"sg", b"gone", b"o", b"acl"))
    steps: list[Step | Callable[[Path], None]] = []
    for uid, gid in ((0, 0), (OWNER, OWNER), (OWNER, 2000), (2000, 3000), (0, OWNER)):
        r = Requests(uid=uid, gid=gid)
        tag = b"%d-%d-" % (uid, gid)
        for parent in (ROOT, sg, o, acl):
            for mode, umask in ((0o755, 0o022), (0o777, 0), (0o1777, 0o022), (0o7777, 0o002),
                                (0o700, 0o7777), (0o2755, 0)):
                name = tag + b"%o-%o" % (mode, umask)
                steps.append((r.mkdir(parent, name, mode, umask), [4096], REQ))
            steps.append((r.lookup(parent, tag + b"755-22"), [4096], REQ))
    r = Requests(uid=OWNER, gid=OWNER)
    steps += [
        (r.mkdir(ROOT, b"f"), [4096], REQ), (r.mkdir(ROOT, b"1000-1000-755-22"), [4096], REQ),
        (r.mkdir(ROOT, b"."), [4096], REQ), (r.mkdir(ROOT, b".."), [4096], REQ),
        (r.mkdir(ROOT, b""), [4096], REQ), (r.mkdir(ROOT, b"a/b"), [4096], REQ),
        (r.mkdir(ROOT, b"n" * 256), [4096], REQ), (r.mkdir(ROOT, b"n" * 255), [4096], REQ),
        (r.mkdir(ROOT, b"badmask", 0o755, 0o10000), [4096], REQ),        # EINVAL
        (r.mkdir(ROOT, b"bigmode", 0xFFFFFFFF, 0), [4096], REQ),
        (Requests(uid=0xFFFFFFFF).mkdir(ROOT, b"noid"), [4096], REQ),    # not an id
        (Requests(gid=0xFFFFFFFF).mkdir(ROOT, b"noid"), [4096], REQ),
        (r.mkdir(999, b"x"), [4096], REQ), (r.mkdir(0, b"x"), [4096], REQ),
        (r.mkdir(U64, b"x"), [4096], REQ), (r.mkdir(f, b"x"), [4096], REQ),
        (r.raw(Opcode.MKDIR, ROOT, b"\xed\1\0\0"), [4096], REQ),           # short body
        (r.raw(Opcode.MKDIR, ROOT, b"\xed\1\0\0\x12\0\0\0nonul"), [4096], REQ),
        (r.raw(Opcode.MKDIR, ROOT, b"\xed\1\0\0\x12\0\0\0"), [4096], REQ),
        (r.raw(Opcode.MKDIR, ROOT, b"\xed\1\0\0\x12\0\0\0t\0rail"), [4096], REQ),
        (r.raw(Opcode.MKDIR, ROOT, b"\xed\1\0\0\x12\0\0\0e\0", extlen=1), [4096], REQ),
        (r.mkdir(ROOT, b"room"), [ENTRY_ROOM - 1], REQ), (r.mkdir(ROOT, b"room"), [16], REQ),
        (r.mkdir(ROOT, b"room"), [ENTRY_ROOM], REQ),
        lambda root: os.rmdir(root / "gone"),
        (r.mkdir(gone, b"x"), [4096], REQ),                                 # ENOENT
        (r.getattr(ROOT), [4096], REQ),
    ]
    return steps


MKDIR_POLICIES = {
    "default": (Policy(), {}),
    "nosuid": (Policy(nosuid=True), {}),  # a set-gid parent's bit is not kept
    "readonly": (Policy(readonly=True), {}),
    "quota": (Policy(quota_bytes=64 << 20, quota_inodes=500), {}),  # Python's: the charge
    "posix-acl": (Policy(), {"posix_acl": True}),  # C's but where a default ACL decides
}


@ROOT_ONLY
@pytest.mark.parametrize("policy", list(MKDIR_POLICIES))
async def test_mkdir_c_and_python_reply_the_same_bytes(
        fs_client: Callable[..., Any], tmp_path: Path, policy: str) -> None:
    """Callers that own, share the group of, or are strangers to the parent (root-owned,
    set-gid, another user's 0700), every mode and umask shape: the same entry (less
    inode numbers and times), the same owner, group and mode on the host, the same
    table; hostile names, bodies, ids and parents as Python answers them."""
    pol, tree_kw = MKDIR_POLICIES[policy]
    async with _pair(fs_client, tmp_path, _populate_mkdir, pol, **tree_kw) as (on, off, roots):
        ids = await _lookup_ids(on, off, [b"f", b"sg", b"gone", b"o", b"acl"])
        steps = _mkdir_script(ids)
        got = [await _run_each(c, root, steps) for c, root in ((on, roots[0]), (off, roots[1]))]
        for i, (a, b) in enumerate(zip(*got, strict=True)):
            assert a == b, f"reply {i}: C {a!r} != Python {b!r}"
        assert _host_view(roots[0]) == _host_view(roots[1])
        assert on.device.tree.statistics().inodes == off.device.tree.statistics().inodes
        made = on.device.meta.names_statistics()["mkdirs"]
        if policy == "quota":
            assert made == 0
        elif policy == "posix-acl":  # all but those under the default ACL
            assert 90 <= made < 120, made
        else:
            assert made >= 120
        assert off.device.meta.names_statistics()["mkdirs"] == 0


@ROOT_ONLY
async def test_a_daemon_with_groups_of_its_own_keeps_switched_access_in_python(
        fs_client: Callable[..., Any], tmp_path: Path) -> None:
    """A switch must drop the daemon's own supplementary groups (the caller's are
    unknown: none); C keeps them, so with a daemon that has any, callers to switch to go
    to Python (root/root, never switched, stays C's). The file is readable through
    group 5 only: a switch that kept the daemon's group 5 would say 0."""
    (tmp_path / "g").write_bytes(b"")
    os.chown(tmp_path / "g", 0, 5)
    os.chmod(tmp_path / "g", 0o040)
    own = os.getgroups()
    os.setgroups([5])
    try:
        async with fs_client(tmp_path) as c:
            g = parse_entry(await c.ok(c.r.lookup(ROOT, b"g"))).nodeid
            before = c.device.meta.names_statistics()["accesses"]
            user = Requests(uid=OWNER, gid=OWNER)
            assert (await c.call(user.access(g, 4))).error == errno.EACCES  # no groups
            assert c.device.meta.names_statistics()["accesses"] == before
            assert (await c.call(c.r.access(g, 4))).error == 0       # root: C's
            assert c.device.meta.names_statistics()["accesses"] == before + 1
    finally:
        os.setgroups(own)


@ROOT_ONLY
async def test_names_on_four_queues_at_once(fs_client: Callable[..., Any],
                                            tmp_path: Path) -> None:
    """Four request queues, each on its own serving thread, mix ACCESS as other users
    (C switches that thread only) with MKDIR/UNLINK/RMDIR in a root-owned 0700
    directory (C acts as the daemon there): every answer is the one a lone thread
    gives, and every thread ends as the daemon."""
    import trio
    (tmp_path / "locked").mkdir(mode=0o700)
    (tmp_path / "r700").write_bytes(b"")
    os.chmod(tmp_path / "r700", 0o700)
    n = 64
    async with fs_client(tmp_path, request_queues=4) as c:
        r = c.r
        locked = parse_entry(await c.ok(r.lookup(ROOT, b"locked"))).nodeid
        r700 = parse_entry(await c.ok(r.lookup(ROOT, b"r700"))).nodeid
        before = c.device.meta.names_statistics()
        errors: dict[int, list[int]] = {}

        async def one_queue(q: int) -> None:
            user = Requests(uid=1000 + q, gid=1000 + q)
            mine = errors[q] = []
            for k in range(0, n, 8):
                names = [b"q%d-%d" % (q, i) for i in range(k, k + 8)]
                reqs = [x for nm in names for x in (
                    ([user.access(r700, 4)], [64]), ([r.mkdir(locked, nm)], [256]),
                    ([user.access(locked, 1)], [64]), ([r.rmdir(locked, nm)], [64]))]
                done = await c.fe.submit_many(q, reqs)
                mine += [abi.fuse_out_header.unpack_from(bytes(d.data[:16]))[1] for d in done]

        async with trio.open_nursery() as nursery:
            for q in range(1, 5):
                nursery.start_soon(one_queue, q)
        for mine in errors.values():  # EACCES, made, EACCES, removed: as one thread alone
            assert mine == [-13, 0, -13, 0] * n
        after = c.device.meta.names_statistics()
        assert after["accesses"] - before["accesses"] == 4 * 2 * n
        assert after["mkdirs"] - before["mkdirs"] == after["rmdirs"] - before["rmdirs"] == 4 * n
        assert os.listdir(tmp_path / "locked") == []
        assert _fs_ids_of_threads() == {("0", "0")}
