"""READDIR and READDIRPLUS answered in C (csrc/fuse_readdir.c) exactly as the Python
codec and tree answer them: the same requests go to a device with the C path on and one
with it off, over the same directory, through the in-tree vhost-user frontend, and every
reply must be the same bytes (tests/test_virtiofs_meta.py's rule). Where C may cut a
listing into replies at other places (an entry it cannot decide: a mount point, a
bound), the whole listing must still be the same records in the same order with the
same lookup counts. Also: C's counters prove C answered; one handle read from four
queues at once gives every request its own untorn listing, and handles released
meanwhile leave no fd behind."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from msbfs.fuse import abi
from msbfs.fuse.kernel import Opcode, Requests, parse_dirents, parse_entry, parse_open
from tests.test_virtiofs_meta import REQ, ROOT, U64, _fds

HDR = abi.fuse_out_header.size
Records = list[tuple[bytes, int, int, Any]]


async def _same(on: Any, off: Any, request: bytes, room: int) -> bytes:
    """One request to both devices; the replies must be the same bytes."""
    got = []
    for c in (on, off):
        done = await c.raw([request], [room], queue=REQ)
        got.append(bytes(done.data[:done.used_len]))
    assert got[0] == got[1], f"C {got[0][:200]!r} != Python {got[1][:200]!r}"
    return got[0]


def _records(reply: bytes, plus: bool) -> Records:
    length, error, _ = abi.fuse_out_header.unpack_from(reply)
    assert error == 0 and length == len(reply), (error, length, len(reply))
    return parse_dirents(reply[HDR:], plus=plus)


async def _listing(c: Any, r: Requests, nodeid: int, fh: int, room: int, plus: bool,
                   offset: int = 0) -> tuple[Records, list[bytes]]:
    """Every record from ``offset`` on, asking from each reply's last cookie until an
    empty reply, as a guest does; and the replies."""
    recs: Records = []
    replies = []
    while True:
        done = await c.raw([r.readdir(nodeid, fh, offset, room - HDR, plus=plus)], [room])
        reply = bytes(done.data[:done.used_len])
        got = _records(reply, plus)
        if not got:
            return recs, replies
        replies.append(reply)
        recs += got
        offset = got[-1][2]


def _counts(recs: Records) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _name, _ino, _off, e in recs:
        if e is not None and e.nodeid:
            counts[e.nodeid] = counts.get(e.nodeid, 0) + 1
    return counts


async def _forget(c: Any, r: Requests, counts: dict[int, int]) -> None:
    if counts:
        await c.raw([r.batch_forget(list(counts.items()))], [], queue=0)


def _make(root: Path) -> dict[str, Path]:
    dirs = {"empty": root / "empty", "one": root / "one", "many": root / "many"}
    for d in dirs.values():
        d.mkdir()
    (root / "one" / "x").write_bytes(b"1")
    # > one 32 KiB getdents batch of Python's, > one reply; names of every length class
    for i in range(1500):
        (root / "many" / (f"e{i}" + "n" * (i % 40))).write_bytes(b"")
    (root / "many" / ("L" * 255)).write_bytes(b"")
    (root / "many" / "sub").mkdir()
    os.symlink("../../etc", root / "many" / "link")
    (root / "file").write_bytes(b"f")
    return dirs


async def _open_both(on: Any, off: Any, r: Requests, request: bytes) -> int:
    reply = await _same(on, off, request, 4096)
    return parse_open(reply[HDR:])[0]


async def _lookup_both(on: Any, off: Any, r: Requests, parent: int, name: bytes) -> int:
    reply = await _same(on, off, r.lookup(parent, name), 4096)
    return parse_entry(reply[HDR:]).nodeid


@pytest.mark.parametrize("room", [4096, 65536])
async def test_c_and_python_list_the_same_bytes(fs_client: Callable[..., Any], tmp_path: Path,
                                                room: int) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _make(root)
    async with fs_client(root, slot_size=128 * 1024) as on, \
            fs_client(root, slot_size=128 * 1024) as off:
        off.device.meta.enabled = False
        r = Requests()
        base = on.device.tree.statistics().inodes
        nodes = {name: await _lookup_both(on, off, r, ROOT, name.encode())
                 for name in ("empty", "one", "many")}
        nodes["root"] = ROOT
        seen: dict[int, int] = {}
        for name, node in nodes.items():
            for plus in (True, False):
                fh = await _open_both(on, off, r, r.opendir(node))
                # the whole listing, reply by reply
                offset, cookies = 0, []
                while True:
                    reply = await _same(on, off, r.readdir(node, fh, offset, room - HDR, plus), room)
                    recs = _records(reply, plus)
                    for k, v in _counts(recs).items():
                        seen[k] = seen.get(k, 0) + v
                    if not recs:
                        break
                    cookies += [off for _n, _i, off, _e in recs]
                    offset = recs[-1][2]
                if name == "root":  # the root's "..": the root's ino, never its parent's
                    recs = _records(await _same(
                        on, off, r.readdir(node, fh, 0, room - HDR, plus), room), plus)
                    dots = {n: ino for n, ino, _o, _e in recs if n in (b".", b"..")}
                    assert dots[b".."] == dots[b"."] == os.stat(root).st_ino
                    for k, v in _counts(recs).items():
                        seen[k] = seen.get(k, 0) + v
                # resume from every cookie (the many directory: every 7th), offset 0 rewinds
                step = 7 if name == "many" else 1
                for cookie in [0, *cookies[::step], cookies[-1] if cookies else 0, 0]:
                    reply = await _same(on, off, r.readdir(node, fh, cookie, room - HDR, plus), room)
                    for k, v in _counts(_records(reply, plus)).items():
                        seen[k] = seen.get(k, 0) + v
                await _same(on, off, r.releasedir(node, fh), 4096)
        assert on.device.tree.statistics().inodes == off.device.tree.statistics().inodes
        served = on.device.meta.statistics()
        assert served["readdirs"] > 100 and served["readdir_entries"] > 3000
        assert off.device.meta.statistics()["readdirs"] == 0
        for c in (on, off):  # every lookup a listing counted, forgotten: nothing left
            await _forget(c, r, seen)
            await _forget(c, r, {n: 1 for n in nodes.values() if n != ROOT})
            assert c.device.tree.statistics().inodes == base


async def test_hostile_readdir_requests_reply_as_python(fs_client: Callable[..., Any],
                                                         tmp_path: Path) -> None:
    """Odd rooms and sizes, unknown and wrong handles, another node id, odd bodies and
    offsets: what C answers is Python's answer, what it hands back Python answers."""
    root = tmp_path / "root"
    root.mkdir()
    _make(root)
    async with fs_client(root) as on, fs_client(root) as off:
        off.device.meta.enabled = False
        r = Requests()
        many = await _lookup_both(on, off, r, ROOT, b"many")
        one = await _lookup_both(on, off, r, ROOT, b"one")
        f = await _lookup_both(on, off, r, ROOT, b"file")
        d = await _open_both(on, off, r, r.opendir(many))
        ffh = await _open_both(on, off, r, r.open(f, os.O_RDONLY))
        gone = await _open_both(on, off, r, r.opendir(one))
        await _same(on, off, r.releasedir(one, gone), 4096)
        rin = abi.fuse_read_in.pack
        before = on.device.meta.statistics()
        for plus in (True, False):
            op = Opcode.READDIRPLUS if plus else Opcode.READDIR
            rd = r.readdir
            steps = [
                (rd(many, d, 0, 4096, plus), HDR + 100),     # room for no record: empty
                (rd(many, d, 0, 4096, plus), HDR),           # room for a header only
                (rd(many, d, 0, 4096, plus), 8),             # not even that
                (rd(many, d, 0, 0, plus), 4096), (rd(many, d, 0, 1, plus), 4096),
                (rd(many, d, 0, 0xFFFFFFFF, plus), 4096), (rd(many, d, 0, 200, plus), 4096),
                (rd(many, 999, 0, 4096, plus), 4096), (rd(many, 0, 0, 4096, plus), 4096),
                (rd(many, U64, 0, 4096, plus), 4096), (rd(many, ffh, 0, 4096, plus), 4096),
                (rd(many, gone, 0, 4096, plus), 4096),
                (rd(ROOT, d, 0, 4096, plus), 4096),          # node id of another directory
                (rd(one, d, 0, 4096, plus), 4096), (rd(999, d, 0, 4096, plus), 4096),
                (rd(f, d, 0, 4096, plus), 4096),
                (rd(many, d, 1 << 63, 4096, plus), 4096), (rd(many, d, U64, 4096, plus), 4096),
                (rd(many, d, (1 << 63) - 1, 4096, plus), 4096), (rd(many, d, 12345, 4096, plus), 4096),
                (r.raw(op, many, rin(d, 0, 4096, 0, 0, 0)[:24]), 4096),          # short body
                (r.raw(op, many, rin(d, 0, 4096, 0, 0, 0) + b"trailing"), 4096),
                (r.raw(op, many, rin(d, 0, 4096, 0, 0, 0), extlen=1), 4096),
                (r.raw(op, many, rin(d, 0, 4096, 0, 0, 0), length=30), 4096),    # lying length
                (rd(many, d, 0, 4096, plus), 4096),
            ]
            seen: Records = []
            for request, room in steps:
                reply = await _same(on, off, request, room)
                if len(reply) > HDR and abi.fuse_out_header.unpack_from(reply)[1] == 0:
                    seen += _records(reply, plus)
            for c in (on, off):
                await _forget(c, r, _counts(seen))
        assert on.device.tree.statistics().inodes == off.device.tree.statistics().inodes
        after = on.device.meta.statistics()
        assert after["readdirs"] - before["readdirs"] >= 12
        assert after["handed"] - before["handed"] >= 20


