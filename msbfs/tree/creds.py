"""Running a tree operation as its caller: fsuid, fsgid and supplementary groups of this
thread only (raw syscalls in ``csrc/tree.c``), switched and restored in one C call each
way, so a non-root caller's metadata op pays two crossings, not a dozen. Each credential
change is a copy-and-commit of the thread's creds in the kernel (microseconds), so
the group list is only set when it differs from the daemon's: a daemon that drops its
own supplementary groups at start (``os.setgroups([])``) switches only fsuid/fsgid for
callers whose groups are unknown.

Unknown groups (FUSE does not send them) mean "no supplementary groups": the daemon's
own groups must never stand in for the caller's. A daemon that is not root cannot
switch at all; it then acts with its own identity, which is what an unprivileged
(single-user) mount wants, and the kernel still checks every access against it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from msbfs._native import ffi, lib
from msbfs.tree.types import Ctx

_NO_SWITCH = contextlib.nullcontext()
_CACHE_MAX = 256
_KEEP_GROUPS = (1 << 64) - 1  # (size_t)-1 for msb_switch_creds


class _As:
    """A reusable context manager: enter as one identity, leave as the daemon."""

    __slots__ = ("_arr", "_gid", "_n", "_restore", "_uid")

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...] | None,
                 restore: _As | None) -> None:
        self._uid = uid
        self._gid = gid
        # None: the thread's groups already are these (each setgroups is a credential
        # copy in the kernel, several microseconds: skip it when nothing changes).
        self._n = _KEEP_GROUPS if groups is None else len(groups)
        self._arr = ffi.new("uint32_t[]", list(groups)) if groups else ffi.NULL
        self._restore = restore

    def switch(self) -> int:
        return lib.msb_switch_creds(self._uid, self._gid, self._n, self._arr)

    def __enter__(self) -> None:
        r = self.switch()
        if r < 0:
            assert self._restore is not None
            self._restore.switch()
            raise OSError(-r, os.strerror(-r))

    def __exit__(self, *exc: Any) -> None:
        assert self._restore is not None
        self._restore.switch()


class Identities:
    """Hands out the context manager for a caller; cached per (uid, gid, groups)."""

    def __init__(self) -> None:
        self.enabled = os.geteuid() == 0
        self._own_groups = tuple(sorted(os.getgroups()))
        self._own = _As(os.geteuid(), os.getegid(), None, None)
        self._own_with_groups = _As(os.geteuid(), os.getegid(), self._own_groups, None)
        self._cache: dict[tuple[int, int, tuple[int, ...]], _As] = {}

    @property
    def own(self) -> tuple[int, int, tuple[int, ...]]:
        """The daemon's uid, gid and groups: what every switch restores (also the C
        ACCESS path's, msbfs/fastmeta.py, which must restore the same)."""
        return self._own._uid, self._own._gid, self._own_groups

    def of(self, ctx: Ctx) -> contextlib.AbstractContextManager[None]:
        if not self.enabled or (ctx.uid == 0 and ctx.gid == 0 and not ctx.groups):
            return _NO_SWITCH
        key = (ctx.uid, ctx.gid, tuple(ctx.groups or ()))
        ident = self._cache.get(key)
        if ident is None:
            if not all(0 <= v <= 0xFFFFFFFE for v in (key[0], key[1], *key[2])):
                raise OSError(errno.EINVAL, "invalid caller identity")
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            if tuple(sorted(key[2])) == self._own_groups:
                ident = _As(key[0], key[1], None, self._own)
            else:
                ident = _As(key[0], key[1], key[2], self._own_with_groups)
            self._cache[key] = ident
        return ident
