"""``make bench`` / ``python -m tools.bench [NAME...]``: run the benchmarks one after the
other, each in its own process (so one's memory and mounts never colour the next).

Names: tree, vhost_echo, virtiofs_frontend, hostmount, guest. With none, all of them.
Each prints its own side-by-side table with ratios; this only sequences them.
"""

from __future__ import annotations

import subprocess
import sys

#: name -> extra arguments for a default run (each module has --help).
BENCHES: dict[str, list[str]] = {
    "tree": [],
    "vhost_echo": [],
    "virtiofs_frontend": [],
    "hostmount": [],
    "guest": [],
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}",
              file=sys.stderr)
        return 2
    failed = []
    for name in names:
        print(f"\n===== {name} =====", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"tools.bench.{name}", *BENCHES[name]])
        if rc:
            failed.append(f"{name} (exit {rc})")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
