"""Every policy rule of a served tree, in one place: readonly, noexec, nosuid, nodev,
owner squash, the xattr rule, set-id clearing, no devices, and the quota.

The tree (msbfs/tree/tree.py) calls these for every client; no transport re-implements a
rule, and none trusts the client's own mount flags (a guest root can remount). Where
each rule is applied, per front (T: the tree, for every front; C: the virtio-fs C data
path, csrc/fuse_datapath.c; K: also mirrored as a host-mount kernel flag, for speed
only, never instead of T):

==============================  ================================  =====================
rule                            here                              applied by
==============================  ================================  =====================
readonly                        check_mutation, check_open,       T; C never gets a
                                check_access, writes_need_tree    write fd (T); K (ro)
noexec                          check_open, check_access          T; K (noexec)
nosuid                          stored_mode, AttrShape.mode_mask,  T
                                XattrRule (security.capability)
nodev                           check_mknod, check_open,          T
                                AttrShape.hide_rdev
no host device opened           check_open                        T
owner squash                    AttrShape.uid/gid                 T
set-id clearing (KILLPRIV_V2)   killed_setid_bits, SETID_BITS     T; C hands a write on
                                                                  a set-id file to T
xattr names (map, ACLs,         XattrRule                         T
  trusted./security., caps)
quota (bytes, inodes)           QuotaAccount, writes_need_tree    T; C never gets a
                                                                  write fd under a
                                                                  byte quota (T)
==============================  ================================  =====================

The C metadata path answers UNLINK, RMDIR, ACCESS and MKDIR itself (csrc/fuse_names.c),
and SETATTR's chmod, chown and utimes (csrc/fuse_setattr.c), with the errnos of
``check_mutation`` and ``check_access`` and the mask of ``stored_mode`` as
``c_decisions`` computes them by running these very rules: readonly, noexec and nosuid
reach it as numbers, never as a copy.

Permissions of the client's own users are its kernel's (default_permissions on every
front; see "Permissions" in msbfs/tree/tree.py): nothing here checks a uid, except
that a non-root caller never reaches the daemon's own privileges through a map
(XattrRule: trusted.*, writing security.*).

Quota accounting unit: **allocated bytes** (``st_blocks * 512``) of every inode on the
root's filesystem, each inode counted once (hard links), directories and symlinks
included, never following symlinks and never crossing into another filesystem — the
same definition as ``VolumeFs``'s ``used_bytes``, so statfs inside a sandbox and
``msbfs volume`` agree. Usage is found by one walk when the tree starts and then
tracked incrementally from the allocation each mutating call actually caused (fstat
before/after), so sparse files and holes are charged as the host charges them.
Changes made behind the tree's back (another process writing the host directory) are
picked up at the next start only.

The quota also limits **inodes** (every inode on the root's filesystem, counted once,
the root included), so a guest cannot exhaust the host filesystem's inode table with
empty files, which cost no blocks. Unless set, the limit is one inode per 4 KiB block
of the byte quota (so a volume can still be filled with one-block files), at least
``MIN_DEFAULT_INODES``.

Special files: a client never gets a host device opened for it, whatever the policy
(``check_open``). A Linux client kernel opens device nodes itself and never sends OPEN
for one; a hostile one that does would otherwise reach the host device behind the node
(CVE-2020-35517's class; the C virtiofsd answers EBADF too).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from msbfs.errors import os_error
from msbfs.tree.xattrmap import XattrMap

if TYPE_CHECKING:
    from msbfs.usage import VolumeUsage

#: The kernel's ``__FMODE_EXEC``: execve's open of the binary; FUSE passes it on in
#: ``fuse_open_in.flags`` so the server can refuse it on a noexec tree.
FMODE_EXEC = 0x20

SETID_BITS = stat.S_ISUID | stat.S_ISGID
_WRITE_OPEN = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
_DEVICE_TYPES = (stat.S_IFCHR, stat.S_IFBLK)
_BLOCK = 4096
#: The smallest default inode limit of a quota (see the module doc).
MIN_DEFAULT_INODES = 1024


@dataclass(frozen=True)
class Policy:
    """What a tree allows. All fields default to "like a plain bind mount"."""

    readonly: bool = False
    noexec: bool = False
    nosuid: bool = False
    nodev: bool = False
    quota_bytes: int | None = None  # directory-volume quota, in allocated bytes
    quota_inodes: int | None = None  # inode limit; None: derived from quota_bytes
    squash_uid: int | None = None  # owner squash for host mounts: all files appear as this uid
    squash_gid: int | None = None

    def __post_init__(self) -> None:
        if self.quota_bytes is not None and self.quota_bytes < 0:
            raise ValueError("quota_bytes must be >= 0")
        if self.quota_inodes is not None and self.quota_inodes < 1:
            raise ValueError("quota_inodes must be >= 1")

    @property
    def inode_limit(self) -> int | None:
        """The inode quota: as given, else derived from the byte quota, else none."""
        if self.quota_inodes is not None:
            return self.quota_inodes
        if self.quota_bytes is not None:
            return max(MIN_DEFAULT_INODES, self.quota_bytes // _BLOCK)
        return None

    # ---- checks the tree runs before a syscall --------------------------------------
    def check_mutation(self) -> None:
        """Every namespace, data, attribute or xattr change on a readonly tree: EROFS."""
        if self.readonly:
            raise os_error(errno.EROFS)

    def check_open(self, flags: int, kind: int) -> None:
        """An open of an existing inode of file type ``kind`` (``S_IFMT`` bits)."""
        if self.readonly and (flags & os.O_ACCMODE != os.O_RDONLY or flags & _WRITE_OPEN):
            raise os_error(errno.EROFS)
        if self.noexec and flags & FMODE_EXEC:
            raise os_error(errno.EACCES)
        if kind in _DEVICE_TYPES:
            # nodev answers as a nodev mount does; without it, still no host device
            # (see the module doc).
            raise os_error(errno.EACCES if self.nodev else errno.EBADF)

    def check_mknod(self, mode: int) -> None:
        self.check_mutation()
        if self.nodev and stat.S_IFMT(mode) in _DEVICE_TYPES:
            raise os_error(errno.EPERM)

    def check_access(self, mask: int, kind: int) -> None:
        """access(2) answers as on a ro/noexec mount, before asking the host."""
        if self.readonly and mask & os.W_OK and kind in (stat.S_IFREG, stat.S_IFDIR,
                                                        stat.S_IFLNK):
            raise os_error(errno.EROFS)
        if self.noexec and mask & os.X_OK and kind == stat.S_IFREG:
            raise os_error(errno.EACCES)

    def check_setcap(self) -> None:
        """security.capability grants privileges on exec like a set-uid bit: nosuid never
        stores it."""
        if self.nosuid:
            raise os_error(errno.EPERM)

    def stored_mode(self, mode: int) -> int:
        """The permission bits a create/mkdir/mknod/chmod may store."""
        return mode & ~SETID_BITS if self.nosuid else mode

    def writes_need_tree(self) -> bool:
        """Whether every WRITE must go through the tree (no direct fd for a fast path):
        a byte quota charges each write; readonly refuses them (no writable handle
        exists then anyway: this says so once more, where the rule lives)."""
        return self.readonly or self.quota_bytes is not None

    # ---- what clients see -----------------------------------------------------------
    @property
    def reported_mode_mask(self) -> int:
        """AND-ed into every reported ``st_mode`` (nosuid hides set-id bits)."""
        return ~SETID_BITS if self.nosuid else ~0

    def attr_shape(self) -> AttrShape:
        """How every attribute reply is shaped (the tree applies it mechanically)."""
        return AttrShape(self.reported_mode_mask, self.squash_uid, self.squash_gid,
                         self.nodev)

    def c_decisions(self) -> CDecisions:
        """The decisions of ``check_mutation`` and ``check_access`` as numbers, for the C
        metadata path (csrc/fuse_names.h, written there by msbfs/fastmeta.py): compiled
        by running the rules themselves over every input C can see, so the rule is
        written once, here, and C only looks its answer up."""
        stored = self.stored_mode(0o7777)
        return CDecisions(
            errno_of(self.check_mutation),
            tuple(errno_of(self.check_access, mask, kind << 12)
                  for kind in range(16) for mask in range(8)),
            stored if all(self.stored_mode(m) == m & stored for m in range(0o10000)) else None)

    def kernel_flags(self) -> tuple[str, ...]:
        """The host-mount kernel flags that mirror this policy (the tree enforces it
        regardless; the flags only spare the round trip)."""
        return tuple(name for name, on in (("ro", self.readonly), ("noexec", self.noexec))
                     if on)


class AttrShape(NamedTuple):
    """What the policy changes in every reported attribute."""

    #: AND-ed into st_mode: nosuid hides set-id bits.
    mode_mask: int
    #: owner squash (host mounts, ``uid=``/``gid=``): every file appears as these.
    uid: int | None
    gid: int | None
    #: nodev: a device node stays visible but names no device (rdev 0:0), so a client
    #: kernel that opens special files itself cannot reach a host device.
    hide_rdev: bool


class CDecisions(NamedTuple):
    """``Policy.c_decisions``: each rule's errno (0: allowed) for every input."""

    #: ``check_mutation``: every namespace change (UNLINK, RMDIR, ...)
    mutation: int
    #: ``check_access(mask, kind)`` at ``(kind >> 12) * 8 + mask``: the 16 ``S_IFMT``
    #: values by 8 masks (``R_OK | W_OK | X_OK``)
    access: tuple[int, ...]
    #: ``stored_mode`` as the AND mask it is (None if it ever is not one)
    stored_mask: int | None


