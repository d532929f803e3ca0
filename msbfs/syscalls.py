"""Python face of openat2 in csrc/sys.c. (The tree switches per-thread credentials in C,
msbfs/tree/creds.py; tests/plugins/credentials.py holds the Python faces tests use.)

Everything here raises ``OSError`` with the kernel's errno, like the ``os`` module.
"""

from __future__ import annotations

import errno
import os

from msbfs._native import lib

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
