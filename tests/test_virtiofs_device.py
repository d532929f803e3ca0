"""The virtio-fs device through the in-tree vhost-user frontend (real socket, real guest
memory, real rings, a real tree): every opcode, the C data path, malformed chains."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

import trio

from msbfs.fuse import abi
from msbfs.fuse.abi import Opcode
from msbfs.fuse.kernel import (
    parse_attr_out,
    parse_dirents,
    parse_entry,
    parse_open,
    parse_reply,
    u32,
)
from msbfs.tree import Policy
from tests.plugins.threads import lock_waiters, until_async
from vhost.driver import F_NEXT, F_WRITE, Pending

ROOT = 1
HDR = 16


async def test_config_space_and_queues(fs_client, tmp_path: Path) -> None:
    async with fs_client(tmp_path) as c:
        cfg = await c.fe.get_config(0, 40)
        assert cfg is not None
        assert cfg[:36].rstrip(b"\0") == b"test"
        assert int.from_bytes(cfg[36:40], "little") == 1


async def test_every_opcode_through_the_rings(fs_client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    async with fs_client(src) as c:
        r = c.r
        d = parse_entry(await c.ok(r.mkdir(ROOT, b"d")))
        p = await c.ok(r.create(d.nodeid, b"f", 0o640, os.O_RDWR))
        f = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        assert u32(await c.ok(r.write(f.nodeid, fh, 0, b"abcdef"))) == 6
        assert await c.ok(r.read(f.nodeid, fh, 2, 100)) == b"cdef"
        assert (src / "d/f").read_bytes() == b"abcdef"
        assert parse_attr_out(await c.ok(r.getattr(f.nodeid)))[1][1] == 6
        await c.ok(r.setattr(f.nodeid, valid=1, mode=0o600))
        assert stat.S_IMODE(os.stat(src / "d/f").st_mode) == 0o600
        await c.ok(r.flush(f.nodeid, fh))
        await c.ok(r.fsync(f.nodeid, fh))
        await c.ok(r.fallocate(f.nodeid, fh, 0, 8192))
        assert abi.fuse_lseek_out.unpack(await c.ok(r.lseek(f.nodeid, fh, 0, os.SEEK_END)))[0] == 8192
        await c.ok(r.lk(Opcode.SETLK, f.nodeid, fh, 1, 0, 10, fcntl.F_WRLCK))
        got = abi.fuse_file_lock.unpack(await c.ok(r.lk(Opcode.GETLK, f.nodeid, fh, 2, 0, 10, fcntl.F_RDLCK)))
        assert got[2] == fcntl.F_WRLCK
        # SETLKW blocks in a worker thread; the queue keeps serving meanwhile
        async with trio.open_nursery() as n:
            res: list = []

            async def wait_lock() -> None:
                res.append(await c.call(r.lk(Opcode.SETLKW, f.nodeid, fh, 2, 0, 10, fcntl.F_WRLCK)))

            n.start_soon(wait_lock)
            # The SETLKW runs in a worker thread, which trio's scheduler cannot see: wait
            # until that thread sleeps in the kernel's lock wait.
            assert await until_async(lambda: bool(lock_waiters()))
            assert not res
            await c.ok(r.getattr(ROOT))  # other requests are answered while it waits
            await c.ok(r.lk(Opcode.SETLK, f.nodeid, fh, 1, 0, 10, fcntl.F_UNLCK))
        assert res[0].error == 0
        await c.ok(r.setxattr(f.nodeid, b"user.x", b"1"))
        assert await c.ok(r.getxattr(f.nodeid, b"user.x", 10)) == b"1"
        assert b"user.x\0" in await c.ok(r.listxattr(f.nodeid, 100))
        await c.ok(r.removexattr(f.nodeid, b"user.x"))
        p2 = await c.ok(r.create(ROOT, b"g"))
        g = parse_entry(p2[:abi.FUSE_ENTRY_OUT_SIZE])
        gfh, _ = parse_open(p2[abi.FUSE_ENTRY_OUT_SIZE:])
        assert u32(await c.ok(r.copy_file_range(f.nodeid, fh, 0, g.nodeid, gfh, 0, 6))) == 6
        assert (src / "g").read_bytes() == b"abcdef"
        await c.ok(r.release(f.nodeid, fh))
        await c.ok(r.release(g.nodeid, gfh))
        ofh, _ = parse_open(await c.ok(r.open(f.nodeid, os.O_RDONLY)))
        await c.ok(r.release(f.nodeid, ofh))
        t = await c.ok(r.tmpfile(ROOT))
        await c.ok(r.release(parse_entry(t[:abi.FUSE_ENTRY_OUT_SIZE]).nodeid, parse_open(t[abi.FUSE_ENTRY_OUT_SIZE:])[0]))
        ln = parse_entry(await c.ok(r.symlink(ROOT, b"ln", b"d/f")))
        assert await c.ok(r.readlink(ln.nodeid)) == b"d/f"
        await c.ok(r.link(g.nodeid, d.nodeid, b"g2"))
        await c.ok(r.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600))
        assert stat.S_ISFIFO(os.lstat(src / "fifo").st_mode)
        await c.ok(r.rename(ROOT, b"g", d.nodeid, b"g3"))
        await c.ok(r.rename2(d.nodeid, b"g3", ROOT, b"g4", 0))
        await c.ok(r.access(f.nodeid, os.R_OK))
        dfh, _ = parse_open(await c.ok(r.opendir(d.nodeid)))
        names = {n for n, *_ in parse_dirents(await c.ok(r.readdir(d.nodeid, dfh)))}
        assert names == {b".", b"..", b"f", b"g2"}
        plus = parse_dirents(await c.ok(r.readdir(d.nodeid, dfh, plus=True)), plus=True)
        assert {n for n, *_ in plus} == names
        await c.ok(r.fsyncdir(d.nodeid, dfh))
        await c.ok(r.releasedir(d.nodeid, dfh))
        st = abi.fuse_kstatfs.unpack(await c.ok(r.statfs()))
        assert st[5] > 0
        await c.ok(r.unlink(d.nodeid, b"f"))
        await c.ok(r.unlink(d.nodeid, b"g2"))
        await c.ok(r.rmdir(ROOT, b"d"))
        # no-reply opcodes go through the hiprio queue; the chain comes back with 0 bytes
        done = await c.raw([r.forget(ln.nodeid, 1)], [HDR], queue=0)
        assert done.used_len == 0
        done = await c.raw([r.batch_forget([(g.nodeid, 1)])], [HDR], queue=0)
        assert done.used_len == 0
        done = await c.raw([r.interrupt(7)], [HDR], queue=0)
        assert done.used_len == 0
        assert (await c.call(r.raw(Opcode.IOCTL, ROOT, b"\0" * 32))).error == errno.ENOSYS
        await c.ok(r.destroy())
        assert (await c.call(r.getattr(ROOT))).error == errno.EIO
        assert c.device.table.count == 0


async def test_c_data_path_serves_read_and_write(fs_client, tmp_path: Path) -> None:
    data = os.urandom(256 * 1024)
    (tmp_path / "big").write_bytes(data)
    async with fs_client(tmp_path, slot_size=600 * 1024) as c:
        r = c.r
        e = parse_entry(await c.ok(r.lookup(ROOT, b"big")))
        fh, _ = parse_open(await c.ok(r.open(e.nodeid, os.O_RDWR)))
        before = c.device.statistics()
        # the kernel's shape: header in one buffer, data in pages
        done = await c.raw([r.read(e.nodeid, fh, 4096, 65536)], [HDR] + [4096] * 16)
        rep = parse_reply(done.data)
        assert rep.error == 0 and rep.unique == r.last_unique and rep.payload == data[4096:4096 + 65536]
        # one buffer, and a short read at end of file
        rep = await c.call(r.read(e.nodeid, fh, len(data) - 100, 4096), 4096 + HDR)
        assert rep.payload == data[-100:]
        # write with the payload split over several readable buffers
        new = os.urandom(200 * 1024)
        req = r.write(e.nodeid, fh, 8192, new)
        split = [req[:80], req[80:1000], req[1000:]]
        rep = parse_reply((await c.raw(split, [24])).data)
        assert rep.error == 0 and u32(rep.payload) == len(new)
        assert (tmp_path / "big").read_bytes()[8192:8192 + len(new)] == new
        after = c.device.statistics()
        assert after["fast_reads"] - before["fast_reads"] == 2
        assert after["fast_writes"] - before["fast_writes"] == 1
        assert after["read_bytes"] - before["read_bytes"] == 65536 + 100
        # a READ asking more than the chain can hold is clamped by the slow path
        rep = await c.call(r.read(e.nodeid, fh, 0, 65536), 1000)
        assert rep.error == 0 and len(rep.payload) == 1000 - HDR
        assert c.device.statistics()["fast_reads"] == after["fast_reads"]
        await c.ok(r.release(e.nodeid, fh))
        # after RELEASE the handle is gone from C too: the slow path answers EBADF
        assert (await c.call(r.read(e.nodeid, fh, 0, 10))).error == errno.EBADF
        assert c.device.table.count == 0


async def test_slow_path_counts_what_it_answers_by_opcode(fs_client, tmp_path: Path) -> None:
    """The per-opcode count of the slow path (logged at exit by ``msbfs serve``) names
    exactly the requests the C paths handed back: a CREATE, FLUSH and RELEASE in C are
    not in it, a MKNOD and an FSYNC (Python's) are, once each."""
    async with fs_client(tmp_path) as c:
        r = c.r
        before = dict(c.device.slow_ops)
        p = await c.ok(r.create(ROOT, b"f", 0o644, os.O_WRONLY | os.O_EXCL))
        e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        await c.ok(r.flush(e.nodeid, fh))
        await c.ok(r.release(e.nodeid, fh))
        await c.ok(r.mknod(ROOT, b"p", stat.S_IFIFO | 0o600))
        p = await c.ok(r.create(ROOT, b"g"))
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        await c.ok(r.fsync(parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE]).nodeid, fh))
        grown = {op: n - before.get(op, 0) for op, n in c.device.slow_ops.items()
                 if n != before.get(op, 0)}
        assert grown == {Opcode.MKNOD: 1, Opcode.FSYNC: 1}
        assert "MKNOD=1" in c.device.slow_opcodes().split()
        # A hostile guest's made-up opcodes: one key for all of them, not one each.
        keys = len(c.device.slow_ops)
        for op in (4242, 52, 0, 1 << 31, 0xFFFFFFFF):
            assert (await c.call(r.raw(op, ROOT))).error == errno.ENOSYS
        assert len(c.device.slow_ops) == keys + 1 and c.device.slow_ops[-1] == 5
        assert "unknown=5" in c.device.slow_opcodes().split()


