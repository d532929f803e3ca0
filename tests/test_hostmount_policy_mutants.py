"""Host-mount tests written for tools/mutants (issue 13): rules whose mutants no
host-mount test caught. ``msbfs mount -o quota=1`` (1 MiB) over a real FUSE mount:
writes, xattrs and new inodes stop at the limit, and the host directory holds no more
than the quota allows; nosuid hides set-id bits the host had before the mount, and file
capabilities under a map that passes ``security.*``; the default map keeps the host's
``security.*`` away from the mount. (pyfuse3 has no fallocate callback: the host kernel answers
EOPNOTSUPP before the tree, so fallocate is the guest's and virtio-fs's to test.)"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

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


def write_past_the_quota(path: Path, mode: str = "wb") -> None:
    """Write twice the quota to ``path`` opened with ``mode``: refused part way."""
    chunk = b"q" * (64 << 10)
    with pytest.raises(OSError) as e:
        with open(path, mode, buffering=0) as f:
            for _ in range(2 * QUOTA // len(chunk)):
                f.write(chunk)
    assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)


def test_quota_stops_writes(host_mount: MountFactory) -> None:
    m = host_mount(options="quota=1")
    write_past_the_quota(m.mnt / "big")
    assert usage(m.source)[0] <= QUOTA


def test_quota_charges_and_refuses_xattrs(host_mount: MountFactory) -> None:
    m = host_mount(options="quota=1")
    # One 3000-byte xattr takes a 4 KiB block of its own per file: the host filesystem
    # would store 300 of them, the quota holds at most 256.
    made = 0
    with pytest.raises(OSError) as e:
        for i in range(300):
            f = m.mnt / f"f{i}"
            f.touch()
            os.setxattr(f, "user.big", b"x" * 3000)
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


# VFS_CAP_REVISION_2 with CAP_NET_RAW (13) permitted and effective.
CAP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
PASS_ALL = "xattrmap=:ok:all:::"


def test_nosuid_hides_setid_bits_the_host_already_had(host_mount: MountFactory) -> None:
    src = host_mount.base / "suid-src"
    src.mkdir()
    (src / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "tool", 0o6755)
    m = host_mount(src, "nosuid", no_kernel_flags=True)
    assert stat.S_IMODE(os.stat(m.mnt / "tool").st_mode) == 0o755  # first lookup
    plain = host_mount(src, no_kernel_flags=True)  # the control
    assert stat.S_IMODE(os.stat(plain.mnt / "tool").st_mode) == 0o6755


def test_nosuid_file_capabilities_under_a_map_that_passes_them(host_mount: MountFactory) -> None:
    src = host_mount.base / "cap-src"
    src.mkdir()
    (src / "host-bin").write_bytes(b"")
    os.setxattr(src / "host-bin", "security.capability", CAP)
    (src / "new-bin").write_bytes(b"")
    m = host_mount(src, "nosuid," + PASS_ALL)
    with pytest.raises(OSError) as e:
        os.setxattr(m.mnt / "new-bin", "security.capability", CAP)
    assert e.value.errno == errno.EPERM
    assert "security.capability" not in os.listxattr(src / "new-bin")
    with pytest.raises(OSError) as e:
        os.getxattr(m.mnt / "host-bin", "security.capability")
    assert e.value.errno == errno.ENODATA
    assert "security.capability" not in os.listxattr(m.mnt / "host-bin")
    plain = host_mount(src, PASS_ALL)  # the control: the map itself passes it
    assert os.getxattr(plain.mnt / "host-bin", "security.capability") == CAP


def test_default_map_keeps_host_security_xattrs_away(host_mount: MountFactory) -> None:
    m = host_mount()
    f = m.mnt / "f"
    f.write_text("x")
    os.setxattr(m.source / "f", "security.msbfs-test", b"host label")
    with pytest.raises(OSError) as e:
        os.getxattr(f, "security.msbfs-test")
    assert e.value.errno == errno.ENODATA
    assert os.listxattr(f) == []
    with pytest.raises(OSError) as e:
        os.setxattr(f, "security.msbfs-guest", b"y")
    assert e.value.errno == errno.EPERM
    assert os.listxattr(m.source / "f") == ["security.msbfs-test"]
