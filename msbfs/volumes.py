"""Named volumes: ``$MSB_HOME/volumes/<name>/`` on disk, a record in ``$MSB_HOME/msbfs.db``.

A ``dir`` volume is that directory. A ``disk`` volume is that directory holding one
sparse raw image, ``disk.img``, formatted ext4 (``VolumeHandle.image_path``).

Creating is one write transaction: the record's INSERT (the name is the primary key, so
of two processes creating one name exactly one wins), then the directory (and image);
if making them fails the transaction rolls back and what was made is removed, so a
record always has its data and a crash leaves no record without data.

Every server of a volume holds its serving lock (``hold_volume``) while it serves;
``remove_volume`` refuses with ``VolumeInUse`` while anyone does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from msbfs import diskimage, serving_lock, store
from msbfs.errors import (
    InvalidArgument,
    InvalidName,
    VolumeExists,
    VolumeNotFound,
)
from msbfs.serving_lock import VolumeLock
from msbfs.store import MIB, msb_home
from msbfs.usage import usage_path
from msbfs.volumefs import DiskVolumeFs, VolumeFs, usage_bytes

__all__ = [
    "DISK_IMAGE_NAME",
    "Volume",
    "VolumeHandle",
    "VolumeKind",
    "VolumeLock",
    "create_volume",
    "get_volume",
    "hold_volume",
    "list_volumes",
    "msb_home",
    "remove_volume",
    "update_labels",
    "validate_name",
    "volume_in_use",
    "volumes_dir",
]

VolumeKind = Literal["dir", "disk"]
DISK_IMAGE_NAME = "disk.img"

_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def volumes_dir() -> Path:
    return msb_home() / "volumes"


def _trash_dir() -> Path:
    # Outside volumes/: every name is a valid volume name, so no name inside it is free.
    return msb_home() / "trash"


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidName(f"invalid volume name {name!r}: use 1-128 of A-Z a-z 0-9 . _ - "
                          f"(not '.' or '..')")
    return name


def _validate_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidArgument(f"labels must be a mapping of str to str, not "
                              f"{type(labels).__name__}")
    out: dict[str, str] = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument(f"label {k!r}={v!r}: keys and values must be strings")
        if not k or "=" in k:
            raise InvalidArgument(f"label key {k!r} must be non-empty and contain no '='")
        out[k] = v
    return out


def _positive(what: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgument(f"{what} must be a positive number of MiB, not {value!r}")
    return value


@dataclass(frozen=True)
class VolumeHandle:
    """A volume's record. ``used_bytes`` is measured when read; the rest is as stored."""

    name: str
    path: str
    kind: VolumeKind
    quota_mib: int | None
    capacity_bytes: int | None
    disk_format: str | None
    disk_fstype: str | None
    image_path: str | None
    labels: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    #: Inode limit of a dir volume; None: one per 4 KiB of quota (see tree.policy).
    quota_inodes: int | None = None

    @property
    def used_bytes(self) -> int:
        try:
            if self.kind == "disk":
                assert self.image_path is not None
                return os.stat(self.image_path).st_blocks * 512
            return usage_bytes(self.path)
        except FileNotFoundError:
            return 0  # removed meanwhile

    @property
    def in_use(self) -> bool:
        return serving_lock.in_use(self.name)

    def fs(self) -> VolumeFs:
        if self.kind == "disk":
            return DiskVolumeFs(self)
        from msbfs.usage import VolumeUsage

        quota = self.quota_mib * MIB if self.quota_mib is not None else None
        # The volume's one usage count, shared with whoever serves it (msbfs.usage).
        return VolumeFs(self.path, quota_bytes=quota, quota_inodes=self.quota_inodes,
                        usage=VolumeUsage.open(self.name, root=self.path))

    def remove(self) -> None:
        remove_volume(self.name)

    def hold(self) -> VolumeLock:
        return hold_volume(self.name)

    def update_labels(self, labels: Mapping[str, str]) -> VolumeHandle:
        return update_labels(self.name, labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what ``msbfs volume inspect --json`` prints)."""
        return {
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "quota_mib": self.quota_mib,
            "quota_inodes": self.quota_inodes,
            "used_bytes": self.used_bytes,
            "capacity_bytes": self.capacity_bytes,
            "disk_format": self.disk_format,
            "disk_fstype": self.disk_fstype,
            "image_path": self.image_path,
            "labels": dict(self.labels),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "in_use": self.in_use,
        }


@dataclass(frozen=True)
class Volume:
    """What ``create_volume`` returns: the new volume's name and data directory."""

    name: str
    path: str

    def fs(self) -> VolumeFs:
        return get_volume(self.name).fs()

    def handle(self) -> VolumeHandle:
        return get_volume(self.name)

    def remove(self) -> None:
        remove_volume(self.name)


