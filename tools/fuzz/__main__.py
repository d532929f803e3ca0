"""python -m tools.fuzz: run the campaign, replay a reproducer, or run the native harness.

    python -m tools.fuzz run [--class vhost,chains,fuse] [--count N | --counts C=N,...]
                             [--seed S] [--out DIR] [--nice 10] [--json FILE]
                             [--daemon-arg=--readonly ...]
    python -m tools.fuzz replay FILE [--nice 0]
    python -m tools.fuzz native [--count N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from tools.fuzz import native
from tools.fuzz.campaign import CLASSES, Campaign
from tools.fuzz.findings import load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="fuzz running daemons")
    r.add_argument("--class", dest="classes", default="vhost,chains,fuse",
                   help="comma list of: " + ", ".join(CLASSES))
    r.add_argument("--count", type=int, default=10_000, help="inputs per class")
    r.add_argument("--counts", default="", help="per class, e.g. fuse=600000,vhost=200000")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--out", type=Path, default=Path("fuzz-findings"),
                   help="where reproducers are written")
    r.add_argument("--nice", type=int, default=10)
    r.add_argument("--json", type=Path, help="write the summary here too")
    r.add_argument("--daemon-arg", action="append", default=[],
                   help="extra msbfs serve argument (repeatable)")
    rp = sub.add_parser("replay", help="run a reproducer again")
    rp.add_argument("file", type=Path)
    rp.add_argument("--nice", type=int, default=0)
    rp.add_argument("--daemon-arg", action="append", default=[])
    n = sub.add_parser("native", help="the C ring and data path under ASan/UBSan")
    n.add_argument("--count", type=int, default=100_000)
    n.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the campaign stops its daemon and removes its tree.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if a.cmd == "native":
        res = native.run(a.count, a.seed)
        print(json.dumps(res, indent=1))
        return 0 if res["ok"] else 1
    if a.cmd == "replay":
        f = load(a.file)
        print(f"replaying {f.kind} of class {f.cls} (seed {f.seed}, session {f.session}): "
              f"{f.detail[:200]}")
        with Campaign(Path(a.file).parent / "replays", a.daemon_arg, a.nice) as c:
            st = c.replay(f)
        print(json.dumps(st.summary(), indent=1))
        return 1 if st.findings else 0

    counts = {c: a.count for c in a.classes.split(",")}
    for item in filter(None, a.counts.split(",")):
        k, v = item.split("=")
        counts[k] = int(v)
    summaries = []
    with Campaign(a.out, a.daemon_arg, a.nice) as c:
        for cls, count in counts.items():
            st = c.run(cls, count, a.seed)
            summaries.append(st.summary())
            print(json.dumps(summaries[-1], indent=1), flush=True)
    if a.json:
        a.json.write_text(json.dumps(summaries, indent=1))
    return 1 if any(s["crashes"] or s["hangs"] or s["leaks"] or s["escapes"]
                    for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
