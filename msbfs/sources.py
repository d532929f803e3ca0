"""What a server serves: a named volume or a host directory, resolved once for every
server (``msbfs serve``, ``msbfs mount``; the launcher runs ``msbfs serve``).

``open_source`` resolves the source, takes the volume's serving lock (shared: several
servers may serve one volume; ``msbfs volume rm`` is refused meanwhile), checks the
kind (a disk volume is a block device, not a tree), defaults the quota from the volume's
record and opens its shared usage counter (``msbfs.usage``). Everything a confined
daemon needs later is an fd by then: the lock, the counter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from msbfs.errors import InvalidArgument
from msbfs.store import MIB

if TYPE_CHECKING:
    from msbfs.serving_lock import VolumeLock
    from msbfs.usage import VolumeUsage


@dataclass
class Source:
    """A directory to serve, with the lock and usage counter held while it is served."""

    path: str
    #: what logs and mount tables call it: the volume's name, or the directory
    label: str
    quota_bytes: int | None = None
    quota_inodes: int | None = None
    volume: str | None = None
    lock: VolumeLock | None = None
    usage: VolumeUsage | None = None

    def close(self) -> None:
        for res in (self.usage, self.lock):
            if res is not None:
                res.close()
        self.usage = self.lock = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_path_source(source: str) -> bool:
    """A host directory rather than a volume name (volume names never hold a '/')."""
    return "/" in source or source.startswith(".")


def open_source(*, volume: str | None = None, path: str | None = None,
                quota_mib: int | None = None, quota_inodes: int | None = None) -> Source:
    """The source of a server: exactly one of ``volume`` and ``path``. ``quota_mib`` and
    ``quota_inodes`` override the volume's own. Errors: ``VolumeNotFound``,
    ``VolumeInUse`` (held exclusively), ``IncompatibleVolume`` (a disk volume),
    ``InvalidArgument`` (not a directory)."""
    if (volume is None) == (path is None):
        raise InvalidArgument("serve exactly one of a volume and a directory")
    quota = quota_mib * MIB if quota_mib is not None else None
    if path is not None:
        full = os.path.abspath(path)
        if not os.path.isdir(full):
            raise InvalidArgument(f"{path} does not exist or is not a directory")
        return Source(full, full, quota, quota_inodes)
    from msbfs.errors import IncompatibleVolume
    from msbfs.usage import VolumeUsage
    from msbfs.volumes import get_volume, hold_volume

    assert volume is not None
    src = Source("", volume, volume=volume, lock=hold_volume(volume))
    try:
        vol = get_volume(volume)
        if vol.kind != "dir":
            raise IncompatibleVolume(
                f"volume {volume} is a {vol.kind} volume: it is attached to a guest as a "
                f"block device, not served as a directory")
        src.path = vol.path
        src.quota_bytes = quota if quota is not None else (
            vol.quota_mib * MIB if vol.quota_mib is not None else None)
        src.quota_inodes = quota_inodes if quota_inodes is not None else vol.quota_inodes
        src.usage = VolumeUsage.open(volume)
        return src
    except BaseException:
        src.close()
        raise