async def test_quota_keeps_writes_on_the_slow_path(fs_client, tmp_path: Path) -> None:
    async with fs_client(tmp_path, Policy(quota_bytes=1 << 20)) as c:
        r = c.r
        p = await c.ok(r.create(ROOT, b"f"))
        e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        chunk = b"x" * 60000
        errs = []
        for i in range(40):
            rep = await c.call(r.write(e.nodeid, fh, i * len(chunk), chunk), 24)
            errs.append(rep.error)
        assert (errs[0] == 0 and errno.ENOSPC in errs) or errno.EDQUOT in errs
        assert c.device.statistics()["fast_writes"] == 0
        assert (await c.ok(r.read(e.nodeid, fh, 0, 5))) == b"xxxxx"  # reads still fast
        assert c.device.statistics()["fast_reads"] == 1


async def test_malformed_chains_get_errors_and_the_device_keeps_serving(fs_client, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"hello")
    async with fs_client(tmp_path) as c:
        r = c.r
        e = parse_entry(await c.ok(r.lookup(ROOT, b"f")))
        fh, _ = parse_open(await c.ok(r.open(e.nodeid, os.O_RDWR)))
        bad = [
            ([r.raw(Opcode.READ, e.nodeid, abi.fuse_read_in.pack(fh, 0, 5, 0, 0, 0), length=200)], [64], errno.EINVAL),
            ([r.raw(Opcode.WRITE, e.nodeid, abi.fuse_write_in.pack(fh, 0, 1000, 0, 0, 0) + b"ab")], [64], errno.EINVAL),
            ([r.raw(Opcode.READ, e.nodeid, b"\0" * 8)], [64], errno.EINVAL),
            ([r.raw(Opcode.READ, e.nodeid, abi.fuse_read_in.pack(987654, 0, 5, 0, 0, 0))], [64], errno.EBADF),
            ([r.raw(Opcode.WRITE, e.nodeid, abi.fuse_write_in.pack(987654, 0, 1, 0, 0, 0) + b"a")], [64], errno.EBADF),
            ([r.raw(Opcode.READ, e.nodeid, abi.fuse_read_in.pack(fh, 1 << 63, 5, 0, 0, 0))], [64], errno.EINVAL),
            ([r.raw(4242, ROOT)], [64], errno.ENOSYS),
            ([r.raw(Opcode.LOOKUP, ROOT, b"x" * 100)], [64], errno.EINVAL),
        ]
        for readable, sizes, err in bad:
            rep = parse_reply((await c.raw(readable, sizes)).data)
            assert rep.error == err, (readable[0][:8], rep)
        # too short to carry a unique, or no room for any reply: used with 0 bytes
        assert (await c.raw([b"\1\2\3"], [64])).used_len == 0
        assert (await c.raw([r.getattr(ROOT)], [8])).used_len == 0
        assert (await c.raw([r.getattr(ROOT)], [])).used_len == 0
        # a reply bigger than the room: an error header instead
        rep = parse_reply((await c.raw([r.getattr(ROOT)], [40])).data)
        assert rep.error == errno.EINVAL
        # a chain whose readable part is absurdly long (3 MiB) is refused from its header
        q = c.fe.queues[1]
        big = c.fe.ram.alloc(3 << 20, 4096)
        c.fe.ram.write(big, r.getattr(ROOT))
        reply_at = c.fe.ram.alloc(64)
        d0, d1 = q.free_descs.pop(), q.free_descs.pop()
        q.write_desc(d0, big, 3 << 20, F_NEXT, d1)
        q.write_desc(d1, reply_at, 64, F_WRITE)
        p = Pending(d0, [d0, d1], q.free_slots.pop(), [(reply_at, 64)])
        q.inflight[d0] = p
        q.publish([d0])
        q.kick()
        rep = parse_reply((await q.wait(p)).data)
        assert rep.error == errno.EINVAL and rep.unique == r.last_unique
        # the device is still fine: good requests work, fast and slow
        assert parse_attr_out(await c.ok(r.getattr(e.nodeid)))[1][1] == 5
        assert await c.ok(r.read(e.nodeid, fh, 0, 5)) == b"hello"


