"""Glue of the C metadata path (csrc/fuse_meta.h) to a virtio-fs device: LOOKUP,
GETATTR (without a handle), FORGET, BATCH_FORGET, STATFS (no quota), FLUSH (no
record-lock description held) and READDIR(PLUS) (csrc/fuse_readdir.h) answered in C
from the tree's own inode table, with the tree's attribute shape; OPEN/OPENDIR/RELEASE/
RELEASEDIR/CREATE (csrc/fuse_handles.h) with the tree's open rules as msbfs/fastopen.py
compiles them.

One definition, two consumers: the shape written here is the tree's ``attr_shape`` (the
policy's ``AttrShape``), the timeout the tree's, split by the codec's own
``_split_timeout``, the open flags of a new name the tree's. A tree that applies a rule
C does not implement (``Tree.c_metadata`` returns None: an id map) or is not a
``Tree`` at all (a wrapper: its methods are the truth) gets no C path: every request
goes to Python as before.

UNLINK/RMDIR/MKDIR (no quota) and ACCESS too (csrc/fuse_names.h): the policy's decisions as
``Policy.c_decisions`` compiles them from its own rules, and the daemon's identity an
ACCESS switch restores, from the tree's ``Identities``. SETATTR of the mode, owners and
times (csrc/fuse_setattr.h) with the same decisions (msbfs/fastsetattr.py).
RENAME/RENAME2/READLINK/SYMLINK/LINK (csrc/fuse_names2.h) too (msbfs/fastnames2.py).

``MSBFS_C_METADATA=0`` turns the path off (benchmarks, differential tests); ``enabled``
does it for one device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from msbfs._native import ffi, lib
from msbfs.fastnames2 import names2_statistics, write_names2_rules
from msbfs.fastopen import open_statistics, write_open_rules
from msbfs.fastsetattr import setattr_statistics, write_setattr_rules
from msbfs.fastxattr import write_xattr_rules, xattr_statistics
from msbfs.fuse.replies import _split_timeout
from msbfs.tree.api import TreeOps
from msbfs.tree.tree import CMetaConfig, Tree


def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


def _write_names(n: Any, config: CMetaConfig) -> None:
    """UNLINK/RMDIR/ACCESS/MKDIR in C (csrc/fuse_names.h): the policy's decisions as the
    policy compiled them, Python's wherever a quota charges removals or the caller's
    identity is one C cannot restore as ``Identities`` does."""
    d = config.decisions
    n.mutation_errno = d.mutation
    if all(0 <= e < 256 for e in d.access):  # an errno the table cannot hold: Python's
        n.access_errno = list(d.access)
        n.access = 1
    n.remove = 0 if config.charged else 1
    ids = config.identities
    uid, gid, groups = ids.own
    n.own_uid, n.own_gid = uid, gid
    n.creds = (lib.MSB_NAMES_CREDS_OWN if not ids.enabled
               else lib.MSB_NAMES_CREDS_PYTHON if groups else lib.MSB_NAMES_CREDS_SWITCH)
    # the stored mode as the AND mask it is (MKDIR, CREATE, SETATTR's chmod), if it is one
    if d.stored_mask is not None:
        n.stored_mask = d.stored_mask
    # MKDIR: the creation rules of a tree without a quota (the charge), with a stored
    # mode C can apply; with POSIX ACLs, C asks the parent for a default ACL first (one
    # decides the mode instead of the umask: Python's, Tree._creation_mode)
    if not config.charged and d.stored_mask is not None:
        n.daemon_umask = config.umask
        n.acl_check = 1 if config.posix_acl else 0
        n.mkdir = 1


class CMetadata:
    """The C path of one device. Ready only between INIT and the session's end."""

    def __init__(self, table: Any, tree: TreeOps, open_flags: Callable[[int], int], *,
                 attach: bool = True) -> None:
        """``open_flags``: what the session does to a request's open flags (the
        virtio-fs codec's ``FuseSession._open_flags``); ``attach=False``: the C path is
        not the virtio-fs device's of the handle table (the host mount's relay serves it)."""
        config = tree.c_metadata() if type(tree) is Tree else None
        self._config = config  # keeps the inode table alive as long as the C path
        self._m = ffi.NULL
        self._inodes = ffi.NULL
        if config is None:
            return
        self._inodes = config.inodes.c
        m = ffi.gc(lib.msb_meta_new(config.inodes.c), lib.msb_meta_free)
        if m == ffi.NULL:
            raise MemoryError("metadata path")
        shape = config.shape
        m.root_dev = config.root_dev
        m.mode_mask = _u32(shape.mode_mask)
        m.squash_uid = -1 if shape.uid is None else _u32(shape.uid)
        m.squash_gid = -1 if shape.gid is None else _u32(shape.gid)
        m.hide_rdev = 1 if shape.hide_rdev else 0
        m.timeout_sec, m.timeout_nsec = _split_timeout(config.timeout)
        m.lookup_flags = config.lookup_flags
        m.resolve = config.resolve
        m.statfs = 1 if config.host_statfs else 0
        # FLUSH in C only while the tree holds no owner's lock description (the one
        # thing Tree.flush does besides close(dup(fd))); the count is kept current by
        # the tree's lock table itself, under its lock.
        m.lock_descs = len(config.locks)
        config.locks.on_count = self._lock_descs
        _write_names(lib.msb_meta_names(m), config)
        # OPEN/OPENDIR/RELEASE/RELEASEDIR (csrc/fuse_handles.h): the tree's open rules,
        # compiled by running them (msbfs/fastopen.py)
        assert type(tree) is Tree  # c_metadata is only asked of one
        write_open_rules(m, tree.c_open(), open_flags)
        # SETATTR of the mode and times (csrc/fuse_setattr.h): the decisions written
        # above (msbfs/fastsetattr.py)
        write_setattr_rules(m, config)
        # RENAME(2)/READLINK/SYMLINK/LINK (csrc/fuse_names2.h): the same decisions
        # (msbfs/fastnames2.py)
        write_names2_rules(m, config)
        # GETXATTR/LISTXATTR (csrc/fuse_xattr.h): the hot names' answers, compiled by
        # running the tree's own name rule (msbfs/fastxattr.py)
        write_xattr_rules(lib.msb_meta_xattr(m), tree)
        m.enabled = 1 if os.environ.get("MSBFS_C_METADATA", "1") != "0" else 0
        self._m = m
        self._table = table
        if attach:
            lib.msb_meta_attach(table, m)
        else:
            m.table = table  # the handles C opens and uses, without serving its queues

    def names_statistics(self) -> dict[str, int]:
        """What csrc/fuse_names.c answered (UNLINK, RMDIR, ACCESS, MKDIR)."""
        if not self.available:
            return {}
        s = ffi.new("struct msb_names_stats *")
        lib.msb_names_stats(self._m, s)
        return {k: int(getattr(s, k))
                for k in ("unlinks", "rmdirs", "accesses", "access_ns", "mkdirs")}

    def names2_statistics(self) -> dict[str, int]:
        """What csrc/fuse_names2.c answered (RENAME(2), READLINK, SYMLINK, LINK)."""
        return names2_statistics(self._m) if self.available else {}

    def open_statistics(self) -> dict[str, int]:
        """What csrc/fuse_handles.c answered (OPEN, OPENDIR, RELEASE, RELEASEDIR)."""
        return open_statistics(self._m) if self.available else {}

    def xattr_statistics(self) -> dict[str, int]:
        """What csrc/fuse_xattr.c answered (GETXATTR, LISTXATTR, ENOSYS without xattrs)."""
        return xattr_statistics(self._m) if self.available else {}

    def setattr_statistics(self) -> dict[str, int]:
        """What csrc/fuse_setattr.c answered (SETATTR of the mode and times)."""
        return setattr_statistics(self._m) if self.available else {}

    def _lock_descs(self, n: int) -> None:
        self._m.lock_descs = n

    @property
    def c(self) -> Any:
        """The ``struct msb_meta *`` (NULL when not available)."""
        return self._m

    @property
    def available(self) -> bool:
        """Whether this tree's requests can be answered in C at all."""
        return self._m != ffi.NULL

    @property
    def enabled(self) -> bool:
        return self.available and bool(self._m.enabled)

    @enabled.setter
    def enabled(self, on: bool) -> None:
        if self.available:
            self._m.enabled = 1 if on else 0

    def session_began(self) -> None:
        if self.available:
            lib.msb_meta_set_ready(self._m, 1)

    def session_ends(self) -> None:
        """Before the tree forgets its inodes (DESTROY, reset, INIT again): C answers
        nothing more; the caller's grace period then waits for rounds in flight."""
        if self.available:
            lib.msb_meta_set_ready(self._m, 0)

    @property
    def inodes(self) -> Any:
        """The C inode table (NULL when this tree has no C path), held by every slow
        request from start to end (msb_fs_slow_begin/end, csrc/fuse_datapath.h, which
        call csrc/inodes.h's msb_inodes_hold/unhold): inodes C forgets to zero on other
        queue threads meanwhile stay in the table until then. The tree was written for
        requests no FORGET cuts in half (a parent gone between two steps of a CREATE
        left its fds open)."""
        return self._inodes

    def statistics(self) -> dict[str, int]:
        if not self.available:
            return {}
        s = ffi.new("struct msb_meta_stats *")
        lib.msb_meta_stats(self._m, s)
        return {k: int(getattr(s, k)) for k in ("lookups", "lookup_ns", "lookups_new",
                                                 "getattrs", "getattr_ns", "forgets",
                                                 "handed", "statfs", "flushes",
                                                 "readdirs", "readdir_entries", "readdir_ns")}