_COLUMNS = ("name, kind, quota_mib, capacity_bytes, disk_format, disk_fstype, image_path, "
            "created_at, quota_inodes")


def _labels_of(conn: sqlite3.Connection, name: str) -> dict[str, str]:
    rows = conn.execute("SELECT key, value FROM volume_labels WHERE volume = ? ORDER BY key",
                        (name,))
    return dict(rows.fetchall())


def _handle(conn: sqlite3.Connection, row: tuple[Any, ...]) -> VolumeHandle:
    name, kind, quota, cap, fmt, fstype, image, created, inodes = row
    return VolumeHandle(
        name=name, path=str(volumes_dir() / name), kind=kind, quota_mib=quota,
        capacity_bytes=cap, disk_format=fmt, disk_fstype=fstype, image_path=image,
        labels=_labels_of(conn, name),
        created_at=datetime.fromisoformat(created) if created else None,
        quota_inodes=inodes)


def _store_labels(conn: sqlite3.Connection, name: str, labels: Mapping[str, str]) -> None:
    conn.executemany(
        "INSERT INTO volume_labels (volume, key, value) VALUES (?, ?, ?) "
        "ON CONFLICT (volume, key) DO UPDATE SET value = excluded.value",
        [(name, k, v) for k, v in labels.items()])


def create_volume(name: str, *, kind: VolumeKind = "dir", size_mib: int | None = None,
                  quota_mib: int | None = None,
                  labels: Mapping[str, str] | None = None,
                  quota_inodes: int | None = None) -> Volume:
    """Create a named volume. ``kind="disk"`` needs ``size_mib`` (the ext4 image's
    capacity); ``quota_mib`` caps a ``dir`` volume's allocated bytes, ``quota_inodes``
    its inodes (default: one per 4 KiB of quota). ``VolumeExists`` if the name is taken."""
    validate_name(name)
    labels = _validate_labels(labels)
    size_mib = _positive("size", size_mib)
    quota_mib = _positive("quota", quota_mib)
    if quota_inodes is not None and (isinstance(quota_inodes, bool)
                                     or not isinstance(quota_inodes, int) or quota_inodes <= 0):
        raise InvalidArgument(f"quota_inodes must be a positive number, not {quota_inodes!r}")
    if kind == "disk" and quota_inodes is not None:
        raise InvalidArgument("quota_inodes applies to dir volumes")
    if kind not in ("dir", "disk"):
        raise InvalidArgument(f"volume kind must be 'dir' or 'disk', not {kind!r}")
    if kind == "disk" and size_mib is None:
        raise InvalidArgument("a disk volume needs a size (size_mib / --size MIB)")
    if kind == "disk" and quota_mib is not None:
        raise InvalidArgument("quota applies to dir volumes; a disk volume's limit is "
                              "its size")
    if kind == "dir" and size_mib is not None:
        raise InvalidArgument("size applies to disk volumes; use quota to cap a dir volume")

    data = volumes_dir() / name
    image = data / DISK_IMAGE_NAME if kind == "disk" else None
    created = datetime.now(UTC).isoformat()
    with store.opened() as conn:
        with store.transaction(conn):
            try:
                conn.execute(
                    f"INSERT INTO volumes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, kind, quota_mib, size_mib * MIB if size_mib else None,
                     "raw" if image else None, "ext4" if image else None,
                     str(image) if image else None, created, quota_inodes))
            except sqlite3.IntegrityError:
                raise VolumeExists(f"volume {name!r} already exists") from None
            _store_labels(conn, name, labels)
            # Our row is in (uncommitted) and we hold the write lock: nobody else can
            # be creating this name now.
            data.parent.mkdir(parents=True, exist_ok=True)
            usage_path(name).unlink(missing_ok=True)  # a crash's leftover: counted anew
            try:
                data.mkdir(mode=0o755)
            except FileExistsError:
                raise VolumeExists(
                    f"volume {name!r} has no record but its directory {data} exists "
                    f"(left by a crash, or made by hand); move it away first") from None
            try:
                if image is not None:
                    assert size_mib is not None
                    diskimage.make_ext4_image(image, size_mib)
            except BaseException:
                shutil.rmtree(data, ignore_errors=True)
                raise
    return Volume(name=name, path=str(data))


