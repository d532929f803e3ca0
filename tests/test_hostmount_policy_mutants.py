"""Host-mount tests written for tools/mutants (issue 13): the quota rules, whose mutants
no host-mount test caught. ``msbfs mount -o quota=1`` (1 MiB) over a real FUSE mount:
writes, xattrs and new inodes stop at the limit, and the host directory holds no more
than the quota allows. (pyfuse3 has no fallocate callback: the host kernel answers
EOPNOTSUPP before the tree, so fallocate is the guest's and virtio-fs's to test.)"""

from __future__ import annotations

import errno
import os

import pytest

from msbfs.tree.policy import walk_counts
from tests.plugins.hostmount import MountFactory, needs_root

pytestmark = [pytest.mark.fuse, needs_root]

QUOTA = 1 << 20


def usage(path: os.PathLike[str]) -> tuple[int, int]:
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    try:
        return walk_counts(fd)
    finally:
        os.close(fd)


def test_quota_stops_writes(host_mount: MountFactory) -> None:
    m = host_mount(options="quota=1")
    chunk = b"q" * (64 << 10)
    with pytest.raises(OSError) as e:
        with open(m.mnt / "big", "wb", buffering=0) as f:
            for _ in range(32):  # 2 MiB
                f.write(chunk)
    assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)
    assert usage(m.source)[0] <= QUOTA


def test_quota_charges_and_refuses_xattrs(host_mount: MountFactory) -> None:
    m = host_mount(options="quota=1")
    f = m.mnt / "f"
    f.touch()
    made = 0
    with pytest.raises(OSError) as e:
        for i in range(400):  # a 4 KiB block each: 1.6 MiB asked for
            os.setxattr(f, f"user.v{i}", b"x" * 4000)
            made += 1
    assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)
    assert 0 < made < 256
    assert usage(m.source)[0] <= QUOTA


def test_quota_inodes_stop_mkdir_mknod_and_create(host_mount: MountFactory) -> None:
    m = host_mount(options="quota=1,quota_inodes=6")  # the root and 5 more
    made = []
    for i in range(10):
        try:
            os.mkdir(m.mnt / f"d{i}")
        except OSError as e:
            assert e.errno in (errno.ENOSPC, errno.EDQUOT)
            break
        made.append(i)
    assert len(made) == 5
    for make in (lambda: os.mkfifo(m.mnt / "p"), lambda: open(m.mnt / "f", "w").close()):
        with pytest.raises(OSError) as e:
            make()
        assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)
    assert usage(m.source)[1] == 6
    assert sorted(os.listdir(m.source)) == [f"d{i}" for i in range(5)]
