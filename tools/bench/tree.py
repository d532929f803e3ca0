"""Micro-benchmark of the tree's metadata hot path, called directly (no transport):
warm lookup, getattr and lookup+getattr pairs as root and as a non-root caller, cold
lookup+forget, and a readdir of a large directory, each beside the bare syscall it
stands on. Not a timed test: ``python -m tools.bench.tree [--files N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from msbfs.tree import ROOT_ID, Ctx, Tree


def rate(fn: Callable[[], int], repeat: int = 3) -> float:
    """Best-of-``repeat`` operations per second of ``fn`` (which returns its op count)."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.tree")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        names = [f"f{i:06}".encode() for i in range(a.files)]
        for n in names:
            os.close(os.open(os.path.join(os.fsencode(d), n), os.O_CREAT | os.O_WRONLY, 0o644))
        root, user = Ctx(), Ctx(1000, 1000)
        with Tree(d) as t:
            held = [t.lookup(ROOT_ID, n, root).nodeid for n in names]  # warm: inodes held
            dfd = os.open(d, os.O_PATH)

            def bare_stat() -> int:
                for _ in range(a.rounds):
                    for n in names:
                        os.stat(n, dir_fd=dfd, follow_symlinks=False)
                return a.rounds * len(names)

            def lookups(ctx: Ctx) -> Callable[[], int]:
                def run() -> int:
                    for _ in range(a.rounds):
                        for n in names:
                            t.lookup(ROOT_ID, n, ctx)
                    t.batch_forget((i, a.rounds) for i in held)
                    return a.rounds * len(names)
                return run

            def getattrs() -> int:
                for _ in range(a.rounds):
                    for i in held:
                        t.getattr(i, None, root)
                return a.rounds * len(held)

            def pairs() -> int:
                for _ in range(a.rounds):
                    for n in names:
                        t.getattr(t.lookup(ROOT_ID, n, root).nodeid, None, root)
                t.batch_forget((i, a.rounds) for i in held)
                return a.rounds * len(names)

            rows = [
                ("bare fstatat (reference)", rate(bare_stat)),
                ("warm lookup (root)", rate(lookups(root))),
                ("warm lookup (uid 1000)", rate(lookups(user))),
                ("getattr", rate(getattrs)),
                ("warm lookup+getattr pairs", rate(pairs)),
            ]
            t.batch_forget((i, 1) for i in held)

            def cold() -> int:
                for n in names:
                    t.forget(t.lookup(ROOT_ID, n, root).nodeid, 1)
                return len(names)

            rows.append(("cold lookup+forget (opens/closes an fd)", rate(cold)))

            def readdir() -> int:
                fh = t.opendir(ROOT_ID, 0, root).fh
                count = sum(1 for _ in t.readdir(fh, 0))
                t.releasedir(fh)
                return count

            rows.append(("readdir entries", rate(readdir)))
            os.close(dfd)
    width = max(len(r[0]) for r in rows)
    for label, ops in rows:
        print(f"{label:<{width}}  {ops:>12,.0f} /s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
