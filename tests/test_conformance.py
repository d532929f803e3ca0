"""The conformance runner (tools/conformance): the in-tree POSIX TAP suite passes in a
real msbfs host mount and natively; failures are reported per test; pytest and shell
suites run through the same runner; the mount is torn down afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.hostmount import needs_root
from tools.conformance import (
    HostMountTarget,
    NativeTarget,
    PytestSuite,
    ShellSuite,
    TapSuite,
    run_suite,
)
from tools.conformance.suites import POSIX_SUITE, parse_tap

ROOT = Path(__file__).resolve().parent.parent


def conformance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.conformance", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)


def test_parse_tap_counts_plan_skips_todo_and_exit() -> None:
    out = "1..5\nok 1 - a\nnot ok 2 - b\n# why it failed\nok 3 # SKIP no tool\n" \
          "not ok 4 - c # TODO later\nok 5\n"
    rs = parse_tap("x.t", out, 1)
    assert [r.passed for r in rs] == [True, False, True, True, True]
    assert rs[1].detail == "why it failed" and rs[2].skipped
    short = parse_tap("y.t", "1..3\nok 1\n", 0)
    assert short[-1].name == "y.t (plan)" and not short[-1].passed
    crashed = parse_tap("z.t", "1..1\nok 1\n", 2)
    assert crashed[-1].name == "z.t (exit)" and not crashed[-1].passed
    assert not parse_tap("w.t", "", 0)[-1].passed  # no plan at all


def test_posix_suite_passes_natively() -> None:
    outcome = run_suite(TapSuite([POSIX_SUITE]), NativeTarget())
    assert outcome.failed == 0, [(r.name, r.detail) for r in outcome.failures]
    assert outcome.passed >= 50


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
def test_posix_suite_passes_natively_with_busybox_tools(tmp_path: Path, monkeypatch) -> None:
    """Guests run the suite with busybox (touch, stat, ln...), whose options are narrower
    than coreutils': a suite line only GNU understands fails in every guest."""
    bin_dir = tmp_path / "busybox-bin"
    bin_dir.mkdir()
    subprocess.run(["busybox", "--install", "-s", str(bin_dir)], check=True)
    assert os.path.realpath(bin_dir / "touch") == os.path.realpath(shutil.which("busybox"))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    outcome = run_suite(TapSuite([POSIX_SUITE], use_prove=False), NativeTarget())
    assert outcome.failed == 0, [(r.name, r.detail) for r in outcome.failures]
    assert outcome.passed >= 50


@pytest.mark.fuse
@needs_root
def test_posix_suite_passes_on_a_host_mount() -> None:
    target = HostMountTarget()
    outcome = run_suite(TapSuite([POSIX_SUITE]), target)
    assert outcome.failed == 0, [(r.name, r.detail) for r in outcome.failures]
    assert outcome.passed >= 50
    assert target.mountpoint is None  # torn down


@pytest.mark.fuse
@needs_root
def test_cli_reports_failures_then_the_summary_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.t"
    bad.write_text("#!/bin/sh\necho 1..3\necho 'ok 1 - fine'\n"
                   "echo 'not ok 2 - broken'\necho '# details'\n"
                   "[ -n \"$CONFORMANCE_DIR\" ] && touch \"$CONFORMANCE_DIR/marker\" "
                   "&& echo 'ok 3 - in the mount'\n")
    bad.chmod(0o755)
    r = conformance("--tap", str(bad))
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "2 passed, 1 failed"
    assert lines[0] == "FAILED bad.t 2 - broken: details"
    assert not [ln for ln in open("/proc/self/mountinfo") if "msbfs-conf-host" in ln]


@pytest.mark.fuse
@needs_root
def test_pytest_and_shell_suites_run_in_the_mount(tmp_path: Path) -> None:
    tests = tmp_path / "test_in_mount.py"
    tests.write_text(
        "import os\n"
        "def test_cwd_is_the_mount():\n"
        "    assert os.getcwd() == os.environ['CONFORMANCE_DIR']\n"
        "    assert os.path.ismount(os.getcwd())\n"
        "def test_write_read(tmp_path):\n"
        "    open('f', 'w').write('x'); assert open('f').read() == 'x'\n"
        "def test_fails():\n"
        "    assert 1 == 2\n")
    outcome = run_suite(PytestSuite(str(tests), python=sys.executable), HostMountTarget())
    by_name = {r.name.rsplit("::", 1)[-1]: r.passed for r in outcome.results}
    assert by_name == {"test_cwd_is_the_mount": True, "test_write_read": True,
                       "test_fails": False}
    ok = run_suite(ShellSuite("mountpoint -q . && echo data > f && test \"$(cat f)\" = data"),
                   HostMountTarget(options="nosuid"))
    assert (ok.passed, ok.failed) == (1, 0)
    r = conformance("--shell", "test -e /nonexistent-path")
    assert r.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"
