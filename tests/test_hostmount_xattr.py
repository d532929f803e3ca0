"""The xattr policy through ``msbfs mount`` (a real FUSE mount made by the CLI): the
default map refuses the host's privileged namespaces even to the host's root, and
``-o xattrmap=RULES`` remaps into a namespace of its own."""

from __future__ import annotations

import errno
import os

import pytest

from tests.plugins.hostmount import MountFactory


def test_default_and_remapping_host_mounts(host_mount: MountFactory) -> None:
    plain = host_mount()
    (plain.mnt / "f").write_text("x")
    with pytest.raises(OSError) as e:
        os.setxattr(plain.mnt / "f", "trusted.overlay.opaque", b"y")
    assert e.value.errno == errno.EPERM
    os.setxattr(plain.source / "f", "trusted.host", b"h")
    assert os.listxattr(plain.mnt / "f") == []
    mapped = host_mount(options="xattrmap=:map::user.virtiofs.:")
    (mapped.mnt / "f").write_text("x")
    os.setxattr(mapped.mnt / "f", "trusted.overlay.opaque", b"y")
    assert os.listxattr(mapped.source / "f") == ["user.virtiofs.trusted.overlay.opaque"]
    assert os.getxattr(mapped.mnt / "f", "trusted.overlay.opaque") == b"y"
    assert os.listxattr(mapped.mnt / "f") == ["trusted.overlay.opaque"]


def test_a_bad_map_is_refused_when_the_options_are_read() -> None:
    from msbfs.errors import InvalidMountSpec
    from msbfs.hostmount import HostMountOptions

    opts = HostMountOptions.parse("ro,xattrmap=/ok/all///")
    assert opts.xattrmap == "/ok/all///" and opts.flags.readonly
    with pytest.raises(InvalidMountSpec, match="xattrmap: unexpected type 'nope'"):
        HostMountOptions.parse("xattrmap=:nope:all:::")
