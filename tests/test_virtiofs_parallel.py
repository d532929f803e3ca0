"""Big READs of one round run on two threads in C (csrc/fuse_datapath.c, ``par_run``),
then are pushed by the serving thread, while writes and small reads are served in
between. Through the real frontend: a round mixing big and small, reads and writes,
short reads and a failing write gets every reply right, nothing lost, and the file
ends as a model says."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from msbfs.fuse.kernel import parse_entry, parse_open, parse_reply, u32

ROOT = 1
HDR = 16
K = 128 * 1024  # above the C data path's threshold for the helper thread


async def test_a_round_of_big_reads_and_writes_runs_in_parallel_and_matches_a_model(
        fs_client, tmp_path: Path) -> None:
    size = 16 * K
    model = bytearray(os.urandom(size))
    (tmp_path / "f").write_bytes(model)
    async with fs_client(tmp_path, slot_size=K + 8192, queue_size=64) as c:
        r = c.r
        e = parse_entry(await c.ok(r.lookup(ROOT, b"f")))
        fh, _ = parse_open(await c.ok(r.open(e.nodeid, os.O_RDWR)))
        before = c.device.statistics()
        for rnd in range(3):
            reqs, expect = [], []
            # writes to the upper half, reads of the lower half: no two overlap, so
            # any order of execution gives the same result
            for i in range(8):
                data = os.urandom(K)
                off = (8 + i) * K
                reqs.append(([r.write_header(e.nodeid, fh, off, K), data], [HDR + 8]))
                expect.append(("w", K))
                model[off:off + K] = data
            for i in range(8):
                reqs.append(([r.read(e.nodeid, fh, i * K, K)], [HDR, K]))
                expect.append(("r", bytes(model[i * K:(i + 1) * K])))
            # a short big read at end of file, a small read, and a big write the host
            # refuses (past the largest file offset)
            reqs.append(([r.read(e.nodeid, fh, size - 1000, K)], [HDR, K]))
            expect.append(("r", bytes(model[-1000:])))
            reqs.append(([r.read(e.nodeid, fh, 5, 10)], [HDR + 10]))
            expect.append(("r", bytes(model[5:15])))
            reqs.append(([r.write_header(e.nodeid, fh, (1 << 63) - 10, K), b"x" * K], [HDR + 8]))
            expect.append(("err", None))
            done = await c.fe.submit_many(1, reqs, indirect=rnd == 1)
            assert len(done) == len(reqs)
            for d, (kind, want) in zip(done, expect, strict=True):
                rep = parse_reply(d.data)
                assert d.used_len == len(d.data)
                if kind == "w":
                    assert rep.error == 0 and u32(rep.payload) == want
                elif kind == "r":
                    assert rep.error == 0 and rep.payload == want
                else:
                    assert rep.error in (errno.EFBIG, errno.EINVAL) and rep.payload == b""
            assert (tmp_path / "f").read_bytes() == model
        after = c.device.statistics()
        assert after["fast_writes"] - before["fast_writes"] == 3 * 8
        assert after["fast_reads"] - before["fast_reads"] == 3 * 10
        assert after["fast_errors"] - before["fast_errors"] == 3
        assert after["slow"] == before["slow"]  # all of it served in C
        # ...and the helper thread exists (it lives as long as the process)
        names = {(t / "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()}
        assert "msbfs-io" in names
        await c.ok(r.release(e.nodeid, fh))
