"""Host-mount tests of the rules the C relay (csrc/devfuse.c, msbfs/hostmount_relay.py)
now answers for: requests the C opcode handlers serve never reach pyfuse3, so a rule
dropped from csrc/ or from what Python compiles for it changes what a host mount does.
Written for tools/mutants (issue 11): each test is the host-mount claim of a mutant no
earlier host-mount test caught.

- the xattr map as C applies it (csrc/fuse_xattr.c, msbfs/fastxattr.py): the hot names'
  answers are what the map says, even to root;
- the relay's own rules (csrc/devfuse.c): an O_TRUNC open by a caller other than root
  is Python's (``python_rule``) and clears the file's set-id bits as a native open does,
  which C's openat, made with the daemon's CAP_FSETID, would not; C writes only through
  handles the table lets it write through, so a quota holds for a file C opened;
- the root's '..' in a listing (fuse_readdir.c, with attributes or plain) is the root."""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import pytest
from msbfs._native import ffi, lib

from msbfs import hostmount, hostmount_entry
from tests.plugins.hostmount import MountFactory, needs_root, py_as
from tests.test_hostmount_policy_mutants import CAP, QUOTA, usage, write_past_the_quota
from tests.test_hostmount_readdir import _DIRENT

pytestmark = [pytest.mark.fuse, needs_root]

# VFS_CAP_REVISION_2 with CAP_KILL (5) permitted and effective: not CAP.
OTHER_CAP = struct.pack("<IIIII", 0x02000001, 1 << 5, 0, 0, 0)


def test_default_map_hides_the_hosts_file_capabilities(host_mount: MountFactory) -> None:
    """security.capability is one of the names C answers (every write asks for it):
    under the default map its answer is ENODATA, for root too, whatever the host has."""
    m = host_mount()
    (m.source / "bin").write_bytes(b"")
    os.setxattr(m.source / "bin", "security.capability", CAP)
    for _ in range(2):  # the second after the inode is cached: still C, still refused
        with pytest.raises(OSError) as e:
            os.getxattr(m.mnt / "bin", "security.capability")
        assert e.value.errno == errno.ENODATA
    assert os.listxattr(m.mnt / "bin") == []
    assert os.getxattr(m.source / "bin", "security.capability") == CAP  # it is there


def test_renaming_map_reads_the_hosts_name_of_a_hot_attribute(host_mount: MountFactory) -> None:
    """A map that keeps the client's security.* in user.virtiofs.security.*: what the
    client reads of security.capability is the host's user.virtiofs.security.capability,
    never the host's own security.capability."""
    src = host_mount.base / "renamed-src"
    src.mkdir()
    (src / "bin").write_bytes(b"")
    os.setxattr(src / "bin", "security.capability", CAP)  # the host's own
    os.setxattr(src / "bin", "user.virtiofs.security.capability", OTHER_CAP)  # the client's
    m = host_mount(src, "xattrmap=:prefix:all:security.:user.virtiofs.: :ok:all:::")
    assert os.getxattr(m.mnt / "bin", "security.capability") == OTHER_CAP
    os.removexattr(src / "bin", "user.virtiofs.security.capability")
    with pytest.raises(OSError) as e:
        os.getxattr(m.mnt / "bin", "security.capability")
    assert e.value.errno == errno.ENODATA


def test_quota_stops_writes_through_a_handle_open_for_reading_too(
        host_mount: MountFactory) -> None:
    """The relay writes only through handles the table lets C write through
    (``Policy.writes_need_tree``: never a quota tree's): an existing file opened
    read-write (an OPEN C answers, not a CREATE) still stops at the quota."""
    src = host_mount.base / "quota-src"
    src.mkdir()
    (src / "big").write_bytes(b"")
    m = host_mount(src, "quota=1")
    write_past_the_quota(m.mnt / "big", "r+b")
    assert usage(src)[0] <= QUOTA


# What uid 1000 reads of a name whose host name is under trusted.*.
READ_CAPABILITY = r"""
import errno, os
try:
    print(os.getxattr("bin", "security.capability").hex())
except OSError as e:
    print(errno.errorcode[e.errno])
"""


