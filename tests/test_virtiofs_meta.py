"""The C metadata path (csrc/fuse_meta.c) answers LOOKUP, GETATTR, FORGET,
BATCH_FORGET, STATFS and FLUSH exactly as the Python codec and tree do: the same ordinary and hostile
request sequences go through a device with the C path on and one with it off, over the
same directory, through the in-tree vhost-user frontend, and every reply must be the
same bytes (and every table the same size). Also: the C path really answered (its
counters), and the policy's attribute shape reaches it (one definition)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from msbfs.fuse import abi
from msbfs.fuse.kernel import Opcode, Requests, parse_attr_out, parse_entry, parse_open
from msbfs.tree import Policy

ROOT = 1
HIPRIO, REQ = 0, 1
U64 = (1 << 64) - 1
ENTRY_ROOM = abi.fuse_out_header.size + abi.FUSE_ENTRY_OUT_SIZE


def _populate(root: Path) -> None:
    (root / "a").write_bytes(b"hello")
    os.link(root / "a", root / "b")
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"")
    (root / "s").symlink_to("../../etc")
    (root / "setid").write_bytes(b"")
    os.chmod(root / "setid", 0o6755)
    os.mkfifo(root / "fifo")
    if os.geteuid() == 0:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / ("n" * 255)).write_bytes(b"")
    (root / "m" / "k").mkdir(parents=True)


Step = tuple[bytes, list[int], int]  # request, reply buffer sizes, queue
#: A host-side change at that point of the sequence (run for each device in turn).
HostStep = Callable[[], None]


def _script(r: Requests, ids: dict[str, int], root: Path) -> list[Step | HostStep]:
    """One sequence; node ids looked up earlier come from ``ids`` (both devices count
    the same, or the replies already differed)."""
    def look(parent: int, name: bytes, room: int = 4096) -> Step:
        return (r.lookup(parent, name), [room], REQ)

    body = abi.fuse_getattr_in.pack
    steps: list[Step | HostStep] = []
    for name in (b"a", b"b", b"d", b"s", b"setid", b"fifo", b"null", b"n" * 255, b"a"):
        steps.append(look(ROOT, name))
    steps += [
        # names C must hand back, or answer as Python does
        look(ROOT, b"missing"), look(ROOT, b""), look(ROOT, b"."), look(ROOT, b".."),
        look(ROOT, b"x/y"), look(ROOT, b"n" * 256), look(ROOT, b"m" * 255),
        (r.raw(Opcode.LOOKUP, ROOT, b"a"), [4096], REQ),            # no NUL
        (r.raw(Opcode.LOOKUP, ROOT, b"a\0trailing"), [4096], REQ),  # bytes after it
        (r.raw(Opcode.LOOKUP, ROOT, b""), [4096], REQ),             # no name at all
        (r.raw(Opcode.LOOKUP, ROOT, b"a\0", length=30), [4096], REQ),  # lying length
        (r.raw(Opcode.LOOKUP, ROOT, b"a\0", extlen=1), [4096], REQ),
        look(ROOT, b"a", room=ENTRY_ROOM - 1), look(ROOT, b"a", room=16),
        look(0, b"a"), look(U64, b"a"), look(999, b"a"), look(ids.get("a", 2), b"x"),
        look(ids.get("d", 3), b"f"), look(ids.get("s", 4), b"x"),
        # "..": the tree's (the root's is the root; moved out of the root: ENOENT)
        look(ids.get("k", 5), b".."), look(ids.get("m", 5), b".."), look(ids.get("k", 5), b"."),
        lambda: os.rename(root / "m", root.parent / "moved"),
        look(ids.get("k", 5), b".."), look(ids.get("m", 5), b".."),
        lambda: os.rename(root.parent / "moved", root / "m"),
        # GETATTR: ordinary, unknown ids, truncated and long bodies, with a handle
        (r.getattr(ROOT), [4096], REQ), (r.getattr(0), [4096], REQ),
        (r.getattr(U64), [4096], REQ), (r.getattr(999), [4096], REQ),
        (r.raw(Opcode.GETATTR, ROOT, b""), [4096], REQ),
        (r.raw(Opcode.GETATTR, ROOT, body(0, 0)[:8]), [4096], REQ),
        (r.raw(Opcode.GETATTR, ROOT, body(0, 0) + b"extra..."), [4096], REQ),
        (r.raw(Opcode.GETATTR, ROOT, body(abi.FUSE_GETATTR_FH, 12345)), [4096], REQ),
        (r.getattr(ROOT), [16], REQ), (r.getattr(ROOT), [100], REQ),
        # STATFS: the host's figures (no quota here), any node, room checked
        (r.raw(Opcode.STATFS, ROOT), [4096], REQ), (r.raw(Opcode.STATFS, ids.get("d", 3)), [4096], REQ),
        (r.raw(Opcode.STATFS, 999), [4096], REQ), (r.raw(Opcode.STATFS, ROOT), [95], REQ),
        (r.raw(Opcode.STATFS, ROOT, b"junk"), [4096], REQ),
    ]
    for name in ("a", "d", "s", "setid", "fifo", "null", "long"):
        if name in ids:
            steps.append((r.getattr(ids[name]), [4096], REQ))
    a = ids.get("a", 2)
    steps += [
        # FORGET on hiprio (no reply room, as a Linux guest sends it): hostile counts
        (r.forget(999, 1), [], HIPRIO), (r.forget(0, 1), [], HIPRIO),
        (r.forget(U64, U64), [], HIPRIO), (r.forget(ROOT, U64), [], HIPRIO),
        (r.raw(Opcode.FORGET, a, b"\1\0\0\0"), [], HIPRIO),  # short body
        (r.raw(Opcode.FORGET, a, b"\1\0\0\0"), [64], HIPRIO),
        (r.forget(a, 1), [64], REQ),
        (r.batch_forget([(999, 1), (0, 5), (U64, U64)]), [], HIPRIO),
        (r.raw(Opcode.BATCH_FORGET, 0, abi.fuse_batch_forget_in.pack(5)
               + abi.fuse_forget_one.pack(a, 1)), [], HIPRIO),    # count > body
        (r.raw(Opcode.BATCH_FORGET, 0, b"\1\0"), [], HIPRIO),        # short
        (r.batch_forget([]), [], HIPRIO),
        (r.getattr(a), [4096], REQ), look(ROOT, b"a"),
        # more than held: the inode goes, a new lookup gets a new id
        (r.forget(a, U64), [], HIPRIO), (r.getattr(a), [4096], REQ), look(ROOT, b"b"),
        (r.batch_forget([(ids.get("d", 3), 1), (ids.get("s", 4), 2)]), [], HIPRIO),
        look(ROOT, b"d"), look(ROOT, b"s"), (r.getattr(ids.get("d", 3)), [4096], REQ),
    ]
    return steps


async def _both(on: Any, off: Any, steps: list[Step | HostStep]) -> int:
    """Each request to both devices in turn, each host change once (between requests,
    so both see the same host); the replies compared as they come. Returns the steps."""
    for i, step in enumerate(steps):
        if callable(step):
            step()
            continue
        request, sizes, queue = step
        got = []
        for c in (on, off):
            done = await c.raw([request], sizes, queue=queue)
            got.append((done.used_len, _steady(request, bytes(done.data[:done.used_len]))))
        assert got[0] == got[1], f"step {i}: C {got[0]!r} != Python {got[1]!r}"
    return len(steps)


_STATFS_REPLY = abi.fuse_out_header.size + 80


def _steady(request: bytes, reply: bytes) -> bytes:
    """A STATFS reply without its free counts (bfree, bavail, ffree): anything on the
    host filesystem (writeback of earlier tests' files) moves them between the two
    devices' calls. Every other byte, and the counts' presence, is compared."""
    if int.from_bytes(request[4:8], "little") != Opcode.STATFS or len(reply) != _STATFS_REPLY:
        return reply
    return reply[:24] + bytes(16) + reply[40:48] + bytes(8) + reply[56:]


async def _ids(c: Any) -> dict[str, int]:
    ids = {}
    for key, name in (("a", b"a"), ("d", b"d"), ("s", b"s"), ("setid", b"setid"),
                      ("fifo", b"fifo"), ("null", b"null"), ("long", b"n" * 255),
                      ("m", b"m")):
        reply = await c.call(c.r.lookup(ROOT, name))
        if reply.error == 0:
            ids[key] = parse_entry(reply.payload).nodeid
    ids["k"] = parse_entry(await c.ok(c.r.lookup(ids["m"], b"k"))).nodeid
    return ids


POLICIES = {
    "default": Policy(),
    "nosuid-nodev": Policy(nosuid=True, nodev=True),
    "squash": Policy(squash_uid=4242, squash_gid=4343),
    "quota": Policy(quota_bytes=64 << 20, quota_inodes=500),  # STATFS stays Python's
}


@pytest.mark.parametrize("policy", list(POLICIES))
async def test_c_and_python_reply_the_same_bytes(fs_client: Callable[..., Any],
                                                  tmp_path: Path, policy: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _populate(root)
    async with fs_client(root, POLICIES[policy]) as on, fs_client(root, POLICIES[policy]) as off:
        off.device.meta.enabled = False
        assert on.device.meta.enabled
        ids_on, ids_off = await _ids(on), await _ids(off)
        assert ids_on == ids_off
        assert await _both(on, off, _script(Requests(), ids_on, root)) > 50
        assert on.device.tree.statistics().inodes == off.device.tree.statistics().inodes
        served = on.device.meta.statistics()
        assert served["lookups"] > 5 and served["lookups_new"] > 0
        assert served["getattrs"] > 5 and served["forgets"] > 5 and served["handed"] > 5
        assert served["statfs"] >= (0 if policy == "quota" else 2)
        assert off.device.meta.statistics()["lookups"] == 0


async def test_policy_shape_reaches_the_c_path(fs_client: Callable[..., Any],
                                              tmp_path: Path) -> None:
    """What the differential test cannot see if both sides drop a rule together: the
    replies C gives really are shaped (nosuid mask, nodev rdev, squash)."""
    _populate(tmp_path)
    policy = Policy(nosuid=True, nodev=True, squash_uid=4242, squash_gid=4343)
    async with fs_client(tmp_path, policy) as c:
        before = c.device.meta.statistics()
        setid = parse_entry(await c.ok(c.r.lookup(ROOT, b"setid")))
        attr = parse_attr_out(await c.ok(c.r.getattr(setid.nodeid)))[1]
        assert setid.mode & 0o7777 == attr[9] & 0o7777 == 0o755
        assert (attr[11], attr[12]) == (4242, 4343) == setid.attr[11:13]
        if os.geteuid() == 0:
            null = parse_entry(await c.ok(c.r.lookup(ROOT, b"null")))
            assert null.attr[13] == 0 and stat.S_ISCHR(null.mode)
        after = c.device.meta.statistics()
        assert after["lookups"] > before["lookups"] and after["getattrs"] > before["getattrs"]


async def test_id_mapped_trees_stay_in_python(fs_client: Callable[..., Any],
                                             tmp_path: Path) -> None:
    """A rule C does not implement (an id map) keeps every request in Python."""
    from msbfs.tree.idmap import IdMap
    _populate(tmp_path)
    async with fs_client(tmp_path, uid_map=IdMap(["map:0:1000:1"])) as c:
        assert not c.device.meta.available
        await c.ok(c.r.lookup(ROOT, b"a"))
        assert c.device.meta.statistics() == {}


async def test_lookups_and_forgets_on_four_queues_balance(fs_client: Callable[..., Any],
                                                         tmp_path: Path) -> None:
    """Four request queues, each on its own serving thread, look up the same names and
    forget them again at once: the C table's counts stay exact under concurrency (every
    inode goes at the end, its fd closed), and the C path answered all of them."""
    import trio
    names = [b"f%d" % i for i in range(48)]
    for n in names:
        (tmp_path / n.decode()).write_bytes(b"")
    rounds = 6
    async with fs_client(tmp_path, request_queues=4) as c:
        tree = c.device.tree
        base_inodes, base_fds = tree.statistics().inodes, _fds()
        before = c.device.meta.statistics()
        r = c.r

        async def one_queue(q: int) -> None:
            for _ in range(rounds):
                done = []
                for k in range(0, len(names), 16):  # two descriptors each: a 64-entry ring
                    done += await c.fe.submit_many(
                        q, [([r.lookup(ROOT, n)], [4096]) for n in names[k:k + 16]])
                ids = [parse_entry(bytes(d.data[16:d.used_len])).nodeid for d in done]
                for k in range(0, len(ids), 16):  # each named node opened (its first use)
                    await c.fe.submit_many(
                        q, [([r.getattr(i)], [4096]) for i in ids[k:k + 16]])
                await c.fe.submit_many(q, [([r.batch_forget([(i, 1) for i in ids])], [])])

        async with trio.open_nursery() as nursery:
            for q in range(1, 5):
                nursery.start_soon(one_queue, q)
        after = c.device.meta.statistics()
        assert after["lookups"] - before["lookups"] == 4 * rounds * len(names)
        assert after["forgets"] - before["forgets"] == 4 * rounds * len(names)
        assert tree.statistics().inodes == base_inodes
        assert tree.statistics().extra["inode_fds"] == base_inodes  # one fd each, no more
        assert _fds() == base_fds


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _handle_fds(*clients: Any) -> int:
    """The process's fds but the inode tables' own: a named node gets its fd at its
    first use (csrc/inodes.h) and keeps it until forgotten, so what a handle test
    checks (every fd an OPEN made is closed at its RELEASE) is the rest."""
    return _fds() - sum(c.device.tree.statistics().extra["inode_fds"] for c in clients)


_FLOCK = struct.Struct("@hhqqi4x")  # struct flock


def _host_can_lock(path: Path) -> bool:
    """Whether a host process could write-lock bytes 0..99 of ``path`` now (an OFD lock
    of a description of its own: it conflicts with every lock the daemon holds)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 100, 0))
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # its own locks go with the description
    return True


