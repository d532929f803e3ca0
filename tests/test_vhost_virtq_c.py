"""The C virtqueue on its own: csrc/test_virtq.c built with AddressSanitizer and
UndefinedBehaviorSanitizer, against guest memory fenced by PROT_NONE guard pages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_virtq_c_under_sanitizers(tmp_path: Path) -> None:
    exe = tmp_path / "test_virtq"
    subprocess.run(
        ["gcc", "-std=gnu11", "-g", "-O1", "-Wall", "-Wextra", "-Werror",
         "-Wno-unused-parameter", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", f"-I{CSRC}",
         str(CSRC / "test_virtq.c"), "-o", str(exe)],
        check=True, capture_output=True, text=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all passed" in r.stdout
