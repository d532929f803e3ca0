"""Where a slow-path request's time goes: FuseSession.dispatch over a real Tree, no
transport, prebuilt request bytes (the same CREATE+RELEASE+UNLINK cycle, plus FLUSH,
SETATTR, MKDIR+RMDIR, as tools.bench.virtiofs_frontend and a guest's untar send).
The untar's own Python requests come too, one row each: a guest's ``tar x`` (as root)
sends per file a SETATTR for fchown (UID|GID|KILL_SUIDGID), fchmod (MODE) and utimens
(ATIME|MTIME), and per write and per chown a GETXATTR of security.capability (ENODATA
here): counted in session 11, ~3 SETATTR + 2 GETXATTR per file, every one Python's.

    python -m tools.bench.slowpath [--n N] [--profile OPCODE] [--dir DIR]

Prints Python+kernel time per request for each opcode (best of ``--rounds``: the machine
is shared). ``--profile CREATE`` prints a cProfile of that opcode's requests only. For
syscalls per request run it under ``strace -f -c`` (the setup is a few hundred calls;
divide by ``--n``).
"""

from __future__ import annotations

import argparse
import cProfile
import errno
import os
import pstats
import tempfile
import time
from collections.abc import Callable

from msbfs.fuse import abi
from msbfs.fuse.kernel import Requests, parse_entry, parse_open, parse_reply
from msbfs.fuse.server import FuseSession
from msbfs.tree import (
    FATTR_ATIME,
    FATTR_GID,
    FATTR_KILL_SUIDGID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_UID,
    Policy,
    Tree,
)

ROOT = 1


def _ok(out: object, expect: int = 0) -> bytes:
    """The reply's payload; it must carry the errno ``expect`` (0: success)."""
    assert isinstance(out, bytes)
    rep = parse_reply(out)
    if rep.error != expect:
        raise OSError(rep.error, os.strerror(rep.error))
    return rep.payload


def run(s: FuseSession, r: Requests, n: int, cycle: int,
        prof: dict[str, cProfile.Profile]) -> dict[str, float]:
    """One round: n files made, flushed, chmodded, released, unlinked; n dirs made and
    removed. Returns seconds per opcode."""
    names = [f"f{cycle}_{i}".encode() for i in range(n)]
    dnames = [f"d{cycle}_{i}".encode() for i in range(n)]
    took: dict[str, float] = {}

    def phase(label: str, reqs: list[bytes], after: Callable[[bytes], None] | None = None,
              expect: int = 0) -> None:
        p = prof.get(label)
        t0 = time.perf_counter()
        if p is not None:
            p.enable()
        outs = [s.dispatch(q) for q in reqs]
        if p is not None:
            p.disable()
        took[label] = (time.perf_counter() - t0) / len(reqs)
        for o in outs:
            pl = _ok(o, expect)
            if after is not None:
                after(pl)

    ents: list[tuple[int, int]] = []

    def created(pl: bytes) -> None:
        e = parse_entry(pl[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(pl[abi.FUSE_ENTRY_OUT_SIZE:])
        ents.append((e.nodeid, fh))

    phase("CREATE", [r.create(ROOT, nm) for nm in names], created)
    phase("FLUSH", [r.flush(nid, fh) for nid, fh in ents])
    phase("SETATTR", [r.setattr(nid, valid=FATTR_MODE, mode=0o100600) for nid, _ in ents])
    # tar's fchown (the kernel adds KILL_SUIDGID under handle_killpriv_v2) and utimens
    phase("SETATTR chown", [r.setattr(nid, valid=FATTR_UID | FATTR_GID | FATTR_KILL_SUIDGID,
                                      fh=fh) for nid, fh in ents])
    phase("SETATTR utimens", [r.setattr(nid, valid=FATTR_ATIME | FATTR_MTIME, atime=(1, 5),
                                        mtime=(1, 7)) for nid, _ in ents])
    # the guest's killpriv check before a write and a chown: no capability set
    phase("GETXATTR cap", [r.getxattr(nid, b"security.capability", 0) for nid, _ in ents],
          expect=errno.ENODATA)
    phase("RELEASE", [r.release(nid, fh) for nid, fh in ents])
    phase("UNLINK", [r.unlink(ROOT, nm) for nm in names])
    s.dispatch(r.batch_forget([(nid, 1) for nid, _ in ents]))
    dirs: list[int] = []
    phase("MKDIR", [r.mkdir(ROOT, nm) for nm in dnames],
          lambda pl: dirs.append(parse_entry(pl[:abi.FUSE_ENTRY_OUT_SIZE]).nodeid))
    phase("RMDIR", [r.rmdir(ROOT, nm) for nm in dnames])
    s.dispatch(r.batch_forget([(nid, 1) for nid in dirs]))
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="shared directory (default: in /dev/shm)")
    ap.add_argument("--profile", action="append", default=[], help="opcode to cProfile")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or "/dev/shm") as d:
        tree = Tree(d, Policy())
        s = FuseSession(tree)
        r = Requests()  # uid 0, gid 0: as tools.bench.virtiofs_frontend sends
        _ok(s.dispatch(r.init()))
        prof = {op: cProfile.Profile() for op in args.profile}
        best: dict[str, float] = {}
        for i in range(args.rounds):
            for k, v in run(s, r, args.n, i, prof).items():
                best[k] = min(best.get(k, v), v)
        for k, v in best.items():
            print(f"{k:15s} {v * 1e6:7.1f} us")
        for op, p in prof.items():
            print(f"---- cProfile of {op} ({args.n * args.rounds} requests)")
            pstats.Stats(p).sort_stats("tottime").print_stats(25)
        tree.close()


if __name__ == "__main__":
    main()
