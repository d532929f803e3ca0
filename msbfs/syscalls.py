"""Python faces of the raw system calls in csrc/sys.c: openat2 and per-thread credentials.

Everything here raises ``OSError`` with the kernel's errno, like the ``os`` module.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Sequence

from msbfs._native import ffi, lib

# linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20

#: The resolution every sandboxed lookup uses: stay beneath the starting fd, and never
#: follow /proc-style magic links (which could name anything on the host).
RESOLVE_CONTAINED = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS


def openat2(dirfd: int, path: str | bytes, flags: int, mode: int = 0,
            resolve: int = RESOLVE_CONTAINED) -> int:
    """openat2(2). ``EXDEV`` from the kernel means the path tried to leave ``dirfd``."""
    if isinstance(path, str):
        path = os.fsencode(path)
    if b"\0" in path:
        raise OSError(errno.EINVAL, "path contains NUL", path)
    # mode must be 0 unless O_CREAT/O_TMPFILE is set, or the kernel says EINVAL.
    if not flags & (os.O_CREAT | getattr(os, "O_TMPFILE", 0)):
        mode = 0
    r = lib.msb_openat2(dirfd, path, flags | os.O_CLOEXEC, mode, resolve)
    if r < 0:
        raise OSError(-r, os.strerror(-r), os.fsdecode(path))
    return r


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
    silently keeps the current ids, which is what an unprivileged daemon wants.
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
