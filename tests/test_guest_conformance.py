"""The conformance runner's guest target: the in-tree POSIX suite inside a TCG guest over
``msbfs serve`` fails nothing that it does not also fail on the guest's own tmpfs (the
suite's baseline under busybox)."""

from __future__ import annotations

import pytest

from tools.conformance.guest import GuestTarget
from tools.conformance.runner import run_suite
from tools.conformance.suites import POSIX_SUITE, TapSuite

pytestmark = [pytest.mark.guest, pytest.mark.usefixtures("no_leftovers")]


def test_posix_suite_in_guest_matches_guest_tmpfs(guest_image, guest_daemon, msb_home,
                                                   monkeypatch) -> None:
    monkeypatch.setenv("MSBFS_GUEST_DIR", str(guest_image.directory))
    suite = TapSuite([POSIX_SUITE], use_prove=False)
    baseline = run_suite(suite, GuestTarget("tmpfs", accel="tcg"))
    served = run_suite(suite, GuestTarget(daemon=guest_daemon, accel="tcg"))
    assert baseline.passed > 40  # the suite really ran in the guest
    # The suite itself runs under busybox: its baseline fails nothing (a GNU-only line,
    # like touch -d '... UTC', would fail on both sides and hide behind the comparison).
    assert baseline.failures == []
    assert len(served.results) == len(baseline.results)
    expected = {r.name for r in baseline.failures}
    assert [r for r in served.failures if r.name not in expected] == []
