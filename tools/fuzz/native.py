"""The C ring walker and data path (csrc/virtq.c, csrc/fuse_datapath.c) under
AddressSanitizer and UndefinedBehaviorSanitizer, fuzzed in-process.

``ring_harness.c`` includes both units and, per input, lays out a split ring with damaged
descriptor chains (the same kinds of damage as the ``chains`` class: buffers outside or
across regions, loops, long chains, lying indirect tables, zero lengths, mixed-up
directions, avail jumps, READ/WRITE requests on a real fd with lying lengths) in guest
memory mapped with PROT_NONE guards, then runs msb_fs_serve, msb_fs_gather and
msb_fs_answer over it. Any access outside the regions is reported by ASan and ends the
run with a non-zero status. Inputs come from a seeded generator, so a run is
reproducible from (seed, count); the harness also exposes ``LLVMFuzzerTestOneInput`` for
a libFuzzer build with clang where one is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent.parent / "csrc"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


def sanitized_build(sources: list[Path], exe: Path) -> Path:
    """Build ``sources`` into ``exe`` under ASan/UBSan with warnings as errors: the one
    command line for the fuzz harness and the standalone C tests (csrc/test_*.c)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler")
    subprocess.run([cc, "-std=gnu11", "-g", "-O1", "-Wall", "-Wextra", "-Werror",
                    "-Wno-unused-parameter", *SANITIZE, f"-I{CSRC}",
                    *(str(s) for s in sources), "-o", str(exe), "-lpthread"],
                   check=True, capture_output=True, text=True)
    return exe


def build(out: Path) -> Path:
    return sanitized_build(
        [HERE / "ring_harness.c", CSRC / "virtq.c", CSRC / "fuse_datapath.c", CSRC / "handles.c",
         CSRC / "fuse_handles.c", CSRC / "fuse_setattr.c",
         # what the data path calls: grace periods, the metadata path and its inode
         # table (not attached by the harness: chains reach it only if it is), openat2
         *(CSRC / f for f in ("grace.c", "fuse_meta.c", "lookup.c", "inodes.c", "sys.c",
                                    "fuse_readdir.c", "tree.c", "fuse_names.c",
                                    "fuse_xattr.c", "fuse_names2.c"))],
        out / "ring_harness")


def run(count: int, seed: int, timeout: float = 3600) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="msbfs-native-fuzz-") as d:
        exe = build(Path(d))
        r = subprocess.run([str(exe), str(seed), str(count)], capture_output=True, text=True,
                           timeout=timeout,
                           env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
                                "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"})
    stats = dict(line.split("=", 1) for line in r.stdout.split() if "=" in line)
    return {"ok": r.returncode == 0 and stats.get("done") == "1", "returncode": r.returncode,
            "stats": stats, "report": r.stderr[-4000:]}