async def _records_of_listing(c: Any, r: Requests, node: int, room: int) -> Records:
    fh = parse_open(await c.ok(r.opendir(node)))[0]
    recs, _ = await _listing(c, r, node, fh, room, True)
    await c.ok(r.releasedir(node, fh))
    return recs


def _comparable(recs: Records) -> list[tuple[bytes, int, int, tuple[int, ...] | None]]:
    """A listing without its reply boundaries: each record's name, ino, cookie and the
    entry's node id and attributes (the timeouts are the tree's either way)."""
    return [(n, ino, off, None if e is None else (e.nodeid, *e.attr)) for n, ino, off, e in recs]


async def test_undecided_entries_end_the_reply_and_python_goes_on(
        fs_client: Callable[..., Any], tmp_path: Path) -> None:
    """Entries C cannot decide after it counted lookups (a bound reached: the inode table
    is full) end its reply; the guest asks again from there and Python answers: the whole
    listing is the same records with the same lookup counts as Python alone gives."""
    root = tmp_path / "root"
    root.mkdir()
    d = root / "d"
    d.mkdir()
    for i in range(300):
        (d / f"e{i:03}").write_bytes(b"")
    # Room for about a third of the names: the rest are past the bound (the tree
    # skips them: ENFILE), C has to hand them to Python mid-listing.
    async with fs_client(root, max_inodes=100) as on, fs_client(root, max_inodes=100) as off:
        off.device.meta.enabled = False
        r = Requests()
        node = await _lookup_both(on, off, r, ROOT, b"d")
        lists = [await _records_of_listing(c, r, node, 4096) for c in (on, off)]
        assert _comparable(lists[0]) == _comparable(lists[1])
        assert 50 < len(lists[0]) < 302   # some skipped: the bound was really reached
        assert on.device.tree.statistics().inodes == off.device.tree.statistics().inodes
        served = on.device.meta.statistics()
        assert served["readdirs"] > 0 and served["handed"] > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_mount_point_in_a_listing_is_python_s(fs_client: Callable[..., Any],
                                                     tmp_path: Path) -> None:
    """A subdirectory that is a mount point: C does not decide it (the tree tags another
    filesystem's inode numbers, submount rules); the listing is Python's records."""
    root = tmp_path / "root"
    (root / "d" / "mnt").mkdir(parents=True)
    for i in range(200):
        (root / "d" / f"e{i:03}").write_bytes(b"")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(root / "d" / "mnt")],
                   check=True)
    try:
        async with fs_client(root) as on, fs_client(root) as off:
            off.device.meta.enabled = False
            r = Requests()
            node = await _lookup_both(on, off, r, ROOT, b"d")
            lists = [await _records_of_listing(c, r, node, 4096) for c in (on, off)]
            assert _comparable(lists[0]) == _comparable(lists[1])
            mnt = [e for n, _i, _o, e in lists[0] if n == b"mnt"]
            # the tree's tagged inode number of another filesystem (C has no such rule)
            assert mnt and mnt[0].attr[0] != os.stat(root / "d" / "mnt").st_ino
            assert on.device.meta.statistics()["readdirs"] > 0
            assert on.device.tree.statistics().inodes == off.device.tree.statistics().inodes
    finally:
        subprocess.run(["umount", str(root / "d" / "mnt")], check=True)


