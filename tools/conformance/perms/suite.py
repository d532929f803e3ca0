"""Build the permsuite program, parse its output into a ``Run``, compare two runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).with_name("permsuite.c")
#: Where the static binary is built (one directory holding only it: a guest target
#: stages a file together with its directory's other files).
DEFAULT_BUILD = Path(__file__).resolve().parents[3] / "build" / "permsuite"


def build(build_dir: Path = DEFAULT_BUILD) -> Path:
    """``gcc -static -O2`` the program (static: guests have no libc); rebuilt only when the
    source changes. Returns the binary's path."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    out = build_dir / digest / "permsuite"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(tmp), str(SOURCE)],
                   check=True, capture_output=True, text=True)
    # Older builds are kept: a run started before the source changed may still use one.
    tmp.rename(out)
    return out


Key = tuple[str, str]  # (case, identity)


@dataclass
class Run:
    """One program run: its header, its assertions keyed by (case, identity), and what
    went wrong if it did not finish (a run cut short is never a pass)."""

    header: str = ""
    lines: dict[Key, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def assertions(self) -> int:
        return len(self.lines)

    def line(self, key: Key) -> str:
        return "\t".join([*key, self.lines[key]]) if key in self.lines else "(absent)"


def parse(output: str, returncode: int = 0) -> Run:
    run = Run()
    announced: int | None = None
    for text in output.splitlines():
        if text.startswith("# permsuite "):
            run.header = text
        elif text.startswith("# assertions "):
            announced = int(text.split()[2])
        elif text.count("\t") == 3:
            case, ident, rest = text.split("\t", 2)
            if (case, ident) in run.lines:
                run.problems.append(f"assertion printed twice: {case} / {ident}")
            run.lines[(case, ident)] = rest
        elif text.strip():
            run.problems.append(f"stray output: {text[:200]}")
    if returncode != 0:
        run.problems.append(f"exit status {returncode}")
    if announced is None:
        run.problems.append("no final '# assertions N' line: the program did not finish")
    elif announced != len(run.lines):
        run.problems.append(f"announced {announced} assertions, parsed {len(run.lines)}")
    return run


@dataclass(frozen=True)
class Difference:
    key: Key
    reference: str
    got: str

    @property
    def operation(self) -> str:
        return self.key[0].split(" ", 1)[0]


def _sysctls(header: str) -> str:
    return " ".join(w for w in header.split() if w.startswith(("profile=", "protected_")))


def compare(reference: Run, got: Run) -> tuple[list[Difference], list[str]]:
    """Every assertion whose line differs (or exists on one side only), and the problems
    that make the comparison itself doubtful (a run cut short, other sysctls)."""
    problems = [f"reference: {p}" for p in reference.problems] + list(got.problems)
    if _sysctls(reference.header) != _sysctls(got.header):
        problems.append(f"header differs: reference {reference.header!r}, got {got.header!r}")
    diffs = [Difference(k, reference.line(k), got.line(k))
             for k in sorted(reference.lines.keys() | got.lines.keys())
             if reference.lines.get(k) != got.lines.get(k)]
    return diffs, problems


def by_operation(diffs: list[Difference]) -> Counter[str]:
    return Counter(d.operation for d in diffs)