async def test_a_broken_ring_stops_only_that_queue(fs_client, tmp_path: Path) -> None:
    async with fs_client(tmp_path) as c:
        q = c.fe.queues[1]
        q.write_desc(0, c.fe.ram.end() + 4096, 64, 0)  # outside guest memory
        q.publish([0])
        q.kick()
        with trio.fail_after(30):
            while not q.error_signalled():
                await trio.sleep(0)  # yield to the backend: no wall-clock wait
        # the other queue still answers
        done = await c.raw([c.r.getattr(ROOT)], [128], queue=0)
        assert parse_reply(done.data).error == 0
        await c.fe.restart_queue(1)
        assert (await c.call(c.r.getattr(ROOT))).error == 0


async def test_full_batches_of_slow_requests_never_lose_a_kick(fs_client, tmp_path: Path) -> None:
    """A kick's worth of exactly SLOW_BATCH slow requests, again and again: the device
    must pop until the ring is empty (re-arming EVENT_IDX kicks) before it waits."""
    from msbfs.virtiofs import SLOW_BATCH

    async with fs_client(tmp_path, queue_size=2 * SLOW_BATCH) as c:
        for _ in range(20):
            with trio.fail_after(30):
                done = await c.fe.submit_many(1, [([c.r.getattr(ROOT)], [128])] * SLOW_BATCH)
            assert all(parse_reply(d.data).error == 0 for d in done)


