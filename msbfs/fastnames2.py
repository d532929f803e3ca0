"""Glue of the C RENAME/RENAME2/READLINK/SYMLINK/LINK path (csrc/fuse_names2.h) to a
device: which of these opcodes a tree lets C answer, and what C answered.

Nothing here states a rule: the mutation errno (readonly) is the policy's compiled
decision (``Policy.c_decisions``), which msbfs/fastmeta.py writes into ``struct
msb_names`` once for every C opcode, and the creation rules SYMLINK follows are
csrc/fuse_names.c's. A quota keeps RENAME (the replaced file's charge), SYMLINK (the new
inode's) and LINK (the parent's growth) in Python; READLINK changes nothing.
"""

from __future__ import annotations

from typing import Any

from msbfs._native import ffi, lib
from msbfs.tree.tree import CMetaConfig

_STATS = ("renames", "readlinks", "symlinks", "links")


def write_names2_rules(m: Any, config: CMetaConfig) -> None:
    """Turn the opcodes on in the device's ``struct msb_meta`` (before it is enabled)."""
    n = lib.msb_meta_names2(m)
    uncharged = 0 if config.charged else 1
    n.rename = n.symlink = n.link = uncharged
    n.readlink = 1


def names2_statistics(m: Any) -> dict[str, int]:
    """What csrc/fuse_names2.c answered."""
    s = ffi.new("struct msb_names2_stats *")
    lib.msb_names2_stats(m, s)
    return {k: int(getattr(s, k)) for k in _STATS}
