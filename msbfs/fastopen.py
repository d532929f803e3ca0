"""Glue of the C OPEN/OPENDIR/RELEASE/RELEASEDIR/CREATE path (csrc/fuse_handles.h) to a
device: the tree's open rules compiled into the few numbers C looks its answers up in
(CREATE also needs the creation rules, which fastmeta.py writes for MKDIR).

One definition, two consumers: nothing here states a rule. ``compile_open`` runs the
rules themselves (``Policy.check_open`` behind ``FuseSession._open_flags``, the tree's
``_reopen_flags`` and ``_writeback_flags``) over the inputs C can see and writes down
what they answered:

- check_open's errno for every combination of the flag bits in ``TABLE_BITS``, per kind
  (regular file, directory). Every other bit of the 32 is tried on every entry: one
  whose presence changes an answer goes into ``python_mask`` (C hands such an OPEN to
  Python), so a rule on a new bit is Python's until it is tabled here;
- the re-open's flags as ``(flags & pass_mask) | add_flags``: the form is checked bit
  by bit; a re-open that is not of that form leaves OPEN to Python altogether;
- whether writeback makes a write-only open read-write.

The FOPEN flags of the replies and OPENDIR's flags are the tree's values, copied.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from msbfs._native import ffi, lib
from msbfs.tree.policy import FMODE_EXEC, errno_of
from msbfs.tree.tree import COpenConfig

#: The flag bits check_open's answers are tabled by (at most MSB_OPEN_TABLE_BITS).
TABLE_BITS = os.O_ACCMODE | os.O_TRUNC | os.O_APPEND | os.O_CREAT | FMODE_EXEC
_KINDS = (stat.S_IFREG, stat.S_IFDIR)  # open_errno[0], open_errno[1]
_ALL = 0xFFFFFFFF


def _bits(mask: int) -> list[int]:
    return [1 << b for b in range(32) if mask >> b & 1]


def _scatter(index: int, bits: list[int]) -> int:
    """The flags whose TABLE_BITS, gathered low to high (as C gathers), are ``index``."""
    return sum(bit for k, bit in enumerate(bits) if index >> k & 1)


def _linear(g: Callable[[int], int]) -> tuple[int, int] | None:
    """(pass_mask, add_flags) with g(f) == (f & pass_mask) | add_flags for every f, as
    far as every single bit and all of them together show; None if g is not so."""
    add = g(0)
    passed = 0
    for bit in _bits(_ALL):
        got = g(bit)
        if got not in (add, add | bit):
            return None
        passed |= got & ~add
    if g(_ALL) != passed | add:
        return None
    return passed, add


class OpenRules:
    """What compile_open found; ``None`` fields mean "C answers no OPEN"."""

    def __init__(self, cfg: COpenConfig, session_flags: Callable[[int], int]) -> None:
        policy = cfg.policy
        bits = _bits(TABLE_BITS)
        assert len(bits) <= lib.MSB_OPEN_TABLE_BITS

        def answer(flags: int, kind: int) -> int:
            return errno_of(policy.check_open, session_flags(flags), kind)

        self.table = [[answer(_scatter(i, bits), kind) for i in range(1 << len(bits))]
                      for kind in _KINDS]
        python = 0
        for bit in _bits(_ALL & ~TABLE_BITS):
            if any(answer(_scatter(i, bits) | bit, kind) != row[i]
                   for kind, row in zip(_KINDS, self.table, strict=True) for i in range(len(row))):
                python |= bit
        self.python_mask = python
        self.linear = _linear(lambda f: cfg.reopen_flags(session_flags(f)))
        wo = cfg.writeback_flags(os.O_WRONLY)
        self.writeback = wo == os.O_RDWR
        self.ok = (self.linear is not None and wo in (os.O_WRONLY, os.O_RDWR)
                   and all(0 <= e < 256 for row in self.table for e in row))


def write_open_rules(m: Any, cfg: COpenConfig, session_flags: Callable[[int], int]) -> None:
    """Write the tree's rules into the device's ``struct msb_meta`` (before it is
    enabled); everything stays Python's if they cannot be written exactly."""
    o = lib.msb_meta_open(m)
    rules = OpenRules(cfg, session_flags)
    if not rules.ok or rules.linear is None:
        return
    o.table_mask = TABLE_BITS
    o.python_mask = rules.python_mask
    for k, row in enumerate(rules.table):
        o.open_errno[k][0:len(row)] = row
    o.pass_mask, o.add_flags = rules.linear
    o.writeback = 1 if rules.writeback else 0
    o.file_open_flags = cfg.file_open_flags
    o.dir_open_flags = cfg.dir_open_flags
    o.opendir_flags = cfg.opendir_flags
    o.trunc = 0 if cfg.charged else 1
    o.release = 0 if cfg.charged else 1
    o.open = 1


def open_statistics(m: Any) -> dict[str, int]:
    """What csrc/fuse_handles.c answered."""
    s = ffi.new("struct msb_open_stats *")
    lib.msb_open_stats(m, s)
    return {k: int(getattr(s, k)) for k in ("opens", "opendirs", "releases",
                                             "releasedirs", "open_errors", "creates")}
