"""``msbfs mount``: the host FUSE mount of a sandboxed tree, through pyfuse3.

This module owns three things:

* ``HostOps``: the thin ``pyfuse3.Operations`` adapter. Every operation pyfuse3 offers is
  one call into the tree; the tree's ``OSError`` becomes ``FUSEError(errno)`` exactly once,
  here. pyfuse3 offers no lock, fallocate, lseek, copy_file_range or tmpfile callbacks,
  so the kernel handles locks locally and answers the rest with EOPNOTSUPP for us.
* the mount options (``-o ro,noexec,...``) and how they become a ``Policy`` for the tree
  and, mirrored, kernel mount flags;
* serving the mount: in the foreground until unmounted or signalled (``run_mount``).

Around it, ``msbfs.mountinfo`` says what is mounted where (stale mounts, ENOTCONN after a
killed daemon, cleared) and ``msbfs.mount_daemon`` keeps the daemon's pid records, its
readiness pipe, backgrounding and ``unmount``, which waits for the daemon to let go.

Why ``default_permissions`` (and ACLs): the host kernel knows the calling user's full
credentials, so it is the one to check every path component, open, chmod, chown, sticky
directory and ACL against the attributes we report, exactly as for a native directory
(without it, it skips the search checks of cached components). The tree acts as the
daemon and only gives new files their caller as owner (msbfs/tree/tree.py, "Permissions").
Under an owner squash (``uid=``/``gid=``) the kernel checks against the squashed owner,
which is what the squash promises: the mapped user has an owner's access.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio

from msbfs import hostmount_loop, hostmount_relay
from msbfs._native import lib
from msbfs.errors import InvalidMountSpec, MountError
from msbfs.fdlimit import WANTED_NOFILE, raise_fd_limit
from msbfs.hostmount_entry import APART, PlainDirent, set_nodeid
from msbfs.hostmount_relay import Relay
from msbfs.mount_daemon import _record_path
from msbfs.mounts import MountOptions
from msbfs.tree import idmap
from msbfs.tree.api import TreeOps
from msbfs.tree.tree import XATTR_SIZE_MAX, Tree
from msbfs.tree.types import (
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_CTIME,
    FATTR_FH,
    FATTR_GID,
    FATTR_KILL_SUIDGID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    FOPEN_NONSEEKABLE,
    ROOT_ID,
    Attr,
    Ctx,
    Entry,
    Opened,
    SetAttr,
)

log = logging.getLogger(__name__)


#: pyfuse3 turns FATTR_*_NOW into "the current time" (clock_gettime just before calling
#: us), which loses the distinction the permission rules need (a writer who is not the
#: owner may touch to *now*, not to an explicit time). A time within this window of our
#: own clock is taken as NOW. An explicit utimensat() landing this close to the present
#: is indistinguishable from touch(1) anyway.
_NOW_WINDOW_NS = 50_000_000

F = TypeVar("F", bound=Callable[..., Any])


def _op(fn: F) -> F:
    """Make a synchronous tree call a pyfuse3 handler: ``OSError`` → ``FUSEError`` once;
    anything else is a bug, logged and answered EIO (an unexpected exception escaping a
    pyfuse3 handler would stop the whole session)."""

    @functools.wraps(fn)
    async def handler(self: HostOps, *args: Any) -> Any:
        held = self.held
        if held is not None:
            lib.msb_relay_py_begin(held)
        try:
            return fn(self, *args)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("%s%r failed", fn.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            if held is not None:
                lib.msb_relay_py_end(held)

    return handler  # type: ignore[return-value]


def entry_attributes(nodeid: int, attr: Attr, *, generation: int = 0,
                     entry_timeout: float = 0.0, attr_timeout: float = 0.0,
                     ) -> pyfuse3.EntryAttributes:
    """The tree's ``Attr`` as pyfuse3 wants it: ``st_ino`` is ``attr.ino`` (the tree's
    rule: the host's number, as ``d_ino`` in a listing shows it) and the node id is set
    apart (msbfs.hostmount_entry). Where pyfuse3's layout is not the known one, its one
    field serves both and the node id is reported as the inode number (hard links still
    share one: the tree keys inodes by (st_dev, st_ino))."""
    e = pyfuse3.EntryAttributes()
    if APART:
        e.st_ino = attr.ino
        set_nodeid(e, nodeid)
    else:
        e.st_ino = nodeid
    e.generation = generation
    e.entry_timeout = entry_timeout
    e.attr_timeout = attr_timeout
    e.st_mode = attr.mode
    e.st_nlink = attr.nlink
    e.st_uid = attr.uid
    e.st_gid = attr.gid
    e.st_rdev = attr.rdev
    e.st_size = attr.size
    e.st_blksize = attr.blksize
    e.st_blocks = attr.blocks
    e.st_atime_ns = attr.atime_ns
    e.st_mtime_ns = attr.mtime_ns
    e.st_ctime_ns = attr.ctime_ns
    return e


#: A directory whose host size is at most this is listed with attributes
#: (``HostOps.readdir``): up to about 1,500-2,000 names on ext4 or btrfs, 3,000 on tmpfs.
SMALL_DIR = 64 * 1024

#: What a ``.``/``..`` entry carries: only its type matters (the kernel links neither).
_DOT_ATTR = Attr(ino=0, size=0, blocks=0, atime_ns=0, mtime_ns=0, ctime_ns=0,
                 mode=stat.S_IFDIR | 0o755, nlink=2, uid=0, gid=0, rdev=0, blksize=4096)


def _entry(entry: Entry) -> pyfuse3.EntryAttributes:
    return entry_attributes(entry.nodeid, entry.attr, generation=entry.generation,
                            entry_timeout=entry.entry_timeout,
                            attr_timeout=entry.attr_timeout)


def _file_info(opened: Opened) -> pyfuse3.FileInfo:
    f = opened.open_flags
    return pyfuse3.FileInfo(fh=opened.fh, direct_io=bool(f & FOPEN_DIRECT_IO),
                            keep_cache=bool(f & FOPEN_KEEP_CACHE),
                            nonseekable=bool(f & FOPEN_NONSEEKABLE))


def request_ctx(ctx: pyfuse3.RequestContext) -> Ctx:
    """The caller as the tree wants it: whose new files are whose (the kernel checked
    its permissions already, ``default_permissions``)."""
    return Ctx(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask)


def caller_with_groups(ctx: pyfuse3.RequestContext) -> Ctx:
    """For ``access``, the one call the tree makes as its caller: FUSE does not send
    supplementary groups, so for non-root callers they are read from /proc."""
    groups: tuple[int, ...] | None = None
    if ctx.uid != 0 and ctx.pid > 0:
        try:
            groups = tuple(sorted(pyfuse3.get_sup_groups(ctx.pid)))
        except (OSError, RuntimeError):
            groups = None  # the process is gone; its primary gid is all we know
    return Ctx(uid=ctx.uid, gid=ctx.gid, pid=ctx.pid, umask=ctx.umask, groups=groups)


def _same(ctx: Ctx) -> Ctx:
    return ctx


#: The opener of a handle the relay's C path opened, for a write of it that reaches us.
_NO_CALLER = Ctx(uid=0, gid=0, pid=0, umask=0)


class HostOps(pyfuse3.Operations):
    """pyfuse3 operations over one tree. Synchronous tree calls run inline on the trio
    loop (local syscalls take microseconds); only fsync-like calls that may block for
    long go to a worker thread."""

    supports_dot_lookup = True
    # The kernel checks POSIX ACLs itself (it reads system.posix_acl_access through us)
    # along with every path component: the permission model of msbfs/tree/tree.py.
    enable_acl = True

    def __init__(self, tree: TreeOps, *, writeback: bool = False) -> None:
        super().__init__()
        self.tree = tree
        self.enable_writeback_cache = writeback
        #: dir handle -> (node id, opener): readdirplus looks each entry up beneath it.
        self._dirs: dict[int, tuple[int, Ctx]] = {}
        #: node id -> its open directory handles; ``_advised``: those of them a child
        #: was looked up in since their last READDIRPLUS (see ``readdir``).
        self._listed: dict[int, int] = {}
        self._advised: set[int] = set()
        #: dir handles whose listing started on a small directory
        self._small: set[int] = set()
        self._plain = PlainDirent() if APART else None
        #: file handle -> opener: pyfuse3's write() carries no request context.
        # fh -> (the opener, whether its writes clear set-id bits)
        self._files: dict[int, tuple[Ctx, bool]] = {}
        # The caller's ids in host ids (Tree.map_ctx, msbfs.tree.idmap); None: identity.
        map_ctx = getattr(tree, "map_ctx", None)
        self._map: Callable[[Ctx], Ctx] = map_ctx if map_ctx is not None else _same
        #: While the relay answers requests in C beside us (msbfs.hostmount_relay): the
        #: inode table each handler holds, so a FORGET answered meanwhile closes no fd
        #: it uses. None: every request is ours.
        self.held: Any = None
        self._handles = tree.c_handles() if isinstance(tree, Tree) else None

    def _ctx(self, ctx: pyfuse3.RequestContext) -> Ctx:
        return self._map(request_ctx(ctx))

    def _killing_ctx(self, ctx: pyfuse3.RequestContext) -> tuple[Ctx, bool]:
        """The caller with its supplementary groups, and whether its writes, truncates
        and chowns clear set-id bits: libfuse's HANDLE_KILLPRIV leaves that to us, and
        the kernel's rule needs the caller's CAP_FSETID (root is taken to hold it) and
        group membership (read from /proc for non-root callers)."""
        if ctx.uid == 0:
            return self._ctx(ctx), False
        return self._map(caller_with_groups(ctx)), True

    # ---- inodes -----------------------------------------------------------------------
    @_op
    def lookup(self, parent_inode: int, name: bytes,
               ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode in self._listed:
            self._advised.add(parent_inode)
        return _entry(self.tree.lookup(parent_inode, name, self._ctx(ctx)))

    @_op
    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        self.tree.batch_forget(inode_list)

    @_op
    def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        attr, timeout = self.tree.getattr(inode, None, self._ctx(ctx))
        return entry_attributes(inode, attr, attr_timeout=timeout)

    @_op
    def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                fields: pyfuse3.SetattrFields, fh: int | None,
                ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        sa = SetAttr(fh=fh)
        valid = FATTR_FH if fh is not None else 0
        now = time.time_ns()
        if fields.update_mode:
            valid |= FATTR_MODE
            sa.mode = attr.st_mode
        if fields.update_uid:
            valid |= FATTR_UID
            sa.uid = attr.st_uid
        if fields.update_gid:
            valid |= FATTR_GID
            sa.gid = attr.st_gid
        if fields.update_size:
            valid |= FATTR_SIZE
            sa.size = attr.st_size
        if fields.update_atime:
            sa.atime_ns = attr.st_atime_ns
            valid |= FATTR_ATIME_NOW if 0 <= now - sa.atime_ns < _NOW_WINDOW_NS else FATTR_ATIME
        if fields.update_mtime:
            sa.mtime_ns = attr.st_mtime_ns
            valid |= FATTR_MTIME_NOW if 0 <= now - sa.mtime_ns < _NOW_WINDOW_NS else FATTR_MTIME
        if fields.update_ctime:
            valid |= FATTR_CTIME
            sa.ctime_ns = attr.st_ctime_ns
        c = self._ctx(ctx)
        if valid & (FATTR_SIZE | FATTR_UID | FATTR_GID) and not valid & FATTR_MODE:
            c, kill = self._killing_ctx(ctx)
            if kill:
                valid |= FATTR_KILL_SUIDGID
        sa.valid = valid
        new, timeout = self.tree.setattr(inode, sa, c)
        return entry_attributes(inode, new, attr_timeout=timeout)

    @_op
    def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.tree.readlink(inode, self._ctx(ctx))

    # ---- namespace --------------------------------------------------------------------
    @_op
    def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
              ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        c = self._ctx(ctx)
        return _entry(self.tree.mknod(parent_inode, name, mode, rdev, c.umask, c))

    @_op
    def mkdir(self, parent_inode: int, name: bytes, mode: int,
              ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        c = self._ctx(ctx)
        return _entry(self.tree.mkdir(parent_inode, name, mode, c.umask, c))

    @_op
    def symlink(self, parent_inode: int, name: bytes, target: bytes,
                ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return _entry(self.tree.symlink(parent_inode, name, target, self._ctx(ctx)))

    @_op
    def link(self, inode: int, new_parent_inode: int, new_name: bytes,
             ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return _entry(self.tree.link(inode, new_parent_inode, new_name, self._ctx(ctx)))

    @_op
    def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.tree.unlink(parent_inode, name, self._ctx(ctx))

    @_op
    def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.tree.rmdir(parent_inode, name, self._ctx(ctx))

    @_op
    def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
               name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self.tree.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags,
                         self._ctx(ctx))

    # ---- files ------------------------------------------------------------------------
    @_op
    def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        c, kill = self._killing_ctx(ctx)
        opened = self.tree.open(inode, flags, c, kill_suidgid=kill)
        self._keep(opened.fh, c, kill)
        return _file_info(opened)

    @_op
    def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
               ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        c, kill = self._killing_ctx(ctx)
        entry, opened = self.tree.create(parent_inode, name, mode, flags, c.umask, c,
                                         kill_suidgid=kill)
        self._keep(opened.fh, c, kill)
        return _file_info(opened), _entry(entry)

    def _keep(self, fh: int, opener: Ctx, kill: bool) -> None:
        self._files[fh] = (opener, kill)
        if self.held is not None:
            # Ours to release (the relay's C RELEASE leaves a marked handle to us), so
            # the opener above is dropped with it.
            lib.msb_handles_mark_python(self._handles, fh)

    @_op
    def read(self, fh: int, off: int, size: int) -> bytes:
        # Inline even for 128 KiB readahead: measured, a worker-thread hop per read
        # halved cold sequential throughput (1107 -> 525 MiB/s) instead of overlapping I/O.
        return self.tree.read(fh, off, size)

    @_op
    def write(self, fh: int, off: int, buf: bytes) -> int:
        opener = self._files.get(fh)
        # None: the relay's C path opened it (the tree still checks the handle). It opens
        # only where set-id bits are not ours to clear (csrc/devfuse.c python_rule).
        c, kill = opener if opener is not None else (_NO_CALLER, False)
        return self.tree.write(fh, off, buf, c, kill_suidgid=kill)

    @_op
    def flush(self, fh: int) -> None:
        # The kernel keeps POSIX locks locally (pyfuse3 has no lock callbacks), so the
        # lock owner pyfuse3 does not pass us has nothing to release in the tree.
        self.tree.flush(fh, 0)

    @_op
    def release(self, fh: int) -> None:
        self._files.pop(fh, None)
        self.tree.release(fh)

    async def fsync(self, fh: int, datasync: bool) -> None:
        # May take long on a busy disk: off the loop so other requests keep flowing.
        await _blocking(self.tree.fsync, fh, datasync)

    # ---- directories ------------------------------------------------------------------
    @_op
    def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        c = self._ctx(ctx)
        opened = self.tree.opendir(inode, os.O_RDONLY | os.O_DIRECTORY, c)
        self._dirs[opened.fh] = (inode, c)
        if self.held is not None:
            lib.msb_handles_mark_python(self._handles, opened.fh)  # ours to release
        self._listed[inode] = self._listed.get(inode, 0) + 1
        return opened.fh

    @_op
    def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """pyfuse3 always answers READDIRPLUS (it turns the kernel's READDIRPLUS_AUTO
        off), so which entries carry attributes is decided here. With attributes, each
        entry is looked up as it is sent (one lookup in the kernel; the one that did not
        fit is forgotten); without, it is a plain record: its ``d_ino``, type and node
        id 0 (msbfs.hostmount_entry), which costs no lookup, fd or kernel inode.

        Attributes go with the whole listing of a small directory (``SMALL_DIR``: what
        a walk lists and then stats name by name, and a LOOKUP through pyfuse3 costs
        several times a listed entry), and with the rest of any listing once a child of
        the directory was looked up while it is open (``ls -l`` stats batch by batch).
        The rest is plain, so ``ls`` of a large directory looks nothing up. The
        kernel's own rule (fs/fuse/readdir.c ``fuse_use_readdirplus``: the first batch
        and the batch after a lookup) measured worse here: a cold ``ls`` of 10,000 names
        spent a quarter of its time looking up a first batch nobody stats, ``ls -l``
        took ~1.7x as long as with attributes throughout, and a cold walk of the
        stdlib looked up a fifth of its names one LOOKUP each."""
        parent, c = self._dirs.get(fh, (0, None))
        tree = self.tree
        plain = self._plain
        if c is None:
            # The relay's C path opened it, and hands us a listing it could not finish
            # (a name it cannot decide): plain records need no parent. Anything else is
            # no handle of ours (the tree refuses it).
            if self.held is None or plain is None:
                raise OSError(errno.EBADF, "unknown directory handle")
        elif plain is not None:
            if start_id == 0:
                if tree.getattr(parent, None, c)[0].size <= SMALL_DIR:
                    self._small.add(fh)
                else:
                    self._small.discard(fh)
            if parent in self._advised or fh in self._small:
                plain = None
        if plain is not None:
            for de in tree.readdir(fh, start_id):
                if not pyfuse3.readdir_reply(token, de.name, plain.set(de.ino, de.type),
                                             de.off):
                    break
            return
        sent = False
        for de in tree.readdir(fh, start_id):
            if de.name == b"." or de.name == b"..":
                # Sent like a native filesystem lists them (``ls -a``), but without a
                # lookup: the kernel takes no reference for ./.. entries of a
                # READDIRPLUS reply (fuse_direntplus_link returns early for them).
                dot = (self._plain.set(de.ino, de.type) if self._plain is not None else
                       entry_attributes(parent if de.name == b"." else de.ino, _DOT_ATTR))
                if not pyfuse3.readdir_reply(token, de.name, dot, de.off):
                    break
                continue
            try:
                entry = tree.lookup(parent, de.name, c)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    continue  # removed since the listing was read
                # Never drop a name silently (out of descriptors, or a directory the
                # caller may read but not search). An entry without attributes (node id
                # 0) is no way out: glibc hides d_ino 0. So: the error, if nothing is in
                # this reply yet; else a short reply, and the next READDIRPLUS from this
                # entry's cookie reports it.
                if sent:
                    break
                raise
            sent = True
            if not pyfuse3.readdir_reply(token, de.name, _entry(entry), de.off):
                tree.forget(entry.nodeid, 1)
                break

    @_op
    def releasedir(self, fh: int) -> None:
        parent, _ = self._dirs.pop(fh, (0, None))
        self._small.discard(fh)
        left = self._listed.pop(parent, 0) - 1
        if left > 0:
            self._listed[parent] = left
        else:
            self._advised.discard(parent)
        self.tree.releasedir(fh)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await _blocking(self.tree.fsyncdir, fh, datasync)

    # ---- whole filesystem -------------------------------------------------------------
    @_op
    def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = self.tree.statfs(ROOT_ID)
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.bsize
        out.f_frsize = s.frsize
        out.f_blocks = s.blocks
        out.f_bfree = s.bfree
        out.f_bavail = s.bavail
        out.f_files = s.files
        out.f_ffree = s.ffree
        out.f_favail = s.ffree
        out.f_namemax = s.namelen
        return out

    @_op
    def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        self.tree.access(inode, mode, self._map(caller_with_groups(ctx)))
        return True

    # ---- xattrs -----------------------------------------------------------------------
    @_op
    def setxattr(self, inode: int, name: bytes, value: bytes,
                 ctx: pyfuse3.RequestContext) -> None:
        # pyfuse3 implements XATTR_CREATE/XATTR_REPLACE itself (through getxattr) and
        # hands us only the plain set.
        self.tree.setxattr(inode, name, value, 0, self._ctx(ctx))

    @_op
    def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # pyfuse3 asks for a value without a size and applies the caller's size itself
        return self.tree.getxattr(inode, name, XATTR_SIZE_MAX, self._ctx(ctx))

    @_op
    def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self.tree.listxattr(inode, self._ctx(ctx))

    @_op
    def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.tree.removexattr(inode, name, self._ctx(ctx))

    def stacktrace(self) -> None:
        """pyfuse3 calls this for a setxattr of ``fuse_stacktrace`` on the root — a
        debugging aid any local user could trigger to spam the log; refuse quietly."""


async def _blocking(fn: Callable[..., None], *args: Any) -> None:
    try:
        await trio.to_thread.run_sync(fn, *args)
    except OSError as e:
        raise pyfuse3.FUSEError(e.errno or errno.EIO) from None


# ---- options ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostMountOptions:
    """What ``msbfs mount -o`` says: the policy flags (``msbfs.MountOptions``, the one
    model every server reads) and what only a host mount has. The flags go to the tree
    (enforced there for every client) and, mirrored, to the kernel mount."""

    flags: MountOptions = field(default_factory=MountOptions)
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    quota_mib: int | None = None
    quota_inodes: int | None = None
    #: virtiofsd's --xattrmap rules (msbfs.tree.xattrmap); None: the tree's default map.
    xattrmap: str | None = None
    #: virtiofsd's id maps (msbfs.tree.idmap), repeatable: ``uid_map=:NS:HOST:COUNT:``
    #: and ``translate_uid=TYPE:A:B:COUNT``, the same for gids. The caller is the "guest".
    uid_map: tuple[str, ...] = ()
    gid_map: tuple[str, ...] = ()
    translate_uid: tuple[str, ...] = ()
    translate_gid: tuple[str, ...] = ()
    #: The kernel's writeback cache: small writes are gathered in the page cache and
    #: sent as large WRITEs. Errors (ENOSPC) then surface at fsync/close, not write().
    writeback: bool = False

    @classmethod
    def parse(cls, text: str | None) -> HostMountOptions:
        flags: dict[str, Any] = {}
        policy = MountOptions()
        for raw in (text or "").split(","):
            item = raw.strip()
            if not item:
                continue
            key, eq, value = item.partition("=")
            if not eq and (nxt := policy.with_flag(key)) is not None:
                policy = nxt
            elif key in ("allow_other", "writeback") and not eq:
                flags[key] = True
            elif key in ("uid", "gid", "quota", "quota_inodes") and eq:
                try:
                    n = int(value, 10)
                except ValueError:
                    raise InvalidMountSpec(f"mount option {key}= needs a number, not {value!r}") from None
                if n < 0 or (key in ("uid", "gid") and n > 0xFFFFFFFE) or (
                        key == "quota_inodes" and n == 0):
                    raise InvalidMountSpec(f"mount option {key}={value} is out of range")
                flags["quota_mib" if key == "quota" else key] = n
            elif key == "xattrmap" and eq:
                from msbfs.tree.xattrmap import XattrMap, XattrMapError

                try:
                    XattrMap.parse(value)
                except XattrMapError as e:
                    raise InvalidMountSpec(f"mount option xattrmap: {e}") from None
                flags["xattrmap"] = value
            elif key in ("uid_map", "gid_map", "translate_uid", "translate_gid") and eq:
                flags[key] = (*flags.get(key, ()), value)
            else:
                raise InvalidMountSpec(
                    f"unknown mount option {item!r} (known: ro, noexec, nosuid, nodev, "
                    "allow_other, uid=N, gid=N, quota=MIB, quota_inodes=N, writeback, "
                    "xattrmap=RULES, uid_map=:NS:HOST:COUNT:, gid_map=..., "
                    "translate_uid=TYPE:A:B:COUNT, translate_gid=...)")
        opts = cls(policy, **flags)
        opts.id_maps()  # a bad map is refused here, with virtiofsd's reason
        return opts

    def id_maps(self) -> tuple[idmap.IdMap, idmap.IdMap]:
        """The (uid, gid) maps these options ask for (identity when none)."""
        from msbfs.tree.idmap import IdMapError, from_options

        try:
            return (from_options(self.translate_uid, self.uid_map, what="UID"),
                    from_options(self.translate_gid, self.gid_map, what="GID"))
        except IdMapError as e:
            raise InvalidMountSpec(f"mount option: {e}") from None

    def kernel_options(self, fsname: str, *, mirror_policy: bool = True) -> set[str]:
        """libfuse mount options. ``mirror_policy=False`` leaves the policy to the server
        alone (what the policy tests need to show it enforces it on its own)."""
        # fsname shows in /proc/mounts; commas would split it into options.
        # default_permissions: the host kernel checks every access of every path
        # component against what we report (and ACLs: enable_acl), for the calling host
        # user, as on a native directory; the tree does not check again (its permission
        # model). Without it the kernel skips search checks on cached components.
        opts = {f"fsname=msbfs:{fsname.replace(',', '_')}", "subtype=msbfs",
                "default_permissions"}
        if self.allow_other:
            opts.add("allow_other")
        if mirror_policy:
            # libfuse mounts nosuid,nodev unless told otherwise, and we keep that even when
            # the policy allows set-id files and devices: a guest's root can plant a
            # set-uid binary in a volume, which must not become a way up on the host.
            opts.update(self.flags.policy().kernel_flags())
        else:
            # Nothing from the kernel at all, not even libfuse's defaults.
            opts.update(("suid", "dev"))
        return opts


# ---- serving --------------------------------------------------------------------------------

#: Readahead for the mount's backing device, in KiB. The kernel starts FUSE mounts at
#: 128 KiB; every READ is a round trip through Python, so fewer, larger ones (libfuse
#: allows 1 MiB requests) measured ~40% faster cold sequential reads.
READAHEAD_KIB = 1024


def widen_readahead(st_dev: int) -> None:
    """Best effort (root only): raise the readahead of the mount's bdi."""
    path = f"/sys/class/bdi/{os.major(st_dev)}:{os.minor(st_dev)}/read_ahead_kb"
    with contextlib.suppress(OSError):
        with open(path, "w") as f:
            f.write(f"{READAHEAD_KIB}\n")


