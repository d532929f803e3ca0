"""The sandboxed tree: the one place that decides what any client sees of a served
directory. Transports (virtio-fs, host mount) are thin adapters over ``Tree``; the
contract is ``msbfs.tree.api.TreeOps``. ``VolumeFs`` is not one: it shares the tree's
containment flags and the quota (policy.py, msbfs.usage), not the tree."""

from msbfs.tree.api import TreeOps
from msbfs.tree.policy import FMODE_EXEC, Policy
from msbfs.tree.tree import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    Tree,
)
from msbfs.tree.types import (
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_CTIME,
    FATTR_FH,
    FATTR_GID,
    FATTR_KILL_SUIDGID,
    FATTR_LOCKOWNER,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    FOPEN_CACHE_DIR,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    ROOT_CTX,
    ROOT_ID,
    Attr,
    Ctx,
    DirEntry,
    Entry,
    Lock,
    Opened,
    SetAttr,
    StatFs,
    Statistics,
)

__all__ = [
    "FATTR_ATIME", "FATTR_ATIME_NOW", "FATTR_CTIME", "FATTR_FH", "FATTR_GID",
    "FATTR_KILL_SUIDGID", "FATTR_LOCKOWNER", "FATTR_MODE", "FATTR_MTIME", "FATTR_MTIME_NOW",
    "FATTR_SIZE", "FATTR_UID", "FMODE_EXEC", "FOPEN_CACHE_DIR", "FOPEN_DIRECT_IO",
    "FOPEN_KEEP_CACHE", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "RENAME_WHITEOUT", "ROOT_CTX",
    "ROOT_ID", "Attr", "Ctx", "DirEntry", "Entry", "Lock", "Opened", "Policy", "SetAttr",
    "StatFs", "Statistics", "Tree", "TreeOps",
]
