"""The FUSE protocol server: one request's bytes in, one reply's bytes out. It owns no
transport (no socket, queue or event loop: the caller brings the bytes and carries the
reply), but it is not sans-I/O: it calls the tree, which makes the filesystem's syscalls.
This module is the session (INIT negotiation, its state, dispatch) and the opcode
handlers; the sans-I/O halves it calls are ``msbfs.fuse.requests`` (decoding) and
``msbfs.fuse.replies`` (encoding).

Rules of this module:

* Every length is checked before a field is read. A request that is shorter than its
  header says, shorter than its opcode's struct, or whose names are not NUL-terminated
  gets an ``EINVAL`` reply; a header too short to carry a ``unique`` gets no reply at all
  (there is nobody to address it to). Nothing a guest sends raises out of ``dispatch``.
* Errors are the tree's: an ``OSError`` from the tree becomes ``-errno`` in
  ``fuse_out_header.error``. Any other exception is a bug; it is logged and answered
  with ``EIO`` so one bad request never takes the daemon down.
* ``dispatch`` returns the reply bytes, ``None`` for requests without a reply (FORGET,
  BATCH_FORGET, INTERRUPT), or a ``Deferred`` for requests that may block (SETLKW): the
  caller runs ``Deferred.run()`` in a worker thread and sends what it returns.
* ``reply_room`` (the bytes the transport can carry back, e.g. a chain's writable part)
  caps READ, READDIR(PLUS), GETXATTR and LISTXATTR so a lying size never makes us build
  a reply that cannot be delivered.
* Before INIT every request but INIT is answered with ``EIO``; INIT after DESTROY starts
  a new session (a guest may unmount and mount the same device again), and INIT without
  one (a rebooted guest) first releases everything the old session held.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from msbfs.fuse import abi
from msbfs.fuse.abi import Opcode
from msbfs.fuse.replies import (
    HEADER,
    _reply,
    attr_reply,
    encode_entry,
    encode_open,
    entry_reply,
    error_reply,
)
from msbfs.fuse.requests import IN_HEADER, BadRequest, _Body, _ns, _unpack_in
from msbfs.tree.api import TreeOps
from msbfs.tree.types import FATTR_FH, Ctx, DirEntry, Lock, SetAttr

log = logging.getLogger(__name__)

#: Largest WRITE/READ we announce: 256 pages = 1 MiB (FUSE_MAX_PAGES).
MAX_PAGES = 256
PAGE_SIZE = 4096
MAX_WRITE = MAX_PAGES * PAGE_SIZE
MAX_READAHEAD = MAX_WRITE

#: What we offer at INIT (intersected with what the kernel offers).
BASE_FLAGS = (
    abi.FUSE_ASYNC_READ | abi.FUSE_BIG_WRITES | abi.FUSE_ATOMIC_O_TRUNC
    | abi.FUSE_EXPORT_SUPPORT | abi.FUSE_DONT_MASK | abi.FUSE_FLOCK_LOCKS
    | abi.FUSE_POSIX_LOCKS | abi.FUSE_DO_READDIRPLUS | abi.FUSE_READDIRPLUS_AUTO
    | abi.FUSE_ASYNC_DIO | abi.FUSE_PARALLEL_DIROPS | abi.FUSE_HANDLE_KILLPRIV_V2
    | abi.FUSE_MAX_PAGES | abi.FUSE_SUBMOUNTS | abi.FUSE_INIT_EXT
)


#: The smallest successful reply of opcodes whose success has effects the driver must
#: learn of (new node ids, lookup counts, bytes written, handles).
_ENTRY_REPLY = HEADER + abi.FUSE_ENTRY_OUT_SIZE
_MIN_REPLY: dict[int, int] = {
    Opcode.LOOKUP: _ENTRY_REPLY, Opcode.MKNOD: _ENTRY_REPLY, Opcode.MKDIR: _ENTRY_REPLY,
    Opcode.SYMLINK: _ENTRY_REPLY, Opcode.LINK: _ENTRY_REPLY,
    Opcode.CREATE: _ENTRY_REPLY + abi.fuse_open_out.size,
    Opcode.TMPFILE: _ENTRY_REPLY + abi.fuse_open_out.size,
    Opcode.OPEN: HEADER + abi.fuse_open_out.size, Opcode.OPENDIR: HEADER + abi.fuse_open_out.size,
    Opcode.WRITE: HEADER + abi.fuse_write_out.size,
    Opcode.COPY_FILE_RANGE: HEADER + abi.fuse_write_out.size,
    Opcode.SETATTR: HEADER + abi.FUSE_ATTR_OUT_SIZE,
    # No reply at all: a Linux guest sends these on the hiprio queue in chains with no
    # writable part. Requiring room for a header dropped every FORGET, so the inodes
    # of deleted files stayed open in the daemon (and their blocks allocated).
    Opcode.FORGET: 0, Opcode.BATCH_FORGET: 0, Opcode.INTERRUPT: 0,
}


@dataclass
class Deferred:
    """A request that may block (SETLKW): run ``run()`` off the event loop, send its result."""

    unique: int
    opcode: int
    run: Callable[[], bytes]
    #: called instead of ``run`` when the request is refused rather than parked (it
    #: may hold resources ``run`` would have released)
    cancel: Callable[[], None] = lambda: None


_INIT = int(Opcode.INIT)
#: Requests the kernel expects no answer to, even when serving them fails.
_NO_REPLY = (Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT)


Handler = Callable[[int, int, Ctx, "_Body", int], "bytes | Deferred | None"]
_NO_LIMIT = 1 << 32


class FuseSession:
    """One FUSE session (INIT .. DESTROY) over a tree.

    ``on_destroy()`` is called whenever the session ends (``end``: DESTROY, INIT, the
    transport gone), so a transport's C paths stop before the tree lets go of its fds.
    (Open handles need no hook: the tree's handle table is the one C reads.)
    """

    def __init__(self, tree: TreeOps, *, writeback: bool = False, posix_acl: bool = False,
                 posix_lock: bool = True, flock: bool = True,
                 on_destroy: Callable[[], None] | None = None) -> None:
        if writeback and not tree.writeback:
            raise ValueError("a writeback session needs a writeback tree (Tree(writeback=True)):"
                             " the kernel reads through write-only handles")
        self.tree = tree
        self.writeback = writeback
        self.posix_acl = posix_acl
        # virtiofsd's -o posix_lock/flock: locks the server keeps (host locks, seen by
        # host processes) or, when off, not offered at INIT: the guest kernel then
        # keeps them to itself, and a LK request sent anyway is ENOSYS.
        self.posix_lock = posix_lock
        self.flock = flock
        self.on_destroy = on_destroy
        #: called when INIT has begun a session (a transport's C paths may serve now)
        self.on_init: Callable[[], None] | None = None
        self.initialized = False
        self.minor = 0
        self.flags = 0  # negotiated (both words)
        self.max_write = MAX_WRITE
        self._ctxs: dict[tuple[int, int, int], Ctx] = {}  # Ctx is immutable: share them
        # The caller's ids in host ids (Tree.map_ctx, msbfs.tree.idmap), once per cached Ctx.
        self._map_ctx: Callable[[Ctx], Ctx] | None = getattr(tree, "map_ctx", None)
        handlers: dict[int, Handler] = {
            Opcode.LOOKUP: self._lookup, Opcode.FORGET: self._forget,
            Opcode.GETATTR: self._getattr, Opcode.SETATTR: self._setattr,
            Opcode.READLINK: self._readlink, Opcode.SYMLINK: self._symlink,
            Opcode.MKNOD: self._mknod, Opcode.MKDIR: self._mkdir,
            Opcode.UNLINK: self._unlink, Opcode.RMDIR: self._rmdir,
            Opcode.RENAME: self._rename, Opcode.RENAME2: self._rename2,
            Opcode.LINK: self._link, Opcode.OPEN: self._open, Opcode.READ: self._read,
            Opcode.WRITE: self._write, Opcode.STATFS: self._statfs,
            Opcode.RELEASE: self._release, Opcode.FSYNC: self._fsync,
            Opcode.SETXATTR: self._setxattr, Opcode.GETXATTR: self._getxattr,
            Opcode.LISTXATTR: self._listxattr, Opcode.REMOVEXATTR: self._removexattr,
            Opcode.FLUSH: self._flush, Opcode.OPENDIR: self._opendir,
            Opcode.READDIR: self._readdir, Opcode.READDIRPLUS: self._readdirplus,
            Opcode.RELEASEDIR: self._releasedir, Opcode.FSYNCDIR: self._fsyncdir,
            Opcode.GETLK: self._getlk, Opcode.SETLK: self._setlk, Opcode.SETLKW: self._setlkw,
            Opcode.ACCESS: self._access, Opcode.CREATE: self._create,
            Opcode.INTERRUPT: self._interrupt, Opcode.DESTROY: self._destroy,
            Opcode.BATCH_FORGET: self._batch_forget, Opcode.FALLOCATE: self._fallocate,
            Opcode.LSEEK: self._lseek, Opcode.COPY_FILE_RANGE: self._copy_file_range,
            Opcode.SYNCFS: self._syncfs, Opcode.TMPFILE: self._tmpfile,
        }
        # Indexed by opcode (a list, not a dict lookup plus a second one for the reply
        # floor): (handler, smallest reply room it needs before acting).
        self._table: list[tuple[Handler, int] | None] = [None] * (max(handlers) + 1)
        for op, h in handlers.items():
            self._table[op] = (h, _MIN_REPLY.get(op, HEADER))

    # ---- entry point ------------------------------------------------------------------
    def dispatch(self, request: bytes | bytearray | memoryview,
                 reply_room: int | None = None) -> bytes | Deferred | None:
        """Answer one request. See the module docstring for the contract."""
        buf = memoryview(request)
        if buf.format != "B" or buf.ndim != 1:
            buf = buf.cast("B")
        if len(buf) < IN_HEADER:
            if len(buf) >= 16:  # enough for a unique: say what was wrong
                unique = int.from_bytes(buf[8:16], "little")
                return error_reply(unique, errno.EINVAL)
            return None
        length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = _unpack_in(buf)
        if length != len(buf) or length < IN_HEADER + extlen * 8:
            return error_reply(unique, errno.EINVAL)
        # Extensions (security context, supplementary groups) trail the arguments; we
        # negotiate none of them, so they are cut off and ignored.
        body = _Body(buf, IN_HEADER, length - extlen * 8)
        if opcode == _INIT:
            try:
                return self._init(unique, body)
            except BadRequest:
                return error_reply(unique, errno.EINVAL)
        if not self.initialized:
            return error_reply(unique, errno.EIO)
        table = self._table
        entry = table[opcode] if opcode < len(table) else None
        if entry is None:
            return error_reply(unique, errno.ENOSYS)
        handler, min_reply = entry
        if reply_room is not None and reply_room < min_reply:
            # Refuse before acting: a WRITE done or a lookup counted whose answer cannot
            # be delivered would leave the driver and us disagreeing.
            return error_reply(unique, errno.EINVAL)
        room = _NO_LIMIT if reply_room is None else reply_room
        key = (uid, gid, pid)
        ctx = self._ctxs.get(key)
        if ctx is None:
            if len(self._ctxs) > 4096:
                self._ctxs.clear()
            ctx = Ctx(uid, gid, pid)
            if self._map_ctx is not None:
                ctx = self._map_ctx(ctx)
            self._ctxs[key] = ctx
        try:
            return handler(unique, nodeid, ctx, body, room)
        except BadRequest as e:
            log.debug("bad %s request: %s", opcode, e)
            return error_reply(unique, errno.EINVAL)
        except OSError as e:
            if opcode in _NO_REPLY:
                return None
            return error_reply(unique, e.errno if e.errno and 0 < e.errno < 4096 else errno.EIO)
        except Exception:
            log.exception("internal error serving opcode %d", opcode)
            if opcode in _NO_REPLY:
                return None
            return error_reply(unique, errno.EIO)

    # ---- session ----------------------------------------------------------------------
    def _init(self, unique: int, body: _Body) -> bytes:
        if body.remaining() < abi.FUSE_INIT_IN_COMPAT_SIZE:
            raise BadRequest("short init")
        if body.remaining() >= abi.fuse_init_in.size:
            major, minor, max_readahead, flags, flags2 = body.struct(abi.fuse_init_in)
        else:
            major, minor, max_readahead, flags = body.struct(abi.fuse_init_in_compat)
            flags2 = 0
        if major > abi.FUSE_KERNEL_VERSION:
            # Tell a newer kernel our major; it will send INIT again with ours.
            return _reply(unique, abi.fuse_init_out_compat.pack(abi.FUSE_KERNEL_VERSION,
                                                                abi.FUSE_KERNEL_MINOR_VERSION))
        if major < abi.FUSE_KERNEL_VERSION or minor < abi.FUSE_MIN_KERNEL_MINOR:
            log.error("kernel speaks FUSE %d.%d, we need 7.%d or later", major, minor,
                      abi.FUSE_MIN_KERNEL_MINOR)
            return error_reply(unique, errno.EPROTO)
        kernel = flags | ((flags2 << 32) if flags & abi.FUSE_INIT_EXT else 0)
        want = BASE_FLAGS
        if not self.posix_lock:
            want &= ~abi.FUSE_POSIX_LOCKS
        if not self.flock:
            want &= ~abi.FUSE_FLOCK_LOCKS
        if self.writeback:
            want |= abi.FUSE_WRITEBACK_CACHE
        if self.posix_acl:
            want |= abi.FUSE_POSIX_ACL | abi.FUSE_SETXATTR_EXT
        neg = kernel & want
        # A new INIT without DESTROY: the guest rebooted (or remounted after a crash).
        # The old session's node ids and handles mean nothing now: release them.
        self.end()
        self.minor = min(minor, abi.FUSE_KERNEL_MINOR_VERSION)
        self.flags = neg
        self.max_write = MAX_WRITE
        self.initialized = True
        if self.on_init is not None:
            self.on_init()
        out = abi.fuse_init_out.pack(
            abi.FUSE_KERNEL_VERSION, self.minor, min(max_readahead, MAX_READAHEAD),
            neg & 0xFFFFFFFF, 64, 48, self.max_write, 1, MAX_PAGES, 0,
            (neg >> 32) & 0xFFFFFFFF,
        )
        return _reply(unique, out)

    def end(self) -> None:
        """Release what the session held, if it had begun (DESTROY; INIT after INIT; the
        transport gone: device reset, frontend left); INIT is needed again."""
        if self.on_destroy is not None:
            self.on_destroy()
        if self.initialized:
            self.initialized = False
            self.tree.destroy()

    def _destroy(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        self.end()  # dispatch serves DESTROY only in an initialized session
        return _reply(unique)

    def _interrupt(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> None:
        # Every request but SETLKW is answered inline, so there is nothing to interrupt.
        return None

    # ---- inodes -----------------------------------------------------------------------
    def _lookup(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        name = body.name()
        return entry_reply(unique, self.tree.lookup(nodeid, name, ctx))

    def _forget(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> None:
        (n,) = body.struct(abi.fuse_forget_in)
        self.tree.forget(nodeid, n)
        return None

    def _batch_forget(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> None:
        (count,) = body.struct(abi.fuse_batch_forget_in)
        if count * abi.fuse_forget_one.size > body.remaining():
            raise BadRequest("batch forget count exceeds message")
        items = [body.struct(abi.fuse_forget_one) for _ in range(count)]
        self.tree.batch_forget(items)  # type: ignore[arg-type]
        return None

    def _getattr(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        flags, fh = body.struct(abi.fuse_getattr_in)
        attr, t = self.tree.getattr(nodeid, fh if flags & abi.FUSE_GETATTR_FH else None, ctx)
        return attr_reply(unique, attr, t)

    def _setattr(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        (valid, fh, size, lock_owner, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
         mode, uid, gid) = body.struct(abi.fuse_setattr_in)
        sa = SetAttr(valid=valid, fh=fh if valid & FATTR_FH else None, size=size,
                     atime_ns=_ns(atime, atimensec), mtime_ns=_ns(mtime, mtimensec),
                     ctime_ns=_ns(ctime, ctimensec), mode=mode, uid=uid, gid=gid,
                     lock_owner=lock_owner)
        attr, t = self.tree.setattr(nodeid, sa, ctx)
        return attr_reply(unique, attr, t)

    def _readlink(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        target = self.tree.readlink(nodeid, ctx)
        if len(target) > room - HEADER:
            raise OSError(errno.ENAMETOOLONG, "link target does not fit")
        return _reply(unique, target)

    # ---- namespace ----------------------------------------------------------------------
    def _symlink(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        name = body.name()
        target = body.name()
        return entry_reply(unique, self.tree.symlink(nodeid, name, target, ctx))

    def _mknod(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        mode, rdev, umask, _ = body.struct(abi.fuse_mknod_in)
        name = body.name()
        return entry_reply(unique, self.tree.mknod(nodeid, name, mode, rdev, umask, ctx))

    def _mkdir(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        mode, umask = body.struct(abi.fuse_mkdir_in)
        name = body.name()
        return entry_reply(unique, self.tree.mkdir(nodeid, name, mode, umask, ctx))

    def _unlink(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        self.tree.unlink(nodeid, body.name(), ctx)
        return _reply(unique)

    def _rmdir(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        self.tree.rmdir(nodeid, body.name(), ctx)
        return _reply(unique)

    def _rename(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        (newdir,) = body.struct(abi.fuse_rename_in)
        old = body.name()
        new = body.name()
        self.tree.rename(nodeid, old, newdir, new, 0, ctx)
        return _reply(unique)

    def _rename2(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        newdir, flags = body.struct(abi.fuse_rename2_in)
        old = body.name()
        new = body.name()
        self.tree.rename(nodeid, old, newdir, new, flags, ctx)
        return _reply(unique)

    def _link(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        (old,) = body.struct(abi.fuse_link_in)
        name = body.name()
        return entry_reply(unique, self.tree.link(old, nodeid, name, ctx))

    # ---- files ----------------------------------------------------------------------------
    def _open_flags(self, flags: int) -> int:
        # O_DIRECT is the guest's business with its own page cache; on the host it would
        # demand aligned buffers of every READ/WRITE (virtiofsd drops it by default too).
        # Writeback caching (the kernel reads pages of write-only files and does O_APPEND
        # itself) is the tree's to handle: it alone can fall back to a write-only open
        # when the caller may not read, and record the access mode the fd really has.
        return flags & ~os.O_DIRECT

    def _open(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        flags, open_flags = body.struct(abi.fuse_open_in)
        flags = self._open_flags(flags)
        o = self.tree.open(nodeid, flags, ctx,
                           kill_suidgid=bool(open_flags & abi.FUSE_OPEN_KILL_SUIDGID))
        return _reply(unique, encode_open(o))

    def _create(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        flags, mode, umask, open_flags = body.struct(abi.fuse_create_in)
        name = body.name()
        flags = self._open_flags(flags)
        entry, o = self.tree.create(nodeid, name, mode, flags, umask, ctx,
                                    kill_suidgid=bool(open_flags & abi.FUSE_OPEN_KILL_SUIDGID))
        return entry_reply(unique, entry, o)

    def _tmpfile(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        flags, mode, umask, _open_flags = body.struct(abi.fuse_create_in)
        flags = self._open_flags(flags)
        entry, o = self.tree.tmpfile(nodeid, mode, flags, umask, ctx)
        return entry_reply(unique, entry, o)

    def _read(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, offset, size, _rf, _lo, _flags = body.struct(abi.fuse_read_in)
        size = max(0, min(size, self.max_write, room - HEADER))
        if offset >= 1 << 63:
            raise OSError(errno.EINVAL, "offset")
        return _reply(unique, self.tree.read(fh, offset, size))

    def _write(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, offset, size, write_flags, _lo, _flags = body.struct(abi.fuse_write_in)
        if size != body.remaining():
            raise BadRequest("write size differs from payload")
        if offset >= 1 << 63:
            raise OSError(errno.EINVAL, "offset")
        data = body.take(size)
        n = self.tree.write(fh, offset, data, ctx,
                            kill_suidgid=bool(write_flags & abi.FUSE_WRITE_KILL_SUIDGID))
        return _reply(unique, abi.fuse_write_out.pack(n))

    def _statfs(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        s = self.tree.statfs(nodeid)
        return _reply(unique, abi.fuse_kstatfs.pack(s.blocks, s.bfree, s.bavail, s.files,
                                                     s.ffree, s.bsize, s.namelen, s.frsize))

    def _release(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, flags, release_flags, lock_owner = body.struct(abi.fuse_release_in)
        self.tree.release(fh, flags, lock_owner,
                          bool(release_flags & abi.FUSE_RELEASE_FLOCK_UNLOCK))
        return _reply(unique)

    def _fsync(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, fsync_flags = body.struct(abi.fuse_fsync_in)
        self.tree.fsync(fh, bool(fsync_flags & abi.FUSE_FSYNC_FDATASYNC))
        return _reply(unique)

    def _flush(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, lock_owner = body.struct(abi.fuse_flush_in)
        self.tree.flush(fh, lock_owner)
        return _reply(unique)

    def _fallocate(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, offset, length, mode = body.struct(abi.fuse_fallocate_in)
        if offset >= 1 << 63 or length >= 1 << 63:
            raise OSError(errno.EINVAL, "range")
        self.tree.fallocate(fh, mode, offset, length)
        return _reply(unique)

    def _lseek(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, offset, whence = body.struct(abi.fuse_lseek_in)
        if offset >= 1 << 63:
            raise OSError(errno.EINVAL, "offset")
        return _reply(unique, abi.fuse_lseek_out.pack(self.tree.lseek(fh, offset, whence)))

    def _copy_file_range(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh_in, off_in, _nodeid_out, fh_out, off_out, length, flags = body.struct(abi.fuse_copy_file_range_in)
        if off_in >= 1 << 63 or off_out >= 1 << 63:
            raise OSError(errno.EINVAL, "offset")
        n = self.tree.copy_file_range(fh_in, off_in, fh_out, off_out, min(length, 1 << 30), flags)
        return _reply(unique, abi.fuse_write_out.pack(n & 0xFFFFFFFF))

    # ---- locks ------------------------------------------------------------------------------
    def _lk(self, body: _Body) -> tuple[int, int, Lock, bool]:
        fh, owner, start, end, typ, pid, lk_flags = body.struct(abi.fuse_lk_in)
        is_flock = bool(lk_flags & abi.FUSE_LK_FLOCK)
        if not self.flags & (abi.FUSE_FLOCK_LOCKS if is_flock else abi.FUSE_POSIX_LOCKS):
            raise OSError(errno.ENOSYS, "lock kind not negotiated")
        return fh, owner, Lock(start, end, typ, pid), is_flock

    def _getlk(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, owner, lock, _ = self._lk(body)
        got = self.tree.getlk(fh, owner, lock)
        return _reply(unique, abi.fuse_file_lock.pack(got.start, got.end, got.type, got.pid))

    def _setlk(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, owner, lock, is_flock = self._lk(body)
        self.tree.setlk(fh, owner, lock, is_flock=is_flock)
        return _reply(unique)

    def _setlkw(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> Deferred:
        fh, owner, lock, is_flock = self._lk(body)
        # Resolved here, under the caller's serialization, not in ``run``: by the time
        # the worker runs, a RELEASE may have closed the handle's fd and an OPEN reused
        # its number (red-team finding 4; msbfs/tree/record_locks.py, the pin rule).
        waiter = self.tree.begin_setlkw(fh, owner, lock, is_flock=is_flock)

        def run() -> bytes:
            try:
                waiter.wait()
            except OSError as e:
                return error_reply(unique, e.errno or errno.EIO)
            except Exception:
                log.exception("internal error in SETLKW")
                return error_reply(unique, errno.EIO)
            return _reply(unique)

        return Deferred(unique, Opcode.SETLKW, run, waiter.cancel)

    # ---- directories --------------------------------------------------------------------------
    def _opendir(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        flags, _ = body.struct(abi.fuse_open_in)
        return _reply(unique, encode_open(self.tree.opendir(nodeid, flags, ctx)))

    def _releasedir(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, _flags, _rf, _lo = body.struct(abi.fuse_release_in)
        self.tree.releasedir(fh)
        return _reply(unique)

    def _fsyncdir(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        fh, fsync_flags = body.struct(abi.fuse_fsync_in)
        self.tree.fsyncdir(fh, bool(fsync_flags & abi.FUSE_FSYNC_FDATASYNC))
        return _reply(unique)

    def _readdir(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        return self._dirents(unique, body, room, None)

    def _readdirplus(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        def entry_out(d: DirEntry) -> bytes | None:
            if d.name in (b".", b".."):
                # No attributes (nodeid 0): the kernel makes no dentry from it.
                return abi.fuse_entry_out_head.pack(0, 0, 0, 0, 0, 0) + abi.fuse_attr.pack(
                    d.ino, 0, 0, 0, 0, 0, 0, 0, 0, d.type << 12, 0, 0, 0, 0, 0, 0)
            try:
                return encode_entry(self.tree.lookup(nodeid, d.name, ctx))
            except OSError:
                return None  # vanished since the listing: skip it

        return self._dirents(unique, body, room, entry_out)

    def _dirents(self, unique: int, body: _Body, room: int,
                 entry_out: Callable[[DirEntry], bytes | None] | None) -> bytes:
        """A READDIR reply, or with ``entry_out`` (each record's fuse_entry_out, None to
        skip the entry) a READDIRPLUS one: whole records while they fit."""
        fh, offset, size, _rf, _lo, _flags = body.struct(abi.fuse_read_in)
        size = max(0, min(size, room - HEADER, MAX_WRITE))
        plus = entry_out is not None
        parts: list[bytes] = []
        used = 0
        for d in self.tree.readdir(fh, offset):
            rec = abi.dirent_size(len(d.name), plus=plus)
            if used + rec > size:
                break  # checked before the lookup, so no lookup is counted for it
            raw = abi.fuse_dirent_head.pack(d.ino, d.off, len(d.name), d.type) + d.name
            if entry_out is not None:
                eout = entry_out(d)
                if eout is None:
                    continue
                raw = eout + raw
            parts.append(raw + b"\0" * (rec - len(raw)))
            used += rec
        return _reply(unique, *parts)

    # ---- whole filesystem -------------------------------------------------------------------------
    def _access(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        (mask,) = body.struct(abi.fuse_access_in)
        self.tree.access(nodeid, mask, ctx)
        return _reply(unique)

    def _syncfs(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        body.struct(abi.fuse_syncfs_in)
        self.tree.syncfs()
        return _reply(unique)

    # ---- xattrs ---------------------------------------------------------------------------------
    def _xattrs_off(self) -> None:
        """A tree without xattrs answers every xattr request ENOSYS, as virtiofsd does
        without -o xattr: the kernel remembers that (fc->no_getxattr and the like) and
        answers EOPNOTSUPP itself from then on. EOPNOTSUPP from us it does not remember:
        a guest's untar asked for security.capability twice per file (1,526 requests)."""
        if not getattr(self.tree, "xattr", True):
            raise OSError(errno.ENOSYS, "xattrs are off")

    def _setxattr(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        self._xattrs_off()
        if self.flags & abi.FUSE_SETXATTR_EXT:
            size, flags, _sxf, _ = body.struct(abi.fuse_setxattr_in)
        else:
            size, flags = body.struct(abi.fuse_setxattr_in_compat)
        name = body.name()
        if size != body.remaining():
            raise BadRequest("xattr size differs from payload")
        value = bytes(body.take(size))
        self.tree.setxattr(nodeid, name, value, flags, ctx)
        return _reply(unique)

    def _getxattr(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        self._xattrs_off()
        (size,) = body.struct(abi.fuse_getxattr_in)
        name = body.name()
        value = self.tree.getxattr(nodeid, name, size, ctx)
        if size == 0:
            return _reply(unique, abi.fuse_getxattr_out.pack(len(value)))
        if len(value) > size or len(value) > room - HEADER:
            raise OSError(errno.ERANGE, "xattr value larger than buffer")
        return _reply(unique, value)

    def _listxattr(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        self._xattrs_off()
        (size,) = body.struct(abi.fuse_getxattr_in)
        data = b"".join(n + b"\0" for n in self.tree.listxattr(nodeid, ctx))
        if size == 0:
            return _reply(unique, abi.fuse_getxattr_out.pack(len(data)))
        if len(data) > size or len(data) > room - HEADER:
            raise OSError(errno.ERANGE, "xattr list larger than buffer")
        return _reply(unique, data)

    def _removexattr(self, unique: int, nodeid: int, ctx: Ctx, body: _Body, room: int) -> bytes:
        self._xattrs_off()
        self.tree.removexattr(nodeid, body.name(), ctx)
        return _reply(unique)
