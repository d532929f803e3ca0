"""The C request loop (csrc/vdriver.c through vhost/cdriver.py) against a real
``msbfs serve`` on two request queues: thousands of GETATTRs, each reply checked in C
(unique, length, error field), with the loop's own claims checked from Python; a daemon
answering an error, and a reply of another length than expected, are counted. Cycles in
steps (CREATE of a fresh name, RELEASE of the node id and fh it returned, UNLINK) and a
whole READDIRPLUS listing, against the same daemon, their results checked on the host
directory. And on its own under ASan/UBSan (csrc/test_vdriver.c): a C device thread with
and without EVENT_IDX, wrapping ring indexes, a device answering stale uniques, lying
header lengths or heads not in flight, steps that fail, malformed listings."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import trio

from msbfs.fuse import abi
from msbfs.fuse.kernel import parse_entry
from tests.plugins.virtiofs import FuseClient, run_serve
from tools.fuzz.native import CSRC, sanitized_build
from vhost.cdriver import Carry, CLoop, LoopResult, Step, first_unique
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

ROOT = abi.FUSE_ROOT_ID
HDR = 16
ATTR_REPLY = HDR + abi.FUSE_ATTR_OUT_SIZE
DEPTH = 16
PER_QUEUE = 3200   # 200 posts of each chain


async def connect(sock: str) -> FuseClient:
    fe = await Frontend.connect(sock, GuestRam(((0, 16 << 20),)))
    await fe.handshake([DEPTH] * 3, slot_size=16 << 10)
    c = FuseClient(fe)
    await c.init()
    return c


async def on_queues(loops: list[CLoop], count: int, **kw: object) -> list[LoopResult]:
    """Every loop at once, each on its own thread."""
    results: list[LoopResult | None] = [None] * len(loops)

    async def one(i: int) -> None:
        results[i] = await loops[i].run(count, **kw)

    async with trio.open_nursery() as nursery:
        for i in range(len(loops)):
            nursery.start_soon(one, i)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def reply_headers(loop: CLoop) -> list[tuple[int, int, int]]:
    """(len, error, unique) of each chain's last reply, read from guest RAM."""
    return [abi.fuse_out_header.unpack(loop.q.ram.read(p.writable[0][0], HDR)) for p in loop.pending]


