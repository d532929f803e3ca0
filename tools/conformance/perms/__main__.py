"""``python -m tools.conformance perms``: the permission/ownership suite on several
targets; every difference from the native directory is printed (native line, then the
target's) and counted.

    python -m tools.conformance perms --targets native,mount,mount-squash,guest-msbfs,guest-virtiofsd
    python -m tools.conformance perms --targets mount --only dir:      # one family
    python -m tools.conformance perms --targets mount --sample 4       # a quarter, < 1 min

Exit status 1 when an msbfs target (mount, mount-squash, guest-msbfs) differs from its
reference or did not run to its end; guest-virtiofsd (Debian's C daemon) and guest-tmpfs
are references: their differences are reported, never fatal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tools.conformance.perms.suite import Difference, Run, build, by_operation, compare
from tools.conformance.perms.targets import (
    msbfs_serve_acl,
    run_guest,
    run_mount,
    run_native,
    squash_args,
    virtiofsd_acl,
)

TARGETS = ("native", "mount", "mount-squash", "guest-msbfs", "guest-virtiofsd")
#: References: their differences are information, not failures of msbfs.
NOT_FATAL = {"guest-virtiofsd", "guest-tmpfs"}


@dataclass
class Result:
    target: str
    reference: str
    run: Run
    diffs: list[Difference] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def fatal(self) -> bool:
        return self.target not in NOT_FATAL and bool(self.diffs or self.problems)


def run_targets(targets: list[str], only: str | None = None, sample: int = 1,
                accel: str = "tcg", save: Path | None = None,
                log: Callable[[str], None] = lambda s: None,
                guest_baseline: bool = True) -> list[Result]:
    binary = build()
    extra = (["--only", only] if only else []) + (["--sample", str(sample)] if sample > 1
                                                  else [])
    runs: dict[str, Run] = {}
    results: list[Result] = []

    def reference(name: str) -> Run:
        # native (and native-squash) are run once, whichever target needs them first
        if name not in runs:
            log(f"running {name}")
            runs[name] = run_native(binary, extra + (squash_args() if name.endswith("squash")
                                                     else []))
        return runs[name]

    def add(target: str, ref_name: str, run: Run) -> None:
        runs[target] = run
        diffs, problems = compare(reference(ref_name), run)
        results.append(Result(target, ref_name, run, diffs, problems))

    for t in targets:
        if t == "native":
            ref = reference("native")
            results.append(Result("native", "native", ref, [], list(ref.problems)))
            continue
        if t not in TARGETS:
            raise ValueError(f"unknown target {t!r}; known: {', '.join(TARGETS)}")
        log(f"running {t}")
        ref_name = "native-squash" if t == "mount-squash" else "native"
        try:
            if t == "mount":
                add(t, ref_name, run_mount(binary, "allow_other", extra))
            elif t == "mount-squash":
                add(t, ref_name, run_mount(binary, "allow_other,uid=1000,gid=1000",
                                           extra + squash_args()))
            else:
                g = run_guest(binary, msbfs_serve_acl if t == "guest-msbfs" else virtiofsd_acl,
                              extra, accel, guest_baseline and "guest-tmpfs" not in runs)
                add(t, ref_name, g.share)
                if g.tmpfs is not None:
                    add("guest-tmpfs", ref_name, g.tmpfs)
        except Exception as e:  # a target that cannot start is reported, the rest still run
            last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            results.append(Result(t, ref_name, Run(), [], [f"did not run: {last}"]))
    if save:
        save.mkdir(parents=True, exist_ok=True)
        for name, run in runs.items():
            (save / f"{name}.txt").write_text(
                "".join(f"{k[0]}\t{k[1]}\t{v}\n" for k, v in sorted(run.lines.items())))
    return results


def report(results: list[Result], out: TextIO, show: int = 40) -> None:
    for r in results:
        if not (r.diffs or r.problems):
            continue
        out.write(f"== {r.target} vs {r.reference}: {len(r.diffs)} differences\n")
        for p in r.problems:
            out.write(f"   problem: {p}\n")
        if r.diffs:
            ops = ", ".join(f"{op} {n}" for op, n in by_operation(r.diffs).most_common())
            out.write(f"   by operation: {ops}\n")
        for d in r.diffs[:show]:
            out.write(f"   {r.reference:>13}: {d.reference}\n   {r.target:>13}: {d.got}\n")
        if len(r.diffs) > show:
            out.write(f"   ... {len(r.diffs) - show} more (--show N, --save DIR)\n")
    out.write(f"\n{'target':<16} {'reference':<14} {'assertions':>10} {'differences':>11}"
              f"  verdict\n")
    for r in results:
        verdict = ("FAIL" if r.fatal else
                   "reference" if r.target in NOT_FATAL else "ok")
        if r.problems:
            verdict += " (incomplete)"
        out.write(f"{r.target:<16} {r.reference:<14} {r.run.assertions:>10} "
                  f"{len(r.diffs):>11}  {verdict}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.conformance perms", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="native,mount,mount-squash",
                   help=f"comma-separated, of {', '.join(TARGETS)} (default: the host "
                        "targets)")
    p.add_argument("--only", metavar="PREFIX",
                   help="only the cases whose name starts with PREFIX (e.g. dir:, acl:, "
                        "chown:)")
    p.add_argument("--sample", type=int, default=1, metavar="N",
                   help="one case in N (the same ones on every target), for quick runs")
    p.add_argument("--accel", choices=("tcg", "kvm", "auto"), default="tcg")
    p.add_argument("--no-guest-baseline", action="store_true",
                   help="skip the guest-tmpfs run (halves a guest target's time)")
    p.add_argument("--show", type=int, default=40, help="differences printed per target")
    p.add_argument("--save", type=Path, help="write every run's lines to DIR/TARGET.txt")
    args = p.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    results = run_targets(targets, args.only, args.sample, args.accel, args.save,
                          log=lambda s: print(s, file=sys.stderr, flush=True),
                          guest_baseline=not args.no_guest_baseline)
    report(results, sys.stdout, args.show)
    return 1 if any(r.fatal for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