#: pyfuse3's worker tasks. More than one is what keeps the mount answering while a
#: handler is parked in a worker thread (fsync, fsyncdir: ``_blocking``); the task
#: count itself measured no different per request (2/32, 1/32, 1/1 within the noise):
#: the cost is the scheduler passes, which ``hostmount_loop`` takes out.
MIN_TASKS = 2
MAX_TASKS = 32
#: pyfuse3's loop on ``hostmount_loop`` (False: pyfuse3's own; for comparing)
FAST_LOOP = True


async def _fuse_session(ops: HostOps, mountpoint: str, on_ready: Callable[[], None],
                        relay: Relay | None) -> None:
    async with trio.open_nursery() as nursery:
        async def loop() -> None:
            if FAST_LOOP:
                with hostmount_loop.installed():
                    await pyfuse3.main(min_tasks=MIN_TASKS, max_tasks=MAX_TASKS)
            else:
                await pyfuse3.main(min_tasks=MIN_TASKS, max_tasks=MAX_TASKS)
            nursery.cancel_scope.cancel()  # unmounted from outside: we are done

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
                async for _ in sigs:
                    nursery.cancel_scope.cancel()
                    return

        async def watch_relay(ended_fd: int) -> None:
            # pyfuse3 reads the relay's socket, which never says the mount is gone.
            await trio.lowlevel.wait_readable(ended_fd)
            nursery.cancel_scope.cancel()

        nursery.start_soon(loop)
        nursery.start_soon(watch_signals)
        if relay is not None:
            nursery.start_soon(watch_relay, relay.ended_fd)
        # The mount answers once a stat through it comes back (served by the loop above,
        # so it must run in a thread).
        st = await trio.to_thread.run_sync(os.stat, mountpoint)
        # ismount's lstat goes through the mount as well: a host process creating a name
        # in the root meanwhile invalidates the root's attributes, and a GETATTR this
        # thread would have to answer itself hung the daemon for good.
        if not await trio.to_thread.run_sync(os.path.ismount, mountpoint):
            raise MountError(f"{mountpoint}: mounted, but it does not show as a mount point")
        widen_readahead(st.st_dev)
        on_ready()


