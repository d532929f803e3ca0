"""The FUSE kernel ABI of ``linux/fuse.h`` (protocol 7.38): opcodes, flag bits and every
struct as a little-endian ``struct.Struct`` under the kernel's own name.

Only layout lives here; what a request means and how it is answered is ``server.py``.
Sizes are asserted against the header's so a typo in a format string cannot ship.
"""

from __future__ import annotations

import struct
from enum import IntEnum

# Re-exported (``X as X``): the wire constants the tree already defines, kept once.
from msbfs.tree.policy import FMODE_EXEC as FMODE_EXEC
from msbfs.tree.types import FOPEN_CACHE_DIR as FOPEN_CACHE_DIR
from msbfs.tree.types import FOPEN_DIRECT_IO as FOPEN_DIRECT_IO
from msbfs.tree.types import FOPEN_KEEP_CACHE as FOPEN_KEEP_CACHE
from msbfs.tree.types import FOPEN_NONSEEKABLE as FOPEN_NONSEEKABLE
from msbfs.tree.types import ROOT_ID

FUSE_KERNEL_VERSION = 7
FUSE_KERNEL_MINOR_VERSION = 38
#: Oldest kernel protocol minor we serve (Linux 5.4 and later speak >= 7.31; 7.27 is the
#: first with everything virtio-fs relies on and all of today's struct sizes).
FUSE_MIN_KERNEL_MINOR = 27
FUSE_ROOT_ID = ROOT_ID  # defined once, in the tree's vocabulary (msbfs/tree/types.py)


