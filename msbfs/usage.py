"""A volume's usage, one number whoever writes: ``$MSB_HOME/usage/<name>``.

Every writer of a named directory volume (a ``msbfs serve`` daemon, a host mount,
``VolumeFs``) charges the same counter: allocated bytes and inodes by the quota's
definition (``msbfs.tree.policy``), 16 bytes (two little-endian int64) in a small file
outside the volume, so no guest ever sees it. A read-modify-write holds an OFD write
lock on the file: processes and threads serialise there, for microseconds, and no
writer ever walks the volume to learn its usage (ARCHITECTURE.md, "One truth per volume").

The count is made true by a walk (``recount``) when a server starts (it walks anyway,
so its view and the file agree) and when the file does not exist yet; changes made
behind msbfs's back (a host process writing the data directory) are picked up there.

The file is opened once and kept: a confined daemon (pivot_root into the share) still
has its fd.
"""

from __future__ import annotations

import fcntl
import os
import struct
import weakref
from pathlib import Path

from msbfs.store import msb_home

_COUNTS = struct.Struct("<qq")  # bytes, inodes
_LOCK = struct.Struct("@hhqqi4x")  # struct flock


def usage_path(name: str) -> Path:
    return msb_home() / "usage" / name


class VolumeUsage:
    """The shared (bytes, inodes) counter of one volume."""

    def __init__(self, fd: int, name: str = "") -> None:
        self.fd = fd
        self.name = name
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, name: str, root: str | os.PathLike[str] | int | None = None) -> VolumeUsage:
        """The counter of volume ``name``; a new one is counted from ``root`` (the data
        directory, or an fd of it) first."""
        path = usage_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        usage = cls(fd, name)
        if root is not None and os.fstat(fd).st_size < _COUNTS.size:
            usage.recount(root)
        return usage

    def close(self) -> None:
        self.fd = -1
        self._finalizer()

    def __enter__(self) -> VolumeUsage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self, typ: int) -> None:
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLKW, _LOCK.pack(typ, os.SEEK_SET, 0, 0, 0))

    def read(self) -> tuple[int, int]:
        data = os.pread(self.fd, _COUNTS.size, 0)
        if len(data) < _COUNTS.size:
            return 0, 0
        return _COUNTS.unpack(data)

    def add(self, nbytes: int, inodes: int = 0) -> tuple[int, int]:
        """Charge (or refund, negative) and return the new totals, never below zero."""
        self._lock(fcntl.F_WRLCK)
        try:
            used, count = self.read()
            used, count = max(0, used + nbytes), max(0, count + inodes)
            os.pwrite(self.fd, _COUNTS.pack(used, count), 0)
            return used, count
        finally:
            self._lock(fcntl.F_UNLCK)

    def set(self, nbytes: int, inodes: int) -> None:
        self._lock(fcntl.F_WRLCK)
        try:
            os.pwrite(self.fd, _COUNTS.pack(nbytes, inodes), 0)
        finally:
            self._lock(fcntl.F_UNLCK)

    def recount(self, root: str | os.PathLike[str] | int) -> tuple[int, int]:
        """Walk ``root`` and make that the count (holding the lock through the walk, so
        a charge made meanwhile is not lost in the reset: it waits and lands after)."""
        from msbfs.tree.policy import walk_counts

        fd = root if isinstance(root, int) else os.open(
            os.fspath(root), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._lock(fcntl.F_WRLCK)
        try:
            counts = walk_counts(fd)
            os.pwrite(self.fd, _COUNTS.pack(*counts), 0)
            return counts
        finally:
            self._lock(fcntl.F_UNLCK)
            if fd is not root:
                os.close(fd)
