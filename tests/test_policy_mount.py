"""Policy on a real host mount, enforced by the SERVER: every mount here is made with
``--no-kernel-flags``, and each test first checks the kernel mount really carries none of
the flags, so only the tree can be what refuses. One test checks the default mode mirrors
the policy into kernel flags as well."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.plugins.hostmount import HostMount, MountFactory, needs_root

pytestmark = [pytest.mark.fuse, needs_root]

KERNEL_POLICY_FLAGS = {"ro", "noexec", "nosuid", "nodev"}


def server_only(host_mount: MountFactory, options: str) -> HostMount:
    m = host_mount(options=options, no_kernel_flags=True)
    assert not (m.kernel_options() & KERNEL_POLICY_FLAGS), m.kernel_options()
    return m


def test_kernel_flags_mirror_the_policy_by_default(host_mount: MountFactory) -> None:
    m = host_mount(options="ro,noexec,nosuid,nodev")
    assert KERNEL_POLICY_FLAGS <= m.kernel_options()


def test_noexec_script_cannot_be_executed(host_mount: MountFactory) -> None:
    m = server_only(host_mount, "noexec")
    script = m.source / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    binary = m.source / "true"
    binary.write_bytes(Path("/bin/true").read_bytes())
    binary.chmod(0o755)
    for path in (m.mnt / "run.sh", m.mnt / "true"):
        with pytest.raises(PermissionError) as e:
            subprocess.run([str(path)], check=False)
        assert e.value.errno == errno.EACCES
    # Reading is still fine: only the exec open is refused.
    assert (m.mnt / "run.sh").read_text().endswith("echo ran\n")
    # The control: the same script runs from a mount without the policy.
    plain = host_mount(m.source)
    out = subprocess.run([str(plain.mnt / "run.sh")], capture_output=True, text=True,
                         check=True)
    assert out.stdout == "ran\n"


def test_nosuid_bits_do_not_stick(host_mount: MountFactory) -> None:
    m = server_only(host_mount, "nosuid")
    f = m.mnt / "f"
    f.write_text("x")
    os.chmod(f, 0o6755)
    for st in (os.stat(f), os.stat(m.source / "f")):
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), oct(st.st_mode)
        assert st.st_mode & 0o777 == 0o755
    fd = os.open(m.mnt / "g", os.O_CREAT | os.O_WRONLY, 0o4755)
    os.close(fd)
    assert not os.stat(m.source / "g").st_mode & stat.S_ISUID
    os.mkdir(m.mnt / "d", 0o2775)
    assert not os.stat(m.source / "d").st_mode & stat.S_ISGID
    # Bits set behind the tree's back are not reported either.
    os.chmod(m.source / "f", 0o4755)
    assert not os.stat(f).st_mode & stat.S_ISUID


def test_nodev_no_device_created_or_opened(host_mount: MountFactory) -> None:
    m = server_only(host_mount, "nodev")
    with pytest.raises(OSError) as e:
        os.mknod(m.mnt / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert e.value.errno in (errno.EPERM, errno.EACCES)
    assert not (m.source / "null").exists()
    with pytest.raises(OSError) as e:
        os.mknod(m.mnt / "blk", stat.S_IFBLK | 0o666, os.makedev(7, 0))
    assert e.value.errno in (errno.EPERM, errno.EACCES)
    assert not (m.source / "blk").exists()
    # FIFOs are not devices.
    os.mkfifo(m.mnt / "fifo")
    assert stat.S_ISFIFO(os.stat(m.source / "fifo").st_mode)


# The kernel opens a device node itself (no FUSE OPEN reaches the tree): the tree's nodev
# reports device nodes with rdev 0:0, so there is no device to reach.
def test_nodev_existing_device_is_not_opened(host_mount: MountFactory) -> None:
    m = server_only(host_mount, "nodev")
    os.mknod(m.source / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    st = os.stat(m.mnt / "zero")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    with pytest.raises(OSError) as e:
        with open(m.mnt / "zero", "rb") as f:
            f.read(1)
    assert e.value.errno == errno.ENXIO  # no device 0:0, not a refusal of some other kind
    # The control: without the policy the same node does reach /dev/zero, so the refusal
    # above is the tree's nodev and not something of the mount itself.
    plain = host_mount(m.source, no_kernel_flags=True)
    assert os.stat(plain.mnt / "zero").st_rdev == os.makedev(1, 5)
    with open(plain.mnt / "zero", "rb") as f:
        assert f.read(1) == b"\0"


def test_readonly_nothing_writes(host_mount: MountFactory) -> None:
    src = host_mount.base / "ro-src"
    src.mkdir()
    (src / "f").write_text("keep")
    (src / "d").mkdir()
    (src / "d" / "inner").touch()
    os.symlink("f", src / "s")
    before = snapshot(src)
    m = host_mount(src, "ro", no_kernel_flags=True)
    assert not (m.kernel_options() & KERNEL_POLICY_FLAGS)
    mnt = m.mnt
    attempts = {
        "create": lambda: open(mnt / "new", "w"),
        "open for write": lambda: open(mnt / "f", "r+"),
        "append": lambda: open(mnt / "f", "a"),
        "truncate": lambda: os.truncate(mnt / "f", 0),
        "mkdir": lambda: os.mkdir(mnt / "nd"),
        "rmdir": lambda: os.rmdir(mnt / "d"),
        "unlink": lambda: os.unlink(mnt / "f"),
        "rename": lambda: os.rename(mnt / "f", mnt / "g"),
        "link": lambda: os.link(mnt / "f", mnt / "h"),
        "symlink": lambda: os.symlink("f", mnt / "t"),
        "chmod": lambda: os.chmod(mnt / "f", 0o600),
        "chown": lambda: os.chown(mnt / "f", 1, 1),
        "utime": lambda: os.utime(mnt / "f", (1, 1)),
        "setxattr": lambda: os.setxattr(mnt / "f", "user.x", b"1"),
        "mknod": lambda: os.mkfifo(mnt / "p"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, f"{what}: {e.value}"
    assert (mnt / "f").read_text() == "keep"
    assert snapshot(src) == before


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out