def get_volume(name: str) -> VolumeHandle:
    validate_name(name)
    with store.opened() as conn:
        row = conn.execute(f"SELECT {_COLUMNS} FROM volumes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise VolumeNotFound(f"no volume named {name!r}")
        return _handle(conn, row)


def list_volumes() -> list[VolumeHandle]:
    with store.opened() as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM volumes ORDER BY name").fetchall()
        return [_handle(conn, r) for r in rows]


def update_labels(name: str, labels: Mapping[str, str]) -> VolumeHandle:
    """Merge ``labels`` into the volume's labels (later keys overwrite earlier ones)."""
    validate_name(name)
    labels = _validate_labels(labels)
    with store.opened() as conn:
        with store.transaction(conn):
            if conn.execute("SELECT 1 FROM volumes WHERE name = ?", (name,)).fetchone() is None:
                raise VolumeNotFound(f"no volume named {name!r}")
            _store_labels(conn, name, labels)
    return get_volume(name)


def remove_volume(name: str) -> None:
    """Delete the volume's record and data. ``VolumeInUse`` while anything serves or
    mounts it (anyone holding its serving lock)."""
    validate_name(name)
    with serving_lock.acquire(name, exclusive=True):
        with store.opened() as conn:
            with store.transaction(conn):
                gone = conn.execute("DELETE FROM volumes WHERE name = ?", (name,)).rowcount
                if not gone:
                    raise VolumeNotFound(f"no volume named {name!r}")
                # Move the data aside inside the transaction: if that fails, the record
                # stays; once it succeeds, a new volume of this name can be made at once.
                data = volumes_dir() / name
                trash = _trash_dir() / f"{name}.{uuid.uuid4().hex}"
                if data.exists():
                    trash.parent.mkdir(parents=True, exist_ok=True)
                    data.rename(trash)
                usage_path(name).unlink(missing_ok=True)  # its count went with it
        shutil.rmtree(trash, ignore_errors=True)
    _sweep_trash()


def _sweep_trash() -> None:
    """Finish removals a crash interrupted: everything in trash/ already has no record."""
    with contextlib.suppress(FileNotFoundError):
        for leftover in os.listdir(_trash_dir()):
            shutil.rmtree(_trash_dir() / leftover, ignore_errors=True)


def hold_volume(name: str) -> VolumeLock:
    """Take volume ``name``'s serving lock (shared) for as long as you serve or mount
    it. Returns a ``VolumeLock``: use it as a context manager, or keep it for a
    daemon's lifetime and ``close()`` it at the end. ``VolumeNotFound`` if there is no
    such volume; ``VolumeInUse`` if it is being removed or edited exclusively."""
    validate_name(name)
    lock = serving_lock.acquire(name, exclusive=False)
    try:
        get_volume(name)  # checked under the lock: it cannot be removed from now on
    except BaseException:
        lock.close()
        raise
    return lock


def volume_in_use(name: str) -> bool:
    """Whether some process holds the volume's serving lock right now."""
    return serving_lock.in_use(validate_name(name))

