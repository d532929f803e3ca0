"""The mutant x front table (text) and the JSON report."""

from __future__ import annotations

import json
from collections.abc import Sequence

from tools.mutants.catalogue import FRONTS
from tools.mutants.runner import CAUGHT, ERROR, SURVIVED, UNOBSERVABLE, MutantResult


def _short(test: str) -> str:
    """A node id without its directory and .py, to keep table cells narrow."""
    path, _, rest = test.partition("::")
    name = path.rsplit("/", 1)[-1].removesuffix(".py").removeprefix("test_")
    return f"{name}::{rest}" if rest else name


def cell(status: str, tests: Sequence[str]) -> str:
    if status == CAUGHT:
        return "caught by " + ", ".join(_short(t) for t in tests)
    if status == SURVIVED:
        return "SURVIVED"
    if status == ERROR:
        return "ERROR"
    if status == UNOBSERVABLE:
        return "n/a"
    return status


def table(results: Sequence[MutantResult], fronts: Sequence[str] = FRONTS) -> str:
    """One block per mutant (cells hold test names, too long for columns)."""
    lines = []
    for r in results:
        lines.append(f"{r.name}  ({r.rule}; {r.seconds:.0f} s)")
        for f in fronts:
            fr = r.fronts.get(f)
            if fr is None:
                continue
            text = cell(fr.status, fr.tests)
            if fr.status == UNOBSERVABLE:
                text += f" ({fr.detail})"
            elif fr.status == ERROR:
                text += ": " + fr.detail.strip().splitlines()[0] if fr.detail.strip() else ""
            lines.append(f"  {f:<10} {text}")
    lines.append("")
    lines.append(summary(results))
    return "\n".join(lines)


def summary(results: Sequence[MutantResult]) -> str:
    counts = {CAUGHT: 0, SURVIVED: 0, ERROR: 0, UNOBSERVABLE: 0}
    for r in results:
        for fr in r.fronts.values():
            counts[fr.status] = counts.get(fr.status, 0) + 1
    survivors = [f"{r.name}/{f}" for r in results for f in r.survived]
    text = (f"{len(results)} mutants; fronts: {counts[CAUGHT]} caught, "
            f"{counts[SURVIVED]} survived, {counts[ERROR]} errors, "
            f"{counts[UNOBSERVABLE]} not claimed")
    if survivors:
        text += "\nSURVIVED: " + ", ".join(survivors)
    return text


def to_json(results: Sequence[MutantResult], meta: dict[str, object]) -> str:
    return json.dumps({**meta, "mutants": [r.to_json() for r in results]}, indent=2)
