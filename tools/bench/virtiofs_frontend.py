"""msbfs serve vs Debian's C virtiofsd, through the in-tree vhost-user frontend (no guest):
the daemons' own ceiling, side by side in one run, same shared directory, same frontend.

    python -m tools.bench.virtiofs_frontend [--quick] [--dir DIR]

Workloads (each daemon gets its own file names inside the one shared directory):
4 KiB and 1 MiB READ and WRITE on an open handle, LOOKUP+GETATTR storms, and
CREATE+RELEASE+UNLINK cycles. Requests are posted ``--depth`` at a time with one kick,
the way a busy guest keeps the queue full. Prints ops/s, MiB/s, the msbfs/virtiofsd
ratio per workload and both daemons' resident memory (VmRSS, VmHWM) afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from msbfs.fuse import abi
from msbfs.fuse.kernel import Requests, parse_entry, parse_open, parse_reply
from vhost.frontend import Frontend, GuestRam

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
ROOT = 1
HDR = 16
MIB = 1 << 20


def start_daemon(kind: str, shared: Path, sock: Path) -> subprocess.Popen:
    if kind == "msbfs":
        argv = [sys.executable, "-m", "msbfs", "serve", f"--socket-path={sock}",
                f"--shared-dir={shared}", "--cache=auto", "--log-level=error"]
    else:
        argv = [VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={shared}",
                "-o", "cache=auto", "-o", "log_level=err"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{kind} did not start")
        time.sleep(0.01)
    return proc


def _tree(pid: int) -> list[int]:
    """The daemon and its descendants (the C virtiofsd serves from a forked child in its
    own pid namespace; the parent only waits)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        for k in kids:
            out.extend(_tree(int(k)))
    return out


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) summed over the daemon's process tree, in KiB."""
    rss = hwm = 0
    for p in _tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k == "VmRSS":
                rss += int(v.split()[0])
            elif k == "VmHWM":
                hwm += int(v.split()[0])
    return rss, hwm


class Client:
    def __init__(self, fe: Frontend, depth: int) -> None:
        self.fe = fe
        self.r = Requests()
        self.depth = depth

    async def one(self, req: bytes, reply: int = 4096) -> bytes:
        done = await self.fe.submit(1, [req], [reply], indirect=True)
        return parse_reply(done.data).ok()

    async def batch(self, reqs: list[tuple[list[bytes], list[int]]]) -> list[bytes]:
        out = []
        for i in range(0, len(reqs), self.depth):
            for c in await self.fe.submit_many(1, reqs[i:i + self.depth], indirect=True):
                out.append(c.data)
        return out


async def timed(label: str, results: dict[str, float], n: int, fn: Callable[[], object]) -> None:
    t0 = time.perf_counter()
    await fn()  # type: ignore[misc]
    dt = time.perf_counter() - t0
    results[label] = n / dt