def errno_of(check: Callable[..., None], *args: int) -> int:
    """The errno ``check(*args)`` raises (0: it allowed it): a rule as a number."""
    try:
        check(*args)
    except OSError as e:
        return e.errno or errno.EIO
    return 0


def killed_setid_bits(mode: int, in_group: bool = True) -> int:
    """The set-id bits the kernel drops when a caller without CAP_FSETID writes,
    truncates or chowns a regular file (setattr_should_drop_suidgid; what FUSE's
    KILL_SUIDGID flags ask for): S_ISUID, and S_ISGID when it means "set-gid" (group-exec
    set) or when the caller is not in the file's group (``in_group``)."""
    if not stat.S_ISREG(mode):
        return 0
    kill = stat.S_ISUID if mode & stat.S_ISUID else 0
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not in_group):
        kill |= stat.S_ISGID
    return kill


#: A file with any of these bits is written by the tree, not the C fast path (which
#: knows no set-id rule: csrc/fuse_datapath.c takes this mask from the table).
FAST_WRITE_FORBIDDEN_BITS = SETID_BITS

_CAPABILITY = b"security.capability"
_ACL_PREFIX = b"system.posix_acl_"


class XattrRule:
    """Which xattr a client reaches, under which host name: the xattr map
    (msbfs/tree/xattrmap.py, virtiofsd's --xattrmap; the default map refuses
    trusted.* and security.*), and what no map may change, checked on both names of a
    pair: POSIX ACLs only when ``posix_acl`` is on; nosuid neither stores nor shows
    security.capability (a set-uid bit by another name); a non-root caller never reaches
    trusted.* or writes security.* (the daemon holds CAP_SYS_ADMIN/CAP_SETFCAP; the
    caller does not). Names arrive here already checked as names (length, NUL)."""

    def __init__(self, policy: Policy, xattrmap: XattrMap, posix_acl: bool) -> None:
        self.policy = policy
        self.map = xattrmap
        self.posix_acl = posix_acl

    def host_name(self, name: bytes, uid: int, write: bool) -> bytes:
        """The host's name for the client's ``name``, or the errno refusing it."""
        if not self.posix_acl and name.startswith(_ACL_PREFIX):
            raise os_error(errno.EOPNOTSUPP)
        host = self.map.to_server(name, get=not write)
        if _CAPABILITY in (name, host):
            if write:
                self.policy.check_setcap()
            elif self.policy.nosuid:
                raise os_error(errno.ENODATA)
        if uid != 0:
            if host.startswith(b"trusted."):
                raise os_error(errno.EPERM if write else errno.ENODATA)
            if write and host.startswith(b"security."):
                raise os_error(errno.EPERM)
        return host

    def client_name(self, host: bytes, uid: int) -> bytes | None:
        """What listxattr shows of the host's ``host``: the same rules from the other
        side; None hides it."""
        if uid != 0 and host.startswith(b"trusted."):
            return None
        name = self.map.to_client(host)
        if name is None or (not self.posix_acl and name.startswith(_ACL_PREFIX)):
            return None
        if self.policy.nosuid and _CAPABILITY in (name, host):
            return None
        return name


