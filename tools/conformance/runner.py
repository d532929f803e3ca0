"""Run one suite in one target and report: every failure, then ``N passed, N failed``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TextIO

from tools.conformance.suites import Suite, TestResult
from tools.conformance.targets import Target


@dataclass
class Outcome:
    results: list[TestResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if not r.passed)

    @property
    def failures(self) -> list[TestResult]:
        return [r for r in self.results if not r.passed]

    def report(self, out: TextIO) -> None:
        for r in self.failures:
            out.write(f"FAILED {r.name}" + (f": {r.detail}" if r.detail else "") + "\n")
        # The last line is for machines and people alike; keep it plain.
        out.write(f"{self.passed} passed, {self.failed} failed\n")


def run_suite(suite: Suite, target: Target) -> Outcome:
    """Set the target up, run the suite in it, tear it down (even on failure)."""
    with target as workdir:
        return Outcome(suite.run(target, workdir))