@pytest.mark.parametrize("c_path", [True, False])
async def test_host_changes_mid_listing(fs_client: Callable[..., Any], tmp_path: Path,
                                        c_path: bool) -> None:
    """Names removed, added and renamed on the host between two requests of a listing:
    no name twice, every untouched name once, removed ones listed only before their
    removal could be seen, and every lookup counted is one the guest learnt of (all
    forgotten, nothing is left). Python caches a batch and C reads afresh, so when a
    change shows differs between the two (both are what readdir(3) allows): the rule
    is checked on each."""
    d = tmp_path / "d"
    d.mkdir()
    names = [f"e{i:04}" for i in range(600)]
    for n in names:
        (d / n).write_bytes(b"")
    async with fs_client(tmp_path) as c:
        c.device.meta.enabled = c_path
        r = c.r
        base = c.device.tree.statistics().inodes
        node = parse_entry(await c.ok(r.lookup(ROOT, b"d"))).nodeid
        fh = parse_open(await c.ok(r.opendir(node)))[0]
        recs: Records = []
        offset, k = 0, 0
        while True:
            done = await c.raw([r.readdir(node, fh, offset, 4096, plus=True)], [4096 + HDR])
            got = _records(bytes(done.data[:done.used_len]), True)
            if not got:
                break
            recs += got
            offset = got[-1][2]
            k += 1
            if k == 2:  # mid-listing: remove some, add some, rename some
                for n in names[::10]:
                    os.unlink(d / n)
                for i in range(50):
                    (d / f"new{i}").write_bytes(b"")
                for n in names[5::10]:
                    os.rename(d / n, d / f"r-{n}")
        await c.ok(r.releasedir(node, fh))
        listed = [n.decode() for n, _i, _o, _e in recs if n not in (b".", b"..")]
        assert len(listed) == len(set(listed))
        touched = set(names[::10]) | set(names[5::10])
        assert {n for n in names if n not in touched} <= set(listed)
        assert set(listed) <= set(names) | {f"new{i}" for i in range(50)} | {
            f"r-{n}" for n in names[5::10]}
        assert all(e.nodeid for n, _i, _o, e in recs if n not in (b".", b".."))
        await _forget(c, r, _counts(recs))
        await _forget(c, r, {node: 1})
        assert c.device.tree.statistics().inodes == base
        assert (c.device.meta.statistics()["readdirs"] > 0) == c_path


