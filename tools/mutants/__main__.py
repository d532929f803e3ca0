"""``python -m tools.mutants``: mutation testing of the server's promises (issue 13).

    python -m tools.mutants list                      # the catalogue, with what each front says
    python -m tools.mutants check [--rev REV]         # every edit applies exactly once at REV
    python -m tools.mutants run [--mutant NAME]... [--front F]... [--policy-flags]
                                [--rev REV] [--json OUT] [--no-sanity] [--keep]

``run`` copies REV (default HEAD) of the repository into /tmp (the checkout is never
touched), checks the copy is what Python imports, runs the unmutated baseline, the
sanity mutants, then each mutant; prints the mutant x front table. Exit status: 0 all
claimed fronts caught their mutants, 1 some mutant survived, 2 an error (a baseline
failing, a catalogue edit not found, the copy not imported).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tools.mutants import catalogue
from tools.mutants.catalogue import FRONTS, MUTANTS, SANITY, CatalogueError, Mutant
from tools.mutants.report import table, to_json
from tools.mutants.runner import CAUGHT, Runner
from tools.mutants.scratch import Scratch, ScratchError

REPO = Path(__file__).resolve().parents[2]


def _select(args: argparse.Namespace) -> list[Mutant]:
    known = catalogue.by_name()
    chosen = list(MUTANTS)
    if args.mutant:
        unknown = [n for n in args.mutant if n not in known]
        if unknown:
            raise SystemExit(f"unknown mutant(s): {', '.join(unknown)} (see `list`)")
        chosen = [known[n] for n in args.mutant]
    if args.policy_flags:
        chosen = [m for m in chosen if m.policy_flag]
    return chosen


def cmd_list(args: argparse.Namespace) -> int:
    for m in (*MUTANTS, *SANITY):
        flag = " [policy flag]" if m.policy_flag else ""
        print(f"{m.name}: {m.rule}{flag}")
        for e in m.edits:
            print(f"  edit {e.path}")
        for f in FRONTS:
            if f in m.fronts:
                print(f"  {f:<10} {' '.join(m.fronts[f])}")
            elif f in m.unobservable:
                print(f"  {f:<10} n/a: {m.unobservable[f]}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    problems = catalogue.lint()
    scratch = Scratch(Path(args.repo), args.rev)
    try:
        for m in (*MUTANTS, *SANITY):
            try:
                scratch.check(m)
            except CatalogueError as e:
                problems.append(f"{m.name}: {e}")
    finally:
        scratch.close()
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(MUTANTS) + len(SANITY)} mutants, {len(problems)} problems at {args.rev}")
    return 2 if problems else 0


def cmd_run(args: argparse.Namespace) -> int:
    mutants = _select(args)
    fronts = args.front or list(FRONTS)
    problems = catalogue.lint(tuple(mutants))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        scratch = Scratch(Path(args.repo), args.rev)
    except ScratchError as e:
        log(f"mutants: {e}")
        return 2
    started = time.time()
    try:
        scratch.check_imports()
        for m in mutants:
            scratch.check(m)  # a rotted catalogue fails before anything runs
        runner = Runner(scratch, timeout=args.timeout, nice=args.nice, log=log)
        sanity = [] if args.no_sanity else list(SANITY)
        log(f"mutants: copy of {scratch.rev[:12]} in {scratch.src}; baseline of "
            f"{', '.join(fronts)}")
        baseline = runner.baseline(mutants + sanity, fronts)
        for f, why in baseline.items():
            if why:
                log(f"mutants: {f}: {why}")
        results = []
        for m in sanity + mutants:
            r = runner.run_mutant(m, fronts, baseline)
            results.append(r)
            cells = ", ".join(f"{f}={fr.status}" for f, fr in r.fronts.items())
            log(f"mutants: {m.name}: {cells} ({r.seconds:.0f} s)")
    except (ScratchError, CatalogueError) as e:
        log(f"mutants: {e}")
        return 2
    finally:
        if args.keep:
            log(f"mutants: kept {scratch.root}")
        else:
            scratch.close()
    print(table(results, fronts))
    sanity_missed = [f"{r.name}/{f}" for r in results[:len(sanity)]
                     for f, fr in r.fronts.items() if fr.status != CAUGHT]
    if args.json:
        meta = {"rev": scratch.rev, "fronts": fronts, "started": started,
                "seconds": round(time.time() - started, 1),
                "baseline_errors": {f: w for f, w in baseline.items() if w}}
        Path(args.json).write_text(to_json(results, meta) + "\n")
    if sanity_missed:
        log("mutants: the sanity mutants were not caught on " + ", ".join(sanity_missed)
            + ": the tests do not run the scratch copy, no verdict holds")
        return 2
    if any(r.survived for r in results):
        return 1
    return 2 if any(r.errors for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.mutants", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(REPO), help="the git checkout (default: this one)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the catalogue")
    c = sub.add_parser("check", help="every edit applies exactly once at --rev")
    c.add_argument("--rev", default="HEAD")
    r = sub.add_parser("run", help="run mutants against their fronts")
    r.add_argument("--rev", default="HEAD", help="the revision to copy (default HEAD)")
    r.add_argument("--mutant", action="append", help="only this mutant (repeatable)")
    r.add_argument("--front", action="append", choices=FRONTS, help="only this front (repeatable)")
    r.add_argument("--policy-flags", action="store_true",
                   help="only the policy-flag mutants (readonly, noexec, nosuid, nodev, "
                        "devices, quota): what CI runs")
    r.add_argument("--json", help="write the JSON report here")
    r.add_argument("--no-sanity", action="store_true", help="skip the sanity mutants")
    r.add_argument("--keep", action="store_true", help="keep the scratch copy")
    r.add_argument("--timeout", type=float, default=1800, help="per pytest run, seconds")
    r.add_argument("--nice", type=int, default=10)
    args = p.parse_args(argv)
    return {"list": cmd_list, "check": cmd_check, "run": cmd_run}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
