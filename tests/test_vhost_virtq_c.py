"""The C virtqueue on its own: csrc/test_virtq.c built with AddressSanitizer and
UndefinedBehaviorSanitizer, against guest memory fenced by PROT_NONE guard pages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tools.fuzz.native import CSRC, sanitized_build


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_virtq_c_under_sanitizers(tmp_path: Path) -> None:
    exe = sanitized_build([CSRC / "test_virtq.c"], tmp_path / "test_virtq")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all passed" in r.stdout
