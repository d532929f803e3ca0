"""Mountpoint state from the kernel's side: what is mounted where
(``/proc/self/mountinfo``), whether a FUSE mount still answers or its daemon is gone
(ENOTCONN: "stale"), clearing a stale mount, and checking a mountpoint before mounting.
Used by ``msbfs mount``/``umount`` (``msbfs.hostmount``, ``msbfs.mount_daemon``)."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
from collections.abc import Iterator

from msbfs._native import lib
from msbfs.confine import MNT_DETACH
from msbfs.errors import MountError

log = logging.getLogger(__name__)


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts() -> Iterator[tuple[list[str], str]]:
    """Each line of ``/proc/self/mountinfo``: the fields before the " - " separator
    (mount id, parent id, major:minor, root, mount point...) and the filesystem type
    after it ("?" where a line has none)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            yield left.split(), right.split()[0] if right.strip() else "?"


def mount_fstype(mountpoint: str) -> str | None:
    """The filesystem type mounted exactly at ``mountpoint`` (the top one), or None."""
    target = os.path.abspath(mountpoint)
    found = None
    for fields, fstype in _mounts():
        if len(fields) >= 5 and _unescape_mountinfo(fields[4]) == target:
            found = fstype
    return found


def fstype_of_fd(fd: int) -> str | None:
    """The filesystem type of the mount ``fd`` is on (its ``mnt_id``), or None."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            mnt_id = next((line.split()[1] for line in f if line.startswith("mnt_id:")), None)
        if mnt_id is None:
            return None
        return next((fstype for fields, fstype in _mounts()
                     if fields and fields[0] == mnt_id and fstype != "?"), None)
    except OSError:
        return None


def mount_state(mountpoint: str) -> str:
    """"mounted" (an answering mount), "stale" (its daemon is gone: ENOTCONN), or "none".

    statfs, not stat: the kernel answers stat from cached attributes even after the
    daemon died, while every STATFS goes to the (gone) daemon."""
    try:
        os.statvfs(mountpoint)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            return "stale"
        if e.errno == errno.ENOENT:
            return "none"
        raise
    return "mounted" if os.path.ismount(mountpoint) else "none"


def _umount(mountpoint: str, *, lazy: bool) -> None:
    if os.geteuid() == 0:
        r = lib.msb_umount2(os.fsencode(mountpoint), MNT_DETACH if lazy else 0)
        if r < 0:  # the raw syscall's -errno
            raise OSError(-r, os.strerror(-r), mountpoint)
        return
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise MountError(f"{mountpoint}: {r.stderr.strip() or 'fusermount3 failed'}")


def clear_stale(mountpoint: str) -> bool:
    """Lazily unmount a mount whose daemon died (stat gives ENOTCONN). True if one was."""
    if mount_state(mountpoint) != "stale":
        return False
    log.info("clearing stale mount at %s", mountpoint)
    _umount(mountpoint, lazy=True)
    return True


def check_mountpoint(mountpoint: str) -> str:
    """The absolute mountpoint, ready to mount on (stale mount cleared), or MountError."""
    path = os.path.abspath(mountpoint)
    clear_stale(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"mountpoint {path} is busy: something is already mounted there")
    return path
