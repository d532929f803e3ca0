"""A volume's usage is one number whoever writes (issue 12, point 3): VolumeFs and every
server of the volume charge the same counter (msbfs.usage), it stays equal to a fresh
walk under concurrent writers, and no writer walks the volume per write."""

from __future__ import annotations

import errno
import multiprocessing
import os
from pathlib import Path

import pytest

import msbfs
from msbfs.sources import open_source
from msbfs.tree import ROOT_ID, Ctx, Policy, Tree
from msbfs.tree.policy import walk_counts

ROOT = Ctx(0, 0)


def _walk(path: str) -> tuple[int, int]:
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    try:
        return walk_counts(fd)
    finally:
        os.close(fd)


def _served(name: str) -> tuple[Tree, object]:
    src = open_source(volume=name)
    policy = Policy(quota_bytes=src.quota_bytes, quota_inodes=src.quota_inodes)
    return Tree(src.path, policy, usage=src.usage), src


def test_a_server_sees_what_volumefs_wrote(msb_home: Path) -> None:
    """The issue's case: a 1 MiB volume served while VolumeFs writes 900 KiB: the server
    must refuse the 320 KiB that would take it past the quota."""
    msbfs.create_volume("q", quota_mib=1)
    tree, src = _served("q")
    try:
        msbfs.get_volume("q").fs().write("big", b"v" * (900 << 10))
        _e, o = tree.create(ROOT_ID, b"more", 0o644, os.O_RDWR, 0, ROOT)
        wrote = 0
        with pytest.raises(OSError) as err:
            for i in range(10):
                wrote += tree.write(o.fh, i * (32 << 10), b"t" * (32 << 10), ROOT)
        assert err.value.errno == errno.ENOSPC
        assert wrote < 320 << 10
        tree.release(o.fh)
        # and the other way round: what the server wrote, VolumeFs counts
        assert tree.quota is not None
        used = tree.quota.used
        assert used == _walk(src.path)[0]  # type: ignore[attr-defined]
        with pytest.raises(OSError) as err2:
            msbfs.get_volume("q").fs().write("late", b"x" * (256 << 10))
        assert err2.value.errno == errno.ENOSPC
    finally:
        tree.close()
        src.close()  # type: ignore[attr-defined]


def test_volumefs_never_walks_per_write(msb_home: Path) -> None:
    msbfs.create_volume("w", quota_mib=4)
    vol = msbfs.get_volume("w")
    fs = vol.fs()  # a new volume's counter is made here, once
    import msbfs.tree.policy as policy

    def no_walk(*a: object) -> None:
        raise AssertionError("walked the volume on a write")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(policy, "walk_counts", no_walk)
        mp.setattr(policy, "walk_usage", no_walk)
        with fs:
            for i in range(20):
                fs.write(f"f{i}", b"x" * 5000)
            fs.mkdir("many")
            for i in range(150):  # enough long names to grow the directory's own blocks
                fs.write(f"many/{'n' * 60}{i}", b"")
            fs.mkdir("a/b/c")
            fs.write("a/b/c/deep", b"y" * 9000)
            fs.remove("f0")
            fs.remove_all("a")
    assert fs._usage is not None and fs._usage.read() == _walk(vol.path)


def _volumefs_worker(home: str, rounds: int) -> None:
    os.environ["MSB_HOME"] = home
    fs = msbfs.get_volume("c").fs()
    with fs:
        for i in range(rounds):
            fs.mkdir(f"p/{i % 5}")
            fs.write(f"p/{i % 5}/f{i}", os.urandom(1000 + 3000 * (i % 7)))
            if i % 3 == 0:
                fs.remove(f"p/{i % 5}/f{i}")
            if i % 11 == 10:
                fs.remove_all(f"p/{(i + 2) % 5}")


def test_concurrent_writers_keep_the_count_true(msb_home: Path) -> None:
    """A serving tree (this process) and VolumeFs (another process) write, overwrite
    and remove at once; afterwards the shared count equals a fresh walk."""
    msbfs.create_volume("c", quota_mib=64)
    tree, src = _served("c")
    ctx = multiprocessing.get_context("fork")
    worker = ctx.Process(target=_volumefs_worker, args=(str(msb_home), 300))
    worker.start()
    try:
        d = tree.mkdir(ROOT_ID, b"t", 0o755, 0, ROOT).nodeid
        for i in range(300):
            name = b"g%d" % (i % 40)
            e, o = tree.create(d, name, 0o644, os.O_RDWR, 0, ROOT)
            tree.write(o.fh, 0, os.urandom(500 + 2000 * (i % 9)), ROOT)
            tree.release(o.fh)
            tree.forget(e.nodeid, 1)
            if i % 4 == 3:
                tree.unlink(d, name, ROOT)
        worker.join(120)
        assert worker.exitcode == 0
        assert tree.quota is not None
        truth = _walk(src.path)  # type: ignore[attr-defined]
        assert (tree.quota.used, tree.quota.inodes) == truth
        assert src.usage.read() == truth  # type: ignore[attr-defined]
    finally:
        if worker.is_alive():
            worker.kill()
        tree.close()
        src.close()  # type: ignore[attr-defined]