async def test_getattrs_on_two_queues_all_answered_and_checked(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    for i in range(DEPTH):
        (share / f"f{i}").write_bytes(b"x" * i)
    sock = str(tmp_path / "vfs.sock")
    with run_serve([f"--shared-dir={share}", "--num-request-queues=2", "--log-level=error"], sock):
        c = await connect(sock)
        ids = [parse_entry(await c.ok(c.r.lookup(ROOT, f"f{i}".encode()))).nodeid for i in range(DEPTH)]
        loops = [CLoop(c.fe.queues[q], [([c.r.getattr(nid)], [ATTR_REPLY]) for nid in ids])
                 for q in (1, 2)]
        for res in await on_queues(loops, PER_QUEUE, expect_len=ATTR_REPLY):
            assert res == LoopResult(PER_QUEUE, 0, 0, res.kicks, res.waits, 0)
            assert res.kicks >= 1 and res.waits >= 1
        # What C claimed, checked from Python: each chain's last reply is a success of
        # the attr length carrying the unique C last posted it with, every unique
        # posted once: the last DEPTH of the queue's count (a reply to an earlier post
        # would carry a smaller one).
        for loop in loops:
            heads = reply_headers(loop)
            assert [(n, e) for n, e, _ in heads] == [(ATTR_REPLY, 0)] * DEPTH
            assert [u for _, _, u in heads] == loop.last_uniques()
            start = first_unique(loop.q.index)
            assert sorted(loop.last_uniques()) == list(range(start + PER_QUEUE - DEPTH, start + PER_QUEUE))
            # the file's size in each reply: the chain asked for its own node
            sizes = [struct.unpack_from("<Q", loop.q.ram.read(p.writable[0][0] + HDR + 16 + 8, 8))[0]
                     for p in loop.pending]
            assert sizes == list(range(DEPTH))
        # the queues stay usable from Python afterwards
        for loop in loops:
            loop.close()
        assert parse_entry(await c.ok(c.r.lookup(ROOT, b"f3"), queue=2)).nodeid == ids[3]
        await c.fe.close()


async def test_error_replies_and_wrong_lengths_are_counted(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_bytes(b"")
    sock = str(tmp_path / "vfs.sock")
    with run_serve([f"--shared-dir={share}", "--num-request-queues=2", "--log-level=error"], sock):
        c = await connect(sock)
        nid = parse_entry(await c.ok(c.r.lookup(ROOT, b"f"))).nodeid
        # half the chains ask for a node id the daemon never gave out
        loop = CLoop(c.fe.queues[1], [([c.r.getattr(nid if i % 2 else 1 << 40)], [ATTR_REPLY])
                                      for i in range(DEPTH)])
        res = await loop.run(PER_QUEUE, expect_len=ATTR_REPLY)
        assert res.completed == PER_QUEUE and res.bad == 0
        assert res.errors == PER_QUEUE // 2
        assert res.last_error < 0  # msbfs: EBADF for a node id it never gave out
        loop.close()
        # the daemon's error is what the loop was told to expect: now the successes
        # are the unexpected ones
        loop = CLoop(c.fe.queues[2], [([c.r.getattr(nid if i % 2 else 1 << 40)], [ATTR_REPLY])
                                      for i in range(DEPTH)])
        res = await loop.run(PER_QUEUE, expect_error=res.last_error, expect_len=HDR)
        assert (res.completed, res.errors, res.bad) == (PER_QUEUE, PER_QUEUE // 2, 0)
        # ...and a success one byte longer than expected is bad, not an error
        res = await loop.run(PER_QUEUE, batch=1, expect_len=ATTR_REPLY + 1)
        assert (res.completed, res.errors, res.bad) == (PER_QUEUE, PER_QUEUE // 2, PER_QUEUE // 2)
        loop.close()
        await c.fe.close()


ENTRY_REPLY = HDR + abi.FUSE_ENTRY_OUT_SIZE
CREATE_STEP = Step(ENTRY_REPLY + 16, name_at=40 + 16 + 1, log_at=HDR)  # after fuse_create_in, "c"
RELEASE_CARRIES = (Carry(0, HDR, 1, 16), Carry(0, ENTRY_REPLY, 1, 40))  # node id, fh


async def test_cycles_carry_node_ids_and_handles_and_name_files_fresh(tmp_path: Path) -> None:
    share = tmp_path / "share"
    (share / "d").mkdir(parents=True)
    sock = str(tmp_path / "vfs.sock")
    with run_serve([f"--shared-dir={share}", "--num-request-queues=2", "--log-level=error"], sock):
        c = await connect(sock)
        d = parse_entry(await c.ok(c.r.lookup(ROOT, b"d"))).nodeid
        nm = b"c" + b"0" * 16
        # CREATE + RELEASE: the files stay, one per cycle, named by its number
        two = [([c.r.create(d, nm)], [ENTRY_REPLY + 16]), ([c.r.release(0, 0)], [HDR])] * (DEPTH // 2)
        loop = CLoop(c.fe.queues[1], two, steps=(CREATE_STEP, Step(HDR)), carries=RELEASE_CARRIES)
        res = await loop.run(50)
        assert (res.completed, res.errors, res.bad) == (100, 0, 0)
        assert sorted(p.name for p in (share / "d").iterdir()) == [f"c{i:016x}" for i in range(50)]
        ids = [parse_entry(await c.ok(c.r.lookup(d, f"c{i:016x}".encode()), queue=2)).nodeid
               for i in range(50)]
        assert sorted(res.log) == sorted(ids)
        # A RELEASE of node id 0 and fh 0 (nothing carried) fails: the carries are real.
        res = await loop.run(50, batch=1)
        assert (res.completed, res.errors, res.bad) == (100, 0, 0) and len(res.log) == 50
        loop.close()
        bare = CLoop(c.fe.queues[1], two, steps=(CREATE_STEP, Step(HDR)))
        res = await bare.run(5)
        assert res.completed == 10 and res.errors == 5 and res.last_error < 0
        bare.close()
        # CREATE + RELEASE + UNLINK: names go on from where they were, and go again
        three = [([c.r.create(d, nm)], [ENTRY_REPLY + 16]), ([c.r.release(0, 0)], [HDR]),
                 ([c.r.unlink(d, nm)], [HDR])] * (DEPTH // 3)
        loop = CLoop(c.fe.queues[1], three, steps=(CREATE_STEP, Step(HDR), Step(HDR, name_at=41)),
                     carries=RELEASE_CARRIES)
        loop.d.next_cycle = 105
        res = await loop.run(300)
        assert (res.completed, res.errors, res.bad) == (900, 0, 0) and len(res.log) == 300
        assert len(list((share / "d").iterdir())) == 100
        # numbered from 0 again: each CREATE opens a file the first loop made, the
        # UNLINK removes it
        loop.d.next_cycle = 0
        res = await loop.run(10)
        assert (res.completed, res.errors, res.bad) == (30, 0, 0)
        assert sorted(p.name for p in (share / "d").iterdir()) == [f"c{i:016x}" for i in range(10, 100)]
        loop.close()
        await c.fe.close()


async def test_listing_reads_every_record(tmp_path: Path) -> None:
    share = tmp_path / "share"
    (share / "big").mkdir(parents=True)
    for i in range(500):
        (share / "big" / f"entry-{i}").write_bytes(b"")
    sock = str(tmp_path / "vfs.sock")
    with run_serve([f"--shared-dir={share}", "--num-request-queues=2", "--log-level=error"], sock):
        c = await connect(sock)
        big = parse_entry(await c.ok(c.r.lookup(ROOT, b"big"))).nodeid
        fh = struct.unpack_from("<Q", await c.ok(c.r.opendir(big)))[0]
        loop = CLoop(c.fe.queues[1], [([c.r.readdir(big, 0, 0, 4096 - HDR, plus=True)], [4096])])
        loop.patch(0, 40, struct.pack("<Q", fh))
        res = await loop.list_dir(48, 4096, most=502)
        assert (res.entries, res.errors, res.bad) == (502, 0, 0)
        assert res.completed > 500 * 150 // 4096 + 1   # many requests, each from the last's end
        ids = {parse_entry(await c.ok(c.r.lookup(big, f"entry-{i}".encode()), queue=2)).nodeid
               for i in range(500)}
        assert len(res.log) == 500 and set(res.log) == ids
        # an fh the daemon never gave out: the error reply ends the listing, counted
        loop.patch(0, 40, struct.pack("<Q", fh + 1000))
        res = await loop.list_dir(48, 4096, most=502)
        assert (res.entries, res.errors, res.completed) == (0, 1, 1) and res.last_error < 0
        loop.close()
        await c.fe.close()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_vdriver_c_under_sanitizers(tmp_path: Path) -> None:
    exe = sanitized_build([CSRC / "test_vdriver.c"], tmp_path / "test_vdriver")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all passed" in r.stdout
