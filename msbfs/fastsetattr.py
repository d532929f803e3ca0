"""Glue of the C SETATTR path (csrc/fuse_setattr.h) to a device: a chmod, a chown (no id
map: the C path has none) and the times answered in C, as ``Tree.setattr`` answers them.

Nothing here states a rule: the mutation errno (readonly) and ``stored_mode``'s mask
(nosuid) are the policy's compiled decisions (``Policy.c_decisions``), which
msbfs/fastmeta.py writes into ``struct msb_names`` once for every C opcode; this only
says whether SETATTR may use them. FATTR_MODE stays Python's when ``stored_mode`` is no
AND mask (``stored_mask`` None); the times and a request that changes nothing need no
rule of the policy but readonly's.
"""

from __future__ import annotations

from typing import Any

from msbfs._native import ffi, lib
from msbfs.tree.tree import CMetaConfig


def write_setattr_rules(m: Any, config: CMetaConfig) -> None:
    """Turn SETATTR on in the device's ``struct msb_meta`` (before it is enabled)."""
    s = lib.msb_meta_setattr(m)
    s.mode = 0 if config.decisions.stored_mask is None else 1
    s.on = 1


def setattr_statistics(m: Any) -> dict[str, int]:
    """What csrc/fuse_setattr.c answered."""
    s = ffi.new("struct msb_setattr_stats *")
    lib.msb_setattr_stats(m, s)
    return {k: int(getattr(s, k))
            for k in ("setattrs", "setattr_ns", "chmods", "utimes", "chowns")}