def test_a_map_that_depends_on_the_caller_answers_each_caller(
        host_mount: MountFactory) -> None:
    """A map sending security.* to trusted.virtiofs.*: the host's root reads it through
    the mount, any other caller gets ENODATA, as trusted.* natively is root's alone. C
    tables only answers that hold for every caller (msbfs/fastxattr.py), so neither
    caller's answer may be the other's."""
    src = host_mount.base / "trusted-src"
    src.mkdir()
    os.chmod(src, 0o755)
    (src / "bin").write_bytes(b"")
    os.setxattr(src / "bin", "trusted.virtiofs.security.capability", CAP)
    m = host_mount(src, "allow_other,xattrmap=:prefix:all:security.:trusted.virtiofs.: "
                        ":ok:all:::")
    for _ in range(2):  # each caller first and second, on a cached inode
        r = py_as(1000, 1000, READ_CAPABILITY, cwd=str(m.mnt))
        assert (r.returncode, r.stdout.strip()) == (0, "ENODATA"), r.stderr
        assert os.getxattr(m.mnt / "bin", "security.capability") == CAP


# What uid 1000 sees of each file's mode after truncating it on open (its own file, and
# root's world-writable one).
TRUNCATE = r"""
import os
for name in ("own", "roots"):
    os.close(os.open(name, os.O_WRONLY | os.O_TRUNC))
    st = os.stat(name)
    print(name, oct(st.st_mode & 0o7777), st.st_size)
"""


def _setid_files(root: Path) -> None:
    os.chmod(root, 0o755)
    for name, owner, mode in (("own", 1000, 0o6775), ("roots", 0, 0o6777)):
        (root / name).write_bytes(b"data")
        os.chown(root / name, owner, owner)
        os.chmod(root / name, mode)  # after the chown, which clears set-id bits


def _truncated_as_1000(where: Path) -> dict[str, str]:
    r = py_as(1000, 1000, TRUNCATE, cwd=str(where))
    assert r.returncode == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


def test_truncating_open_by_another_user_clears_setid_bits_as_natively(
        host_mount: MountFactory, tmp_path: Path) -> None:
    """The kernel sends an O_TRUNC open as one OPEN (atomic_o_trunc) and leaves the
    set-id bits to the daemon: a caller without CAP_FSETID loses them natively."""
    native = tmp_path / "native"
    native.mkdir()
    _setid_files(native)
    want = _truncated_as_1000(native)
    assert want == {"own": "0o775 0", "roots": "0o777 0"}  # the rule the test is about
    m = host_mount(options="allow_other")
    _setid_files(m.source)
    for name in ("own", "roots"):
        os.stat(m.mnt / name)  # looked up by root first: the opens find cached inodes
    assert _truncated_as_1000(m.mnt) == want
    for name, mode in (("own", 0o775), ("roots", 0o777)):
        assert stat.S_IMODE(os.stat(m.source / name).st_mode) == mode, name


def _d_inos(path: Path) -> dict[bytes, int]:
    """Every record of a listing, '.' and '..' included (os.scandir leaves them out)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    out: dict[bytes, int] = {}
    try:
        buf = ffi.new("char[]", 4096)
        while (n := lib.msb_getdents64(fd, buf, 4096)) > 0:
            data, pos = ffi.buffer(buf, n)[:], 0
            while pos < n:
                ino, _, reclen, _ = _DIRENT.unpack_from(data, pos)
                start = pos + _DIRENT.size
                out[data[start:data.index(b"\0", start)]] = ino
                pos += reclen
        assert n == 0, n
    finally:
        os.close(fd)
    return out


@pytest.mark.skipif(not hostmount_entry.APART,
                    reason="pyfuse3's EntryAttributes layout is not the known one")
@pytest.mark.parametrize("files", [1, 4000], ids=["small", "large"])
def test_the_roots_dotdot_is_the_root_in_a_listing(host_mount: MountFactory,
                                                   files: int) -> None:
    """The root's '..' names the root itself, never the host directory it lies in: a
    small root (listed with attributes) and one past SMALL_DIR (plain records), and a
    subdirectory's '..' for contrast."""
    src = host_mount.base / "root-src"
    src.mkdir()
    (src / "d").mkdir()
    names = {f"entry-{i:05d}-of-a-large-root".encode() for i in range(files)}
    for n in names:
        (src / n.decode()).write_bytes(b"")
    assert (os.stat(src).st_size > hostmount.SMALL_DIR) == (files > 1)
    m = host_mount(src)
    root_ino = os.stat(m.mnt).st_ino
    assert root_ino != os.stat(src.parent).st_ino
    for _ in range(2):  # the second listing through a cached root inode
        listed = _d_inos(m.mnt)
        assert set(listed) == {b".", b"..", b"d"} | names
        assert listed[b".."] == listed[b"."] == root_ino
    assert _d_inos(m.mnt / "d")[b".."] == root_ino