async def test_flush_in_c_replies_as_python(fs_client: Callable[..., Any],
                                           tmp_path: Path) -> None:
    """FLUSH of handles in the C handle table is answered in C (no record lock held)
    with Python's bytes; everything else (directory handles, unknown or released
    handles, odd sizes, extensions) is handed back and answered as before."""
    root = tmp_path / "root"
    root.mkdir()
    _populate(root)
    async with fs_client(root) as on, fs_client(root) as off:
        off.device.meta.enabled = False
        r = Requests()
        ids = await _ids(on)
        assert ids == await _ids(off)
        a = ids["a"]
        fhs = []
        for q in (r.open(a, os.O_RDWR), r.open(a, os.O_RDONLY), r.open(a, os.O_WRONLY),
                  r.opendir(ROOT)):
            got = [await c.ok(q) for c in (on, off)]
            assert got[0] == got[1]
            fhs.append(parse_open(got[0])[0])
        rw, ro, wo, d = fhs
        fl = abi.fuse_flush_in.pack
        steps: list[Step | HostStep] = [
            (r.flush(a, rw), [4096], REQ), (r.flush(a, ro, 7), [4096], REQ),
            (r.flush(a, wo, U64), [4096], REQ), (r.flush(999, rw), [4096], REQ),
            (r.flush(a, d), [4096], REQ), (r.flush(a, 999), [4096], REQ),
            (r.flush(a, U64), [4096], REQ), (r.flush(a, 0), [4096], REQ),
            (r.raw(Opcode.FLUSH, a, fl(rw, 0)[:8]), [4096], REQ),      # short body
            (r.raw(Opcode.FLUSH, a, b""), [4096], REQ),
            (r.raw(Opcode.FLUSH, a, fl(rw, 0) + b"trailing"), [4096], REQ),
            (r.raw(Opcode.FLUSH, a, fl(rw, 0), extlen=1), [4096], REQ),
            (r.raw(Opcode.FLUSH, a, fl(rw, 0), length=30), [4096], REQ),  # lying length
            (r.flush(a, rw), [15], REQ), (r.flush(a, rw), [16], REQ), (r.flush(a, rw), [8], REQ),
            (r.release(a, ro), [4096], REQ), (r.flush(a, ro), [4096], REQ),  # released
            (r.releasedir(ROOT, d), [4096], REQ), (r.flush(a, d), [4096], REQ),
        ]
        assert await _both(on, off, steps) == len(steps)
        served = on.device.meta.statistics()
        assert served["flushes"] >= 6 and served["handed"] >= 8
        assert off.device.meta.statistics()["flushes"] == 0


