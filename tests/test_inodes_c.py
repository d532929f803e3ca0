"""The C inode table on its own: csrc/test_inodes.c built with AddressSanitizer and
UndefinedBehaviorSanitizer and run against a real directory (add, lookup by key, forget
to zero, hostile counts, bounds, eviction and re-open by file handle)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tools.fuzz.native import CSRC, sanitized_build


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_inodes_c_under_sanitizers(tmp_path: Path) -> None:
    exe = sanitized_build([CSRC / "test_inodes.c"], tmp_path / "test_inodes")
    work = tmp_path / "dir"
    work.mkdir()
    r = subprocess.run([str(exe), str(work)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all passed" in r.stdout
    assert list(work.iterdir()) == []  # it cleaned up after itself
