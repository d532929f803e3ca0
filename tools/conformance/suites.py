"""What a suite runs and how its output becomes per-test results.

Suites never touch a mount: they get a ``Target`` (``targets.py``), the working
directory inside it, and return ``TestResult``s. The directory under test reaches the
suite's tests as their working directory and as ``CONFORMANCE_DIR``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tools.conformance.targets import Target

#: The in-tree POSIX checks (TAP shell scripts).
POSIX_SUITE = Path(__file__).parent / "suites" / "posix"


@dataclass(frozen=True)
class TestResult:
    name: str
    passed: bool
    detail: str = ""
    skipped: bool = False


class Suite(Protocol):
    name: str

    def run(self, target: Target, workdir: str) -> list[TestResult]: ...


_TAP_LINE = re.compile(r"^(not ok|ok)\b\s*(\d+)?\s*(?:-\s*)?([^#]*?)\s*(?:#\s*(.*))?$")
_TAP_PLAN = re.compile(r"^1\.\.(\d+)")


def parse_tap(source: str, output: str, returncode: int) -> list[TestResult]:
    """One TAP stream → results. A ``not ok`` marked ``# TODO`` is not a failure; a
    short count against the plan, a missing plan or a non-zero exit with no failing
    test is reported as one failure of the file itself."""
    results: list[TestResult] = []
    plan: int | None = None
    diag: list[str] = []
    for line in output.splitlines():
        if m := _TAP_PLAN.match(line):
            plan = int(m.group(1))
            continue
        if line.startswith("#") and results and not results[-1].passed:
            diag.append(line.lstrip("# "))
            last = results[-1]
            results[-1] = TestResult(last.name, False, "; ".join(diag))
            continue
        m = _TAP_LINE.match(line)
        if not m:
            continue
        diag = []
        status, num, desc, directive = m.groups()
        directive = directive or ""
        name = f"{source} {num or len(results) + 1} - {desc}".rstrip(" -")
        if directive.upper().startswith("SKIP"):
            results.append(TestResult(name, True, directive, skipped=True))
        elif status == "ok" or directive.upper().startswith("TODO"):
            results.append(TestResult(name, True))
        else:
            results.append(TestResult(name, False))
    if plan is None:
        results.append(TestResult(f"{source} (plan)", False, "no TAP plan (crashed?)"))
    elif len(results) != plan:
        results.append(TestResult(f"{source} (plan)", False,
                                  f"planned {plan} tests, ran {len(results)}"))
    elif returncode != 0 and all(r.passed for r in results):
        results.append(TestResult(f"{source} (exit)", False, f"exit status {returncode}"))
    return results


class TapSuite:
    """TAP test files, each run through ``prove -v`` when the target has it (what our
    users run), else executed directly; we parse the TAP either way."""

    name = "tap"

    def __init__(self, paths: Sequence[Path], *, use_prove: bool | None = None,
                 timeout: float = 600) -> None:
        self.paths = [p for p in _expand(paths)]
        self.use_prove = shutil.which("prove") is not None if use_prove is None else use_prove
        self.timeout = timeout

    def run(self, target: Target, workdir: str) -> list[TestResult]:
        staged = target.stage(self.paths)
        results: list[TestResult] = []
        for host_path, path in zip(self.paths, staged, strict=True):
            argv = ["prove", "-v", "--merge", path] if self.use_prove else [path]
            done = target.run(argv, cwd=workdir, env={"CONFORMANCE_DIR": workdir},
                              timeout=self.timeout)
            output = done.output
            if self.use_prove:
                output = _tap_from_prove(output)
            results += parse_tap(host_path.name, output, done.returncode)
        return results


def _tap_from_prove(output: str) -> str:
    """``prove -v`` echoes the TAP between a ``FILE ..`` header and its own verdict
    (``ok``, ``Failed n/m subtests``, ``Dubious, ...``): keep only that TAP."""
    lines = output.splitlines()
    if lines and lines[0].rstrip().endswith(".."):
        lines = lines[1:]
    for i, ln in enumerate(lines):
        if ln == "ok" or ln.startswith(("Failed ", "Dubious,", "All tests", "skipped:")):
            return "\n".join(lines[:i])
    return "\n".join(lines)


def _expand(paths: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        out += sorted(p.glob("*.t")) if p.is_dir() else [p]
    return out


_PYTEST_LINE = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(\S+)(?:\s+-\s+(.*))?$")


class PytestSuite:
    """A pytest path, run with the working directory inside the target."""

    name = "pytest"

    def __init__(self, path: str, *, python: str = "python3", extra: Sequence[str] = (),
                 timeout: float = 1800) -> None:
        self.path = path
        self.python = python
        self.extra = list(extra)
        self.timeout = timeout

    def run(self, target: Target, workdir: str) -> list[TestResult]:
        (path,) = target.stage([Path(self.path)])
        argv = [self.python, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-q",
                "--rootdir", workdir, *self.extra, path]
        done = target.run(argv, cwd=workdir, env={"CONFORMANCE_DIR": workdir},
                          timeout=self.timeout)
        results = []
        for line in done.output.splitlines():
            m = _PYTEST_LINE.match(line.strip())
            if not m:
                continue
            status, name, why = m.groups()
            if status == "SKIPPED":
                # -rA prints "SKIPPED [1] file:line: reason"
                results.append(TestResult(line.split(None, 1)[-1], True, skipped=True))
            else:
                results.append(TestResult(name, status in ("PASSED", "XFAIL"), why or ""))
        if done.returncode not in (0, 1) or (done.returncode == 1 and
                                             all(r.passed for r in results)):
            tail = " | ".join(done.output.strip().splitlines()[-3:])
            results.append(TestResult(f"pytest {self.path}", False,
                                      f"exit status {done.returncode}: {tail}"))
        return results


class ShellSuite:
    """One shell command, one test: it passes when the command exits 0."""

    name = "shell"

    def __init__(self, command: str, *, timeout: float = 1800) -> None:
        self.command = command
        self.timeout = timeout

    def run(self, target: Target, workdir: str) -> list[TestResult]:
        done = target.run(["sh", "-c", self.command], cwd=workdir,
                          env={"CONFORMANCE_DIR": workdir}, timeout=self.timeout)
        tail = " | ".join(done.output.strip().splitlines()[-5:])
        return [TestResult(self.command, done.returncode == 0,
                           "" if done.returncode == 0 else f"exit {done.returncode}: {tail}")]