async def test_flush_with_record_locks_is_python_s(fs_client: Callable[..., Any],
                                                  tmp_path: Path) -> None:
    """While the tree holds any owner's lock description, FLUSH goes to Python, which
    drops the flushing owner's locks (a host process can take the range again); once
    none is held, C answers FLUSH again."""
    _populate(tmp_path)
    async with fs_client(tmp_path) as c:
        a = parse_entry(await c.ok(c.r.lookup(ROOT, b"a"))).nodeid
        fh = parse_open(await c.ok(c.r.open(a, os.O_RDWR)))[0]
        await c.ok(c.r.flush(a, fh, 7))
        n = c.device.meta.statistics()["flushes"]
        assert n == 1
        await c.ok(c.r.lk(Opcode.SETLK, a, fh, 7, 0, 99, fcntl.F_WRLCK))
        assert not _host_can_lock(tmp_path / "a")
        await c.ok(c.r.flush(a, fh, 8))  # another owner's flush: 7 keeps its lock
        assert not _host_can_lock(tmp_path / "a")
        await c.ok(c.r.flush(a, fh, 7))
        assert _host_can_lock(tmp_path / "a")
        assert c.device.meta.statistics()["flushes"] == n  # both went to Python
        await c.ok(c.r.flush(a, fh, 7))
        assert c.device.meta.statistics()["flushes"] == n + 1