def run_mount(tree: TreeOps, mountpoint: str, options: HostMountOptions, *, fsname: str,
              mirror_policy: bool = True, on_ready: Callable[[], None] = lambda: None) -> None:
    """Mount ``tree`` at ``mountpoint`` and serve it in this process until it is unmounted
    or SIGINT/SIGTERM/SIGHUP arrives; then unmount and release every inode and handle."""
    raise_fd_limit(WANTED_NOFILE)  # the kernel's inode cache holds a lookup (an fd) per inode
    ops = HostOps(tree, writeback=options.writeback)
    before = hostmount_relay.fuse_fds()
    try:
        pyfuse3.init(ops, mountpoint, options.kernel_options(fsname, mirror_policy=mirror_policy))
    except RuntimeError as e:
        raise MountError(f"cannot mount at {mountpoint}: {e}") from None
    relay: Relay | None = None
    record = _record_path(mountpoint, "pid")
    try:
        record.write_text(f"{os.getpid()}\n")
        relay = hostmount_relay.install(tree, before, small_dir=SMALL_DIR)
        if relay is not None:
            ops.held = relay.inodes
        lib.msb_malloc_trim()  # start-up's freed heap back to the system, as msbfs serve
        trio.run(_fuse_session, ops, mountpoint, on_ready, relay)
    finally:
        try:
            if relay is not None:
                relay.close()  # libfuse's fd is /dev/fuse again before it unmounts
                ops.held = None
            pyfuse3.close(unmount=True)
        finally:
            with contextlib.suppress(OSError):
                record.unlink()
            tree.destroy()
