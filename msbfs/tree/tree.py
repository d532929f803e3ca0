"""``Tree``: every FUSE operation over one host directory, sandboxed.

How the rules of the security model (ARCHITECTURE.md) are kept here:

* Resolution: one component at a time, from the parent's ``O_PATH`` fd: a
  ``fstatat(AT_SYMLINK_NOFOLLOW)`` of the single name finds inodes already held (the
  warm path opens nothing), new ones are opened with ``openat2(O_PATH | O_NOFOLLOW,
  RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``. A name is never a path (``/`` is EINVAL),
  a symlink is opened as itself and never followed, and ``..`` is resolved by the tree
  (the root's ``..`` is the root; a directory moved out of the root has no parent).
* Acting on an inode goes through its fd: ``*at(fd, "", AT_EMPTY_PATH)`` calls, or the
  ``/proc/self/fd/N`` re-open (virtiofsd's trick) built from OUR fd number, never from
  a client string.
* Permissions (one model for every front, issue 10): the CLIENT KERNEL is the authority
  for its users' permissions. A virtio-fs guest kernel always mounts with
  ``default_permissions``, and ``msbfs mount`` mounts with it (and POSIX ACLs), so the
  kernel that knows the caller's full credentials (supplementary groups, capabilities,
  ACLs) checks every path component, open, chmod, chown, sticky directory and xattr
  namespace against the attributes we report. The tree does not check a second time
  with the incomplete credentials a FUSE request carries (no supplementary groups):
  it acts with the daemon's own identity, inside the share and under the policy
  (containment, readonly, noexec, nosuid, nodev, quota, owner squash, no devices, the
  xattr map), which is the server's boundary. What the caller's identity still
  decides: the owner of what it creates (``_finish_new``: its uid, its gid or the
  setgid parent's), and set-id clearing, which the client kernel asks for
  (HANDLE_KILLPRIV_V2 flags, or a SETATTR of the mode) when its caller lacks
  CAP_FSETID. ``access`` alone runs as the caller (it asks a question, it acts on
  nothing).
* Inodes (``msbfs.tree.inodes``) may have their fd closed and re-opened from a file
  handle, so fds are bounded by the fd cache, not by the client's lookups.
* Policy lives in ``msbfs.tree.policy``; this module only calls it.
* Ids (``msbfs.tree.idmap``, virtiofsd's --uid-map/--translate-uid): client -> host once
  per request where a front builds its Ctx (``map_ctx``) and in SETATTR's chown;
  host -> client in every attribute reported (``_mapped_attr``). The identity map
  installs neither.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from msbfs import mountinfo, syscalls
from msbfs._native import ffi, lib
from msbfs.errors import os_error
from msbfs.fdlimit import raise_fd_limit
from msbfs.tree.creds import Identities
from msbfs.tree.handles import FileHandle, HandleTable, retire
from msbfs.tree.idmap import IDENTITY_GIDS, IDENTITY_UIDS, REFUSED, IdMap
from msbfs.tree.inodes import AT_EMPTY_PATH, FD_SHIFT, SUBMOUNT, Inode, InodeTable
from msbfs.tree.policy import (
    AttrShape,
    CDecisions,
    Policy,
    QuotaAccount,
    XattrRule,
    allocated,
    killed_setid_bits,
    walk_counts,
)
from msbfs.tree.record_locks import LockWait, RecordLocks
from msbfs.tree.types import (
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_FH,
    FATTR_GID,
    FATTR_KILL_SUIDGID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    FOPEN_CACHE_DIR,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    OFFSET_MAX,
    ROOT_ID,
    Attr,
    Ctx,
    DirEntry,
    Entry,
    Lock,
    Opened,
    SetAttr,
    StatFs,
    Statistics,
)
from msbfs.tree.xattrmap import DEFAULT_MAP, XattrMap

if TYPE_CHECKING:
    from msbfs.usage import VolumeUsage

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08

AT_EACCESS = 0x200
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

_TIME_MIN_NS = -(1 << 63) * 1_000_000_000  # the range of a timespec with a 64-bit tv_sec
_TIME_MAX_NS = (1 << 63) * 1_000_000_000 - 1
NAME_MAX = 255
PATH_MAX = 4096
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
_XATTR_BLOCK = 4096  # what one xattr may allocate per started block of name and value
_XATTR_ENTRY = 64  # with its entry header and an ext4 xattr block's own header
_MIN_INODE_FDS = 16  # an op touches at most a few inodes: never evict one mid-call
MAX_IO = 1 << 24  # larger reads are clamped: no client gets to size our buffers
#: Inodes a client may hold at once (each costs the daemon a few hundred bytes).
DEFAULT_MAX_INODES = 1 << 20

#: Host filesystems with no flush of their own (no f_op->flush): closing a dup of a file
#: there does nothing but close it (``Tree.flush_is_nothing``).
NO_FLUSH_FSTYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs"})

_LONG = 86400.0
_TIMEOUTS = {"never": 0.0, "auto": 1.0, "metadata": _LONG, "always": _LONG}

# Open flags passed through to the host; everything else (O_CREAT/O_EXCL on a re-open,
# O_NOCTTY, FMODE_EXEC and other kernel-internal bits) is dropped.
_OPEN_PASS = (os.O_ACCMODE | os.O_APPEND | os.O_NONBLOCK | os.O_DSYNC | os.O_SYNC
              | os.O_DIRECT | os.O_NOATIME | os.O_TRUNC)
_LOOKUP_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
#: OPENDIR's re-open of a directory (csrc/fuse_handles.c is given it: c_open)
_OPENDIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_RESOLVE = syscalls.RESOLVE_CONTAINED
_c_lookup = lib.msb_lookup_attr  # csrc/lookup.h
# A named node (csrc/inodes.h) of what a rename moves or a removal unnames.
_moved = lib.msb_inodes_moved
_removing = lib.msb_inodes_removing
_UNDECIDED = lib.MSB_LOOKUP_UNDECIDED
_lookup_stat = functools.partial(ffi.new, "struct msb_lookup_stat *")

_DEFAULT_POLICY = Policy()


def _proc(fd: int) -> bytes:
    return b"/proc/self/fd/%d" % fd


def _name(name: Any) -> bytes:
    """A single path component from a client: bytes, no ``/``, no NUL."""
    if type(name) is not bytes:
        try:
            name = bytes(name)
        except TypeError:
            raise os_error(errno.EINVAL) from None
    if not name:
        raise os_error(errno.ENOENT)
    if len(name) > NAME_MAX:
        raise os_error(errno.ENAMETOOLONG)
    if b"/" in name or b"\0" in name:
        raise os_error(errno.EINVAL)
    return name


def _new_name(name: Any) -> bytes:
    """A name a creating op will make: ``.``/``..`` already exist (EEXIST, as Linux)."""
    name = _name(name)
    if name in (b".", b".."):
        raise os_error(errno.EEXIST)
    return name


def _int(value: Any, lo: int = 0, hi: int = OFFSET_MAX) -> int:
    """A number from a client, in range or EINVAL (never a TypeError/OverflowError)."""
    if type(value) is not int:
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise os_error(errno.EINVAL) from None
    if value < lo or value > hi:
        raise os_error(errno.EINVAL)
    return value


def _check(r: int) -> int:
    if r < 0:
        raise os_error(-r)
    return r


class Tree:
    """The sandboxed tree (``msbfs.tree.api.TreeOps``) over the directory ``root``."""

    def __init__(self, root: str | os.PathLike[str] | int, policy: Policy = _DEFAULT_POLICY, *,
                 cache: str = "auto", xattr: bool = True, posix_acl: bool = False,
                 announce_submounts: bool = False, writeback: bool = False,
                 max_inode_fds: int | None = None,
                 xattrmap: XattrMap | str | None = None,
                 max_handles: int | None = None, max_inodes: int | None = None,
                 usage: VolumeUsage | None = None,
                 uid_map: IdMap | None = None, gid_map: IdMap | None = None) -> None:
        if cache not in _TIMEOUTS:
            raise ValueError(f"cache must be one of {', '.join(_TIMEOUTS)}, not {cache!r}")
        if isinstance(root, int):
            fd = os.open(_proc(root), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            fd = os.open(os.fspath(root), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.stat(fd)
        soft = raise_fd_limit()  # to the hard limit, as virtiofsd does
        self.policy = policy
        self.cache = cache
        self.xattr = xattr
        self.posix_acl = posix_acl
        # None: the built-in default map (msbfs.tree.xattrmap says what and why); a
        # given map replaces it, as virtiofsd's --xattrmap does.
        self.xattrmap = (XattrMap.parse(xattrmap) if isinstance(xattrmap, str)
                         else xattrmap or DEFAULT_MAP)
        self._xattrs = XattrRule(policy, self.xattrmap, posix_acl)
        self.announce_submounts = announce_submounts
        self.writeback = writeback
        self._timeout = _TIMEOUTS[cache]
        self._file_open_flags = {"never": FOPEN_DIRECT_IO, "metadata": FOPEN_DIRECT_IO,
                                 "always": FOPEN_KEEP_CACHE}.get(cache, 0)
        self._dir_open_flags = FOPEN_CACHE_DIR if cache == "always" else 0
        if max_inode_fds is None:
            # Re-opening by file handle needs CAP_DAC_READ_SEARCH: only root may evict.
            max_inode_fds = max(_MIN_INODE_FDS, soft // 2) if os.geteuid() == 0 else 0
        elif max_inode_fds:
            max_inode_fds = max(_MIN_INODE_FDS, max_inode_fds)
        # A client's budget (issue 9, point 7): whatever it opens or looks up without
        # letting go, the daemon keeps about a fifth of its fds for its own bookkeeping.
        # Inode fds: the cache above plus room for pinned ones (unlinked, no handle);
        # open handles an eighth, lock descriptions a sixteenth.
        self._inodes = InodeTable(fd, st, max_inode_fds or None,
                                  fd_cap=max(_MIN_INODE_FDS, soft // 2 + soft // 8),
                                  max_inodes=DEFAULT_MAX_INODES if max_inodes is None
                                  else max_inodes)
        # The one handle table (csrc/handles.h), which the virtio-fs C paths read too.
        self._handles = HandleTable(self._inodes, max(_MIN_INODE_FDS, soft // 8)
                                    if max_handles is None else max_handles,
                                    fast_writes=not policy.writes_need_tree())
        # A name a lookup finds is added without an fd, opened at its first use with the
        # rules _lookup_cold opens a name with (csrc/inodes.h, named nodes).
        lib.msb_inodes_set_open(self._inodes.c, _LOOKUP_FLAGS, _RESOLVE)
        self._root_dev = st.st_dev
        #: the rules csrc/lookup.c follows for this tree (the same as _lookup_cold's)
        self._lookup_cfg = ffi.new("struct msb_lookup_cfg *",
                                   (st.st_dev, _LOOKUP_FLAGS, _RESOLVE))
        self._foreign_devs: dict[int, int] = {}
        # The policy's shaping of every attribute reply, unpacked for the hot path.
        shape = self.attr_shape = policy.attr_shape()  # also the C metadata path's
        self._mode_mask, self._squash_uid, self._squash_gid, self._hide_rdev = shape
        # Client <-> host ids (msbfs.tree.idmap says where each direction is applied).
        # The identity map leaves _attr and map_ctx as they are: nothing on the hot path.
        self.uid_map = uid_map or IDENTITY_UIDS
        self.gid_map = gid_map or IDENTITY_GIDS
        self._id_mapped = not (self.uid_map.identity and self.gid_map.identity)
        if self._id_mapped:
            self._attr = self._mapped_attr  # type: ignore[method-assign]
        self._umask = _process_umask()
        self._ids = Identities()
        self._locks = RecordLocks(max(_MIN_INODE_FDS, soft // 16))
        self.quota: QuotaAccount | None = None
        if policy.quota_bytes is not None or policy.inode_limit is not None:
            # A named volume's usage is shared with its other writers (msbfs.usage):
            # the walk at start makes it true, under its lock.
            used, inodes = usage.recount(fd) if usage is not None else walk_counts(fd)
            self.quota = QuotaAccount(policy.quota_bytes, used, policy.inode_limit, inodes,
                                      store=usage)

    # ---- helpers ---------------------------------------------------------------------
    def _creds(self, ctx: Ctx) -> contextlib.AbstractContextManager[None]:
        if ctx.uid == REFUSED or ctx.gid == REFUSED:
            raise os_error(errno.EPERM)  # an id the id map refuses (map_ctx)
        return self._ids.of(ctx)

    def map_ctx(self, ctx: Ctx) -> Ctx:
        """The caller in host ids. Each front calls this once where it builds a request's
        Ctx (msbfs/fuse/server.py ``dispatch``, msbfs/hostmount.py), so all later uses
        of it (new files' owner, ``access``) see host ids. An id the map refuses becomes
        ``REFUSED``: a request that would act with it gets EPERM (``_before_new``,
        ``_creds``); one that does not (a lookup, a read, FORGET) goes on. A refused
        supplementary group is dropped (less access, never more)."""
        if not self._id_mapped:
            return ctx
        um, gm = self.uid_map, self.gid_map
        uid = um.to_host(ctx.uid) if um.allows(ctx.uid) else REFUSED
        gid = gm.to_host(ctx.gid) if gm.allows(ctx.gid) else REFUSED
        groups = ctx.groups
        if groups is not None:
            groups = tuple(gm.to_host(g) for g in groups if gm.allows(g))
        return Ctx(uid, gid, ctx.pid, ctx.umask, groups)

    def _ino(self, dev: int, ino: int) -> int:
        """The st_ino a client sees: the host's on the root's filesystem; on any other
        filesystem inside the root, tagged with a small per-device number in the top
        bits so inodes of different filesystems never collide."""
        if dev == self._root_dev:
            return ino
        tag = self._foreign_devs.get(dev)
        if tag is None:
            tag = self._foreign_devs[dev] = len(self._foreign_devs) + 1
        return (tag << 48) ^ (ino & ((1 << 48) - 1))

    def _attr(self, st: os.stat_result, submount: bool = False) -> Attr:
        return Attr(
            st.st_ino if st.st_dev == self._root_dev else self._ino(st.st_dev, st.st_ino),
            st.st_size, st.st_blocks, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
            st.st_mode & self._mode_mask, st.st_nlink,
            st.st_uid if self._squash_uid is None else self._squash_uid,
            st.st_gid if self._squash_gid is None else self._squash_gid,
            # nodev: a device node stays visible but names no device (0:0), so a
            # client kernel that opens special files itself cannot reach a host device.
            0 if self._hide_rdev and st.st_rdev else st.st_rdev, st.st_blksize, submount)
    # (policy.AttrShape says what each of these rules is for.)

    def _mapped_attr(self, st: os.stat_result, submount: bool = False) -> Attr:
        """``_attr`` under an id map (installed as ``_attr`` by ``__init__``): host ids
        as the client knows them; an owner squash still wins."""
        attr = Tree._attr(self, st, submount)
        if self._squash_uid is None:
            attr.uid = self.uid_map.to_guest(st.st_uid)
        if self._squash_gid is None:
            attr.gid = self.gid_map.to_guest(st.st_gid)
        return attr

    def _entry(self, inode: Inode, st: os.stat_result) -> Entry:
        t = self._timeout
        return Entry(inode.nodeid, 0, self._attr(st, inode.submount), t, t)

    def _add(self, fd: int, st: os.stat_result, parent: Inode) -> Inode:
        sub = (self.announce_submounts and st.st_dev != parent.dev
               and stat.S_ISDIR(st.st_mode))
        return self._inodes.add(fd, st, sub)

    def _open_beneath(self, parent: Inode, name: bytes) -> int:
        fd = lib.msb_openat2(parent.fd, name, _LOOKUP_FLAGS, 0, _RESOLVE)
        if fd < 0:
            raise os_error(-fd)
        return fd

    def _lookup_new(self, parent: Inode, name: bytes) -> tuple[Entry, Inode, os.stat_result]:
        """The Entry of a name just created beneath ``parent``, with its inode and the
        stat it was built from (the creating op charges and fixes the mode from it)."""
        fd = self._open_beneath(parent, name)
        try:
            st = os.stat(fd)
        except BaseException:
            os.close(fd)
            raise
        inode = self._add(fd, st, parent)
        return self._entry(inode, st), inode, st

    def _finish_new_entry(self, entry: Entry, inode: Inode, st: os.stat_result, want: int,
                          masked: bool, ctx: Ctx, p: Inode) -> os.stat_result:
        """``_finish_new`` for a node mknod/mkdir/symlink just made, its Entry updated."""
        done = self._finish_new(inode.fd, True, st, want, masked, ctx, p)
        if done is not st:
            entry.attr = self._attr(done, inode.submount)
        return done

    def _creation_mode(self, p: Inode, mode: Any, umask: Any, bits: int) -> tuple[int, bool]:
        """The mode a creating op asks the host for, and whether the caller's umask was
        applied (so the daemon's own umask must be undone). With ``posix_acl`` and a
        default ACL on the parent, the kernel derives the mode from the ACL and ignores
        every umask, as on a local filesystem."""
        mode = _int(mode, 0, 0xFFFFFFFF) & bits
        umask = _int(umask, 0, 0o7777)
        if self.posix_acl and self._has_default_acl(p):
            return self.policy.stored_mode(mode), False
        return self.policy.stored_mode(mode & ~umask), True

    @staticmethod
    def _has_default_acl(p: Inode) -> bool:
        try:
            os.getxattr(_proc(p.fd), b"system.posix_acl_default")
        except OSError:
            return False
        return True

    def _finish_new(self, fd: int, opath: bool, st: os.stat_result, want: int,
                    masked: bool, ctx: Ctx, p: Inode) -> os.stat_result:
        """A node a creating op just made as the daemon gets what the caller would have
        got natively (the permission model in the module doc): the caller as its
        owner; the caller's group, or the parent's under a setgid parent (which the
        host already gave it, with S_ISGID for a directory); and the mode asked for.
        The daemon's own umask may have taken bits the caller's did not (added back),
        the chown clears set-id bits (restored), nosuid's rule applies. ``fd`` is the
        node's O_PATH fd (``opath``) or an open fd of it. ``p`` is the parent: its
        set-gid bit is read only when the new node's group is not the caller's already
        (most creates need no chown at all, so they pay no stat of the parent)."""
        mode = st.st_mode & 0o7777
        target = self.policy.stored_mode(mode | (want & 0o777 & self._umask) if masked
                                         else mode)
        changed = False
        if self._ids.enabled:
            uid = -1 if ctx.uid == st.st_uid else ctx.uid
            gid = (-1 if ctx.gid == st.st_gid or os.stat(p.fd).st_mode & stat.S_ISGID
                   else ctx.gid)
            if uid != -1 or gid != -1:
                _check(lib.msb_fchownat(fd, b"", uid, gid, AT_EMPTY_PATH))
                changed = True
        if changed:
            st = os.stat(fd)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o7777 != target:
            os.chmod(_proc(fd) if opath else fd, target)
            st = os.stat(fd)
        return st

    def _before_new(self, p: Inode, ctx: Ctx, reserve: bool = True) -> None:
        """Before a creating op: the caller's ids must be ids (a FUSE header may say
        0xFFFFFFFF, which chown reads as "unchanged"), the inode quota and budget must
        have room (``reserve``; CREATE decides that itself, the name may exist)."""
        if ctx.uid == REFUSED or ctx.gid == REFUSED:
            raise os_error(errno.EPERM)  # an id the id map refuses (map_ctx)
        _int(ctx.uid, 0, 0xFFFFFFFE)
        _int(ctx.gid, 0, 0xFFFFFFFE)
        if reserve:
            self._reserve_inode()

    def _charge_stat(self, before: os.stat_result | None, after: os.stat_result | None) -> None:
        """Book what a call did: ``before`` None is an inode it made, ``after`` None one
        it freed (both count against the inode quota, on the root's filesystem)."""
        if self.quota is not None:
            d = self._root_dev
            inodes = 0
            if (before is None) != (after is None):
                st = after if before is None else before
                if st is not None and st.st_dev == d:
                    inodes = 1 if before is None else -1
            self.quota.charge(allocated(after, d) - allocated(before, d), inodes)

    def _reserve_inode(self) -> None:
        """A creating op may make one more inode: ENOSPC past the inode quota, ENFILE
        past the client's inode budget (checked before anything is made)."""
        if self.quota is not None:
            self.quota.reserve_inode()
        self._inodes.check_room()

    def _dir_before(self, p: Inode) -> os.stat_result | None:
        """With a quota, the parent's allocation before a new entry may grow it."""
        return os.stat(p.fd) if self.quota is not None else None

    def _dir_after(self, p: Inode, before: os.stat_result | None) -> None:
        if before is not None:
            self._charge_stat(before, os.stat(p.fd))

    def _add_handle(self, fd: int, inode: Inode, oflags: int) -> int:
        return self._handles.add_file(fd, inode, oflags)  # counts the inode's open too

    def _discharge_removed(self, st: os.stat_result) -> None:
        """The last name of ``st`` is gone: its blocks are free now, unless a handle of
        ours still holds it open (then they are freed, and discharged, at its release)."""
        inode = self._inodes.find(st)
        if inode is None or self._inodes.nopen(inode) == 0:
            self._charge_stat(st, None)

    def _lstat_at(self, parent: Inode, name: bytes) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError:
            return None

    # ---- inodes ----------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes, ctx: Ctx) -> Entry:
        # csrc/lookup.c first (the virtio-fs C path's own lookup): a plain name (C
        # checks it as _name would, and refuses "." and "..") beneath a directory on the
        # root's filesystem, in one crossing, the attributes in a C struct _attr reads
        # as it reads a stat. What it does not decide (r is UNDECIDED: other names,
        # other filesystems, a bound, an errno but ENOENT) is the Python code below,
        # from scratch.
        try:
            out = _lookup_stat()
            r = _c_lookup(self._inodes.c, self._lookup_cfg, parent, name, len(name), out)
        except (OverflowError, TypeError):  # no u64 node id, no bytes name: below
            r = _UNDECIDED
        if r >= 0:
            t = self._timeout
            return Entry(r >> 1, 0, self._attr(out, bool(r & 1)), t, t)
        if r == -errno.ENOENT:
            raise os_error(errno.ENOENT)
        inodes = self._inodes
        pfd = inodes.fd_traits(parent) >> FD_SHIFT
        name = _name(name)
        if name != b"." and name != b"..":
            # Warm path, no inode views: a stat of the single component (never following
            # it: no "/" and no ".." in name, AT_SYMLINK_NOFOLLOW) finds an inode we
            # already hold, and no fd is opened at all.
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            hit = inodes.find_ref_id(st)
            if hit >= 0:
                t = self._timeout
                return Entry(hit >> 1, 0, self._attr(st, bool(hit & 1)), t, t)
            return self._lookup_cold(inodes.get(parent), name)
        p = inodes.get(parent)
        if name == b".":
            st = os.stat(p.fd)
            self._inodes.ref(p)
            return self._entry(p, st)
        return self._lookup_dotdot(p)

    def _lookup_cold(self, p: Inode, name: bytes) -> Entry:
        """A name whose inode the table does not hold (the warm path is ``lookup``)."""
        self._inodes.check_room()
        fd = lib.msb_openat2(p.fd, name, _LOOKUP_FLAGS, 0, _RESOLVE)
        if fd < 0:
            raise os_error(-fd)
        try:
            st = os.stat(fd)  # the object we hold is the truth, whatever raced
        except BaseException:
            os.close(fd)
            raise
        return self._entry(self._add(fd, st, p), st)

    def _lookup_dotdot(self, p: Inode) -> Entry:
        root = self._inodes.root
        if p.nodeid == ROOT_ID:
            st = os.stat(root.fd)
            self._inodes.ref(root)
            return self._entry(root, st)
        self._inodes.check_room()
        fd = os.open(b"..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=p.fd)
        try:
            st = os.stat(fd)
            self._check_beneath_root(fd, st)
        except BaseException:
            os.close(fd)
            raise
        known = self._inodes.find_ref(st)
        if known is not None:
            os.close(fd)
            return self._entry(known, st)
        return self._entry(self._inodes.add(fd, st), st)

    def _check_beneath_root(self, fd: int, st: os.stat_result) -> None:
        """Walk ``..`` up from ``fd`` until the root: a directory moved out of the root
        behind our back must not hand the client its new parent (ENOENT)."""
        root = self._inodes.root
        cur = os.dup(fd)
        try:
            while (st.st_dev, st.st_ino) != (root.dev, root.ino):
                up = os.open(b"..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
                ust = os.stat(up)
                os.close(cur)
                cur = up
                if (ust.st_dev, ust.st_ino) == (st.st_dev, st.st_ino):
                    raise os_error(errno.ENOENT)  # reached the host's / : not beneath us
                st = ust
        finally:
            os.close(cur)

    def forget(self, nodeid: int, nlookup: int) -> None:
        try:
            self._inodes.forget(int(nodeid), int(nlookup))
        except (TypeError, ValueError, OverflowError):
            pass

    def batch_forget(self, items: Iterable[tuple[int, int]]) -> None:
        for item in items:
            try:
                nodeid, nlookup = item
            except (TypeError, ValueError):
                continue  # FORGET has no reply: a malformed item is just dropped
            self.forget(nodeid, nlookup)

    def getattr(self, nodeid: int, fh: int | None, ctx: Ctx) -> tuple[Attr, float]:
        traits = self._inodes.fd_traits(nodeid)
        fd = traits >> FD_SHIFT
        if fh is not None:
            h = self._handles.get(fh)
            if h is not None and h.inode.nodeid == nodeid:
                fd = h.fd
        return self._attr(os.stat(fd), traits & SUBMOUNT != 0), self._timeout

    def setattr(self, nodeid: int, attr: SetAttr, ctx: Ctx) -> tuple[Attr, float]:
        inode = self._inodes.get(nodeid)
        valid = attr.valid
        changes = valid & (FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME
                           | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW)
        if changes:
            self.policy.check_mutation()
        handle: FileHandle | None = None
        if valid & FATTR_FH and attr.fh is not None:
            handle = self._handles.file(attr.fh)
            if handle.inode.nodeid != inode.nodeid:
                handle = None  # a handle of another file says nothing about this one
        if valid & FATTR_MODE:
            self._chmod(inode, handle, _int(attr.mode, 0, 0o7777 | 0o170000) & 0o7777)
        if valid & (FATTR_UID | FATTR_GID):
            # The client's ids, in host ids (a refused one is EPERM).
            uid = (self.uid_map.to_host(_int(attr.uid, 0, 0xFFFFFFFE)) if valid & FATTR_UID
                   else -1)
            gid = (self.gid_map.to_host(_int(attr.gid, 0, 0xFFFFFFFE)) if valid & FATTR_GID
                   else -1)
            _check(lib.msb_fchownat(inode.fd, b"", uid, gid, AT_EMPTY_PATH))
        if valid & FATTR_SIZE:
            self._truncate(inode, handle, _int(attr.size))
        if valid & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW):
            a = self._timespec(valid, FATTR_ATIME, FATTR_ATIME_NOW, attr.atime_ns)
            m = self._timespec(valid, FATTR_MTIME, FATTR_MTIME_NOW, attr.mtime_ns)
            _check(lib.msb_utimensat(inode.fd, b"", a[0], a[1], m[0], m[1], AT_EMPTY_PATH))
        if (valid & FATTR_KILL_SUIDGID and valid & (FATTR_SIZE | FATTR_UID | FATTR_GID)
                and not valid & FATTR_MODE):
            # Only beside a change the caller was just allowed to make (the kernel sends
            # it with truncate and chown): alone it would let anyone strip set-id bits,
            # even in a readonly tree (issue 9, point 4).
            self._kill_suidgid(inode.fd, ctx)
        return self._attr(os.stat(inode.fd), inode.submount), self._timeout

    @staticmethod
    def _timespec(valid: int, bit: int, now_bit: int, ns: int) -> tuple[int, int]:
        if valid & now_bit:
            return 0, UTIME_NOW
        if valid & bit:
            # Any 64-bit tv_sec, as utimensat takes it: the host filesystem clamps it to
            # what it can store (ext4: 1901..2446), and the reply shows what it kept.
            ns = _int(ns, _TIME_MIN_NS, _TIME_MAX_NS)
            return ns // 1_000_000_000, ns % 1_000_000_000
        return 0, UTIME_OMIT

    def _chmod(self, inode: Inode, handle: FileHandle | None, mode: int) -> None:
        mode = self.policy.stored_mode(mode)
        if inode.kind == stat.S_IFLNK:
            raise os_error(errno.EOPNOTSUPP)  # as fchmodat(AT_SYMLINK_NOFOLLOW)
        if handle is not None:
            os.fchmod(handle.fd, mode)
        else:
            os.chmod(_proc(inode.fd), mode)

    def _truncate(self, inode: Inode, handle: FileHandle | None, size: int) -> None:
        if inode.kind == stat.S_IFDIR:
            raise os_error(errno.EISDIR)
        if inode.kind != stat.S_IFREG:
            raise os_error(errno.EINVAL)
        if handle is not None and handle.writable:
            fd, own = handle.fd, False
        else:
            # No writable handle: open one (the client kernel checked write permission).
            fd, own = os.open(_proc(inode.fd), os.O_WRONLY | os.O_CLOEXEC), True
        try:
            before = os.stat(fd) if self.quota is not None else None
            os.ftruncate(fd, size)
            if before is not None:
                self._charge_stat(before, os.stat(fd))
        finally:
            if own:
                os.close(fd)

    def _kill_suidgid(self, fd: int, ctx: Ctx) -> None:
        """Clear what the client asked to be cleared (KILL_SUIDGID: its caller lacks
        CAP_FSETID), by the kernel's rule (policy.killed_setid_bits). Group membership
        is what the request says of the caller (FUSE sends only its gid)."""
        st = os.stat(fd)
        mode = st.st_mode
        # root is taken to hold CAP_FSETID: the client asks for chowns unconditionally
        # (FUSE's HANDLE_KILLPRIV_V2), and a capable caller keeps a lone S_ISGID
        in_group = (ctx.uid == 0 or ctx.gid == st.st_gid
                    or bool(ctx.groups and st.st_gid in ctx.groups))
        kill = killed_setid_bits(mode, in_group)
        if kill:
            # With the daemon's own identity: the kernel drops these bits on its own
            # authority, whoever the writer is (callers never wrap this in _creds).
            os.chmod(_proc(fd), stat.S_IMODE(mode) & ~kill)

    def readlink(self, nodeid: int, ctx: Ctx) -> bytes:
        inode = self._inodes.get(nodeid)
        if inode.kind != stat.S_IFLNK:
            raise os_error(errno.EINVAL)
        return os.readlink(b"", dir_fd=inode.fd)

    # ---- namespace -------------------------------------------------------------------
    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, umask: int,
              ctx: Ctx) -> Entry:
        p = self._inodes.get(parent)
        name = _new_name(name)
        mode = _int(mode, 0, 0xFFFFFFFF)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind == stat.S_IFDIR:
            raise os_error(errno.EPERM)
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR,
                        stat.S_IFBLK):
            raise os_error(errno.EINVAL)
        self.policy.check_mknod(kind)
        rdev = _int(rdev, 0, 0xFFFFFFFF)
        want, masked = self._creation_mode(p, mode, umask, 0o7777)
        pst = self._dir_before(p)
        self._before_new(p, ctx)
        os.mknod(name, kind | want, rdev, dir_fd=p.fd)
        entry, inode, st = self._lookup_new(p, name)
        st = self._finish_new_entry(entry, inode, st, want, masked, ctx, p)
        self._charge_stat(None, st)
        self._dir_after(p, pst)
        return entry

    def mkdir(self, parent: int, name: bytes, mode: int, umask: int, ctx: Ctx) -> Entry:
        p = self._inodes.get(parent)
        name = _new_name(name)
        self.policy.check_mutation()
        want, masked = self._creation_mode(p, mode, umask, 0o1777)
        pst = self._dir_before(p)
        self._before_new(p, ctx)
        os.mkdir(name, want, dir_fd=p.fd)
        entry, inode, st = self._lookup_new(p, name)
        st = self._finish_new_entry(entry, inode, st, want, masked, ctx, p)
        self._charge_stat(None, st)
        self._dir_after(p, pst)
        return entry

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Entry:
        p = self._inodes.get(parent)
        name = _new_name(name)
        self.policy.check_mutation()
        if type(target) is not bytes:
            try:
                target = bytes(target)
            except TypeError:
                raise os_error(errno.EINVAL) from None
        if b"\0" in target:
            raise os_error(errno.EINVAL)
        if len(target) >= PATH_MAX:
            raise os_error(errno.ENAMETOOLONG)
        pst = self._dir_before(p)
        self._before_new(p, ctx)
        os.symlink(target, name, dir_fd=p.fd)
        entry, inode, st = self._lookup_new(p, name)
        st = self._finish_new_entry(entry, inode, st, 0o777, False, ctx, p)
        if pst is not None:
            self._charge_stat(None, st)
            self._dir_after(p, pst)
        return entry

    def link(self, nodeid: int, newparent: int, newname: bytes, ctx: Ctx) -> Entry:
        inode = self._inodes.get(nodeid)
        np = self._inodes.get(newparent)
        newname = _new_name(newname)
        self.policy.check_mutation()
        pst = self._dir_before(np)
        # linkat(AT_SYMLINK_FOLLOW) of the magic link links the inode our fd holds
        # (also a symlink itself, or an O_TMPFILE file), not anything by name. A
        # directory is refused by the VFS itself (EPERM, on every filesystem), after the
        # new name's own errors (EEXIST, ENOENT in a removed directory): an order a check
        # of our own in front of it got wrong twice.
        os.link(_proc(inode.fd), newname, dst_dir_fd=np.fd, follow_symlinks=True)
        self._dir_after(np, pst)
        st = os.stat(inode.fd)
        self._inodes.ref(inode)
        return self._entry(inode, st)

    def unlink(self, parent: int, name: bytes, ctx: Ctx) -> None:
        p = self._inodes.get(parent)
        name = _name(name)
        self.policy.check_mutation()
        if name in (b".", b".."):
            raise os_error(errno.EISDIR)
        before = self._lstat_at(p, name) if self.quota is not None else None
        _removing(self._inodes.c, p.nodeid, p.fd, name, len(name))
        os.unlink(name, dir_fd=p.fd)
        if before is not None and before.st_nlink <= 1:
            self._discharge_removed(before)

    def rmdir(self, parent: int, name: bytes, ctx: Ctx) -> None:
        p = self._inodes.get(parent)
        name = _name(name)
        self.policy.check_mutation()
        if name == b".":
            raise os_error(errno.EINVAL)
        if name == b"..":
            raise os_error(errno.ENOTEMPTY)
        before = self._lstat_at(p, name) if self.quota is not None else None
        _removing(self._inodes.c, p.nodeid, p.fd, name, len(name))
        os.rmdir(name, dir_fd=p.fd)
        if before is not None:
            self._charge_stat(before, None)

    def rename(self, parent: int, name: bytes, newparent: int, newname: bytes,
               flags: int, ctx: Ctx) -> None:
        p = self._inodes.get(parent)
        np = self._inodes.get(newparent)
        name = _name(name)
        newname = _name(newname)
        flags = _int(flags, 0, 0xFFFFFFFF)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT):
            raise os_error(errno.EINVAL)
        self.policy.check_mutation()
        if name in (b".", b".."):
            raise os_error(errno.EBUSY)
        if newname in (b".", b".."):
            raise os_error(errno.EEXIST if flags & RENAME_NOREPLACE else errno.EBUSY)
        replaced = None
        if self.quota is not None and not flags & RENAME_EXCHANGE:
            replaced = self._lstat_at(np, newname)
        pst = self._dir_before(np)
        if not flags & RENAME_EXCHANGE:  # what newname holds may lose its last name
            _removing(self._inodes.c, np.nodeid, np.fd, newname, len(newname))
        _check(lib.msb_renameat2(p.fd, name, np.fd, newname, flags))
        # a named node of what moved follows it (csrc/inodes.h), as the C path does
        _moved(self._inodes.c, np.nodeid, np.fd, newname, len(newname))
        if flags & RENAME_EXCHANGE:
            _moved(self._inodes.c, p.nodeid, p.fd, name, len(name))
        self._dir_after(np, pst)
        if replaced is not None and (stat.S_ISDIR(replaced.st_mode) or replaced.st_nlink <= 1):
            src = self._lstat_at(np, newname)
            if src is None or (src.st_dev, src.st_ino) != (replaced.st_dev, replaced.st_ino):
                self._discharge_removed(replaced)

    # ---- files -----------------------------------------------------------------------
    def _reopen_flags(self, flags: int) -> int:
        oflags = flags & _OPEN_PASS
        if self.writeback:
            # With a writeback cache the kernel reads pages of write-only files and
            # computes append offsets itself (as virtiofsd does).
            oflags &= ~os.O_APPEND
        return oflags | os.O_CLOEXEC

    def open(self, nodeid: int, flags: int, ctx: Ctx, kill_suidgid: bool = False) -> Opened:
        inode = self._inodes.get(nodeid)
        flags = _int(flags, 0, 0xFFFFFFFF)
        self.policy.check_open(flags, inode.kind)
        kind = inode.kind
        if kind == stat.S_IFLNK:
            raise os_error(errno.ELOOP)
        if kind == stat.S_IFDIR and flags & os.O_ACCMODE != os.O_RDONLY:
            raise os_error(errno.EISDIR)
        self._handles.check_room()
        oflags = self._reopen_flags(flags)
        if kind not in (stat.S_IFREG, stat.S_IFDIR):
            # A hostile client must not park the daemon on a FIFO or a device's open.
            oflags |= os.O_NONBLOCK
        before = None
        if self.quota is not None and flags & os.O_TRUNC:
            before = os.stat(inode.fd)
        # Only a regular file has pages to fill; a FIFO keeps its access mode (ENXIO).
        wanted = self._writeback_flags(oflags) if kind == stat.S_IFREG else oflags
        fd, oflags = self._open_either(_proc(inode.fd), wanted, oflags)
        if kill_suidgid and flags & os.O_TRUNC and kind == stat.S_IFREG:
            self._kill_suidgid(fd, ctx)  # an O_TRUNC open truncates: the same rule
        if before is not None:
            self._charge_stat(before, os.stat(fd))
        return Opened(self._add_handle(fd, inode, oflags), self._file_open_flags)

    def _writeback_flags(self, oflags: int) -> int:
        """Read-write in place of write-only under writeback: the kernel READs through
        the application's write-only handle to fill partially written pages."""
        if self.writeback and oflags & os.O_ACCMODE == os.O_WRONLY:
            return (oflags & ~os.O_ACCMODE) | os.O_RDWR
        return oflags

    @staticmethod
    def _open_either(path: bytes, wanted: int, oflags: int) -> tuple[int, int]:
        """Re-open ``path`` (an inode's /proc/self/fd link) with ``wanted`` flags, or
        with the caller's ``oflags`` when that is refused (a daemon without
        CAP_DAC_OVERRIDE on a write-only file). Returns the fd and the flags it really
        has, which the handle records."""
        if wanted != oflags:
            try:
                return os.open(path, wanted), wanted
            except PermissionError:
                pass
        return os.open(path, oflags), oflags

    def create(self, parent: int, name: bytes, mode: int, flags: int, umask: int,
               ctx: Ctx, kill_suidgid: bool = False) -> tuple[Entry, Opened]:
        p = self._inodes.get(parent)
        name = _new_name(name)
        self.policy.check_mutation()
        flags = _int(flags, 0, 0xFFFFFFFF)
        want, masked = self._creation_mode(p, mode, umask, 0o7777)
        oflags = (self._reopen_flags(flags) | os.O_CREAT | os.O_NOFOLLOW
                  | (flags & os.O_EXCL))
        self._handles.check_room()
        self._inodes.check_room()
        pst = self._dir_before(p)
        self._before_new(p, ctx, reserve=False)
        fd, oflags, before, pfd = self._create_open(p, name, oflags, want, flags)
        try:
            st = os.stat(fd)
            if before is None:
                # Only a file we just made gets owner and mode: an existing one keeps
                # both, as open(O_CREAT) leaves them.
                st = self._finish_new(fd, False, st, want, masked, ctx, p)
            elif kill_suidgid and flags & os.O_TRUNC and stat.S_ISREG(st.st_mode):
                self._kill_suidgid(fd, ctx)
                st = os.stat(fd)
        except BaseException:
            os.close(fd)
            if pfd >= 0:
                os.close(pfd)
            raise
        if pfd < 0:
            try:
                pfd = self._path_fd_of(p, name, fd, st)
            except BaseException:
                os.close(fd)
                raise
        self._charge_stat(before, st)
        self._dir_after(p, pst)
        inode = self._add(pfd, st, p)
        opened = Opened(self._add_handle(fd, inode, oflags), self._file_open_flags)
        return self._entry(inode, st), opened

    def _create_open(self, p: Inode, name: bytes, oflags: int, want: int,
                     flags: int) -> tuple[int, int, os.stat_result | None, int]:
        """The open of CREATE: the fd, the flags it really has, the file's stat before
        the open if it already existed (None: we made it) and an O_PATH fd of it (-1:
        not taken yet). Most creates make a new file: try that first with O_EXCL (a
        new file is a regular file, so it opens with the caller's flags as they are,
        read-write under writeback: creating needs no read permission). A name that
        exists is opened as itself first (O_PATH, never following it), so what it is
        decides the open: never a device (policy), a FIFO without waiting for a writer."""
        wanted = self._writeback_flags(oflags)
        room = self.quota is None or self.quota.inodes_available > 0
        if room:
            try:
                return os.open(name, wanted | os.O_EXCL, want, dir_fd=p.fd), wanted, None, -1
            except FileExistsError:
                if oflags & os.O_EXCL:
                    raise
        pfd = lib.msb_openat2(p.fd, name, _LOOKUP_FLAGS, 0, _RESOLVE)
        if pfd < 0:
            raise os_error(errno.ENOSPC if pfd == -errno.ENOENT and not room else -pfd)
        try:
            before = os.stat(pfd)
            kind = stat.S_IFMT(before.st_mode)
            if oflags & os.O_EXCL:
                raise os_error(errno.EEXIST)
            if kind == stat.S_IFLNK:
                raise os_error(errno.ELOOP)  # open(O_CREAT | O_NOFOLLOW) of a symlink
            if kind == stat.S_IFDIR:
                raise os_error(errno.EISDIR)
            self.policy.check_open(flags, kind)
            path = _proc(pfd)
            reopen = ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)
            if kind == stat.S_IFREG:
                fd, got = self._open_either(path, wanted & reopen, oflags & reopen)
                got = (got & reopen) | (oflags & ~reopen)
            else:
                # A FIFO or socket: no pages to fill (its own access mode: a write-only
                # FIFO open without a reader is ENXIO), and never waiting for a peer.
                fd, got = os.open(path, (oflags & reopen) | os.O_NONBLOCK), oflags
        except BaseException:
            os.close(pfd)
            raise
        return fd, got, before, pfd

    @staticmethod
    def _path_fd_of(p: Inode, name: bytes, fd: int, st: os.stat_result) -> int:
        """An O_PATH fd of the inode ``fd`` (opened as ``name`` beneath ``p``) holds.
        By name first: the ``/proc/self/fd`` re-open walks procfs and costs twice as
        much; kept for when the name no longer leads to that inode (raced away)."""
        pfd = lib.msb_openat2(p.fd, name, _LOOKUP_FLAGS, 0, _RESOLVE)
        if pfd >= 0:
            try:
                got = os.stat(pfd)
            except BaseException:
                os.close(pfd)
                raise
            if got.st_ino == st.st_ino and got.st_dev == st.st_dev:
                return pfd
            os.close(pfd)
        return os.open(_proc(fd), os.O_PATH | os.O_CLOEXEC)

    def tmpfile(self, parent: int, mode: int, flags: int, umask: int,
                ctx: Ctx) -> tuple[Entry, Opened]:
        p = self._inodes.get(parent)
        self.policy.check_mutation()
        flags = _int(flags, 0, 0xFFFFFFFF)
        want, masked = self._creation_mode(p, mode, umask, 0o7777)
        oflags = self._writeback_flags(self._reopen_flags(flags) & ~os.O_TRUNC)
        if oflags & os.O_ACCMODE == os.O_RDONLY:
            oflags |= os.O_RDWR  # O_TMPFILE needs write access; the kernel asks for it
        self._handles.check_room()
        self._before_new(p, ctx)
        fd = os.open(b".", oflags | os.O_TMPFILE | (flags & os.O_EXCL), want,
                     dir_fd=p.fd)
        try:
            st = self._finish_new(fd, False, os.stat(fd), want, masked, ctx, p)
            pfd = os.open(_proc(fd), os.O_PATH | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        self._charge_stat(None, st)  # an inode until its release (or linkat)
        inode = self._add(pfd, st, p)
        opened = Opened(self._add_handle(fd, inode, oflags), self._file_open_flags)
        return self._entry(inode, st), opened

    def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self._handles.file(fh)
        if not h.readable:
            raise os_error(errno.EBADF)
        offset = _int(offset)
        size = min(_int(size, 0, 1 << 62), MAX_IO)
        return os.pread(h.fd, size, offset)

    def write(self, fh: int, offset: int, data: bytes | memoryview, ctx: Ctx,
              kill_suidgid: bool = False) -> int:
        h = self._handles.file(fh)
        self.policy.check_mutation()
        if not h.writable:
            raise os_error(errno.EBADF)
        offset = _int(offset)
        if kill_suidgid:
            self._kill_suidgid(h.fd, ctx)
        quota = self.quota
        if quota is None:
            return os.pwrite(h.fd, data, offset)
        before = os.stat(h.fd)
        at = before.st_size if h.flags & os.O_APPEND else offset
        n = quota.write_allowance(before, at, len(data))
        try:
            return os.pwrite(h.fd, memoryview(data)[:n] if n < len(data) else data, offset)
        finally:
            self._charge_stat(before, os.stat(h.fd))

    def data_fd(self, fh: int, *, write: bool) -> int:
        h = self._handles.file(fh)
        if write:
            if not h.writable:
                raise os_error(errno.EBADF)
            if self.policy.writes_need_tree():
                raise os_error(errno.EAGAIN)
        elif not h.readable:
            raise os_error(errno.EBADF)
        return h.fd

    def flush(self, fh: int, lock_owner: int) -> None:
        h = self._handles.file(fh)
        self._locks.drop_owner(h.inode, lock_owner)
        # close() of a dup gives the host filesystem its flush (NFS-style close-to-open).
        os.close(os.dup(h.fd))

    def flush_is_nothing(self) -> bool:
        """Whether ``flush`` does nothing for a file on the root's device when the client
        keeps its record locks itself (the host mount: pyfuse3 has no lock callbacks, so
        ``drop_owner`` has no owner's locks to drop): the root's filesystem has no flush
        of its own (``NO_FLUSH_FSTYPES``), so the close of a dup is only a close. Such a
        client may open files there with FOPEN_NOFLUSH: its kernel then sends no FLUSH,
        one request less per close. A file on another device (a submount: NFS, FUSE...)
        is not covered; an unknown filesystem type answers False."""
        return mountinfo.fstype_of_fd(self._inodes.root.fd) in NO_FLUSH_FSTYPES

    def release(self, fh: int, flags: int = 0, lock_owner: int = 0,
                flock_release: bool = False) -> None:
        # Out of the table (and the inode's open count) first; the fd is closed after
        # a grace period, once no queue thread can still be reading through it.
        h, left = self._handles.pop_file(fh)
        inode = h.inode
        try:
            if flock_release:
                fcntl.flock(h.fd, fcntl.LOCK_UN)
            if lock_owner:
                self._locks.drop_owner(inode, lock_owner)
            if self.quota is not None and left == 0:
                st = os.stat(h.fd)
                if st.st_nlink == 0:  # unlinked while open, or a never-linked tmpfile
                    self._charge_stat(st, None)
        finally:
            retire(h.fd)

    def fsync(self, fh: int, datasync: bool) -> None:
        _sync(self._handles.file(fh).fd, datasync)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        h = self._handles.file(fh)
        self.policy.check_mutation()
        mode = _int(mode, 0, 0xFFFFFFFF)
        offset = _int(offset)
        length = _int(length, 1)
        if offset + length > OFFSET_MAX:
            raise os_error(errno.EFBIG)
        if not h.writable:
            raise os_error(errno.EBADF)
        before = None
        if self.quota is not None:
            before = os.stat(h.fd)
            if not mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_COLLAPSE_RANGE):
                self.quota.reserve(-(-length // 4096) * 4096)
        try:
            _check(lib.msb_fallocate(h.fd, mode, offset, length))
        finally:
            if before is not None:
                self._charge_stat(before, os.stat(h.fd))

    def lseek(self, fh: int, offset: int, whence: int) -> int:
        h = self._handles.file(fh)
        offset = _int(offset, -OFFSET_MAX - 1)
        whence = _int(whence, 0, 4)
        return os.lseek(h.fd, offset, whence)

    def copy_file_range(self, fh_in: int, off_in: int, fh_out: int, off_out: int,
                        length: int, flags: int) -> int:
        src = self._handles.file(fh_in)
        dst = self._handles.file(fh_out)
        self.policy.check_mutation()
        if _int(flags, 0, 0xFFFFFFFF):
            raise os_error(errno.EINVAL)
        if not src.readable or not dst.writable or dst.flags & os.O_APPEND:
            raise os_error(errno.EBADF)
        off_in = _int(off_in)
        off_out = _int(off_out)
        length = min(_int(length, 0, 1 << 62), 1 << 30)
        quota = self.quota
        if quota is None:
            return os.copy_file_range(src.fd, dst.fd, length, off_in, off_out)
        before = os.stat(dst.fd)
        n = quota.write_allowance(before, off_out, length)
        try:
            return os.copy_file_range(src.fd, dst.fd, n, off_in, off_out)
        finally:
            self._charge_stat(before, os.stat(dst.fd))

    # ---- locks (msbfs.tree.record_locks) ----------------------------------------------------
    def getlk(self, fh: int, owner: int, lock: Lock) -> Lock:
        return self._locks.getlk(self._handles.locking(fh), owner, lock)

    def setlk(self, fh: int, owner: int, lock: Lock, *, is_flock: bool = False) -> None:
        self._locks.setlk(self._handles.locking(fh), owner, lock, is_flock)

    def begin_setlkw(self, fh: int, owner: int, lock: Lock, *,
                     is_flock: bool = False) -> LockWait:
        """SETLKW's first half, on the serving thread: resolves ``fh`` now, so the wait
        (on another thread) never uses the handle's fd, which RELEASE may close."""
        return self._locks.begin_setlkw(self._handles.locking(fh), owner, lock, is_flock)

    def setlkw(self, fh: int, owner: int, lock: Lock, *, is_flock: bool = False) -> None:
        self.begin_setlkw(fh, owner, lock, is_flock=is_flock).wait()

    # ---- directories -----------------------------------------------------------------
    def opendir(self, nodeid: int, flags: int, ctx: Ctx) -> Opened:
        inode = self._inodes.get(nodeid)
        if inode.kind != stat.S_IFDIR:
            raise os_error(errno.ENOTDIR)
        self._handles.check_room()
        fd = os.open(_proc(inode.fd), _OPENDIR_FLAGS)
        return Opened(self._handles.add_dir(fd, inode, _OPENDIR_FLAGS), self._dir_open_flags)

    def readdir(self, fh: int, offset: int) -> Iterator[DirEntry]:
        h = self._handles.dir(fh)
        # Cookies are the host's d_off values; offset 0 is rewinddir (a fresh listing).
        offset = _int(offset)
        root = self._inodes.root
        dev = h.inode.dev
        foreign = dev != self._root_dev
        fix_dotdot = h.inode.nodeid == ROOT_ID

        def convert(d_ino: int, d_off: int, d_type: int, name: bytes) -> DirEntry:
            if fix_dotdot and name == b"..":
                d_ino = root.ino  # never show the host's parent of the root
            return DirEntry(self._ino(dev, d_ino) if foreign else d_ino, d_off, d_type, name)

        return h.entries(offset, convert)

    def releasedir(self, fh: int) -> None:
        retire(self._handles.pop_dir(fh))

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        _sync(self._handles.dir_fd(fh), datasync)

    # ---- whole filesystem ------------------------------------------------------------
    def statfs(self, nodeid: int) -> StatFs:
        inode = self._inodes.get(nodeid)
        v = os.statvfs(inode.fd)
        blocks, bfree, bavail = v.f_blocks, v.f_bfree, v.f_bavail
        files, ffree = v.f_files, v.f_ffree
        quota = self.quota
        if quota is not None:
            if quota.limit is not None:
                frsize = v.f_frsize or 4096
                blocks = quota.limit // frsize
                free = quota.available // frsize
                bfree = min(free, v.f_bfree)
                bavail = min(free, v.f_bavail)
            if quota.inode_limit is not None:
                files = quota.inode_limit
                ffree = min(quota.inodes_available, v.f_ffree)
        return StatFs(blocks, bfree, bavail, files, ffree, v.f_bsize, v.f_namemax, v.f_frsize)

    def access(self, nodeid: int, mask: int, ctx: Ctx) -> None:
        inode = self._inodes.get(nodeid)
        mask = _int(mask, 0, 7)
        self.policy.check_access(mask, inode.kind)
        # The fd first, as the daemon: an evicted inode is re-opened by handle, which
        # needs the daemon's CAP_DAC_READ_SEARCH (as the caller it was EPERM).
        fd = inode.fd
        with self._creds(ctx):
            _check(lib.msb_faccessat2(fd, b"", mask, AT_EACCESS | AT_EMPTY_PATH))

    def syncfs(self) -> None:
        # syncfs(2) refuses O_PATH fds (EBADF): use a real fd of the root for it.
        fd = os.open(_proc(self._inodes.root.fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _check(lib.msb_syncfs(fd))
        finally:
            os.close(fd)

    # ---- xattrs ----------------------------------------------------------------------
    # Which names a client reaches, and as what on the host, is the policy's XattrRule
    # (the xattr map plus what no map may change); here only names as names.
    def _xattr_name(self, name: Any, ctx: Ctx, write: bool) -> bytes:
        """The host's name for the client's xattr ``name``, or the errno refusing it."""
        if not self.xattr:
            raise os_error(errno.EOPNOTSUPP)
        if type(name) is not bytes:
            try:
                name = bytes(name)
            except TypeError:
                raise os_error(errno.EINVAL) from None
        if not name or len(name) > XATTR_NAME_MAX:
            raise os_error(errno.ERANGE)
        if b"\0" in name:
            raise os_error(errno.EINVAL)
        host = self._xattrs.host_name(name, ctx.uid, write)
        if len(host) > XATTR_NAME_MAX:
            raise os_error(errno.ERANGE)
        return host

    @contextlib.contextmanager
    def _xattr_charged(self, inode: Inode, growth: int) -> Iterator[None]:
        """An xattr change on ``inode``: refused up front when ``growth`` bytes would not
        fit the quota, then charged with what the host really allocated. An xattr can
        take a block of its own, and unlink refunds the file's whole st_blocks: not
        charging it here let usage drift below the truth (issue 9, point 5)."""
        if self.quota is None:
            yield
            return
        self.quota.reserve(growth)
        before = os.stat(inode.fd)
        try:
            yield
        finally:
            self._charge_stat(before, os.stat(inode.fd))

    def setxattr(self, nodeid: int, name: bytes, value: bytes, flags: int, ctx: Ctx) -> None:
        inode = self._inodes.get(nodeid)
        name = self._xattr_name(name, ctx, True)
        self.policy.check_mutation()
        flags = _int(flags, 0, 0xFFFFFFFF)
        if flags & ~(os.XATTR_CREATE | os.XATTR_REPLACE):
            raise os_error(errno.EINVAL)
        if len(value) > XATTR_SIZE_MAX:
            raise os_error(errno.E2BIG)
        # An upper bound of the allocation: a started block per 4 KiB of entry.
        growth = -(-(len(name) + len(value) + _XATTR_ENTRY) // _XATTR_BLOCK) * _XATTR_BLOCK
        with self._xattr_charged(inode, growth):
            os.setxattr(_proc(inode.fd), name, value, flags)

    def getxattr(self, nodeid: int, name: bytes, size: int, ctx: Ctx) -> bytes:
        inode = self._inodes.get(nodeid)
        name = self._xattr_name(name, ctx, False)
        size = _int(size, 0, 1 << 32)
        value = os.getxattr(_proc(inode.fd), name)
        if size and len(value) > size:
            raise os_error(errno.ERANGE)
        return value

    def listxattr(self, nodeid: int, ctx: Ctx) -> list[bytes]:
        inode = self._inodes.get(nodeid)
        if not self.xattr:
            raise os_error(errno.EOPNOTSUPP)
        names = [os.fsencode(n) for n in os.listxattr(_proc(inode.fd))]
        rule = self._xattrs
        return [n for n in (rule.client_name(h, ctx.uid) for h in names) if n is not None]

    def removexattr(self, nodeid: int, name: bytes, ctx: Ctx) -> None:
        inode = self._inodes.get(nodeid)
        name = self._xattr_name(name, ctx, True)
        self.policy.check_mutation()
        with self._xattr_charged(inode, 0):
            os.removexattr(_proc(inode.fd), name)

    # ---- the C metadata path ----------------------------------------------------------
    def c_handles(self) -> Any:
        """The handle table's C side (``struct msb_fs_table``, csrc/handles.h): a
        virtio-fs device's C paths serve from it. It is the tree's own table, not a
        copy: what the tree opens and releases is what they see."""
        return self._handles.c

    def c_open(self) -> COpenConfig:
        """The rules csrc/fuse_handles.c follows to answer OPEN/OPENDIR/RELEASE/
        RELEASEDIR as this tree does; msbfs/fastopen.py compiles them into numbers by
        running them (only trees ``c_metadata`` serves get there)."""
        return COpenConfig(self.policy, self._reopen_flags, self._writeback_flags,
                           self._file_open_flags, self._dir_open_flags, _OPENDIR_FLAGS,
                           self.quota is not None)

    def c_xattr_name(self, name: bytes, uid: int) -> bytes:
        """``_xattr_name`` of a GETXATTR of ``name`` by ``uid``: the host's name, or the
        OSError refusing it. msbfs/fastxattr.py runs it for the hot names and writes the
        answers for csrc/fuse_xattr.c, which never re-states the rule."""
        return self._xattr_name(name, Ctx(uid), False)

    def c_metadata(self) -> CMetaConfig | None:
        """What csrc/fuse_meta.c needs to answer LOOKUP/GETATTR/FORGET as this tree does
        (msbfs/fastmeta.py writes it there), or None when this tree applies a rule C does
        not implement: an id map (``_mapped_attr``). C hands inodes on other devices
        (``_ino``'s tags, submounts) back, so those need no rule there; STATFS only
        without a quota (``statfs`` reports the quota's figures)."""
        if self._id_mapped:
            return None
        return CMetaConfig(self._inodes, self._root_dev, self.attr_shape, self._timeout,
                           _LOOKUP_FLAGS, _RESOLVE, self.quota is None, self._locks,
                           self.policy.c_decisions(), self.quota is not None, self._ids,
                           self._umask, self.posix_acl)

    # ---- life cycle ------------------------------------------------------------------
    def destroy(self) -> None:
        self._handles.close_all()
        self._locks.close_all()
        self._inodes.clear()

    def close(self) -> None:
        self.destroy()
        self._inodes.close()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statistics(self) -> Statistics:
        return Statistics(
            inodes=len(self._inodes), handles=len(self._handles),
            quota_used_bytes=None if self.quota is None else self.quota.used,
            quota_used_inodes=None if self.quota is None else self.quota.inodes,
            extra={"lock_fds": len(self._locks), "foreign_devices": len(self._foreign_devs),
                   "inode_fds": self._inodes.open_fds, "inode_fd_evictions": self._inodes.evictions,
                   "inode_fd_reopens": self._inodes.reopens, "inode_trims": self._inodes.trims,
                   "inode_named": self._inodes.named,
                   "inode_named_opens": self._inodes.named_opens})


class CMetaConfig(NamedTuple):
    """The tree's rules for the C metadata path: one definition, two consumers."""

    inodes: InodeTable
    root_dev: int
    shape: AttrShape
    timeout: float
    lookup_flags: int
    resolve: int
    host_statfs: bool
    #: the owners' lock descriptions: C answers FLUSH only while there are none
    locks: RecordLocks
    #: the policy's mutation and access decisions, as numbers (csrc/fuse_names.h)
    decisions: CDecisions
    #: a quota charges what UNLINK/RMDIR (and every creating op) free or make: Python's
    charged: bool
    #: who ACCESS runs as (``access`` switches to the caller as these do)
    identities: Identities
    #: the daemon's umask (``_finish_new`` adds back the bits it took)
    umask: int
    #: a parent's default ACL decides a new node's mode (``_creation_mode``): Python's
    posix_acl: bool


class COpenConfig(NamedTuple):
    """The tree's open and release rules for the C path (``Tree.c_open``)."""

    policy: Policy
    #: ``Tree._reopen_flags``: the flags a re-open of the client's flags gets
    reopen_flags: Callable[[int], int]
    #: ``Tree._writeback_flags``: a regular file's re-open flags under writeback
    writeback_flags: Callable[[int], int]
    file_open_flags: int
    dir_open_flags: int
    opendir_flags: int
    #: a quota: O_TRUNC opens and the last release of an unlinked file are charged
    charged: bool


def _process_umask() -> int:
    """This process's umask, read without the set-and-restore race of os.umask."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _sync(fd: int, datasync: bool) -> None:
    """FSYNC/FSYNCDIR: fdatasync when the client asked for data only (FUSE_FSYNC_FDATASYNC)."""
    if datasync:
        os.fdatasync(fd)
    else:
        os.fsync(fd)
