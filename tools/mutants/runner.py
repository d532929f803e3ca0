"""Run mutants against the fronts that claim their rules, in a scratch copy.

Per run: the unmutated baseline of every selection first (a selection that fails
without a mutant is an error, never a catch), then each mutant applied in turn, its
fronts' selections run by pytest, and the mutant reverted. Selections made only of test
files and node ids run in ONE pytest per mutant (each test is attributed to its front
by its file, so several fronts cost one interpreter start); a selection with options
(``-k``) runs on its own. Failing tests come from pytest's JUnit XML.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from tools.mutants.catalogue import FRONTS, CatalogueError, Mutant, Selection, front_of
from tools.mutants.scratch import Scratch

CAUGHT, SURVIVED, ERROR, UNOBSERVABLE = "caught", "survived", "error", "unobservable"


@dataclass
class PytestRun:
    returncode: int
    failed: list[str]  # node ids of failing or erroring tests
    ran: list[str]  # node ids of every test that ran (collection errors included)
    output: str  # the tail of pytest's output
    seconds: float


@dataclass
class FrontResult:
    front: str
    status: str  # CAUGHT / SURVIVED / ERROR / UNOBSERVABLE
    tests: list[str] = field(default_factory=list)  # the failing tests (CAUGHT)
    detail: str = ""  # why (UNOBSERVABLE, ERROR)


@dataclass
class MutantResult:
    name: str
    rule: str
    fronts: dict[str, FrontResult]
    seconds: float = 0.0

    @property
    def survived(self) -> list[str]:
        return [f for f, r in self.fronts.items() if r.status == SURVIVED]

    @property
    def errors(self) -> list[str]:
        return [f for f, r in self.fronts.items() if r.status == ERROR]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "rule": self.rule, "seconds": round(self.seconds, 1),
                "fronts": {f: asdict(r) for f, r in self.fronts.items()}}


def _node_id(case: ET.Element) -> str:
    path = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
    cls = case.get("classname", "")
    module = path[:-3].replace("/", ".")
    inner = cls[len(module) + 1:] if cls.startswith(module + ".") else ""
    return "::".join(p for p in (path, inner, case.get("name", "")) if p)


def parse_junit(path: str) -> tuple[list[str], list[str]]:
    """(failed, ran) node ids from a JUnit XML file (xunit1: testcases carry ``file``)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return [], []
    failed, ran = [], []
    for case in root.iter("testcase"):
        nid = _node_id(case)
        ran.append(nid)
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(nid)
    return failed, ran