async def test_flushes_in_c_race_releases_on_other_queues(fs_client: Callable[..., Any],
                                                          tmp_path: Path) -> None:
    """Three queues flush handles in C while a fourth releases them in Python: every
    FLUSH is answered 0 (C or Python: the handle was still open) or EBADF (released
    first), never anything else, and afterwards no fd is left (C's dup is closed, the
    released handles' fds too): the grace section keeps a RELEASE from closing an fd C
    is duplicating."""
    import trio
    (tmp_path / "a").write_bytes(b"x")
    n = 48
    async with fs_client(tmp_path, request_queues=4) as c:
        r = c.r
        a = parse_entry(await c.ok(r.lookup(ROOT, b"a"))).nodeid
        base_fds = _handle_fds(c)
        before = c.device.meta.statistics()["flushes"]
        for _ in range(4):
            fhs = [parse_open(await c.ok(r.open(a, os.O_RDWR)))[0] for _ in range(n)]
            errors: list[int] = []

            async def flusher(q: int, fhs: list[int] = fhs, errors: list[int] = errors) -> None:
                for k in range(0, n, 16):
                    done = await c.fe.submit_many(
                        q, [([r.flush(a, fh, q)], [64]) for fh in fhs[k:k + 16]])
                    errors += [abi.fuse_out_header.unpack_from(bytes(d.data[:16]))[1]
                               for d in done]

            async def releaser(fhs: list[int] = fhs) -> None:
                for k in range(0, n, 16):
                    await c.fe.submit_many(4, [([r.release(a, fh)], [64]) for fh in fhs[k:k + 16]])

            async with trio.open_nursery() as nursery:
                for q in (1, 2, 3):
                    nursery.start_soon(flusher, q)
                nursery.start_soon(releaser)
            assert len(errors) == 3 * n
            assert set(errors) <= {0, -errno.EBADF}
        assert c.device.meta.statistics()["flushes"] > before
        assert c.device.tree.statistics().handles == 0
        assert _handle_fds(c) == base_fds
