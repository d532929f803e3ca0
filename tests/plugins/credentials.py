"""Per-thread credentials for tests: run a native syscall as a client would be checked.

The daemon itself never uses these: the tree switches credentials in C
(``msb_switch_creds``, msbfs/tree/creds.py). Tests use them to make the native side of
a comparison (the twin, a raw syscall test) run as the same caller, through the same raw
syscalls of csrc/sys.c (per thread, not glibc's process-wide wrappers).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

from msbfs._native import ffi, lib


def setfsuid(uid: int) -> int:
    """Set this thread's filesystem uid; returns the previous one."""
    return lib.msb_setfsuid(uid)


def setfsgid(gid: int) -> int:
    """Set this thread's filesystem gid; returns the previous one."""
    return lib.msb_setfsgid(gid)


def setgroups(groups: Sequence[int]) -> None:
    """Set this thread's supplementary groups (raw syscall: this thread only)."""
    arr = ffi.new("uint32_t[]", list(groups)) if groups else ffi.NULL
    r = lib.msb_setgroups(len(groups), arr)
    if r < 0:
        raise OSError(-r, os.strerror(-r))


def getgroups() -> list[int]:
    """This thread's supplementary groups (os.getgroups reads the same, but per-thread
    changes made with the raw syscall are what we want to observe)."""
    n = lib.msb_getgroups(0, ffi.NULL)
    if n < 0:
        raise OSError(-n, os.strerror(-n))
    arr = ffi.new("uint32_t[]", max(n, 1))
    n = lib.msb_getgroups(n, arr)
    if n < 0:
        raise OSError(-n, os.strerror(-n))
    return [arr[i] for i in range(n)]


@contextlib.contextmanager
def credentials(uid: int, gid: int, groups: Sequence[int] | None = None) -> Iterator[None]:
    """Run the body with this thread's fsuid/fsgid (and groups, when given) set to the
    caller's, so files it creates are owned by the caller and the kernel checks the
    caller's permissions. Restores the previous identity even on error.

    Only meaningful when running as root (CAP_SETUID/CAP_SETGID); otherwise the kernel
    silently keeps the current ids.
    """
    old_groups = getgroups() if groups is not None else None
    # gid first: once fsuid is not root we may lose CAP_SETGID.
    old_gid = setfsgid(gid)
    old_uid = setfsuid(uid)
    try:
        if groups is not None:
            setgroups(groups)
        yield
    finally:
        if old_groups is not None:
            setgroups(old_groups)
        setfsuid(old_uid)
        setfsgid(old_gid)
