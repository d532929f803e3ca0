"""msbfs: serve sandbox volumes to microVM guests (virtio-fs), the host (FUSE) and Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each public name lives. Loaded on first use (PEP 562), not with the package: the
#: volume store pulls in sqlite3, uuid, shutil and the disk-image helpers, which
#: ``msbfs serve`` (a daemon QEMU waits for while it starts) never needs.
_LAZY = {
    **dict.fromkeys(("Mount", "MountKind", "MountOptions", "ResolvedMount", "resolve"),
                    "msbfs.mounts"),
    "VolumeFs": "msbfs.volumefs",
    # msbfs.Sandbox without importing the launcher (and QEMU plumbing) for every msbfs user.
    "Sandbox": "msbfs.launcher.sandbox",
    **dict.fromkeys(("Volume", "VolumeHandle", "VolumeLock", "create_volume", "get_volume",
                     "hold_volume", "list_volumes", "remove_volume", "update_labels",
                     "volume_in_use"), "msbfs.volumes"),
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'msbfs' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
