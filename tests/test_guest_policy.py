"""Policy is the server's, not the guest's: one guest mounts four trees served readonly,
noexec, nosuid and nodev, remounts each ``rw,exec,suid,dev`` as guest root, and the
server still refuses. Needs ``msbfs serve`` (the C virtiofsd enforces none of this)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from msbfs.launcher.daemon import ServedTree
from msbfs.mounts import MountOptions
from tests.plugins.guest import KERNEL_POLICY_FLAGS, REMOUNT_ALL, mount_flags

pytestmark = pytest.mark.guest

SCRIPT = "#!/bin/sh\necho ran\n"


@pytest.fixture(scope="module")
def policy_guest(boot_guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    root = tmp_path_factory.mktemp("policy")
    dirs = {name: root / name for name in ("ro", "noexec", "nosuid", "nodev")}
    for d in dirs.values():
        d.mkdir()
    (dirs["ro"] / "keep.txt").write_text("original\n")
    for name in ("noexec", "nosuid"):
        script = dirs[name] / "run.sh"
        script.write_text(SCRIPT)
        script.chmod(0o755)
    (dirs["nosuid"] / "setuid.sh").write_text(SCRIPT)
    (dirs["nosuid"] / "setuid.sh").chmod(0o4755)
    os.mknod(dirs["nodev"] / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    trees = [
        ServedTree(tag="ro", guest_path="/mnt/ro", shared_dir=dirs["ro"],
                   options=MountOptions(readonly=True)),
        ServedTree(tag="noexec", guest_path="/mnt/noexec", shared_dir=dirs["noexec"],
                   options=MountOptions(noexec=True)),
        ServedTree(tag="nosuid", guest_path="/mnt/nosuid", shared_dir=dirs["nosuid"],
                   options=MountOptions(nosuid=True)),
        ServedTree(tag="nodev", guest_path="/mnt/nodev", shared_dir=dirs["nodev"],
                   options=MountOptions(nodev=True)),
    ]
    with boot_guest(trees) as g:
        for t in trees:
            # The guest's root lifts every flag it can; the server must not care. The
            # remount must really have lifted them (the guest mounted with them set), or
            # the guest kernel, not the server, would be what refuses below.
            assert KERNEL_POLICY_FLAGS & mount_flags(g.check("cat /proc/mounts"), t.guest_path)
            g.check(f"{REMOUNT_ALL} {t.guest_path}")
            flags = mount_flags(g.check("cat /proc/mounts"), t.guest_path)
            assert not flags & KERNEL_POLICY_FLAGS, (t.guest_path, flags)
        yield g, dirs


def test_readonly_after_remount(policy_guest) -> None:
    g, dirs = policy_guest
    assert g.check("cat /mnt/ro/keep.txt") == "original\n"
    for op in ("touch /mnt/ro/new", "echo x > /mnt/ro/keep.txt", "rm /mnt/ro/keep.txt",
               "mkdir /mnt/ro/d", "mv /mnt/ro/keep.txt /mnt/ro/moved",
               "chmod 777 /mnt/ro/keep.txt", "ln -s x /mnt/ro/l"):
        r = g.run(op)
        assert r.status != 0, op
        assert "Read-only file system" in r.stderr, (op, r.stderr)
    assert sorted(os.listdir(dirs["ro"])) == ["keep.txt"]
    assert (dirs["ro"] / "keep.txt").read_text() == "original\n"


def test_noexec_after_remount(policy_guest) -> None:
    g, dirs = policy_guest
    assert g.check("cat /mnt/noexec/run.sh") == SCRIPT  # reading is fine
    r = g.run("/mnt/noexec/run.sh")
    assert r.status == 126 and "Permission denied" in r.stderr, r
    # A binary copied in cannot run either.
    g.check("cp /bin/busybox /mnt/noexec/bb && chmod 755 /mnt/noexec/bb")
    r = g.run("/mnt/noexec/bb true")
    assert r.status == 126, r
    assert (dirs["noexec"] / "bb").stat().st_size > 0


def test_nosuid_after_remount(policy_guest) -> None:
    g, dirs = policy_guest
    # The host file has the bit; the guest never sees it, and cannot set it.
    assert g.check("stat -c %a /mnt/nosuid/setuid.sh").strip() == "755"
    g.check("chmod 6755 /mnt/nosuid/run.sh")
    assert g.check("stat -c %a /mnt/nosuid/run.sh").strip() == "755"
    assert stat.S_IMODE((dirs["nosuid"] / "run.sh").stat().st_mode) & 0o6000 == 0
    assert g.check("/mnt/nosuid/run.sh") == "ran\n"  # exec itself is allowed


def test_nodev_after_remount(policy_guest) -> None:
    g, dirs = policy_guest
    # Opening an existing device node never reaches the server (the guest kernel opens
    # its own driver for the major:minor), so what the server can hold is creation.
    for op in ("mknod /mnt/nodev/zero c 1 5", "mknod /mnt/nodev/blk b 7 0"):
        r = g.run(op)
        assert r.status != 0, (op, r)
    assert not (dirs["nodev"] / "zero").exists()
    assert not (dirs["nodev"] / "blk").exists()
    g.check("mkfifo /mnt/nodev/fifo")  # not a device: allowed
    # Ordinary files still work.
    g.check("echo fine > /mnt/nodev/plain")
    assert (Path(dirs["nodev"]) / "plain").read_text() == "fine\n"