async def test_several_request_queues_share_one_session(fs_client, tmp_path: Path) -> None:
    async with fs_client(tmp_path, request_queues=3) as c:
        cfg = await c.fe.get_config(36, 4)
        assert cfg is not None and int.from_bytes(cfg, "little") == 3
        p = await c.ok(c.r.create(ROOT, b"shared"), queue=2)
        e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        chunks = {q: bytes([q]) * 4096 for q in (1, 2, 3)}
        async with trio.open_nursery() as n:
            for q, data in chunks.items():
                async def write(q: int = q, data: bytes = data) -> None:
                    reqs = [([c.r.write(e.nodeid, fh, (q * 8 + i) * 4096, data)], [24]) for i in range(8)]
                    for d in await c.fe.submit_many(q, reqs):
                        assert parse_reply(d.data).error == 0
                n.start_soon(write)
        content = (tmp_path / "shared").read_bytes()
        for q, data in chunks.items():
            assert content[q * 8 * 4096:(q * 8 + 8) * 4096] == data * 8
        await c.ok(c.r.release(e.nodeid, fh), queue=3)


async def test_a_setlkw_reply_is_dropped_when_its_ring_stopped_meanwhile(fs_client, tmp_path: Path) -> None:
    async with fs_client(tmp_path) as c:
        r = c.r
        p = await c.ok(r.create(ROOT, b"f"))
        e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        await c.ok(r.lk(Opcode.SETLK, e.nodeid, fh, 1, 0, 10, fcntl.F_WRLCK))
        q = c.fe.queues[1]
        q.post([r.lk(Opcode.SETLKW, e.nodeid, fh, 2, 0, 10, fcntl.F_WRLCK)], [64])
        q.kick()
        # The device parked it in a thread, and that thread waits for the lock.
        assert await until_async(lambda: c.device.deferred_running == 1 and bool(lock_waiters()))
        await c.fe.stop_queue(1)
        q.reset_rings()
        await c.fe.start_queue(1)  # a new ring where the old chain means nothing
        # owner 1 unlocks: the parked waiter gets the lock now, and its reply must not
        # land in the new ring (the frontend would see an unknown head)
        await c.ok(r.lk(Opcode.SETLK, e.nodeid, fh, 1, 0, 10, fcntl.F_UNLCK))
        assert await until_async(lambda: c.device.deferred_running == 0)
        # Replies on one ring are used in order: once a later request's reply is back,
        # a stale SETLKW reply pushed meanwhile would be in the ring before it.
        assert (await c.call(r.getattr(ROOT))).error == 0
        assert q.used_idx() == 2  # the unlock's and the getattr's replies only


