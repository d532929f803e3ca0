"""``msbfs serve --writeback`` under a real TCG guest: the guest kernel gathers writes in
its page cache, fills partially written pages by READ through the application's
write-only handle, and computes O_APPEND offsets itself. The host file must end up as
the guest wrote it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msbfs.launcher import daemon as daemons
from msbfs.launcher.image import GuestImage
from msbfs.launcher.vm import Vm, VmSpec
from tests.plugins.guest import Guest, mount_script

pytestmark = [pytest.mark.guest, pytest.mark.usefixtures("no_leftovers")]

PAGE = 4096


def serve_writeback(tree: daemons.ServedTree, fd: int) -> list[str]:
    return [*daemons.msbfs_serve(tree, fd), "--writeback"]


def test_partial_pages_and_appends_through_write_only_handles(
        guest_image: GuestImage, guest_daemon: daemons.DaemonCommand, tmp_path: Path) -> None:
    if guest_daemon is not daemons.msbfs_serve:
        pytest.skip("checks msbfs serve's --writeback")
    share = tmp_path / "share"
    share.mkdir(mode=0o755)
    (share / "wo").write_bytes(b"")
    os.chown(share / "wo", 1000, 1000)
    os.chmod(share / "wo", 0o200)  # its owner may write, not read
    tree = daemons.ServedTree(tag="share", guest_path="/mnt/share", shared_dir=share)
    spec = VmSpec(trees=[tree], cpus=1, memory_mib=512, accel="tcg", daemon=serve_writeback)
    with Vm(spec, guest_image) as vm:
        g = Guest(vm, {tree.guest_path: share})
        g.check(mount_script([tree]))
        # Pages dropped first, so the 3-byte write lands in a page the kernel must READ
        # through dd's O_WRONLY handle; then >> (O_APPEND) at the kernel's idea of EOF.
        g.check(f"cd /mnt/share && head -c {2 * PAGE} /dev/zero | tr '\\0' a > f && sync && "
                "echo 3 > /proc/sys/vm/drop_caches && "
                f"printf XYZ | dd of=f bs=1 seek={PAGE + 100} conv=notrunc 2>/dev/null && "
                "echo tail >> f && sync")
        # A file write-only to its owner opens for them (never EACCES for want of read).
        g.check("echo hi > /mnt/share/wo && sync", uid=1000, gid=1000)
    want = bytearray(b"a" * 2 * PAGE)
    want[PAGE + 100:PAGE + 103] = b"XYZ"
    assert (share / "f").read_bytes() == bytes(want) + b"tail\n"
    assert (share / "wo").read_bytes() == b"hi\n"