async def test_one_handle_from_four_queues_at_once(fs_client: Callable[..., Any],
                                                    tmp_path: Path) -> None:
    """A hostile guest reads one directory handle from four queues at once, each from its
    own cookies: every reply is the records from its own cookie (the seek and the reads
    of one request are one step under the stream's lock), nothing crashes, and with the
    lookups forgotten nothing is left. Then three queues read handles a fourth releases:
    each reply is a listing or EBADF, and no fd stays open."""
    d = tmp_path / "d"
    d.mkdir()
    for i in range(400):
        (d / f"e{i:03}").write_bytes(b"")
    async with fs_client(tmp_path, request_queues=4) as c:
        r = c.r
        tree = c.device.tree
        base_inodes, base_fds = tree.statistics().inodes, _fds()
        node = parse_entry(await c.ok(r.lookup(ROOT, b"d"))).nodeid
        fh = parse_open(await c.ok(r.opendir(node)))[0]
        ref, _ = await _listing(c, r, node, fh, 4096, True)
        after = {ref[i - 1][2] if i else 0: [x[0] for x in ref[i:]] for i in range(len(ref))}
        cookies = list(after)
        counts: dict[int, int] = dict(_counts(ref))
        before = c.device.meta.statistics()["readdirs"]

        async def reader(q: int) -> None:
            for k in range(0, 48, 8):
                reqs = [cookies[(q * 37 + k + j) * 13 % len(cookies)] for j in range(8)]
                done = await c.fe.submit_many(
                    q, [([r.readdir(node, fh, off, 2048, plus=True)], [2048 + HDR]) for off in reqs])
                for off, dn in zip(reqs, done, strict=True):
                    got = _records(bytes(dn.data[:dn.used_len]), True)
                    assert got and [x[0] for x in got] == after[off][:len(got)]
                    for kk, v in _counts(got).items():
                        counts[kk] = counts.get(kk, 0) + v

        async with trio.open_nursery() as nursery:
            for q in range(1, 5):
                nursery.start_soon(reader, q)
        assert c.device.meta.statistics()["readdirs"] - before == 4 * 48
        await c.ok(r.releasedir(node, fh))

        for _ in range(3):
            fhs = [parse_open(await c.ok(r.opendir(node)))[0] for _ in range(24)]
            errors: list[int] = []

            async def lister(q: int, fhs: list[int] = fhs, errors: list[int] = errors) -> None:
                for k in range(0, len(fhs), 8):
                    done = await c.fe.submit_many(
                        q, [([r.readdir(node, h, 0, 2048, plus=True)], [2048 + HDR])
                            for h in fhs[k:k + 8]])
                    for dn in done:
                        reply = bytes(dn.data[:dn.used_len])
                        err = abi.fuse_out_header.unpack_from(reply)[1]
                        errors.append(err)
                        if err == 0:
                            got = _records(reply, True)
                            assert [x[0] for x in got] == after[0][:len(got)]
                            for kk, v in _counts(got).items():
                                counts[kk] = counts.get(kk, 0) + v

            async def releaser(fhs: list[int] = fhs) -> None:
                for k in range(0, len(fhs), 8):
                    await c.fe.submit_many(4, [([r.releasedir(node, h)], [64]) for h in fhs[k:k + 8]])

            async with trio.open_nursery() as nursery:
                for q in (1, 2, 3):
                    nursery.start_soon(lister, q)
                nursery.start_soon(releaser)
            assert len(errors) == 3 * 24 and set(errors) <= {0, -errno.EBADF}
        await _forget(c, r, counts)
        await _forget(c, r, {node: 1})
        assert tree.statistics().handles == 0
        assert tree.statistics().inodes == base_inodes
        assert _fds() == base_fds


