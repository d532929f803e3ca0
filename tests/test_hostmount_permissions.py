"""``msbfs mount`` gives other host users exactly what a native directory gives
(issue 10, points 1-3): the host kernel checks every path component, ACLs and FIFO
modes (``default_permissions``), and a permitted write clears set-id bits instead of
failing. Each case runs the same script as uid 1000 on a native twin and through the
mount, and both must answer the same."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from tests.plugins.hostmount import MountFactory, needs_root, py_as

pytestmark = [pytest.mark.fuse, needs_root]

# One probe per line: what uid 1000 gets (ok or the errno name).
PROBES = r"""
import errno, os, sys
def probe(name, fn):
    try:
        fn()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
def write_suid():
    with open("suid", "r+b") as f:
        f.write(b"x")
def read(path):
    with open(path, "rb") as f:
        f.read()
probe("read-in-0700", lambda: read("private/f"))
probe("stat-in-0700", lambda: os.stat("private/f"))
probe("acl-denied-dir", lambda: os.stat("acl/f"))
probe("acl-granted-dir", lambda: os.stat("aclok/f"))
probe("list-0700", lambda: os.listdir("private"))
probe("list-acl-denied", lambda: os.listdir("acl"))
probe("list-acl-granted", lambda: os.listdir("aclok"))
probe("fifo-0600", lambda: os.close(os.open("fifo", os.O_RDONLY | os.O_NONBLOCK)))
probe("write-04777", write_suid)
print("suid-mode", oct(os.stat("suid").st_mode & 0o7777))
probe("chmod-not-owner", lambda: os.chmod("suid", 0o777))
probe("unlink-sticky-other", lambda: os.unlink("sticky/rootfile"))
probe("create-in-sticky", lambda: os.close(os.open("sticky/mine", os.O_CREAT | os.O_WRONLY, 0o600)))
print("mine-owner", os.stat("sticky/mine").st_uid)
"""


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ANY = 0xFFFFFFFF
# USER_OBJ rwx, USER 1000 (perm), GROUP_OBJ r-x, MASK (perm | r-x), OTHER r-x
DENY_1000 = _acl((0x01, 7, ANY), (0x02, 0, 1000), (0x04, 5, ANY), (0x10, 5, ANY), (0x20, 5, ANY))
GRANT_1000 = _acl((0x01, 7, ANY), (0x02, 7, 1000), (0x04, 0, ANY), (0x10, 7, ANY), (0x20, 0, ANY))


def layout(root: Path) -> None:
    os.chmod(root, 0o755)
    (root / "private").mkdir(mode=0o700)
    (root / "private" / "f").write_bytes(b"secret")
    os.chmod(root / "private" / "f", 0o644)
    for name, acl, mode in (("acl", DENY_1000, 0o755), ("aclok", GRANT_1000, 0o700)):
        (root / name).mkdir()
        (root / name / "f").write_bytes(b"")
        os.chmod(root / name, mode)
        os.setxattr(root / name, "system.posix_acl_access", acl)
    os.mkfifo(root / "fifo", 0o600)
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "suid", 0o4777)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "sticky" / "rootfile").write_bytes(b"")


def answers(where: Path) -> dict[str, str]:
    r = py_as(1000, 1000, PROBES, cwd=str(where))
    assert r.returncode == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


def test_other_users_get_what_a_native_directory_gives(host_mount: MountFactory,
                                                        tmp_path: Path) -> None:
    native = tmp_path / "native"
    native.mkdir()
    layout(native)
    want = answers(native)
    # the table must exercise both outcomes, or it proves nothing
    assert want["read-in-0700"] == "EACCES" and want["acl-denied-dir"] == "EACCES"
    assert want["fifo-0600"] == "EACCES" and want["write-04777"] == "ok"
    assert want["acl-granted-dir"] == "ok" and want["suid-mode"] == "0o777"
    assert want["list-0700"] == want["list-acl-denied"] == "EACCES"
    assert want["list-acl-granted"] == "ok"

    m = host_mount(options="allow_other")
    layout(m.source)
    # Root walks everything first, so every component is in the kernel's caches: the
    # checks must still happen (they did not without default_permissions).
    for p in ("private/f", "acl/f", "aclok/f", "fifo", "suid", "sticky/rootfile"):
        os.lstat(m.mnt / p)
    for d in ("private", "acl", "aclok"):  # listings too (plain records, no lookups)
        os.listdir(m.mnt / d)
    got = answers(m.mnt)
    assert got == want
    assert stat.S_IMODE(os.stat(m.source / "suid").st_mode) == 0o777
    assert os.stat(m.source / "sticky" / "mine").st_uid == 1000
