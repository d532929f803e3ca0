"""The kernel's side of the FUSE protocol, sans-I/O: build request bytes and decode
replies. Tests and benchmarks use it to speak to ``FuseSession`` directly or to
``msbfs serve`` through a vhost-user frontend, exactly as a guest kernel would.
"""

from __future__ import annotations

import itertools
import os
import struct
from dataclasses import dataclass

from msbfs.fuse import abi
from msbfs.fuse.abi import Opcode

INIT_FLAGS_ALL = (1 << 64) - 1  # offer every flag: the server picks


@dataclass
class Reply:
    error: int  # positive errno, 0 on success
    unique: int
    payload: bytes

    def ok(self) -> bytes:
        if self.error:
            raise OSError(self.error, os.strerror(self.error))
        return self.payload


@dataclass
class EntryOut:
    nodeid: int
    generation: int
    entry_valid: float
    attr_valid: float
    attr: tuple[int, ...]  # fuse_attr fields in order

    @property
    def mode(self) -> int:
        return self.attr[9]

    @property
    def size(self) -> int:
        return self.attr[1]

    @property
    def ino(self) -> int:
        return self.attr[0]


def parse_reply(data: bytes | bytearray | memoryview) -> Reply:
    data = bytes(data)
    if len(data) < abi.fuse_out_header.size:
        raise ValueError(f"reply of {len(data)} bytes is shorter than fuse_out_header")
    length, error, unique = abi.fuse_out_header.unpack_from(data)
    if length != len(data):
        raise ValueError(f"reply header says {length} bytes, got {len(data)}")
    return Reply(-error, unique, data[abi.fuse_out_header.size:])


def parse_entry(p: bytes) -> EntryOut:
    if len(p) < abi.FUSE_ENTRY_OUT_SIZE:
        raise ValueError("short fuse_entry_out")
    nodeid, gen, ev, av, evn, avn = abi.fuse_entry_out_head.unpack_from(p)
    attr = abi.fuse_attr.unpack_from(p, abi.fuse_entry_out_head.size)
    return EntryOut(nodeid, gen, ev + evn / 1e9, av + avn / 1e9, attr)


def parse_attr_out(p: bytes) -> tuple[float, tuple[int, ...]]:
    if len(p) != abi.FUSE_ATTR_OUT_SIZE:
        raise ValueError("fuse_attr_out of the wrong size")
    av, avn = abi.fuse_attr_out_head.unpack_from(p)
    return av + avn / 1e9, abi.fuse_attr.unpack_from(p, abi.fuse_attr_out_head.size)


def parse_open(p: bytes) -> tuple[int, int]:
    return abi.fuse_open_out.unpack(p)


def parse_dirents(p: bytes, plus: bool = False) -> list[tuple[bytes, int, int, EntryOut | None]]:
    """(name, ino, off, entry) per record."""
    out = []
    pos = 0
    while pos < len(p):
        entry = None
        if plus:
            entry = parse_entry(p[pos:pos + abi.FUSE_ENTRY_OUT_SIZE])
            pos += abi.FUSE_ENTRY_OUT_SIZE
        ino, off, namelen, _typ = abi.fuse_dirent_head.unpack_from(p, pos)
        name = p[pos + 24:pos + 24 + namelen]
        out.append((name, ino, off, entry))
        pos += abi.dirent_size(namelen)
    return out


