"""The queue thread's kick cycle in C (``msb_fs_serve_loop``, csrc/fuse_datapath.c),
through the real frontend and a real ``VirtioFsDevice`` in this process:

- kicks that carry only fast chains (4 KiB READs on an open handle) are popped, answered,
  signalled and waited for again without the thread coming back to Python once (the
  device counts every return of the C loop);
- a slow chain among them still goes to Python, is answered, and the thread goes back
  to C for the fast ones that follow.
"""

from __future__ import annotations

import os
from pathlib import Path

from msbfs.fuse.kernel import parse_reply
from tests.test_virtiofs_threads import open_file

HDR = 16
B = 4096


async def read_batches(c, q: int, nodeid: int, fh: int, model: bytes, batches: int) -> None:
    for k in range(batches):
        offs = [((k * 16 + i) % 16) * B for i in range(16)]
        done = await c.fe.submit_many(q, [([c.r.read(nodeid, fh, o, B)], [HDR, B]) for o in offs],
                                      indirect=True)
        for o, d in zip(offs, done, strict=True):
            reply = parse_reply(d.data)
            assert reply.error == 0, reply
            assert reply.payload == model[o:o + B]


async def test_fast_kicks_stay_in_c(fs_client, tmp_path: Path) -> None:
    model = os.urandom(16 * B)
    (tmp_path / "f").write_bytes(model)
    async with fs_client(tmp_path, request_queues=1) as c:
        nodeid, fh = await open_file(c, b"f")
        before = c.device.statistics()
        await read_batches(c, 1, nodeid, fh, model, 8)
        after = c.device.statistics()
        assert after["fast_reads"] - before["fast_reads"] == 8 * 16
        # every chain of those 8 kicks was answered without the thread leaving C
        assert after["c_returns"] == before["c_returns"], (before, after)


async def test_a_slow_chain_goes_to_python_and_the_thread_returns_to_c(fs_client,
                                                                       tmp_path: Path) -> None:
    model = os.urandom(16 * B)
    (tmp_path / "f").write_bytes(model)
    async with fs_client(tmp_path, request_queues=1) as c:
        nodeid, fh = await open_file(c, b"f")
        before = c.device.statistics()
        d = (await c.fe.submit_many(1, [([c.r.getxattr(nodeid, b"user.none", 64)],
                                         [HDR + 64])]))[0]
        assert parse_reply(d.data).error != 0  # answered by the tree (no such attribute)
        mid = c.device.statistics()
        assert mid["c_returns"] > before["c_returns"] and mid["slow"] > before["slow"]
        await read_batches(c, 1, nodeid, fh, model, 4)
        after = c.device.statistics()
        assert after["fast_reads"] - mid["fast_reads"] == 4 * 16
        assert after["c_returns"] == mid["c_returns"], (mid, after)
