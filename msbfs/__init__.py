"""msbfs: serve sandbox volumes to microVM guests (virtio-fs), the host (FUSE) and Python."""

from __future__ import annotations

from msbfs.mounts import Mount, MountKind, MountOptions, ResolvedMount, resolve
from msbfs.volumefs import VolumeFs
from msbfs.volumes import (
    Volume,
    VolumeHandle,
    VolumeLock,
    create_volume,
    get_volume,
    hold_volume,
    list_volumes,
    remove_volume,
    update_labels,
    volume_in_use,
)

__version__ = "0.1.0"

__all__ = [
    "Mount",
    "MountKind",
    "MountOptions",
    "ResolvedMount",
    "Volume",
    "VolumeFs",
    "VolumeHandle",
    "VolumeLock",
    "create_volume",
    "get_volume",
    "hold_volume",
    "list_volumes",
    "remove_volume",
    "resolve",
    "update_labels",
    "volume_in_use",
]


def __getattr__(name: str) -> object:
    # msbfs.Sandbox without importing the launcher (and QEMU plumbing) for every msbfs user.
    if name == "Sandbox":
        from msbfs.launcher.sandbox import Sandbox

        return Sandbox
    raise AttributeError(f"module 'msbfs' has no attribute {name!r}")
