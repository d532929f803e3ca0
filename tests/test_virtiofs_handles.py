"""OPEN, OPENDIR, RELEASE and RELEASEDIR answered in C (csrc/fuse_handles.c) from the
one handle table (csrc/handles.c) the tree uses.

The bar is tests/test_virtiofs_meta.py's differential rule: the same request sequence
to a device with the C path on and one with it off (every request through Python)
gives the same reply bytes, step by step; the C counters prove C answered. Sequences
cover ordinary and hostile opens (every kind, every policy, flags C must hand back,
unknown and wrong-kind handles, double releases, short bodies, no room, a full handle
table), writeback, record locks, and a RELEASE racing READs of the same handle on
another queue.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from msbfs.fuse import abi
from msbfs.fuse.kernel import Opcode, Requests, parse_entry, parse_open, parse_reply
from msbfs.tree import Policy
from msbfs.tree.policy import FMODE_EXEC
from tests.test_virtiofs_meta import (
    REQ,
    ROOT,
    U64,
    HostStep,
    Step,
    _both,
    _fds,
    _handle_fds,
    _ids,
    _populate,
)
from tests.test_virtiofs_threads import (
    test_release_on_one_queue_never_lets_another_read_a_reused_fd as race,
)

HDR = abi.fuse_out_header.size
OPEN_ROOM = HDR + abi.fuse_open_out.size


def _opens(r: Requests, ids: dict[str, int]) -> list[Step | HostStep]:
    """Opens of every kind with every flag C looks at, and what it must hand back."""
    a, d = ids["a"], ids["d"]
    steps: list[Step | HostStep] = []
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_APPEND,
                  os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | FMODE_EXEC, os.O_RDONLY | os.O_DIRECT,
                  os.O_ACCMODE, os.O_RDWR | os.O_CREAT | os.O_EXCL, os.O_RDONLY | os.O_NOFOLLOW,
                  os.O_RDWR | os.O_SYNC | os.O_NOATIME | os.O_LARGEFILE, 0xFFFFFFFF,
                  os.O_RDONLY | 0x80000000, os.O_RDONLY | os.O_DIRECTORY):
        steps.append((r.open(a, flags), [4096], REQ))
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC,
                  os.O_RDONLY | FMODE_EXEC, os.O_RDONLY | os.O_DIRECTORY):
        steps.append((r.open(d, flags), [4096], REQ))
    for name in ("fifo", "s", "null", "setid", "long"):
        if name in ids:
            for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR | os.O_TRUNC):
                steps.append((r.open(ids[name], flags), [4096], REQ))
    body = abi.fuse_open_in.pack
    steps += [
        # set-id clearing on O_TRUNC is the tree's (as the caller): handed back
        (r.raw(Opcode.OPEN, ids["setid"], body(os.O_RDWR | os.O_TRUNC,
                                               abi.FUSE_OPEN_KILL_SUIDGID)), [4096], REQ),
        (r.raw(Opcode.OPEN, a, body(os.O_RDONLY, 0xFFFFFFFF)), [4096], REQ),
        (r.open(0, os.O_RDONLY), [4096], REQ), (r.open(999, os.O_RDONLY), [4096], REQ),
        (r.open(U64, os.O_RDONLY), [4096], REQ),
        (r.raw(Opcode.OPEN, a, body(os.O_RDONLY, 0)[:4]), [4096], REQ),       # short
        (r.raw(Opcode.OPEN, a, b""), [4096], REQ),
        (r.raw(Opcode.OPEN, a, body(os.O_RDONLY, 0) + b"trailing"), [4096], REQ),
        (r.raw(Opcode.OPEN, a, body(os.O_RDONLY, 0), extlen=1), [4096], REQ),
        (r.raw(Opcode.OPEN, a, body(os.O_RDONLY, 0), length=30), [4096], REQ),  # lying
        (r.open(a, os.O_RDONLY), [OPEN_ROOM - 1], REQ), (r.open(a, os.O_RDONLY), [HDR], REQ),
        (r.open(a, os.O_RDONLY), [8], REQ), (r.open(a, os.O_RDONLY), [OPEN_ROOM], REQ),
        (r.opendir(ROOT), [4096], REQ), (r.opendir(d), [4096], REQ),
        (r.opendir(a), [4096], REQ), (r.opendir(ids["fifo"]), [4096], REQ),
        (r.opendir(999), [4096], REQ), (r.opendir(0), [4096], REQ),
        (r.opendir(d, os.O_RDWR | os.O_TRUNC), [4096], REQ),
        (r.raw(Opcode.OPENDIR, d, body(0, 0)[:4]), [4096], REQ),
        (r.opendir(d), [OPEN_ROOM - 1], REQ), (r.opendir(d), [OPEN_ROOM], REQ),
    ]
    return steps


def _releases(r: Requests, ids: dict[str, int], last_fh: int) -> list[Step | HostStep]:
    """Every fh up to last_fh released both ways (RELEASE and RELEASEDIR: one of them
    is of the other kind), twice, with the flags C must hand back, then nonsense."""
    a = ids["a"]
    rel = abi.fuse_release_in.pack
    steps: list[Step | HostStep] = [
        (r.read(a, 1, 0, 5), [4096], REQ), (r.read(a, 2, 0, 5), [4096], REQ),
        (r.release(a, 3, release_flags=abi.FUSE_RELEASE_FLOCK_UNLOCK), [4096], REQ),
        (r.raw(Opcode.RELEASE, a, rel(4, 0, 0, 77)), [4096], REQ),   # an owner, no locks
        (r.raw(Opcode.RELEASE, a, rel(5, 0, 0, 0)[:8]), [4096], REQ),  # short
        (r.raw(Opcode.RELEASE, a, rel(5, 0, 0, 0), extlen=1), [4096], REQ),
        (r.release(a, 5), [8], REQ),                                   # no room
    ]
    for fh in range(1, last_fh + 1):
        steps += [(r.release(a, fh), [4096], REQ), (r.releasedir(a, fh), [4096], REQ)]
    for fh in range(1, last_fh + 1):
        steps += [(r.release(a, fh), [4096], REQ), (r.releasedir(a, fh), [4096], REQ)]
    steps += [(r.release(a, fh), [4096], REQ) for fh in (0, 999, U64)]
    steps += [(r.releasedir(ROOT, fh), [4096], REQ) for fh in (0, 999, U64)]
    return steps


async def _last_fh(c: Any) -> int:
    """The last fh handed out (the table's counter moves by one per handle)."""
    return int(c.device.table.next_fh) - 1


POLICIES = {
    "default": Policy(),
    "readonly": Policy(readonly=True),
    "noexec": Policy(noexec=True),
    "nosuid-nodev": Policy(nosuid=True, nodev=True),
    "quota": Policy(quota_bytes=64 << 20, quota_inodes=500),  # O_TRUNC, RELEASE: Python's
}


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("writeback", [False, True], ids=["", "writeback"])
async def test_opens_and_releases_reply_as_python(fs_client: Callable[..., Any], tmp_path: Path,
                                                  policy: str, writeback: bool) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _populate(root)
    kw = {"writeback": True} if writeback else {}
    async with fs_client(root, POLICIES[policy], **kw) as on, \
            fs_client(root, POLICIES[policy], **kw) as off:
        off.device.meta.enabled = False
        r = Requests()
        ids = await _ids(on)
        assert ids == await _ids(off)
        base = _handle_fds(on, off)
        assert await _both(on, off, _opens(r, ids)) > 50
        last = await _last_fh(on)
        assert last == await _last_fh(off) and last > 5
        assert await _both(on, off, _releases(r, ids, last)) > 2 * last
        for c in (on, off):
            assert c.device.tree.statistics().handles == 0
        served = on.device.meta.open_statistics()
        assert off.device.meta.open_statistics() == dict.fromkeys(served, 0)
        assert served["opendirs"] >= 2
        assert served["releasedirs"] >= 2
        if policy == "quota":
            assert served["releases"] == 0  # the last close of an unlinked file is charged
        else:
            assert served["releases"] >= 3
        if policy in ("readonly", "noexec"):
            assert served["open_errors"] >= 2  # the policy's errno, from its own table
        if policy != "readonly":
            assert served["opens"] >= 8
        assert _handle_fds(on, off) == base  # every fd C or Python opened is closed again


async def test_full_handle_table_is_emfile_both_ways(fs_client: Callable[..., Any],
                                                     tmp_path: Path) -> None:
    """Past the handle budget an OPEN/OPENDIR is the tree's EMFILE (C hands it back),
    and a release makes room for C again."""
    root = tmp_path / "root"
    root.mkdir()
    _populate(root)
    async with fs_client(root, max_handles=16) as on, fs_client(root, max_handles=16) as off:
        off.device.meta.enabled = False
        r = Requests()
        ids = await _ids(on)
        assert ids == await _ids(off)
        a = ids["a"]
        steps: list[Step | HostStep] = [(r.open(a, os.O_RDONLY), [4096], REQ) for _ in range(16)]
        steps += [(r.open(a, os.O_RDONLY), [4096], REQ), (r.opendir(ROOT), [4096], REQ),
                  (r.release(a, 3), [4096], REQ), (r.opendir(ROOT), [4096], REQ),
                  (r.open(a, os.O_RDONLY), [4096], REQ)]
        assert await _both(on, off, steps) == len(steps)
        replies = [parse_reply(bytes((await on.raw([r.open(a, os.O_RDONLY)], [4096])).data))]
        assert replies[0].error == -errno.EMFILE or replies[0].error == errno.EMFILE
        served = on.device.meta.open_statistics()
        assert served["opens"] == 16 and served["opendirs"] == 1 and served["releases"] == 1


async def test_record_locks_keep_release_in_python(fs_client: Callable[..., Any],
                                                   tmp_path: Path) -> None:
    """A handle a lock request named is released by Python (it drops the owner's locks
    and waits for a lock request in flight); while any description exists, no RELEASE
    is C's; once none does, C releases handles no lock request named."""
    _populate(tmp_path)
    async with fs_client(tmp_path) as c:
        r = c.r
        a = parse_entry(await c.ok(r.lookup(ROOT, b"a"))).nodeid
        locked, plain, other = [parse_open(await c.ok(r.open(a, os.O_RDWR)))[0] for _ in range(3)]
        await c.ok(r.lk(Opcode.SETLK, a, locked, 7, 0, 9, fcntl.F_WRLCK))
        before = c.device.meta.open_statistics()["releases"]
        await c.ok(r.release(a, plain))          # a description exists: Python's
        assert c.device.meta.open_statistics()["releases"] == before
        await c.ok(r.flush(a, locked, 7))        # the owner's locks go, and the description
        await c.ok(r.release(a, locked))         # named by a lock request: Python's
        assert c.device.meta.open_statistics()["releases"] == before
        await c.ok(r.release(a, other))          # no lock state anywhere: C's
        assert c.device.meta.open_statistics()["releases"] == before + 1
        assert c.device.tree.statistics().handles == 0


async def test_hostile_open_release_mix_replies_as_python(fs_client: Callable[..., Any],
                                                          tmp_path: Path) -> None:
    """A seeded random mix of OPEN/OPENDIR/RELEASE/RELEASEDIR/READ/FLUSH on every kind,
    with live, released, wrong-kind and made-up handles: same bytes with C on and off,
    and nothing left open at the end."""
    root = tmp_path / "root"
    root.mkdir()
    _populate(root)
    rnd = random.Random(1108)
    async with fs_client(root, max_handles=48) as on, fs_client(root, max_handles=48) as off:
        off.device.meta.enabled = False
        r = Requests()
        ids = await _ids(on)
        assert ids == await _ids(off)
        base = _handle_fds(on, off)
        nodes = [ROOT, *ids.values(), 999]
        flags = [os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_TRUNC,
                 os.O_RDONLY | FMODE_EXEC, os.O_WRONLY | os.O_APPEND, os.O_ACCMODE, 0xFFFFFFFF]
        steps: list[Step | HostStep] = []
        for _ in range(600):
            node = rnd.choice(nodes)
            fh = rnd.choice([rnd.randrange(1, 120)] * 4 + [0, U64, rnd.randrange(1, 1 << 64)])
            op = rnd.randrange(6)
            req = (r.open(node, rnd.choice(flags)) if op == 0 else r.opendir(node) if op == 1
                   else r.release(node, fh) if op == 2 else r.releasedir(node, fh) if op == 3
                   else r.read(node, fh, 0, 5) if op == 4 else r.flush(node, fh))
            steps.append((req, [rnd.choice([4096, 4096, 4096, OPEN_ROOM, HDR])], REQ))
        assert await _both(on, off, steps) == len(steps)
        last = await _last_fh(on)
        assert await _both(on, off, _releases(r, ids, last)) > 0
        served = on.device.meta.open_statistics()
        assert served["opens"] > 20 and served["releases"] > 5 and served["releasedirs"] > 5
        assert _handle_fds(on, off) == base


async def test_release_in_c_never_lets_a_read_of_another_queue_see_a_reused_fd(
        fs_client: Callable[..., Any], tmp_path: Path) -> None:
    """tests/test_virtiofs_threads.py's race (queue 2 keeps READing a handle while queue
    1 releases it and opens another file, whose fd takes the freed number) with its
    RELEASEs and OPENs answered in C, which this checks: the released fd is closed only
    after the reading round ends (grace period), so no READ returns the other file."""
    devices: list[Any] = []

    @asynccontextmanager
    async def recording(*args: Any, **kw: Any) -> AsyncIterator[Any]:
        async with fs_client(*args, **kw) as c:
            devices.append(c.device)
            yield c

    await race(recording, tmp_path)
    served = devices[0].meta.open_statistics()
    assert served["opens"] >= 40 and served["releases"] >= 40


#: Bytes of a CREATE reply that name the host file itself (its inode number and times):
#: each device creates its own file, so only these may differ (fuse_entry_out.attr's
#: ino at 56, atime..ctimensec at 80..116, after the 16-byte header).
_HOST_BYTES = ((56, 64), (80, 116))


def _masked(data: bytes) -> bytes:
    out = bytearray(data)
    if len(out) == HDR + abi.FUSE_ENTRY_OUT_SIZE + abi.fuse_open_out.size:
        for lo, hi in _HOST_BYTES:
            out[lo:hi] = bytes(hi - lo)
    return bytes(out)


def _make_parent(d: Path) -> None:
    d.mkdir()
    (d / "exists").write_bytes(b"old")
    os.mkfifo(d / "fifo")
    (d / "sub").mkdir()
    if os.geteuid() == 0:
        os.chown(d / "sub", 0, 2000)
        os.chmod(d / "sub", 0o2777)  # set-gid: new files get its group


@pytest.mark.parametrize("policy", ["default", "nosuid-nodev", "readonly", "quota"])
@pytest.mark.parametrize("writeback", [False, True], ids=["", "writeback"])
async def test_creates_reply_as_python(fs_client: Callable[..., Any], tmp_path: Path,
                                       policy: str, writeback: bool) -> None:
    """CREATE of new files in C (no quota, no ACLs) answers as the tree: the same bytes
    but for the new file's inode number and times (each device makes its own file, in
    a directory of its own), the same owner, group (set-gid parent) and mode (umask,
    nosuid), the same handle; existing names, hostile names, ids and sizes: Python's,
    or C's EEXIST/EROFS, with the same bytes."""
    root = tmp_path / "root"
    root.mkdir()
    for side in ("on", "off"):
        _make_parent(root / side)
    kw = {"writeback": True} if writeback else {}
    async with fs_client(root, POLICIES[policy], **kw) as on, \
            fs_client(root, POLICIES[policy], **kw) as off:
        off.device.meta.enabled = False
        base = _fds()
        parents = {}
        for c, side in ((on, "on"), (off, "off")):
            p = parse_entry(await c.ok(c.r.lookup(ROOT, side.encode()))).nodeid
            s = parse_entry(await c.ok(c.r.lookup(p, b"sub"))).nodeid
            parents[side] = (p, s)
        assert parents["on"] == parents["off"]  # the same node ids: same table history
        p, sub = parents["on"]
        body = abi.fuse_create_in.pack
        steps: list[tuple[Requests, int, bytes, int]] = []  # caller, parent, body, room
        root_caller, user = Requests(), Requests(uid=1000, gid=1000)
        for i, (flags, mode, umask) in enumerate([
                (os.O_RDWR, 0o644, 0o022), (os.O_WRONLY, 0o600, 0), (os.O_RDWR | os.O_EXCL, 0o666, 0o077),
                (os.O_WRONLY | os.O_APPEND, 0o755, 0o022), (os.O_WRONLY | os.O_TRUNC, 0o4755, 0),
                (os.O_RDONLY, 0o6777, 0o002), (os.O_RDWR | os.O_DIRECT, 0o644, 0o022),
                (0xFFFFFFFF, 0o644, 0o022), (os.O_RDWR, 0o644, 0o10000)]):
            name = b"new%d\0" % i
            steps += [(root_caller, p, body(flags | os.O_CREAT, mode, umask, 0) + name, 4096),
                      (user, sub, body(flags | os.O_CREAT, mode, umask, 0) + name, 4096)]
        create_in = body(os.O_RDWR | os.O_CREAT, 0o644, 0o022, 0)
        steps += [
            (root_caller, p, create_in + b"exists\0", 4096),          # exists: Python's
            (root_caller, p, body(os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644, 0, 0)
             + b"exists\0", 4096),                                     # EEXIST
            (root_caller, p, create_in + b"fifo\0", 4096), (root_caller, p, create_in + b"sub\0", 4096),
            (root_caller, p, create_in + b".\0", 4096), (root_caller, p, create_in + b"..\0", 4096),
            (root_caller, p, create_in + b"a/b\0", 4096), (root_caller, p, create_in + b"\0", 4096),
            (root_caller, p, create_in + b"n" * 256 + b"\0", 4096), (root_caller, p, create_in + b"x", 4096),
            (root_caller, p, create_in[:8], 4096), (root_caller, 999, create_in + b"x\0", 4096),
            (root_caller, p, create_in + b"room\0", HDR + abi.FUSE_ENTRY_OUT_SIZE),
            (Requests(uid=0xFFFFFFFF), p, create_in + b"badid\0", 4096),
            (root_caller, p, create_in + b"trailing\0junk", 4096),
        ]
        for i, (caller, parent, payload, room) in enumerate(steps):
            got = []
            request = caller.raw(Opcode.CREATE, parent, payload)
            for c in (on, off):
                done = await c.raw([request], [room])
                got.append((done.used_len, _masked(bytes(done.data[:done.used_len]))))
            assert got[0] == got[1], f"step {i}: C {got[0]!r} != Python {got[1]!r}"
        for name in sorted(os.listdir(root / "on")):
            a, b = os.lstat(root / "on" / name), os.lstat(root / "off" / name)
            assert (a.st_mode, a.st_uid, a.st_gid, a.st_size) == (b.st_mode, b.st_uid, b.st_gid, b.st_size), name
        last = await _last_fh(on)
        assert last == await _last_fh(off)
        r = Requests()
        for fh in range(1, last + 1):
            for c in (on, off):
                await c.call(r.release(p, fh))
        served = on.device.meta.open_statistics()
        assert off.device.meta.open_statistics()["creates"] == 0
        if policy in ("quota",):
            assert served["creates"] == 0  # the quota charges what a create makes
        else:
            assert served["creates"] >= (2 if policy == "readonly" else 14)
        for c in (on, off):
            assert c.device.tree.statistics().handles == 0
        assert _fds() <= base + 2 * 30  # the new files' inodes (their O_PATH fds), no more


async def test_opens_and_releases_on_four_queues_balance(fs_client: Callable[..., Any],
                                                         tmp_path: Path) -> None:
    """Four request queues, each on its own serving thread, open and release files and
    directories in C at once: every fh is unique, every open is answered in C, and at
    the end no handle, fd or open count is left (the table's lock and the inodes' open
    counts hold under concurrency)."""
    import trio
    names = [b"f%d" % i for i in range(8)]
    for n in names:
        (tmp_path / n.decode()).write_bytes(b"x")
    rounds = 6
    async with fs_client(tmp_path, request_queues=4) as c:
        r = c.r
        nodes = [parse_entry(await c.ok(r.lookup(ROOT, n))).nodeid for n in names]
        tree = c.device.tree
        base = _handle_fds(c)
        before = c.device.meta.open_statistics()
        seen: list[int] = []

        async def one_queue(q: int) -> None:
            for _ in range(rounds):
                done = await c.fe.submit_many(
                    q, [([r.open(n, os.O_RDWR)], [64]) for n in nodes]
                    + [([r.opendir(ROOT)], [64]) for _ in range(4)])
                fhs = [parse_open(bytes(d.data[HDR:d.used_len]))[0] for d in done]
                seen.extend(fhs)
                await c.fe.submit_many(
                    q, [([r.release(n, fh)], [64]) for n, fh in zip(nodes, fhs, strict=False)]
                    + [([r.releasedir(ROOT, fh)], [64]) for fh in fhs[len(nodes):]])

        async with trio.open_nursery() as nursery:
            for q in range(1, 5):
                nursery.start_soon(one_queue, q)
        after = c.device.meta.open_statistics()
        total = 4 * rounds * len(nodes)
        assert len(set(seen)) == len(seen) == 4 * rounds * (len(nodes) + 4)
        assert after["opens"] - before["opens"] == total
        assert after["releases"] - before["releases"] == total
        assert after["opendirs"] - before["opendirs"] == 4 * rounds * 4
        assert tree.statistics().handles == 0
        assert all(tree._inodes.nopen(tree._inodes.get(n)) == 0 for n in nodes)
        assert _handle_fds(c) == base