_UNLIMITED = 1 << 62


class QuotaAccount:
    """Allocated bytes and inodes in use under a quota'd root, charged incrementally.

    ``reserve`` answers "may this call grow usage by about N bytes?" before the syscall
    (ENOSPC if not), ``reserve_inode`` the same for one new inode; ``charge`` books the
    growth (or shrinkage) the call really caused. ``limit`` None: inodes only. A lock
    makes the pair safe when a transport runs tree calls on several threads.

    With a ``store`` (a named volume's ``msbfs.usage.VolumeUsage``) the numbers live
    there, shared with every other writer of the volume (other servers, VolumeFs):
    ``used``/``inodes`` read it (the ``used``/``inodes`` arguments are then unused),
    ``charge`` adds to it under its file lock.
    """

    def __init__(self, limit: int | None, used: int, inode_limit: int | None = None,
                 inodes: int = 0, store: VolumeUsage | None = None) -> None:
        self.limit = limit
        self.inode_limit = inode_limit
        self.store = store
        self._used = used
        self._inodes = inodes
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used if self.store is None else self.store.read()[0]

    @property
    def inodes(self) -> int:
        return self._inodes if self.store is None else self.store.read()[1]

    @property
    def available(self) -> int:
        return _UNLIMITED if self.limit is None else max(0, self.limit - self.used)

    @property
    def inodes_available(self) -> int:
        lim = self.inode_limit
        return _UNLIMITED if lim is None else max(0, lim - self.inodes)

    def reserve(self, growth: int) -> None:
        if growth > 0 and growth > self.available:
            raise os_error(errno.ENOSPC)

    def reserve_inode(self) -> None:
        if self.inodes_available < 1:
            raise os_error(errno.ENOSPC)

    def charge(self, delta: int, inodes: int = 0) -> None:
        if not delta and not inodes:
            return
        if self.store is not None:
            self.store.add(delta, inodes)
            return
        with self._lock:
            self._used = max(0, self._used + delta)
            self._inodes = max(0, self._inodes + inodes)

    def write_allowance(self, st: os.stat_result, offset: int, length: int) -> int:
        """How many of ``length`` bytes at ``offset`` may be written to the file whose
        stat is ``st``: all of them, a prefix (a short write, as a nearly full
        filesystem gives), or ENOSPC when not even one block fits."""
        est = estimate_growth(st, offset, length)
        if est <= self.available:
            return length
        # Allocation grows from what is allocated now up to the new end: keep the part
        # that fits in whole blocks.
        room = (st.st_blocks * 512 + self.available) // _BLOCK * _BLOCK - offset
        if room <= 0 or estimate_growth(st, offset, room) > self.available:
            raise os_error(errno.ENOSPC)
        return min(room, length)