async def test_o_direct_opens_still_serve_unaligned_io(fs_client, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789" * 100)
    async with fs_client(tmp_path) as c:
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"f")))
        fh, _ = parse_open(await c.ok(c.r.open(e.nodeid, os.O_RDWR | os.O_DIRECT)))
        assert await c.ok(c.r.read(e.nodeid, fh, 3, 7)) == b"3456789"  # unaligned offset/size
        assert u32(await c.ok(c.r.write(e.nodeid, fh, 5, b"xyz"))) == 3
        assert (tmp_path / "f").read_bytes()[:10] == b"01234xyz89"


async def test_randomised_read_write_chains_stay_in_bounds_and_match_a_model(fs_client, tmp_path: Path) -> None:
    """2,000 seeded random READ/WRITE chains (good and bad handles, lying sizes, odd
    buffer splits, offsets near 2^63) against a shadow model of the file. Every reply's
    length is its header's, nothing is written past it (canary bytes survive), and
    the file always equals the model."""
    import random

    rnd = random.Random(5)
    size0 = 64 * 1024
    model = bytearray(rnd.randbytes(size0))
    (tmp_path / "f").write_bytes(model)
    async with fs_client(tmp_path, slot_size=160 * 1024, queue_size=16) as c:
        r = c.r
        e = parse_entry(await c.ok(r.lookup(ROOT, b"f")))
        fh, _ = parse_open(await c.ok(r.open(e.nodeid, os.O_RDWR)))
        q = c.fe.queues[1]

        def split(total: int) -> list[int]:
            cuts = sorted(rnd.sample(range(1, total), min(rnd.randrange(0, 4), total - 1))) if total > 1 else []
            return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]

        for _ in range(2000):
            is_read = rnd.random() < 0.5
            handle = fh if rnd.random() < 0.8 else rnd.choice([0, fh + 1, 2**64 - 1])
            offset = rnd.choice([0, rnd.randrange(0, size0 + 4096), 2**63 - 1, 2**63, 2**64 - 1])
            if is_read:
                want = rnd.randrange(0, 40000)
                req = r.read(e.nodeid, handle, offset, want)
                room = rnd.choice([16, 100, want + 16, want + 16 + rnd.randrange(0, 5000), 8])
                data = b""
            else:
                data = rnd.randbytes(rnd.randrange(0, 40000))
                req = r.write(e.nodeid, handle, offset, data)
                if rnd.random() < 0.1:  # lie about the payload size
                    req = req[:56] + (len(data) + rnd.choice([-1, 1, 4096])).to_bytes(4, "little", signed=False) + req[60:] if data else req
                room = rnd.choice([24, 16, 8, 4096])
            readable, pos = [], 0
            for n in split(len(req)):
                readable.append(req[pos:pos + n])
                pos += n
            writable = split(room) if room > 0 else [room]
            p = q.post(readable, writable)
            for gpa, n in p.writable:
                c.fe.ram.fill(gpa, n, 0xA5)
            q.kick()
            with trio.fail_after(30):
                done = await q.wait(p)
            raw = b"".join(c.fe.ram.read(gpa, n) for gpa, n in p.writable)
            assert set(raw[done.used_len:]) <= {0xA5}, "written past the used length"
            if done.used_len == 0:
                assert room < 16
                continue
            rep = parse_reply(done.data)  # its header's length equals the used length
            if is_read and rep.error == 0:
                assert handle == fh and offset <= 2**63 - 1
                n = min(want, room - 16)
                assert rep.payload == bytes(model[offset:offset + n])
            elif not is_read and rep.error == 0:
                n = u32(rep.payload)
                assert handle == fh and n == len(data)
                end = offset + n
                if end > len(model):
                    model.extend(b"\0" * (end - len(model)))
                model[offset:end] = data
            else:
                assert rep.error in (errno.EBADF, errno.EINVAL, errno.EFBIG, errno.EOVERFLOW,
                                     errno.ENOSPC), rep
        await c.ok(r.release(e.nodeid, fh))
    assert (tmp_path / "f").read_bytes() == bytes(model)