async def run_workloads(kind: str, shared: Path, sock: Path, args: argparse.Namespace) -> tuple[dict[str, float], tuple[int, int]]:
    proc = start_daemon(kind, shared, sock)
    res: dict[str, float] = {}
    try:
        depth = args.depth
        ram = GuestRam(((0, (2 * depth * (MIB + 8192) >> 20) + 64 << 20),))
        fe = await Frontend.connect(str(sock), ram)
        await fe.handshake([depth, depth], slot_size=MIB + 8192)
        c = Client(fe, depth)
        r = c.r
        await c.one(r.init())
        prefix = f"{kind}-"
        # a data file for reads, written on the host
        big = shared / f"{prefix}data"
        size = args.file_mib * MIB
        with open(big, "wb") as f:
            f.write(os.urandom(MIB) * args.file_mib)
        e = parse_entry(await c.one(r.lookup(ROOT, big.name.encode())))
        fh, _ = parse_open(await c.one(r.open(e.nodeid, os.O_RDWR)))

        def reads(n: int, sz: int) -> list[tuple[list[bytes], list[int]]]:
            blocks = size // sz
            return [([r.read(e.nodeid, fh, (i % blocks) * sz, sz)], [HDR, sz]) for i in range(n)]

        def writes(n: int, sz: int) -> list[tuple[list[bytes], list[int]]]:
            blocks = size // sz
            payload = b"w" * sz
            return [([r.write_header(e.nodeid, fh, (i % blocks) * sz, sz), payload], [24])
                    for i in range(n)]

        async def check(reqs, ok_len):
            for d in await c.batch(reqs):
                rep = parse_reply(d)
                if rep.error or len(rep.payload) != ok_len:
                    raise RuntimeError(f"{kind}: bad reply {rep.error} {len(rep.payload)}")

        n4, n1 = args.n_small, args.n_big
        # warm the page cache and both daemons' code paths once
        await check(reads(64, 4096), 4096)
        for label, reqs, ok_len, n in (
            ("4k_read", reads(n4, 4096), 4096, n4),
            ("1m_read", reads(n1, MIB), MIB, n1),
            ("4k_write", writes(n4, 4096), 8, n4),
            ("1m_write", writes(n1, MIB), 8, n1),
        ):
            await timed(label, res, n, lambda reqs=reqs, ok_len=ok_len: check(reqs, ok_len))
        await c.one(r.release(e.nodeid, fh))

        # metadata: a directory of files, then LOOKUP+GETATTR storms
        d = parse_entry(await c.one(r.mkdir(ROOT, f"{prefix}dir".encode())))
        names = [f"f{i}".encode() for i in range(200)]
        for nm in names:
            (shared / f"{prefix}dir" / nm.decode()).write_bytes(b"")
        nm_ops = args.n_meta

        async def storm() -> None:
            reqs = []
            for i in range(nm_ops):
                reqs.append(([r.lookup(d.nodeid, names[i % len(names)])], [HDR + abi.FUSE_ENTRY_OUT_SIZE]))
            ids: dict[int, int] = {}
            for data in await c.batch(reqs):
                ent = parse_entry(parse_reply(data).ok())
                ids[ent.nodeid] = ids.get(ent.nodeid, 0) + 1
            await c.batch([([r.getattr(nid)], [HDR + abi.FUSE_ATTR_OUT_SIZE]) for nid in ids for _ in range(nm_ops // len(ids))])
            await fe.submit(0, [r.batch_forget(list(ids.items()))], [HDR])

        await timed("lookup+getattr", res, 2 * nm_ops, storm)

        async def cycles() -> None:
            ncy = args.n_meta // 4
            creates = [([r.create(d.nodeid, f"c{i}".encode())], [HDR + abi.FUSE_ENTRY_OUT_SIZE + 16]) for i in range(ncy)]
            rels, unl, forgets = [], [], []
            for i, data in enumerate(await c.batch(creates)):
                p = parse_reply(data).ok()
                ent = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
                cfh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
                rels.append(([r.release(ent.nodeid, cfh)], [HDR]))
                unl.append(([r.unlink(d.nodeid, f"c{i}".encode())], [HDR]))
                forgets.append((ent.nodeid, 1))
            await c.batch(rels)
            await c.batch(unl)
            await fe.submit(0, [r.batch_forget(forgets)], [HDR])

        await timed("create+release+unlink", res, args.n_meta // 4, cycles)
        mem = rss_kib(proc.pid)
        await fe.close()
        with trio.fail_after(30):
            await trio.to_thread.run_sync(proc.wait)
        return res, mem
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def main_async(args: argparse.Namespace) -> None:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="msbfs-bench-"))
    shared = base / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    results = {}
    for kind in ("virtiofsd", "msbfs"):
        results[kind] = await run_workloads(kind, shared, base / f"{kind}.sock", args)
    (v, vmem), (m, mmem) = results["virtiofsd"], results["msbfs"]
    print(f"{'workload':24} {'virtiofsd':>14} {'msbfs':>14} {'ratio':>7}")
    for k in v:
        unit = "MiB/s" if k.startswith("1m") else ("MiB/s" if k.startswith("4k") else "ops/s")
        scale = (1.0 if k.startswith("1m") else 4096 / MIB) if unit == "MiB/s" else 1.0
        print(f"{k:24} {v[k] * scale:10.1f} {unit:>3} {m[k] * scale:10.1f} {unit:>3} {m[k] / v[k]:6.2f}x"
              + (f"   ({v[k]:.0f} vs {m[k]:.0f} ops/s)" if k.startswith("4k") else ""))
    print(f"{'RSS after (KiB)':24} {vmem[0]:14} {mmem[0]:14}")
    print(f"{'peak RSS (KiB)':24} {vmem[1]:14} {mmem[1]:14}")
    if not args.dir:
        import shutil
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", help="work directory (default: a fresh temporary one)")
    p.add_argument("--depth", type=int, default=32, help="requests in flight per kick")
    p.add_argument("--file-mib", type=int, default=64)
    p.add_argument("--n-small", type=int, default=20000)
    p.add_argument("--n-big", type=int, default=512)
    p.add_argument("--n-meta", type=int, default=8000)
    p.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.n_small, args.n_big, args.n_meta, args.file_mib = 2000, 64, 800, 16
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
