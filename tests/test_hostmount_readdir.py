"""Listings through ``msbfs mount``: pyfuse3 answers every READDIR as READDIRPLUS, and
the daemon applies the kernel's READDIRPLUS_AUTO rule itself (msbfs/hostmount.py
``HostOps.readdir``): past a listing's first batch, names nobody looked up go out as
plain records (node id 0, msbfs/hostmount_entry.py), which cost the daemon no lookup and
no fd. POSIX still holds: every name's ``d_ino`` is the ``st_ino`` a later stat reports,
and stat through the mount shows the host's inode numbers."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from msbfs._native import ffi, lib

from msbfs import hostmount, hostmount_entry
from tests.plugins.hostmount import MountFactory, needs_root

pytestmark = [pytest.mark.fuse, needs_root,
              pytest.mark.skipif(not hostmount_entry.APART,
                                 reason="pyfuse3's EntryAttributes layout is not the known one")]

ENTRIES = 3000


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _kernel_inodes() -> int:
    """Inodes in use in this kernel (all filesystems'; /proc/sys/fs/inode-nr: allocated
    less unused, so the reclaim of cached unused inodes elsewhere does not move it): an
    entry the daemon sends with a node id (its lookup's) makes one, with its dentry; a
    plain record (node id 0) none. That is what a listing looked up, seen from outside:
    a lookup costs the daemon no fd (a named node, csrc/inodes.h), so its fds no longer
    tell. The tests run one at a time; a pipe or a socket elsewhere moves it by one."""
    with open("/proc/sys/fs/inode-nr") as f:
        allocated, unused = (int(v) for v in f.read().split()[:2])
    return allocated - unused


def _populate(d: Path) -> set[str]:
    d.mkdir()
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(ENTRIES)}
    for n in names:
        (d / n).touch()
    (d / "sub").mkdir()
    os.link(d / "entry-00001-x", d / "hard")
    (d / "link").symlink_to("entry-00002-xx")
    os.mkfifo(d / "fifo")
    assert os.stat(d).st_size > hostmount.SMALL_DIR  # not small: listed plain
    return names | {"sub", "hard", "link", "fifo"}


def test_a_listing_looks_no_name_up(host_mount: MountFactory) -> None:
    m = host_mount()
    names = _populate(m.source / "big")
    pid = m.pid
    assert pid is not None
    # One listing first: libfuse opens its splice pipe at its first request after INIT,
    # which with the C relay answering the mount's stats may be this listing.
    os.listdir(m.mnt)
    before, inodes = _fds(pid), _kernel_inodes()
    assert set(os.listdir(m.mnt / "big")) == names
    # Not even the first batch carries attributes: the directory is not small (the
    # directory's own inode and handle are all the listing adds).
    assert _fds(pid) - before <= 3
    assert _kernel_inodes() - inodes <= 10
    for n in names:  # a stat of every name: a lookup each...
        os.lstat(m.mnt / "big" / n)
    assert _kernel_inodes() - inodes > ENTRIES - ENTRIES // 10
    # ...and no fd: each is a named node, opened at its first use (a stat is none)
    assert _fds(pid) - before <= 3


def test_a_small_directory_is_listed_with_attributes(host_mount: MountFactory) -> None:
    """A walk stats every name: a small directory's names all come with their
    attributes (each looked up as it is sent: a kernel inode each), so the stats that
    follow need no LOOKUP, even past the first batch of its listing."""
    m = host_mount()
    (m.source / "small").mkdir()
    for i in range(600):  # a few READDIRPLUS batches
        (m.source / "small" / f"f{i}").touch()
    assert os.stat(m.source / "small").st_size <= hostmount.SMALL_DIR
    pid = m.pid
    assert pid is not None
    before = _kernel_inodes()
    assert len(os.listdir(m.mnt / "small")) == 600
    assert _kernel_inodes() - before >= 600


def test_d_ino_is_the_st_ino_of_a_later_stat(host_mount: MountFactory) -> None:
    m = host_mount()
    names = _populate(m.source / "big")
    with os.scandir(m.mnt / "big") as it:
        listed = {e.name: e.inode() for e in it}
    assert set(listed) == names
    for name, d_ino in listed.items():
        st = os.lstat(m.mnt / "big" / name)
        assert st.st_ino == d_ino, name
        assert st.st_ino == os.lstat(m.source / "big" / name).st_ino, name  # the host's
    assert listed["hard"] == listed["entry-00001-x"]
    # "." and ".." as ls -ai shows them: the directory's and its parent's numbers.
    out = subprocess.run(["ls", "-1ai", str(m.mnt / "big")], capture_output=True, text=True,
                         check=True).stdout.split("\n")[:2]
    dot, dotdot = (int(line.split()[0]) for line in out)
    assert dot == os.stat(m.mnt / "big").st_ino
    assert dotdot == os.stat(m.mnt).st_ino


def test_types_of_plain_records(host_mount: MountFactory) -> None:
    """d_type comes with the plain records too (os.walk, find and ls rely on it): telling
    directories, links and files apart stats nothing (no fd per name either)."""
    m = host_mount()
    _populate(m.source / "big")
    pid = m.pid
    assert pid is not None
    before = _kernel_inodes()
    with os.scandir(m.mnt / "big") as it:
        kinds = {e.name: (e.is_dir(follow_symlinks=False), e.is_symlink(),
                          e.is_file(follow_symlinks=False)) for e in it}
    assert _kernel_inodes() - before < ENTRIES // 10  # DT_UNKNOWN: an lstat each
    assert kinds["sub"] == (True, False, False)
    assert kinds["link"] == (False, True, False)
    assert kinds["fifo"] == (False, False, False)
    assert sum(k == (False, False, True) for k in kinds.values()) == ENTRIES + 1


_DIRENT = struct.Struct("=QqHB")  # linux_dirent64: d_ino, d_off, d_reclen, d_type, name


def _batch(fd: int) -> list[str]:
    """One getdents64 of at most 4 KiB: one READDIRPLUS request to the daemon."""
    buf = ffi.new("char[]", 4096)
    n = lib.msb_getdents64(fd, buf, 4096)
    assert n >= 0
    data, names, pos = ffi.buffer(buf, n)[:], [], 0
    while pos < n:
        _, _, reclen, _ = _DIRENT.unpack_from(data, pos)
        start = pos + _DIRENT.size
        names.append(data[start:data.index(b"\0", start)].decode())
        pos += reclen
    return names


def test_a_lookup_turns_attributes_on_for_the_rest_of_the_listing(
        host_mount: MountFactory) -> None:
    """``ls -l`` stats the names of each batch as it reads them: once a child of a
    directory being listed is looked up, the following batches carry attributes (each
    entry looked up as it is sent: a kernel inode each), until the directory is closed.

    Where pyfuse3 answers the LOOKUPs: with the C relay (msbfs.hostmount_relay) they
    never reach Python, and a plain listing plus C LOOKUPs measured as fast as a
    listing with attributes (``ls -l`` of 10,000 names: 360-410 vs 315-424 ms)."""
    m = host_mount(env={**os.environ, "MSBFS_HOST_RELAY": "0"})
    names = _populate(m.source / "big")
    pid = m.pid
    assert pid is not None
    fd = os.open(m.mnt / "big", os.O_RDONLY | os.O_DIRECTORY)
    try:
        _batch(fd)  # the first batch carries attributes in any case
        for _ in range(3):  # nothing looked up: plain records, no lookups
            before = _kernel_inodes()
            assert _batch(fd)
            assert _kernel_inodes() - before <= 5
    finally:
        os.close(fd)
    fd = os.open(m.mnt / "big", os.O_RDONLY | os.O_DIRECTORY)
    try:
        seen = set(_batch(fd))
        os.lstat(m.mnt / "big" / sorted(names - seen)[0])  # not listed yet: a LOOKUP
        for _ in range(3):
            before = _kernel_inodes()
            got = _batch(fd)
            assert len(got) > 10
            assert _kernel_inodes() - before > len(got) // 2, len(got)
    finally:
        os.close(fd)
