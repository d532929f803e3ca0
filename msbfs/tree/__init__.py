"""The sandboxed tree: the one place that decides what any client sees of a served
directory. Transports (virtio-fs, host mount) are thin adapters over ``Tree``; the
contract is ``msbfs.tree.api.TreeOps``. ``VolumeFs`` is not one: it shares the tree's
containment flags and the quota (policy.py, msbfs.usage), not the tree."""

from typing import TYPE_CHECKING, Any

from msbfs.tree.api import TreeOps
from msbfs.tree.policy import FMODE_EXEC, Policy
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

if TYPE_CHECKING:
    from msbfs.tree.tree import RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, Tree

#: Loaded on first use, so the value types and the policy (what the FUSE codec, the ABI
#: and VolumeFs need) come without the tree itself and its C bindings.
_LAZY = frozenset({"RENAME_EXCHANGE", "RENAME_NOREPLACE", "RENAME_WHITEOUT", "Tree"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from msbfs.tree import tree

        return getattr(tree, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
