"""FLUSH through the in-tree frontend: the C virtiofsd, msbfs with its C metadata path
and msbfs with it off (``MSBFS_C_METADATA=0``: every FLUSH in Python), side by side.
A guest sends a FLUSH on every close() (untar, a build, ``touch``), so the cycle a
guest's create-and-close makes is measured too: CREATE+FLUSH+RELEASE+UNLINK.

    python -m tools.bench.flush_cost [--n N] [--rounds R]

Prints the best round's rate and the daemon CPU per op (us) of each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import trio

from msbfs.fuse import abi
from msbfs.fuse.kernel import parse_entry, parse_open, parse_reply
from tools.bench import virtiofs_frontend as vf

HDR = abi.fuse_out_header.size


async def flushes(c: vf.Client, n: int) -> int:
    await c.checked([([c.r.flush(c.nodeid, c.fh)], [HDR]) for _ in range(n)], 0)
    return n


async def close_cycles(c: vf.Client, n: int) -> int:
    r = c.r
    base = c.cycle
    c.cycle += n
    names = [f"k{base + i}".encode() for i in range(n)]
    fl, rels, unl, forgets = [], [], [], []
    for nm, (_, data) in zip(names, await c.batch(
            [([r.create(c.dir, nm)], [HDR + abi.FUSE_ENTRY_OUT_SIZE + 16]) for nm in names]),
            strict=True):
        p = parse_reply(data).ok()
        ent = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        fl.append(([r.flush(ent.nodeid, fh)], [HDR]))
        rels.append(([r.release(ent.nodeid, fh)], [HDR]))
        unl.append(([r.unlink(c.dir, nm)], [HDR]))
        forgets.append((ent.nodeid, 1))
    await c.checked(fl, 0)
    await c.checked(rels, 0)
    await c.checked(unl, 0)
    await c.fe.submit(0, [r.batch_forget(forgets)], [HDR])
    return n


async def main_async(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="msbfs-flush-", dir="/dev/shm"))
    clients: dict[str, vf.Client] = {}
    try:
        for label, kind, c_meta in (("virtiofsd", "virtiofsd", "1"), ("msbfs C", "msbfs", "1"),
                                    ("msbfs Python", "msbfs", "0")):
            os.environ["MSBFS_C_METADATA"] = c_meta
            tag = label.replace(" ", "-")
            shared = base / tag  # a directory each: both msbfs use the same file names
            shared.mkdir()
            c = await vf.connect(kind, shared, base / f"{tag}.sock", args.depth, 1)
            clients[label] = c
        os.environ.pop("MSBFS_C_METADATA")
        for label, work in (("FLUSH", lambda c: flushes(c, args.n)),
                            ("CREATE+FLUSH+RELEASE+UNLINK", lambda c: close_cycles(c, args.n // 4))):
            best, cpu = await vf.best_of(args.rounds, clients, work)
            print(f"{label:28} " + "  ".join(
                f"{k}: {best[k]:9.0f}/s {cpu[k]:6.1f} us" for k in clients), flush=True)
    finally:
        for c in clients.values():
            await c.fe.close()
            c.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--depth", type=int, default=32)
    trio.run(main_async, ap.parse_args())


if __name__ == "__main__":
    main()
