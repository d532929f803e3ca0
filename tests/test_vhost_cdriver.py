"""The C request loop (csrc/vdriver.c through vhost/cdriver.py) against a real
``msbfs serve`` on two request queues: thousands of GETATTRs, each reply checked in C
(unique, length, error field), with the loop's own claims checked from Python; a daemon
answering an error, and a reply of another length than expected, are counted. And on its
own under ASan/UBSan (csrc/test_vdriver.c): a C device thread with and without
EVENT_IDX, wrapping ring indexes, and a device answering stale uniques, lying header
lengths or heads not in flight."""

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
from vhost.cdriver import CLoop, LoopResult, first_unique
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


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_vdriver_c_under_sanitizers(tmp_path: Path) -> None:
    exe = sanitized_build([CSRC / "test_vdriver.c"], tmp_path / "test_vdriver")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all passed" in r.stdout