def estimate_growth(st: os.stat_result, offset: int, length: int) -> int:
    """Allocated bytes a write of ``length`` at ``offset`` may add: nothing for an
    overwrite inside a fully allocated file, otherwise up to the new end (bounded by the
    blocks the data itself can fill)."""
    if length <= 0:
        return 0
    end = offset + length
    allocated = st.st_blocks * 512
    if end <= st.st_size and allocated >= st.st_size:
        return 0
    span = -(-max(end, st.st_size) // _BLOCK) * _BLOCK - allocated
    return max(0, min(span, -(-length // _BLOCK) * _BLOCK + _BLOCK))


def allocated(st: os.stat_result | None, root_dev: int) -> int:
    """The bytes an inode counts against the quota (0 for another filesystem)."""
    if st is None or st.st_dev != root_dev:
        return 0
    return st.st_blocks * 512


def walk_usage(root_fd: int) -> int:
    """Allocated bytes below ``root_fd`` by the quota's definition (see module doc)."""
    return walk_counts(root_fd)[0]


def walk_counts(root_fd: int) -> tuple[int, int]:
    """Allocated bytes and inodes below ``root_fd``, the root included, by the quota's
    definition (see module doc). Keeps at most one fd per directory level open, so any
    tree shape is walkable."""
    top = os.stat(root_fd)
    dev = top.st_dev
    seen: set[int] = set()
    total = top.st_blocks * 512
    inodes = 1
    first = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    stack: list[tuple[int, list[str]]] = []
    fd: int | None = first
    while fd is not None or stack:
        if fd is not None:
            subdirs: list[str] = []
            try:
                with os.scandir(fd) as it:
                    for e in it:
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if st.st_dev != dev:
                            continue
                        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                            if st.st_ino in seen:
                                continue
                            seen.add(st.st_ino)
                        total += st.st_blocks * 512
                        inodes += 1
                        if stat.S_ISDIR(st.st_mode):
                            subdirs.append(e.name)
            except OSError:
                pass
            stack.append((fd, subdirs))
            fd = None
        parent, names = stack[-1]
        if not names:
            os.close(parent)
            stack.pop()
            continue
        name = names.pop()
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
        except OSError:
            fd = None
    return total, inodes