class Opcode(IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51


def opcode_name(op: int) -> str:
    """The opcode's name, or its number for one this ABI does not know (statistics keys
    and logs of what a client sent)."""
    return Opcode(op).name if op in Opcode._value2member_map_ else str(op)


# fuse_init_in/out flags (bits 32..63 travel in flags2 when INIT_EXT is set)
FUSE_ASYNC_READ = 1 << 0
FUSE_POSIX_LOCKS = 1 << 1
FUSE_FILE_OPS = 1 << 2
FUSE_ATOMIC_O_TRUNC = 1 << 3
FUSE_EXPORT_SUPPORT = 1 << 4
FUSE_BIG_WRITES = 1 << 5
FUSE_DONT_MASK = 1 << 6
FUSE_SPLICE_WRITE = 1 << 7
FUSE_SPLICE_MOVE = 1 << 8
FUSE_SPLICE_READ = 1 << 9
FUSE_FLOCK_LOCKS = 1 << 10
FUSE_HAS_IOCTL_DIR = 1 << 11
FUSE_AUTO_INVAL_DATA = 1 << 12
FUSE_DO_READDIRPLUS = 1 << 13
FUSE_READDIRPLUS_AUTO = 1 << 14
FUSE_ASYNC_DIO = 1 << 15
FUSE_WRITEBACK_CACHE = 1 << 16
FUSE_NO_OPEN_SUPPORT = 1 << 17
FUSE_PARALLEL_DIROPS = 1 << 18
FUSE_HANDLE_KILLPRIV = 1 << 19
FUSE_POSIX_ACL = 1 << 20
FUSE_ABORT_ERROR = 1 << 21
FUSE_MAX_PAGES = 1 << 22
FUSE_CACHE_SYMLINKS = 1 << 23
FUSE_NO_OPENDIR_SUPPORT = 1 << 24
FUSE_EXPLICIT_INVAL_DATA = 1 << 25
FUSE_MAP_ALIGNMENT = 1 << 26
FUSE_SUBMOUNTS = 1 << 27
FUSE_HANDLE_KILLPRIV_V2 = 1 << 28
FUSE_SETXATTR_EXT = 1 << 29
FUSE_INIT_EXT = 1 << 30
FUSE_INIT_RESERVED = 1 << 31
FUSE_SECURITY_CTX = 1 << 32
FUSE_HAS_INODE_DAX = 1 << 33

# fuse_open_out.open_flags (FOPEN_*) and FMODE_EXEC: imported above from the tree, which
# defines them once (the tree speaks FUSE terms)

FUSE_RELEASE_FLUSH = 1 << 0
FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1
FUSE_GETATTR_FH = 1 << 0
FUSE_LK_FLOCK = 1 << 0
FUSE_WRITE_CACHE = 1 << 0
FUSE_WRITE_LOCKOWNER = 1 << 1
FUSE_WRITE_KILL_SUIDGID = 1 << 2
FUSE_READ_LOCKOWNER = 1 << 1
FUSE_FSYNC_FDATASYNC = 1 << 0
FUSE_ATTR_SUBMOUNT = 1 << 0
FUSE_OPEN_KILL_SUIDGID = 1 << 0
FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0


def _s(fmt: str, size: int) -> struct.Struct:
    s = struct.Struct("<" + fmt)
    assert s.size == size, (fmt, s.size, size)
    return s


fuse_in_header = _s("IIQQIIIHH", 40)  # len opcode unique nodeid uid gid pid total_extlen pad
fuse_out_header = _s("IiQ", 16)  # len error unique
# ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev
# blksize flags
fuse_attr = _s("QQQQQQIIIIIIIIII", 88)
fuse_kstatfs = _s("QQQQQIII4x24x", 80)  # blocks bfree bavail files ffree bsize namelen frsize
fuse_file_lock = _s("QQII", 24)  # start end type pid
# nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec (+ fuse_attr)
fuse_entry_out_head = _s("QQQQII", 40)
FUSE_ENTRY_OUT_SIZE = fuse_entry_out_head.size + fuse_attr.size  # 128
fuse_forget_in = _s("Q", 8)
fuse_forget_one = _s("QQ", 16)  # nodeid nlookup
fuse_batch_forget_in = _s("I4x", 8)  # count
fuse_getattr_in = _s("I4xQ", 16)  # getattr_flags fh
fuse_attr_out_head = _s("QI4x", 16)  # attr_valid attr_valid_nsec (+ fuse_attr)
FUSE_ATTR_OUT_SIZE = fuse_attr_out_head.size + fuse_attr.size  # 104
fuse_mknod_in = _s("IIII", 16)  # mode rdev umask padding
fuse_mkdir_in = _s("II", 8)  # mode umask
fuse_rename_in = _s("Q", 8)  # newdir
fuse_rename2_in = _s("QI4x", 16)  # newdir flags
fuse_link_in = _s("Q", 8)  # oldnodeid
# valid pad fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec mode unused4
# uid gid unused5
fuse_setattr_in = _s("I4xQQQQQQIIII4xII4x", 88)
fuse_open_in = _s("II", 8)  # flags open_flags
fuse_create_in = _s("IIII", 16)  # flags mode umask open_flags
fuse_open_out = _s("QI4x", 16)  # fh open_flags
fuse_release_in = _s("QIIQ", 24)  # fh flags release_flags lock_owner
fuse_flush_in = _s("Q4x4xQ", 24)  # fh unused padding lock_owner
fuse_read_in = _s("QQIIQI4x", 40)  # fh offset size read_flags lock_owner flags
fuse_write_in = _s("QQIIQI4x", 40)  # fh offset size write_flags lock_owner flags
fuse_write_out = _s("I4x", 8)  # size
fuse_statfs_out = fuse_kstatfs
fuse_fsync_in = _s("QI4x", 16)  # fh fsync_flags
fuse_setxattr_in = _s("IIII", 16)  # size flags setxattr_flags padding (FUSE_SETXATTR_EXT)
FUSE_COMPAT_SETXATTR_IN_SIZE = 8
fuse_setxattr_in_compat = _s("II", 8)  # size flags
fuse_getxattr_in = _s("I4x", 8)  # size
fuse_getxattr_out = _s("I4x", 8)  # size
fuse_lk_in = _s("QQQQIII4x", 48)  # fh owner lk(start end type pid) lk_flags
fuse_lk_out = fuse_file_lock
fuse_access_in = _s("I4x", 8)  # mask
fuse_init_in = _s("IIIII44x", 64)  # major minor max_readahead flags flags2 unused[11]
#: before 7.36 the kernel sent only major minor max_readahead flags
fuse_init_in_compat = _s("IIII", 16)
FUSE_INIT_IN_COMPAT_SIZE = fuse_init_in_compat.size
# major minor max_readahead flags max_background congestion_threshold max_write time_gran
# max_pages map_alignment flags2 unused[7]
fuse_init_out = _s("IIIIHHIIHHI28x", 64)
#: FUSE_COMPAT_INIT_OUT_SIZE: all a kernel with a newer major needs to hear (major minor)
fuse_init_out_compat = _s("II", 8)
fuse_interrupt_in = _s("Q", 8)  # unique
fuse_fallocate_in = _s("QQQI4x", 32)  # fh offset length mode
fuse_dirent_head = _s("QQII", 24)  # ino off namelen type (+ name, padded to 8)
fuse_lseek_in = _s("QQI4x", 24)  # fh offset whence
fuse_lseek_out = _s("Q", 8)  # offset
# fh_in off_in nodeid_out fh_out off_out len flags
fuse_copy_file_range_in = _s("QQQQQQQ", 56)
fuse_syncfs_in = _s("Q", 8)


def dirent_size(namelen: int, plus: bool = False) -> int:
    """FUSE_DIRENT_SIZE / FUSE_DIRENTPLUS_SIZE: records are padded to 8 bytes."""
    base = fuse_dirent_head.size + namelen + (FUSE_ENTRY_OUT_SIZE if plus else 0)
    return (base + 7) & ~7
