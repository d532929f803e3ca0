"""The stateful machines' default run draws the same sequences in any process.

Hypothesis also draws constants it mines from the local modules in ``sys.modules``, so
a derandomized run used to draw differently once more of the project was imported (the
virtio-fs machine after tests/test_fuzz_campaign.py: its getxattr calls all missed).
``process_independent_draws`` (tests/plugins/stateful.py) pins that pool. Checked in a
fresh interpreter: importing a module into a pytest process grows hypothesis's pool for
every later test, which is the very leak this guards against."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib, json, sys
from hypothesis import Phase, given, settings, strategies as st
from tests.plugins.stateful import process_independent_draws

def draws(pinned):
    seen = []

    @settings(derandomize=True, max_examples=300, phases=[Phase.generate])
    @given(st.integers(0, 1 << 16))
    def t(i):
        seen.append(i)

    if pinned:
        with process_independent_draws():
            t()
    else:
        t()
    return seen

before = {"pinned": draws(True), "free": draws(False)}
sys.path.insert(0, sys.argv[1])
importlib.import_module("more_of_the_project")  # a local module full of constants
print(json.dumps({k: draws(k == "pinned") == v for k, v in before.items()}))
"""


def test_importing_more_modules_leaves_the_draws_unchanged(tmp_path: Path) -> None:
    mod = tmp_path / "more_of_the_project.py"
    mod.write_text("VALUES = (" + ", ".join(str(v) for v in range(30001, 30201)) + ")\n")
    r = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=True)
    same = json.loads(r.stdout.splitlines()[-1])
    # The control: unpinned, the import changes the draws (else this proves nothing).
    assert same == {"pinned": True, "free": False}