async def test_python_and_c_take_turns_on_one_handle(fs_client: Callable[..., Any],
                                                     tmp_path: Path) -> None:
    """Python keeps a handle's last getdents batch and C reads the same fd in between
    (here by turning the C path off and on between requests, as undecided entries hand
    requests over): a listing Python resumes past its batch still reads on from its own
    cookie, not from wherever C left the fd's position."""
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3000):  # several of Python's 32 KiB getdents batches
        (d / f"entry-{i:05}-{'x' * 20}").write_bytes(b"")
    async with fs_client(tmp_path) as c:
        r = c.r
        node = parse_entry(await c.ok(r.lookup(ROOT, b"d"))).nodeid
        fh = parse_open(await c.ok(r.opendir(node)))[0]
        c.device.meta.enabled = False
        ref, _ = await _listing(c, r, node, fh, 4096, False)
        assert len(ref) == 3002
        done = await c.raw([r.readdir(node, fh, 0, 4096)], [4096 + HDR])
        first = _records(bytes(done.data[:done.used_len]), False)  # Python: a batch kept
        c.device.meta.enabled = True
        before = c.device.meta.statistics()["readdirs"]
        # C reads from the middle: the fd's position is left there
        await c.raw([r.readdir(node, fh, ref[2000][2], 4096)], [4096 + HDR])
        assert c.device.meta.statistics()["readdirs"] == before + 1
        c.device.meta.enabled = False
        rest, _ = await _listing(c, r, node, fh, 4096, False, offset=first[-1][2])
        assert [x[0] for x in first + rest] == [x[0] for x in ref]
        await c.ok(r.releasedir(node, fh))


