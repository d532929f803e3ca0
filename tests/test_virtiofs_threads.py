"""Request queues served by their own threads (msbfs/virtiofs.py, vhost/backend.py,
csrc/grace.c), through the real frontend and a real ``VirtioFsDevice`` in this process.

- four queues at once: every reply right, and the C serve loops of different queues
  really ran at the same moment (a C counter of rounds running at once, not a timing);
- stopping a ring while its thread is in the middle of a batch: what was popped is
  answered, the base says where to resume, and a restart serves the rest;
- a memory table change while queues are busy: no crash, no reply lost or wrong;
- RELEASE on one queue while another queue reads the same handle: the freed fd number
  is reused by the next open (checked), yet no read ever returns the other file's data.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import trio
from msbfs._native import ffi, lib

from msbfs.fuse import abi
from msbfs.fuse.kernel import parse_entry, parse_open, parse_reply

ROOT = abi.FUSE_ROOT_ID
HDR = 16
K = 128 * 1024  # a big read: collected per round and read at its end (par_* in C)
DEADLINE = 120.0  # a failure bound only


def concurrency() -> tuple[int, int]:
    now, peak = ffi.new("int *"), ffi.new("int *")
    lib.msb_fs_concurrency(now, peak)
    return now[0], peak[0]


async def open_file(c, name: bytes, flags: int = os.O_RDONLY) -> tuple[int, int]:
    e = parse_entry(await c.ok(c.r.lookup(ROOT, name)))
    fh, _ = parse_open(await c.ok(c.r.open(e.nodeid, flags)))
    return e.nodeid, fh


def check_read(data: bytes, model: bytes, off: int) -> None:
    reply = parse_reply(data)
    assert reply.error == 0, reply
    assert reply.payload == model[off:off + K], f"wrong bytes at {off}"


async def test_four_queues_answer_at_once_and_their_c_loops_overlap(fs_client, tmp_path: Path) -> None:
    model = os.urandom(64 * K)
    (tmp_path / "f").write_bytes(model)
    async with fs_client(tmp_path, request_queues=4, slot_size=K + 8192, queue_size=32) as c:
        nodeid, fh = await open_file(c, b"f")
        lib.msb_fs_concurrency_reset()
        rng = random.Random(11)

        async def one_queue(q: int) -> None:
            offs = [rng.randrange(64) * K for _ in range(24)]
            reqs = [([c.r.read(nodeid, fh, o, K)], [HDR, K]) for o in offs]
            # slow ones in the same batch: the locked Python path from four threads
            reqs += [([c.r.getattr(nodeid)], [HDR + abi.FUSE_ATTR_OUT_SIZE])] * 8
            done = await c.fe.submit_many(q, reqs, indirect=True)
            for o, d in zip(offs, done, strict=False):
                check_read(d.data, model, o)
            for d in done[len(offs):]:
                assert parse_reply(d.data).error == 0

        rounds = 0
        with trio.move_on_after(DEADLINE):
            while concurrency()[1] < 2:
                async with trio.open_nursery() as n:
                    for q in range(1, 5):
                        n.start_soon(one_queue, q)
                rounds += 1
        assert concurrency()[1] >= 2, f"no two C loops ever ran at once in {rounds} rounds"
        st = c.device.statistics()
        assert st["fast_reads"] >= 24 * 4 and st["fast_errors"] == 0


def post_mixed(c, q, nodeid: int, fh: int, n: int, seed: int) -> list:
    """``n`` chains on queue ``q``: big READs (C) and GETXATTRs (the Python slow path,
    at most 32 a round: several rounds per batch) interleaved. (pending, offset or
    None) each."""
    out = []
    for i in range(n):
        if i % 4 == 0:
            o = ((i + seed) % 16) * K
            out.append((q.post([c.r.read(nodeid, fh, o, K)], [HDR, K], indirect=True), o))
        else:
            out.append((q.post([c.r.getxattr(nodeid, b"user.none", 64)], [HDR + 64],
                               indirect=True), None))
    return out


async def check_mixed(q, items: list, model: bytes) -> None:
    for p, o in items:
        data = (await q.wait(p)).data
        if o is None:
            assert parse_reply(data).error == errno.ENODATA, parse_reply(data)
        else:
            check_read(data, model, o)


async def test_stopping_a_ring_while_its_thread_serves_a_batch(fs_client, tmp_path: Path) -> None:
    model = os.urandom(16 * K)
    (tmp_path / "f").write_bytes(model)
    async with fs_client(tmp_path, request_queues=1, slot_size=K + 8192, queue_size=128) as c:
        nodeid, fh = await open_file(c, b"f")
        q = c.fe.queues[1]
        stops = 0
        with trio.move_on_after(DEADLINE):
            while c.device.statistics()["yields"] == 0:
                items = post_mixed(c, q, nodeid, fh, 128, stops)
                q.kick()
                base = await c.fe.stop_queue(1)
                stops += 1
                # Everything popped before the stop was answered: used == base.
                assert q.used_idx() == base
                await c.fe.start_queue(1, base=base)
                await check_mixed(q, items, model)
        # state, not time: the thread returned with chains still available
        assert c.device.statistics()["yields"] >= 1, f"no stop of {stops} came mid-batch"


async def test_memory_table_change_while_queues_are_busy(fs_client, tmp_path: Path) -> None:
    model = os.urandom(16 * K)
    (tmp_path / "f").write_bytes(model)
    async with fs_client(tmp_path, request_queues=2, slot_size=K + 8192, queue_size=128) as c:
        nodeid, fh = await open_file(c, b"f")
        changes = 0
        with trio.move_on_after(DEADLINE):
            while c.device.statistics()["yields"] == 0:
                pend = {}
                for qi in (1, 2):
                    pend[qi] = post_mixed(c, c.fe.queues[qi], nodeid, fh, 128, qi)
                    c.fe.queues[qi].kick()
                # SET_MEM_TABLE again: new mappings, the old ones unmapped once no thread
                # can be using them.
                await c.fe.set_memory()
                changes += 1
                # the old mappings are gone already: the change waited for the threads
                # instead of leaving the old memory pinned under them
                assert c.backend.memory.statistics()["retired"] == 0
                for qi, items in pend.items():
                    await check_mixed(c.fe.queues[qi], items, model)
        assert c.device.statistics()["yields"] >= 1, \
            f"no change of {changes} came while a queue's thread was mid-batch"
        assert c.backend.memory.statistics()["retired"] == 0


async def test_release_on_one_queue_never_lets_another_read_a_reused_fd(fs_client, tmp_path: Path) -> None:
    a, b = b"A" * (16 * K), b"B" * (16 * K)
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    async with fs_client(tmp_path, request_queues=2, slot_size=K + 8192, queue_size=32) as c:
        node_b = parse_entry(await c.ok(c.r.lookup(ROOT, b"b"))).nodeid
        tree = c.device.tree
        reused = wrong = reads = 0
        with trio.move_on_after(DEADLINE):
            for _ in range(40):
                node_a, fh = await open_file(c, b"a")
                fd = tree.data_fd(fh, write=False)
                released = trio.Event()

                async def reader(node_a: int, fh: int, released: trio.Event) -> None:
                    nonlocal wrong, reads
                    # keep reading fh (on queue 2) until its release has been answered
                    # and a batch after that has come back
                    after = 0
                    while after < 1:
                        if released.is_set():
                            after += 1
                        done = await c.fe.submit_many(
                            2, [([c.r.read(node_a, fh, (i % 16) * K, K)], [HDR, K]) for i in range(32)],
                            indirect=True)
                        for d in done:
                            r = parse_reply(d.data)
                            if r.error == 0:
                                reads += 1
                                wrong += r.payload != a[:len(r.payload)] or not r.payload
                            else:
                                assert r.error == errno.EBADF, r

                async with trio.open_nursery() as n:
                    n.start_soon(reader, node_a, fh, released)
                    await trio.sleep(0)  # the reader's first batch is posted
                    await c.ok(c.r.release(node_a, fh), queue=1)
                    fh_b, _ = parse_open(await c.ok(c.r.open(node_b, os.O_RDONLY), queue=1))
                    reused += tree.data_fd(fh_b, write=False) == fd
                    released.set()
                await c.ok(c.r.release(node_b, fh_b), queue=1)
                await c.fe.submit(0, [c.r.forget(node_a, 1)], [HDR])
        assert reused, "the released fd number was never reused: the test proves nothing"
        assert reads
        assert wrong == 0, f"{wrong} of {reads} reads returned another file's bytes"