class Runner:
    def __init__(self, scratch: Scratch, *, timeout: float = 1800, nice: int = 10,
                 log: Callable[[str], None] = lambda s: None) -> None:
        self.scratch = scratch
        self.timeout = timeout
        self.nice = nice
        self.log = log
        self._n = 0

    def pytest(self, args: Iterable[str]) -> PytestRun:
        self._n += 1
        junit = str(self.scratch.root / f"junit-{self._n}.xml")
        cmd = ["nice", "-n", str(self.nice), self.scratch.python, "-m", "pytest", "-q",
               "-p", "no:cacheprovider", f"--basetemp={self.scratch.root / 't'}",
               f"--junitxml={junit}", "-o", "junit_family=xunit1",
               # a test module a mutant breaks must not stop another front's tests
               "--continue-on-collection-errors", *args]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=self.scratch.src, env=self.scratch.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the pytest we started
            out, _ = proc.communicate()
            out += f"\n[mutants] pytest killed after {self.timeout:.0f} s"
            proc.returncode = -signal.SIGKILL
        failed, ran = parse_junit(junit)
        return PytestRun(proc.returncode, failed, ran, out[-4000:], time.monotonic() - start)

    # ---- grouping --------------------------------------------------------------------
    @staticmethod
    def _groups(sels: dict[str, Selection]) -> list[tuple[list[str], tuple[str, ...]]]:
        """(fronts, pytest args): every plain selection merged, each optioned one alone."""
        plain: list[str] = []
        plain_fronts: list[str] = []
        groups: list[tuple[list[str], tuple[str, ...]]] = []
        for front, sel in sels.items():
            if any(a.startswith("-") for a in sel):
                groups.append(([front], tuple(sel)))
            else:
                plain_fronts.append(front)
                plain.extend(a for a in sel if a not in plain)
        if plain:
            groups.insert(0, (plain_fronts, tuple(plain)))
        return groups

    def _run_fronts(self, sels: dict[str, Selection]) -> dict[str, PytestRun]:
        """One PytestRun per front (a merged run is shared, its tests split by file)."""
        out: dict[str, PytestRun] = {}
        for fronts, args in self._groups(sels):
            run = self.pytest(args)
            for front in fronts:
                if len(fronts) == 1:
                    out[front] = run
                    continue
                mine = [t for t in run.ran if front_of(t.split("::")[0]) == front]
                out[front] = PytestRun(run.returncode,
                                       [t for t in run.failed if t in mine], mine,
                                       run.output, run.seconds)
        return out

    # ---- verdicts --------------------------------------------------------------------
    def baseline(self, mutants: list[Mutant], fronts: Iterable[str]) -> dict[str, str]:
        """Problems of the unmutated copy, per front ('' when the front's selections of
        these mutants all pass)."""
        wanted = set(fronts)
        sels: dict[str, list[str]] = {}
        for m in mutants:
            for front, sel in m.fronts.items():
                if front in wanted:
                    sels.setdefault(front, [])
                    sels[front].extend(a for a in sel if a not in sels[front])
        problems = {f: "" for f in sels}
        for front, run in self._run_fronts({f: tuple(s) for f, s in sels.items()}).items():
            if run.failed or run.returncode not in (0,) or not run.ran:
                problems[front] = (f"the baseline (no mutant) fails: rc {run.returncode}, "
                                   f"failing {run.failed}\n{run.output[-1500:]}")
        return problems

    def run_mutant(self, m: Mutant, fronts: Iterable[str],
                   baseline: dict[str, str]) -> MutantResult:
        wanted = [f for f in FRONTS if f in set(fronts)]
        result = MutantResult(m.name, m.rule, {})
        start = time.monotonic()
        for f in wanted:
            if f in m.unobservable:
                result.fronts[f] = FrontResult(f, UNOBSERVABLE, detail=m.unobservable[f])
        todo = {f: m.fronts[f] for f in wanted if f in m.fronts}
        for f in list(todo):
            if baseline.get(f):
                result.fronts[f] = FrontResult(f, ERROR, detail=baseline[f])
                del todo[f]
        if todo:
            try:
                originals = self.scratch.apply(m)
            except CatalogueError as e:
                for f in todo:
                    result.fronts[f] = FrontResult(f, ERROR, detail=f"catalogue: {e}")
                return result
            try:
                runs = self._run_fronts(todo)
            finally:
                self.scratch.revert(m, originals)
            for f, run in runs.items():
                result.fronts[f] = self._verdict(f, run)
        result.fronts = {f: result.fronts[f] for f in wanted if f in result.fronts}
        result.seconds = time.monotonic() - start
        return result

    @staticmethod
    def _verdict(front: str, run: PytestRun) -> FrontResult:
        if run.failed:
            return FrontResult(front, CAUGHT, sorted(run.failed))
        if run.ran and run.returncode in (0, 1):
            # (1: a merged run in which another front's tests failed)
            return FrontResult(front, SURVIVED, detail=f"{len(run.ran)} tests passed")
        if run.returncode in (1, 2, 3, 4) and not run.ran and "not found:" not in run.output:
            # Nothing ran because importing the tests failed (pytest's collection or
            # conftest errors): the mutant broke the tests before any could run. (A
            # selection naming no test is "not found": the catalogue's error.)
            return FrontResult(front, CAUGHT, ["<collection error>"],
                               detail=run.output[-800:])
        return FrontResult(front, ERROR, detail=f"rc {run.returncode}\n{run.output[-1500:]}")
