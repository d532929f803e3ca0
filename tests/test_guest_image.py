"""The guest image builder's output: what the initramfs holds and the module order."""

from __future__ import annotations

import subprocess

from msbfs.guest.build import _depends, _read_stamp, inputs_hash


def test_initramfs_contents(guest_image) -> None:
    listing = subprocess.run(["cpio", "-t", "--quiet", "-F", str(guest_image.initrd)],
                             capture_output=True, text=True, check=True).stdout.split()
    for path in ("init", "bin/busybox", "sbin/msb-agent", "etc/msb-modules",
                 "lib/modules/ext4.ko", "lib/modules/virtio_blk.ko"):
        assert path in listing, path
    order = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "-F",
                            str(guest_image.initrd), "etc/msb-modules"],
                           capture_output=True, text=True, check=True).stdout.split()
    # Dependencies load first: ext4 needs jbd2, mbcache, crc16 and (softly) crc32c.
    for dep in ("jbd2.ko", "mbcache.ko", "crc16.ko", "crc32c_generic.ko"):
        assert order.index(dep) < order.index("ext4.ko")
    assert guest_image.kernel.stat().st_size > 1 << 20


def test_stamp_records_inputs(guest_image) -> None:
    recorded = _read_stamp(guest_image.directory / "stamp")
    assert recorded is not None
    digest, packages = recorded
    assert digest == inputs_hash(packages)  # the image matches today's inputs
    assert [p.name.split("-")[0] for p in packages] == ["linux", "busybox"]


def test_modinfo_depends_parsing() -> None:
    blob = b"\0license=GPL\0depends=jbd2,mbcache,crc-16\0intree=Y\0"
    assert _depends(blob) == ["jbd2", "mbcache", "crc_16"]
    assert _depends(b"\0license=GPL\0depends=\0") == []
    assert _depends(b"no modinfo here") == []
