"""CI slice of the mutation testing (issue 13): every policy-flag mutant of
tools/mutants (readonly, noexec, nosuid, nodev, device refusal, quota) must make a test
fail on the tree and on the virtio-fs front, the fast ones. The full catalogue, guests and
host mounts included, is ``python -m tools.mutants run``.

The run copies the committed HEAD into /tmp (the checkout is never edited), so it judges
committed tests against committed code."""

from __future__ import annotations

import json
from pathlib import Path

from tools.mutants import catalogue
from tools.mutants.__main__ import main

FRONTS = ("tree", "virtiofs")


def test_catalogue_is_sound() -> None:
    assert catalogue.lint() == []
    flags = [m for m in catalogue.MUTANTS if m.policy_flag]
    rules = " ".join(m.name for m in flags)
    for rule in ("readonly", "noexec", "nosuid", "nodev", "device", "quota"):
        assert rule in rules, rule
    for m in flags:  # each CI mutant is claimed, or explained, on both fast fronts
        assert all(f in m.fronts or f in m.unobservable for f in FRONTS), m.name


def test_policy_flag_mutants_are_caught_on_tree_and_virtiofs(tmp_path: Path) -> None:
    out = tmp_path / "mutants.json"
    status = main(["run", "--policy-flags", "--front", "tree", "--front", "virtiofs",
                   "--nice", "0", "--timeout", "300", "--json", str(out)])
    report = json.loads(out.read_text())
    results = {m["name"]: m["fronts"] for m in report["mutants"]}
    # the sanity mutants ran first and were caught: the tests ran the scratch copy
    for name in ("sanity-import", "sanity-daemon"):
        assert {f: r["status"] for f, r in results[name].items()} == \
            {"tree": "caught", "virtiofs": "caught"}, name
    expected = {m.name for m in catalogue.MUTANTS if m.policy_flag}
    assert expected <= set(results)
    for name in expected:
        m = catalogue.by_name()[name]
        for front in FRONTS:
            got = results[name][front]
            if front in m.fronts:
                assert got["status"] == "caught" and got["tests"], (name, front, got)
            else:
                assert got["status"] == "unobservable", (name, front, got)
    assert status == 0
