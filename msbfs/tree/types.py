"""The value types every transport exchanges with the tree.

They use FUSE's vocabulary (the tree speaks "FUSE terms"), but no transport's encoding:
the virtio-fs codec turns them into ``fuse_entry_out``/``fuse_attr`` bytes, the host
mount into ``pyfuse3.EntryAttributes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

#: FUSE's node id of the root directory (``FUSE_ROOT_ID``).
ROOT_ID = 1

#: The kernel's ``OFFSET_MAX`` (the largest ``loff_t``): the last file offset, and a
#: ``Lock`` end meaning "to end of file".
OFFSET_MAX = (1 << 63) - 1

# fuse_open_out.open_flags: what ``Opened.open_flags`` holds
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2
FOPEN_CACHE_DIR = 1 << 3
FOPEN_NOFLUSH = 1 << 5


@dataclass(frozen=True, slots=True)
class Ctx:
    """Who is asking: the caller's identity as the kernel reports it in ``fuse_in_header``.

    ``groups`` is None when the transport does not know the supplementary groups (FUSE does
    not send them); the tree then uses only ``gid``.
    """

    uid: int = 0
    gid: int = 0
    pid: int = 0
    umask: int = 0o022
    groups: tuple[int, ...] | None = None


#: The daemon's own identity, for internal calls (tests, walkers).
ROOT_CTX = Ctx(0, 0, 0)


@dataclass(slots=True)
class Attr:
    """``struct fuse_attr``, after policy (nosuid bits cleared, owner squash applied).

    ``ino`` is the inode number reported to the client (``st_ino``), which may differ
    from the FUSE node id. Times are in nanoseconds since the epoch.
    """

    ino: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    #: FUSE_ATTR_SUBMOUNT: a directory on another filesystem than its parent, announced
    #: so a virtio-fs guest gives it its own superblock (st_dev).
    submount: bool = False


@dataclass(slots=True)
class Entry:
    """``struct fuse_entry_out``: the answer to lookup/mknod/mkdir/symlink/link/create.

    Every Entry returned by the tree counts one lookup of ``nodeid``; the client must
    forget it once (the FUSE contract).
    """

    nodeid: int
    generation: int
    attr: Attr
    entry_timeout: float
    attr_timeout: float


class DirEntry(NamedTuple):
    """One name of a directory as readdir returns it (``struct fuse_dirent``).

    ``off`` is the cookie of the *next* entry: readdir(offset=off) continues after this one.
    ``type`` is the file type as in ``d_type`` (``mode >> 12``).

    A NamedTuple, not a frozen dataclass like its neighbours: one is made per listed
    name, and a frozen dataclass's ``__init__`` (an ``object.__setattr__`` per field)
    measured 0.95 us against 0.45 us, a third of the parse of a getdents record.
    """

    ino: int
    off: int
    type: int
    name: bytes


# FATTR_* bits of fuse_setattr_in.valid (linux/fuse.h)
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_LOCKOWNER = 1 << 9
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11


@dataclass(slots=True)
class SetAttr:
    """``struct fuse_setattr_in``: which fields to change (``valid``, FATTR_* bits) and to what."""

    valid: int = 0
    fh: int | None = None
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    lock_owner: int = 0


@dataclass(frozen=True, slots=True)
class StatFs:
    """``struct fuse_kstatfs``."""

    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int


@dataclass(frozen=True, slots=True)
class Lock:
    """``struct fuse_file_lock``: a POSIX record lock. ``end`` is inclusive (FUSE's
    convention; ``OFFSET_MAX`` = to end of file). ``type`` is F_RDLCK/F_WRLCK/F_UNLCK."""

    start: int
    end: int
    type: int
    pid: int = 0


@dataclass(frozen=True, slots=True)
class Opened:
    """The answer to open/opendir/create/tmpfile: a handle and ``fuse_open_out.open_flags``
    (FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, ...)."""

    fh: int
    open_flags: int = 0


@dataclass(frozen=True, slots=True)
class Statistics:
    """What ``Tree.statistics()`` reports: how many inodes and handles are live."""

    inodes: int
    handles: int
    quota_used_bytes: int | None = None
    quota_used_inodes: int | None = None
    extra: dict[str, int] = field(default_factory=dict)

