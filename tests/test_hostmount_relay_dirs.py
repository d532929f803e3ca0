"""Directory listings through the host mount's C relay (msbfs.hostmount_relay) where C
hands a listing back to pyfuse3 halfway: a name C cannot decide (a mount point inside
the tree: another device) ends C's reply, and the rest of the listing of a handle C
opened is Python's (HostOps.readdir lists it plain)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.plugins.hostmount import MountFactory


def _entries(d: Path) -> list[tuple[str, int, bool]]:
    with os.scandir(d) as it:
        return sorted((e.name, e.inode(), e.is_dir(follow_symlinks=False)) for e in it)


@pytest.fixture
def tree_with_a_mount_point(tmp_path: Path) -> Iterator[Path]:
    src = tmp_path / "src"
    d = src / "d"
    (d / "mnt").mkdir(parents=True)
    for i in range(40):
        (d / f"a{i:02d}").write_text("x")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(d / "mnt")], check=True)
    try:
        (d / "mnt" / "inner").write_text("y")
        yield src
    finally:
        subprocess.run(["umount", "-l", str(d / "mnt")], check=False)


def test_a_listing_c_hands_back_is_complete(host_mount: MountFactory,
                                            tree_with_a_mount_point: Path) -> None:
    src = tree_with_a_mount_point
    on = host_mount(src)
    off = host_mount(src, env={**os.environ, "MSBFS_HOST_RELAY": "0"})
    native = _entries(src / "d")
    assert len(native) == 41
    for _ in range(2):  # cold, then with the names looked up
        # The mount point listed plain, with the host's d_ino, as a native listing
        # shows it (not the mounted root's: a stat shows that one, natively too).
        assert _entries(on.mnt / "d") == native
        # pyfuse3 alone lists this small directory with attributes: the mount point's
        # number is then the tree's tagged one (another device's, msbfs/tree)
        got = _entries(off.mnt / "d")
        assert [(n, d) for n, _, d in got] == [(n, d) for n, _, d in native]
        assert [i for n, i, _ in got if n != "mnt"] == [i for n, i, _ in native if n != "mnt"]
    assert (on.mnt / "d" / "a07").read_text() == "x"
    assert (on.mnt / "d" / "mnt" / "inner").read_text() == "y"