async def test_kept_batches_never_answer_for_another_handle(fs_client: Callable[..., Any],
                                                            tmp_path: Path) -> None:
    """C keeps each handle's last batch in a few slots shared by all handles: twenty
    handles on twenty directories, read a request at a time in turn (so handles share
    slots and take them from each other), each list only their own directory; offset 0
    reads the directory afresh (a name removed since is not listed). On tmpfs when there
    is one: its cookies are small numbers every directory shares, so another handle's
    batch would hold the very cookie asked for."""
    base = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else tmp_path
    try:
        await _kept_batches(fs_client, base)
    finally:
        if base != tmp_path:
            shutil.rmtree(base)


async def _kept_batches(fs_client: Callable[..., Any], root: Path) -> None:
    dirs = []
    for k in range(20):
        d = root / f"d{k}"
        d.mkdir()
        for i in range(120):
            (d / f"k{k}-{i}").write_bytes(b"")
        dirs.append(d)
    async with fs_client(root) as c:
        r = c.r
        nodes = [parse_entry(await c.ok(r.lookup(ROOT, d.name.encode()))).nodeid for d in dirs]
        fhs = [parse_open(await c.ok(r.opendir(n)))[0] for n in nodes]
        before = c.device.meta.statistics()["readdirs"]
        listed: list[list[bytes]] = [[] for _ in dirs]
        offsets = [0] * len(dirs)
        counts: dict[int, int] = {}
        live = set(range(len(dirs)))
        while live:
            for k in sorted(live):
                done = await c.raw([r.readdir(nodes[k], fhs[k], offsets[k], 2048, plus=True)],
                                   [2048 + HDR])
                got = _records(bytes(done.data[:done.used_len]), True)
                if not got:
                    live.discard(k)
                    continue
                listed[k] += [x[0] for x in got]
                offsets[k] = got[-1][2]
                for kk, v in _counts(got).items():
                    counts[kk] = counts.get(kk, 0) + v
        for k, d in enumerate(dirs):
            assert sorted(listed[k]) == sorted([b".", b".."] + [p.name.encode() for p in d.iterdir()])
        assert c.device.meta.statistics()["readdirs"] - before > 20 * 8
        await _forget(c, r, counts)
        # rewinddir: the batch read from offset 0 is not used again for offset 0
        fh = parse_open(await c.ok(r.opendir(nodes[1])))[0]
        done = await c.raw([r.readdir(nodes[1], fh, 0, 512)], [512 + HDR])  # part of a batch
        first = _records(bytes(done.data[:done.used_len]), False)
        assert 0 < len(first) < 30
        os.unlink(dirs[1] / "k1-5")
        again, _ = await _listing(c, r, nodes[1], fh, 4096, False)
        assert b"k1-5" not in [x[0] for x in again] and len(again) == 121
