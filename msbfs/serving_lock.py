"""The serving lock: how a process says "I am using volume NAME".

Every server of a named volume (host mount, virtio-fs daemon, launcher) holds a SHARED
``flock`` on ``$MSB_HOME/locks/<name>.lock`` for as long as it serves it; anything that
must be alone with the volume (``remove_volume``, editing a disk volume's ext4 through
fuse2fs) takes it EXCLUSIVE without waiting and reports ``VolumeInUse`` if it cannot.

The lock file lives outside the volume's data directory so it never shows up in what a
guest sees. Lock files are never deleted: unlinking a lock file lets a late opener lock
an orphaned inode while a newcomer locks a fresh one, and then both think they are alone.

``flock`` locks belong to the open file description, so they vanish when the holder dies
(no stale locks after a crash), and two opens in one process conflict just as two
processes do. The fd is ``O_CLOEXEC``: a child process does not inherit the lock by
accident; a daemon takes its own.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from msbfs.errors import VolumeInUse
from msbfs.store import msb_home


def lock_path(name: str) -> Path:
    return msb_home() / "locks" / f"{name}.lock"


class VolumeLock:
    """A held serving lock. Use it as a context manager, or keep it for a daemon's
    lifetime and call ``close()`` at the end (closing is idempotent)."""

    def __init__(self, name: str, fd: int, exclusive: bool) -> None:
        self.name = name
        self.exclusive = exclusive
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("lock already released")
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def __enter__(self) -> VolumeLock:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "exclusive" if self.exclusive else "shared"
        return f"<VolumeLock {self.name!r} {mode}{'' if self.held else ' released'}>"


def acquire(name: str, *, exclusive: bool) -> VolumeLock:
    """Take the lock without waiting; ``VolumeInUse`` if a conflicting holder exists.
    The caller has validated ``name``."""
    path = lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            if exclusive:
                raise VolumeInUse(f"volume {name!r} is in use (served, mounted or "
                                  f"being edited)") from None
            raise VolumeInUse(f"volume {name!r} is being removed or edited on the host "
                              f"right now") from None
        raise
    return VolumeLock(name, fd, exclusive)


def in_use(name: str) -> bool:
    """Whether anyone holds the lock right now (a snapshot: it may change at once)."""
    try:
        acquire(name, exclusive=True).close()
    except VolumeInUse:
        return True
    return False