class Requests:
    """Builds requests with increasing ``unique`` values, as one caller (uid/gid/pid)."""

    def __init__(self, uid: int = 0, gid: int = 0, pid: int = 1) -> None:
        self._unique = itertools.count(1)
        self.uid, self.gid, self.pid = uid, gid, pid
        self.last_unique = 0

    def raw(self, opcode: int, nodeid: int, body: bytes = b"", *, length: int | None = None,
            unique: int | None = None, extlen: int = 0) -> bytes:
        """A request; ``length`` overrides the header's length field (to lie)."""
        u = next(self._unique) if unique is None else unique
        self.last_unique = u
        n = abi.fuse_in_header.size + len(body)
        hdr = abi.fuse_in_header.pack(n if length is None else length, opcode, u, nodeid,
                                      self.uid, self.gid, self.pid, extlen, 0)
        return hdr + body

    def init(self, minor: int = abi.FUSE_KERNEL_MINOR_VERSION, flags: int = INIT_FLAGS_ALL,
             major: int = 7) -> bytes:
        return self.raw(Opcode.INIT, 0, abi.fuse_init_in.pack(
            major, minor, 1 << 20, flags & 0xFFFFFFFF, (flags >> 32) & 0xFFFFFFFF))

    def lookup(self, parent: int, name: bytes) -> bytes:
        return self.raw(Opcode.LOOKUP, parent, name + b"\0")

    def forget(self, nodeid: int, n: int) -> bytes:
        return self.raw(Opcode.FORGET, nodeid, abi.fuse_forget_in.pack(n))

    def batch_forget(self, items: list[tuple[int, int]]) -> bytes:
        return self.raw(Opcode.BATCH_FORGET, 0, abi.fuse_batch_forget_in.pack(len(items))
                        + b"".join(abi.fuse_forget_one.pack(a, b) for a, b in items))

    def getattr(self, nodeid: int, fh: int | None = None) -> bytes:
        return self.raw(Opcode.GETATTR, nodeid, abi.fuse_getattr_in.pack(
            abi.FUSE_GETATTR_FH if fh is not None else 0, fh or 0))

    def setattr(self, nodeid: int, *, valid: int, fh: int = 0, size: int = 0, mode: int = 0,
                uid: int = 0, gid: int = 0, atime: tuple[int, int] = (0, 0),
                mtime: tuple[int, int] = (0, 0)) -> bytes:
        return self.raw(Opcode.SETATTR, nodeid, abi.fuse_setattr_in.pack(
            valid, fh, size, 0, atime[0], mtime[0], 0, atime[1], mtime[1], 0, mode, uid, gid))

    def readlink(self, nodeid: int) -> bytes:
        return self.raw(Opcode.READLINK, nodeid)

    def symlink(self, parent: int, name: bytes, target: bytes) -> bytes:
        return self.raw(Opcode.SYMLINK, parent, name + b"\0" + target + b"\0")

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0, umask: int = 0) -> bytes:
        return self.raw(Opcode.MKNOD, parent, abi.fuse_mknod_in.pack(mode, rdev, umask, 0) + name + b"\0")

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, umask: int = 0) -> bytes:
        return self.raw(Opcode.MKDIR, parent, abi.fuse_mkdir_in.pack(mode, umask) + name + b"\0")

    def unlink(self, parent: int, name: bytes) -> bytes:
        return self.raw(Opcode.UNLINK, parent, name + b"\0")

    def rmdir(self, parent: int, name: bytes) -> bytes:
        return self.raw(Opcode.RMDIR, parent, name + b"\0")

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes) -> bytes:
        return self.raw(Opcode.RENAME, parent, abi.fuse_rename_in.pack(newparent) + name + b"\0" + newname + b"\0")

    def rename2(self, parent: int, name: bytes, newparent: int, newname: bytes, flags: int) -> bytes:
        return self.raw(Opcode.RENAME2, parent, abi.fuse_rename2_in.pack(newparent, flags)
                        + name + b"\0" + newname + b"\0")

    def link(self, nodeid: int, newparent: int, newname: bytes) -> bytes:
        return self.raw(Opcode.LINK, newparent, abi.fuse_link_in.pack(nodeid) + newname + b"\0")

    def open(self, nodeid: int, flags: int) -> bytes:
        return self.raw(Opcode.OPEN, nodeid, abi.fuse_open_in.pack(flags, 0))

    def create(self, parent: int, name: bytes, mode: int = 0o644, flags: int = os.O_RDWR,
               umask: int = 0) -> bytes:
        return self.raw(Opcode.CREATE, parent, abi.fuse_create_in.pack(flags | os.O_CREAT, mode, umask, 0)
                        + name + b"\0")

    def tmpfile(self, parent: int, mode: int = 0o600, flags: int = os.O_RDWR) -> bytes:
        return self.raw(Opcode.TMPFILE, parent, abi.fuse_create_in.pack(flags, mode, 0, 0) + b"\0")

    def read(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        return self.raw(Opcode.READ, nodeid, abi.fuse_read_in.pack(fh, offset, size, 0, 0, 0))

    def write(self, nodeid: int, fh: int, offset: int, data: bytes, flags: int = 0) -> bytes:
        return self.raw(Opcode.WRITE, nodeid, abi.fuse_write_in.pack(fh, offset, len(data), flags, 0, 0) + data)

    def write_header(self, nodeid: int, fh: int, offset: int, size: int) -> bytes:
        """A WRITE's headers only (for callers that place the payload themselves): the
        header's length counts the ``size`` bytes that will follow."""
        return self.raw(Opcode.WRITE, nodeid, abi.fuse_write_in.pack(fh, offset, size, 0, 0, 0),
                        length=abi.fuse_in_header.size + abi.fuse_write_in.size + size)

    def statfs(self, nodeid: int = 1) -> bytes:
        return self.raw(Opcode.STATFS, nodeid)

    def release(self, nodeid: int, fh: int, flags: int = 0, release_flags: int = 0) -> bytes:
        return self.raw(Opcode.RELEASE, nodeid, abi.fuse_release_in.pack(fh, flags, release_flags, 0))

    def fsync(self, nodeid: int, fh: int, datasync: bool = False) -> bytes:
        return self.raw(Opcode.FSYNC, nodeid, abi.fuse_fsync_in.pack(fh, int(datasync)))

    def flush(self, nodeid: int, fh: int, lock_owner: int = 0) -> bytes:
        return self.raw(Opcode.FLUSH, nodeid, abi.fuse_flush_in.pack(fh, lock_owner))

    def setxattr(self, nodeid: int, name: bytes, value: bytes, flags: int = 0, ext: bool = False) -> bytes:
        head = (abi.fuse_setxattr_in.pack(len(value), flags, 0, 0) if ext
                else abi.fuse_setxattr_in_compat.pack(len(value), flags))
        return self.raw(Opcode.SETXATTR, nodeid, head + name + b"\0" + value)

    def getxattr(self, nodeid: int, name: bytes, size: int) -> bytes:
        return self.raw(Opcode.GETXATTR, nodeid, abi.fuse_getxattr_in.pack(size) + name + b"\0")

    def listxattr(self, nodeid: int, size: int) -> bytes:
        return self.raw(Opcode.LISTXATTR, nodeid, abi.fuse_getxattr_in.pack(size))

    def removexattr(self, nodeid: int, name: bytes) -> bytes:
        return self.raw(Opcode.REMOVEXATTR, nodeid, name + b"\0")

    def opendir(self, nodeid: int, flags: int = os.O_RDONLY | os.O_DIRECTORY) -> bytes:
        return self.raw(Opcode.OPENDIR, nodeid, abi.fuse_open_in.pack(flags, 0))

    def readdir(self, nodeid: int, fh: int, offset: int = 0, size: int = 4096, plus: bool = False) -> bytes:
        return self.raw(Opcode.READDIRPLUS if plus else Opcode.READDIR, nodeid,
                        abi.fuse_read_in.pack(fh, offset, size, 0, 0, 0))

    def releasedir(self, nodeid: int, fh: int) -> bytes:
        return self.raw(Opcode.RELEASEDIR, nodeid, abi.fuse_release_in.pack(fh, 0, 0, 0))

    def fsyncdir(self, nodeid: int, fh: int) -> bytes:
        return self.raw(Opcode.FSYNCDIR, nodeid, abi.fuse_fsync_in.pack(fh, 0))

    def lk(self, opcode: int, nodeid: int, fh: int, owner: int, start: int, end: int,
           typ: int, pid: int = 1, flock: bool = False) -> bytes:
        return self.raw(opcode, nodeid, abi.fuse_lk_in.pack(fh, owner, start, end, typ, pid,
                                                            abi.FUSE_LK_FLOCK if flock else 0))

    def access(self, nodeid: int, mask: int) -> bytes:
        return self.raw(Opcode.ACCESS, nodeid, abi.fuse_access_in.pack(mask))

    def interrupt(self, unique: int) -> bytes:
        return self.raw(Opcode.INTERRUPT, 0, abi.fuse_interrupt_in.pack(unique))

    def destroy(self) -> bytes:
        return self.raw(Opcode.DESTROY, 0)

    def fallocate(self, nodeid: int, fh: int, offset: int, length: int, mode: int = 0) -> bytes:
        return self.raw(Opcode.FALLOCATE, nodeid, abi.fuse_fallocate_in.pack(fh, offset, length, mode))

    def lseek(self, nodeid: int, fh: int, offset: int, whence: int) -> bytes:
        return self.raw(Opcode.LSEEK, nodeid, abi.fuse_lseek_in.pack(fh, offset, whence))

    def copy_file_range(self, nodeid: int, fh_in: int, off_in: int, nodeid_out: int, fh_out: int,
                        off_out: int, length: int) -> bytes:
        return self.raw(Opcode.COPY_FILE_RANGE, nodeid, abi.fuse_copy_file_range_in.pack(
            fh_in, off_in, nodeid_out, fh_out, off_out, length, 0))

    def syncfs(self) -> bytes:
        return self.raw(Opcode.SYNCFS, 1, abi.fuse_syncfs_in.pack(0))


def u32(p: bytes) -> int:
    return struct.unpack_from("<I", p)[0]
