"""Shared fixtures. Each area keeps its own fixtures in ``tests/plugins/<area>.py``;
every module there is loaded as a pytest plugin, so areas never edit this file."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = sorted(
    f"tests.plugins.{p.stem}"
    for p in (Path(__file__).parent / "plugins").glob("*.py")
    if p.stem != "__init__"
)


@pytest.fixture
def msb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private MSB_HOME for the test (volumes, database, locks)."""
    home = tmp_path / "msb_home"
    home.mkdir()
    monkeypatch.setenv("MSB_HOME", str(home))
    return home
