"""Stateful, model-checked fuzzing of the tree (issue 13, point 4).

``StatefulFs`` is a hypothesis ``RuleBasedStateMachine`` that drives one served tree
through a ``Front`` (the ``Tree`` called directly, or raw FUSE requests through a live
virtio-fs session) and performs every operation a second time natively, with plain
syscalls, on a twin directory populated the same way. The model keeps, per node id the
front handed out, an ``O_PATH`` fd of the twin's inode and the lookup count the client
owes; per handle, the twin's open fd. Operations pick their arguments among live node
ids, handles and existing names, so most of them are valid and succeed.

Permissions (msbfs/tree/tree.py "Permissions"): the client kernel checks its users'
permissions, the tree acts as the daemon. So the twin runs as root for every caller and
only ownership follows the caller: a new node belongs to the caller's uid, and to its
gid unless the parent is setgid (then the parent's gid), with the mode asked for.

After every step (invariant): the served directory and the twin are equal (names,
types, modes, owners, sizes, contents, link targets, nlink, xattrs); a sentinel
directory beside the root, which the symlinks the machine makes point into, is
unchanged; the process's fd count is at most the baseline plus what the model holds
open (inodes, handles, lock descriptions, the twin's own fds). At teardown the session
is destroyed and the fd count must be back to the baseline exactly.

``COUNTS[front][op] = [calls, successes]`` is filled as it runs; ``success_table`` and
``assert_deep`` report and judge it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import providers
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from msbfs._native import lib

from msbfs.tree import (
    FATTR_ATIME,
    FATTR_GID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_SIZE,
    FATTR_UID,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_ID,
    Ctx,
    Lock,
    SetAttr,
)
from msbfs.tree.types import OFFSET_MAX

# tests.plugins.tree is imported where used: plugins load in name order, and importing
# it here, before pytest registers it, would leave its asserts un-rewritten.


def fd_count() -> int:
    from tests.plugins.tree import fd_count
    return fd_count()

AT_EMPTY_PATH = 0x1000
CALLERS = (Ctx(0, 0), Ctx(1000, 1000), Ctx(1001, 1001))
NEW_NAMES = (b"a", b"b", b"c", b"d", b"e")
XATTRS = (b"user.a", b"user.b", b"user.c")
# Targets that lead into the sentinel, or above the root, if anything ever followed them.
TARGETS = (b"file", b"../outside", b"../outside/keep", b"../../", b"/etc/passwd", b"a/b")
MODES = (0o644, 0o600, 0o755, 0o700, 0o2775, 0o1777, 0o4755, 0o640)
OPEN_FLAGS = (os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_APPEND,
              os.O_RDWR | os.O_TRUNC, os.O_WRONLY | os.O_APPEND)
OWNERS = (1, 2, 3)
FALLOC_FL_KEEP_SIZE = 1

#: front -> op -> [calls, successes]
COUNTS: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))


class Attrs(NamedTuple):
    """What a front reports of a node, in the terms the twin's lstat gives."""

    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int


class Front(Protocol):
    """The served tree as a client reaches it. Node ids and handles are the front's."""

    def lookup(self, p: int, name: bytes, c: Ctx) -> tuple[int, Attrs]: ...
    def forget(self, n: int, k: int) -> None: ...
    def batch_forget(self, items: list[tuple[int, int]]) -> None: ...
    def getattr(self, n: int, c: Ctx) -> Attrs: ...
    def setattr(self, n: int, sa: SetAttr, c: Ctx) -> Attrs: ...
    def readlink(self, n: int, c: Ctx) -> bytes: ...
    def mknod(self, p: int, name: bytes, mode: int, umask: int, c: Ctx) -> tuple[int, Attrs]: ...
    def mkdir(self, p: int, name: bytes, mode: int, umask: int, c: Ctx) -> tuple[int, Attrs]: ...
    def symlink(self, p: int, name: bytes, target: bytes, c: Ctx) -> tuple[int, Attrs]: ...
    def link(self, n: int, p: int, name: bytes, c: Ctx) -> tuple[int, Attrs]: ...
    def unlink(self, p: int, name: bytes, c: Ctx) -> None: ...
    def rmdir(self, p: int, name: bytes, c: Ctx) -> None: ...
    def rename(self, p: int, name: bytes, np: int, newname: bytes, flags: int, c: Ctx) -> None: ...
    def create(self, p: int, name: bytes, mode: int, flags: int, umask: int,
               c: Ctx) -> tuple[int, Attrs, int]: ...
    def tmpfile(self, p: int, mode: int, flags: int, umask: int, c: Ctx) -> tuple[int, Attrs, int]: ...
    def open(self, n: int, flags: int, c: Ctx) -> int: ...
    def read(self, n: int, fh: int, off: int, size: int) -> bytes: ...
    def write(self, n: int, fh: int, off: int, data: bytes, c: Ctx) -> int: ...
    def fallocate(self, n: int, fh: int, mode: int, off: int, length: int) -> None: ...
    def copy_file_range(self, n: int, fh: int, off: int, n_out: int, fh_out: int,
                        off_out: int, length: int) -> int: ...
    def lseek(self, n: int, fh: int, off: int, whence: int) -> int: ...
    def flush(self, n: int, fh: int, owner: int) -> None: ...
    def release(self, n: int, fh: int) -> None: ...
    def getlk(self, n: int, fh: int, owner: int, lock: Lock) -> Lock: ...
    def setlk(self, n: int, fh: int, owner: int, lock: Lock) -> None: ...
    def opendir(self, n: int, c: Ctx) -> int: ...
    def readdir(self, n: int, fh: int) -> list[bytes]: ...
    def releasedir(self, n: int, fh: int) -> None: ...
    def statfs(self, n: int) -> tuple[int, int]: ...
    def setxattr(self, n: int, name: bytes, value: bytes, flags: int, c: Ctx) -> None: ...
    def getxattr(self, n: int, name: bytes, c: Ctx) -> bytes: ...
    def listxattr(self, n: int, c: Ctx) -> list[bytes]: ...
    def removexattr(self, n: int, name: bytes, c: Ctx) -> None: ...
    def destroy(self) -> None: ...


# ---- the twin: plain syscalls -------------------------------------------------------------
def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def _check(r: int) -> int:
    if r < 0:
        raise OSError(-r, os.strerror(-r))
    return r


def _attrs(s: os.stat_result) -> Attrs:
    return Attrs(s.st_mode, s.st_nlink, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns)


def _key(s: os.stat_result) -> tuple[int, int]:
    return s.st_dev, s.st_ino


def _kind(fd: int) -> int:
    return stat.S_IFMT(os.fstat(fd).st_mode)


def _run(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    try:
        return fn(), None
    except OSError as e:
        return None, e.errno


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a twin comparison looks at, per relative path (times excluded: each
    side writes at its own moment; directory sizes excluded: ext4 grows them by
    history)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            s = os.lstat(p)
            if stat.S_ISREG(s.st_mode):
                with open(p, "rb") as f:
                    body: Any = f.read()
            elif stat.S_ISLNK(s.st_mode):
                body = os.readlink(p)
            else:
                body = None
            xattrs = ()
            if not stat.S_ISLNK(s.st_mode):
                xattrs = tuple(sorted((n, os.getxattr(p, n, follow_symlinks=False))
                                      for n in os.listxattr(p, follow_symlinks=False)))
            out[os.path.relpath(p, root)] = (
                s.st_mode, s.st_uid, s.st_gid, s.st_nlink,
                None if stat.S_ISDIR(s.st_mode) else s.st_size, body, xattrs)
    return out


def sentinel_state(base: Path) -> tuple[Any, ...]:
    """The sentinel beside the root and the names of the root's parent, with times."""
    out = snapshot(base / "outside")
    times = {k: os.lstat(base / "outside" / k).st_mtime_ns for k in out}
    return tuple(sorted(os.listdir(base))), out, times, os.listxattr(base / "outside")


# ---- the lock model -------------------------------------------------------------------
# Lock ranges start in 0..7 and end in start..7 or OFFSET_MAX; so bytes 0..7 and the
# tail [8, inf) are the only units any lock can split, and a list of 9 buckets per owner
# and node says everything (POSIX merges and splits fall out of it).
_TAIL = 8


def _buckets(lock: Lock) -> range:
    return range(lock.start, _TAIL + 1 if lock.end == OFFSET_MAX else lock.end + 1)


_LOCK_ARGS = {"i": st.integers(0, 1 << 16), "owner": st.sampled_from(OWNERS),
              "start": st.integers(0, 7), "span": st.integers(0, 7), "to_end": st.booleans()}


def _conflicts(mine: int, theirs: int | None) -> bool:
    return theirs is not None and (mine == fcntl.F_WRLCK or theirs == fcntl.F_WRLCK)


@dataclass
class NodeRef:
    fd: int  # the twin's O_PATH fd of the same inode
    key: tuple[int, int]
    count: int = 1


@dataclass
class HandleRef:
    node: int
    fd: int  # the twin's open fd
    acc: int
    is_dir: bool


@dataclass
class World:
    base: Path
    native: Path
    served: Path
    front: Front
    close: Callable[[], None]
    locks: dict[int, dict[int, list[int | None]]] = field(default_factory=dict)


class StatefulFs(RuleBasedStateMachine):
    """Subclasses set ``front_name`` and implement ``open_front(served) -> (front, close)``."""

    front_name = "tree"

    def open_front(self, served: Path) -> tuple[Front, Callable[[], None]]:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        base = Path(tempfile.mkdtemp(prefix="msbfs-stateful-"))
        os.chmod(base, 0o755)
        (base / "outside").mkdir()
        (base / "outside" / "keep").write_bytes(b"keep")
        native, served = base / "native", base / "served"
        from tests.plugins.tree import populate
        for d in (native, served):
            d.mkdir()
            populate(d)
            # Every example starts with xattrs to get and remove, the root's from the
            # first step: whether those calls succeed in a short run must not hang on
            # the draw having set one first (one draw never removed any: 0 of 114).
            for p in (d, d / "file", d / "sub"):
                os.setxattr(p, XATTRS[0], b"seed")
        self.sentinel = sentinel_state(base)
        self.base_fds = fd_count()
        front, close = self.open_front(served)
        self.w = World(base, native, served, front, close)
        rootfd = os.open(native, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.nodes: dict[int, NodeRef] = {ROOT_ID: NodeRef(rootfd, _key(os.fstat(rootfd)), 1 << 30)}
        self.handles: dict[int, HandleRef] = {}
        self.lock_descs: set[tuple[int, int]] = set()
        # Everything the session opened for itself is in the baseline; the twin's root fd
        # is counted with the model's fds.
        self.base_fds = fd_count() - 1
        self.counts = COUNTS[self.front_name]
        self.torn_down = False

    # ---- bookkeeping --------------------------------------------------------------------
    def both(self, op: str, served: Callable[[], Any], native: Callable[[], Any]) -> tuple[Any, Any] | None:
        """Run one operation on both sides: same outcome or the test fails. Returns the
        two results when both succeeded, None when both failed alike."""
        s, s_err = _run(served)
        n, n_err = _run(native)
        c = self.counts[op]
        c[0] += 1
        if s_err is None:
            c[1] += 1
        if (s_err, n_err) == (None, None):
            return s, n
        from tests.plugins.tree import errname
        if s_err is None and n is not None:
            self._drop_native(n)
        if n_err is None and s is not None:
            self._drop_served(op, s)
        assert s_err == n_err, f"{op}: served {errname(s_err)}, native {errname(n_err)}"
        return None

    @staticmethod
    def _drop_native(n: Any) -> None:
        for fd in (n if isinstance(n, tuple) else (n,)):
            if isinstance(fd, int) and fd >= 0:
                os.close(fd)

    def _drop_served(self, op: str, s: Any) -> None:
        # Keep the front consistent before the assertion reports the difference.
        if isinstance(s, tuple) and len(s) >= 2 and isinstance(s[1], Attrs):
            self.w.front.forget(s[0], 1)

    def native_fds(self) -> int:
        return len(self.nodes) + len(self.handles)

    def adopt(self, nodeid: int, nfd: int, attrs: Attrs) -> None:
        """A node id the front just counted a lookup of, and the twin's O_PATH fd of
        the inode it must be: same inode as the id had before, no other id for it, and
        the attributes the front reports are the twin's."""
        s = os.fstat(nfd)
        ref = self.nodes.get(nodeid)
        if ref is not None:
            os.close(nfd)
            assert ref.key == _key(s), f"node {nodeid} now names another inode"
            ref.count += 1
        else:
            others = [n for n, r in self.nodes.items() if r.key == _key(s)]
            if others:
                os.close(nfd)
                raise AssertionError(f"node {nodeid} and {others} name one inode")
            self.nodes[nodeid] = NodeRef(nfd, _key(s))
        self.check_attrs(attrs, s)

    @staticmethod
    def check_attrs(a: Attrs, s: os.stat_result) -> None:
        want = _attrs(s)
        got = (a.mode, a.nlink, a.uid, a.gid)
        assert got == want[:4], f"reported {oct(a.mode)} {got[1:]}, twin {oct(s.st_mode)} {want[1:4]}"
        if not stat.S_ISDIR(s.st_mode):
            assert a.size == s.st_size, f"reported size {a.size}, twin {s.st_size}"

    def pick(self, seq: list[Any], i: int) -> Any:
        return seq[i % len(seq)]

    def node_of_kind(self, i: int, *kinds: int) -> int | None:
        ids = sorted(n for n, r in self.nodes.items() if not kinds or _kind(r.fd) in kinds)
        return self.pick(ids, i) if ids else None

    def names_in(self, node: int) -> list[bytes]:
        try:
            return sorted(os.fsencode(n) for n in os.listdir(_proc(self.nodes[node].fd)))
        except OSError:
            return []

    def existing_name(self, node: int, i: int) -> bytes:
        names = self.names_in(node) or [b"missing"]
        return self.pick(names, i)

    def free_name(self, node: int, i: int) -> bytes:
        """A name of NEW_NAMES not taken in ``node``, mostly (one in eight: any of them,
        so EEXIST stays reachable)."""
        taken = set(self.names_in(node))
        free = [n for n in NEW_NAMES if n not in taken]
        return self.pick(free, i) if free and i % 8 else self.pick(list(NEW_NAMES), i)

    def xattr_name(self, node: int, i: int) -> bytes:
        """Mostly an xattr the twin's node has (get/remove then mostly succeed)."""
        try:
            have = sorted(os.fsencode(x) for x in os.listxattr(_proc(self.nodes[node].fd)))
        except OSError:
            have = []
        # i % 4 != 3, not i % 4: hypothesis draws small numbers (0) most, and those must
        # lead to a name that is there, or get/remove rarely succeed in a short run
        return self.pick(have, i) if have and i % 4 != 3 else self.pick(list(XATTRS), i)

    def new_owner(self, pfd: int, name: bytes, c: Ctx, mode: int | None) -> None:
        """What the tree's creating ops give a new node: the caller as owner (the
        parent's group under a setgid parent) and exactly the mode asked for."""
        ps = os.fstat(pfd)
        gid = ps.st_gid if ps.st_mode & stat.S_ISGID else c.gid
        os.chown(name, c.uid, gid, dir_fd=pfd, follow_symlinks=False)
        if mode is not None:
            s = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            inherit = s.st_mode & stat.S_ISGID if stat.S_ISDIR(s.st_mode) else 0
            os.chmod(name, mode | inherit, dir_fd=pfd)

    def lookup_native(self, pfd: int, name: bytes) -> int:
        if name == b".." and _key(os.fstat(pfd)) == self.nodes[ROOT_ID].key:
            name = b"."  # the root's parent is the root
        return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)

    # ---- inodes -------------------------------------------------------------------------
    @rule(p=st.integers(0, 1 << 16), i=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS),
          dots=st.sampled_from([None] * 8 + [b".", b"..", b"missing"]))
    def lookup(self, p: int, i: int, c: Ctx, dots: bytes | None) -> None:
        parent = self.node_of_kind(p, stat.S_IFDIR)
        assert parent is not None  # the root is always live
        name = dots or self.existing_name(parent, i)
        pfd = self.nodes[parent].fd
        r = self.both("lookup", lambda: self.w.front.lookup(parent, name, c),
                      lambda: self.lookup_native(pfd, name))
        if r:
            (nodeid, attrs), nfd = r
            self.adopt(nodeid, nfd, attrs)

    @precondition(lambda self: len(self.nodes) > 1)
    @rule(i=st.integers(0, 1 << 16), all_of=st.booleans(), batch=st.booleans())
    def forget(self, i: int, all_of: bool, batch: bool) -> None:
        # As the kernel: never the root, never an inode it holds open files of.
        busy = {h.node for h in self.handles.values()}
        ids = sorted(n for n in self.nodes if n != ROOT_ID and n not in busy)
        if not ids:
            return
        n = self.pick(ids, i)
        ref = self.nodes[n]
        k = ref.count if all_of else 1 + i % ref.count
        op = "batch_forget" if batch else "forget"
        self.both(op, (lambda: self.w.front.batch_forget([(n, k)])) if batch
                  else (lambda: self.w.front.forget(n, k)), lambda: None)
        ref.count -= k
        if ref.count == 0:
            os.close(ref.fd)
            del self.nodes[n]

    @rule(i=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS))
    def getattr(self, i: int, c: Ctx) -> None:
        n = self.node_of_kind(i)
        assert n is not None
        r = self.both("getattr", lambda: self.w.front.getattr(n, c),
                      lambda: os.fstat(self.nodes[n].fd))
        if r:
            self.check_attrs(*r)

    @rule(i=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS),
          what=st.sampled_from(["mode", "size", "times", "chown", "chown+size"]),
          mode=st.sampled_from(MODES), size=st.sampled_from([0, 1, 5, 4096, 70000]),
          t=st.integers(0, 2_000_000_000_000_000_000))
    def setattr(self, i: int, c: Ctx, what: str, mode: int, size: int, t: int) -> None:
        kinds = ((stat.S_IFREG,) if "size" in what else (stat.S_IFREG, stat.S_IFDIR)
                 if what == "mode" else ())
        n = self.node_of_kind(i, *kinds)
        if n is None:
            return
        fd = self.nodes[n].fd
        valid = {"mode": FATTR_MODE, "size": FATTR_SIZE, "times": FATTR_ATIME | FATTR_MTIME,
                 "chown": FATTR_UID | FATTR_GID,
                 "chown+size": FATTR_UID | FATTR_GID | FATTR_SIZE}[what]
        sa = SetAttr(valid=valid, size=size, atime_ns=t, mtime_ns=t, mode=mode,
                     uid=c.uid, gid=c.gid)

        def native() -> os.stat_result:
            if valid & FATTR_MODE:
                os.chmod(_proc(fd), mode)
            if valid & FATTR_UID:
                _check(lib.msb_fchownat(fd, b"", c.uid, c.gid, AT_EMPTY_PATH))
            if valid & FATTR_SIZE:
                os.truncate(_proc(fd), size)
            if valid & FATTR_MTIME:
                sec, ns = divmod(t, 1_000_000_000)
                _check(lib.msb_utimensat(fd, b"", sec, ns, sec, ns, AT_EMPTY_PATH))
            return os.fstat(fd)

        r = self.both("setattr", lambda: self.w.front.setattr(n, sa, c), native)
        if r:
            self.check_attrs(*r)
            if valid & FATTR_MTIME:
                assert r[0].mtime_ns == r[1].st_mtime_ns == t

    @rule(i=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS))
    def readlink(self, i: int, c: Ctx) -> None:
        n = self.node_of_kind(i, *(() if i % 8 == 0 else (stat.S_IFLNK,)))
        if n is None:
            return
        def native() -> bytes:
            fd = self.nodes[n].fd
            if _kind(fd) != stat.S_IFLNK:
                raise OSError(errno.EINVAL, "not a symlink")  # readlink(2) of its path
            return os.readlink(b"", dir_fd=fd)

        r = self.both("readlink", lambda: self.w.front.readlink(n, c), native)
        if r:
            assert r[0] == r[1]

    # ---- namespace ----------------------------------------------------------------------
    def _creating(self, op: str, p: int, j: int, c: Ctx,
                  served: Callable[[int, bytes], tuple[int, Attrs]],
                  make: Callable[[int, bytes], None], mode: int | None) -> None:
        parent = self.node_of_kind(p, stat.S_IFDIR)
        assert parent is not None
        pfd = self.nodes[parent].fd
        name = self.free_name(parent, j)

        def native() -> int:
            make(pfd, name)
            self.new_owner(pfd, name, c, mode)
            return self.lookup_native(pfd, name)

        r = self.both(op, lambda: served(parent, name), native)
        if r:
            (nodeid, attrs), nfd = r
            self.adopt(nodeid, nfd, attrs)

    @rule(p=st.integers(0, 1 << 16), j=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS),
          mode=st.sampled_from(MODES), umask=st.sampled_from([0, 0o022, 0o077]),
          fifo=st.booleans())
    def mknod(self, p: int, j: int, c: Ctx, mode: int, umask: int, fifo: bool) -> None:
        kind = stat.S_IFIFO if fifo else stat.S_IFREG
        want = mode & ~umask & 0o7777
        self._creating("mknod", p, j, c,
                       lambda parent, name: self.w.front.mknod(parent, name, kind | mode, umask, c),
                       lambda pfd, name: os.mknod(name, kind | 0o600, 0, dir_fd=pfd), want)

    @rule(p=st.integers(0, 1 << 16), j=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS),
          mode=st.sampled_from(MODES), umask=st.sampled_from([0, 0o022, 0o077]))
    def mkdir(self, p: int, j: int, c: Ctx, mode: int, umask: int) -> None:
        want = mode & ~umask & 0o1777
        self._creating("mkdir", p, j, c,
                       lambda parent, name: self.w.front.mkdir(parent, name, mode, umask, c),
                       lambda pfd, name: os.mkdir(name, 0o700, dir_fd=pfd), want)

    @rule(p=st.integers(0, 1 << 16), j=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS),
          to=st.sampled_from(TARGETS))
    def symlink(self, p: int, j: int, c: Ctx, to: bytes) -> None:
        self._creating("symlink", p, j, c,
                       lambda parent, name: self.w.front.symlink(parent, name, to, c),
                       lambda pfd, name: os.symlink(to, name, dir_fd=pfd), None)

    @rule(i=st.integers(0, 1 << 16), p=st.integers(0, 1 << 16), j=st.integers(0, 1 << 16),
          c=st.sampled_from(CALLERS))
    def link(self, i: int, p: int, j: int, c: Ctx) -> None:
        n = self.node_of_kind(i, *(() if i % 8 == 0 else (stat.S_IFREG, stat.S_IFLNK, stat.S_IFIFO)))
        parent = self.node_of_kind(p, stat.S_IFDIR)
        if n is None or parent is None:
            return
        fd, pfd = self.nodes[n].fd, self.nodes[parent].fd
        name = self.free_name(parent, j)

        def native() -> int:
            os.link(_proc(fd), name, dst_dir_fd=pfd, follow_symlinks=True)
            return self.lookup_native(pfd, name)

        r = self.both("link", lambda: self.w.front.link(n, parent, name, c), native)
        if r:
            (nodeid, attrs), nfd = r
            assert nodeid == n, "link answered another node id than the linked inode's"
            self.adopt(nodeid, nfd, attrs)

    @rule(p=st.integers(0, 1 << 16), i=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS))
    def unlink(self, p: int, i: int, c: Ctx) -> None:
        parent = self.node_of_kind(p, stat.S_IFDIR)
        assert parent is not None
        pfd = self.nodes[parent].fd
        names = [m for m in self.names_in(parent)
                 if not stat.S_ISDIR(os.stat(m, dir_fd=pfd, follow_symlinks=False).st_mode)]
        name = self.pick(names, i) if names and i % 8 else self.existing_name(parent, i)
        self.both("unlink", lambda: self.w.front.unlink(parent, name, c),
                  lambda: os.unlink(name, dir_fd=pfd))

    @rule(p=st.integers(0, 1 << 16), i=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS))
    def rmdir(self, p: int, i: int, c: Ctx) -> None:
        parent = self.node_of_kind(p, stat.S_IFDIR)
        assert parent is not None
        pfd = self.nodes[parent].fd
        empty = [m for m in self.names_in(parent)
                 if stat.S_ISDIR(os.stat(m, dir_fd=pfd, follow_symlinks=False).st_mode)
                 and not os.listdir(os.path.join(_proc(pfd), os.fsdecode(m)))]
        name = self.pick(empty, i) if empty and i % 4 else self.existing_name(parent, i)
        self.both("rmdir", lambda: self.w.front.rmdir(parent, name, c),
                  lambda: os.rmdir(name, dir_fd=pfd))

    @rule(p=st.integers(0, 1 << 16), i=st.integers(0, 1 << 16), q=st.integers(0, 1 << 16),
          j=st.integers(0, 1 << 16), fresh=st.booleans(), c=st.sampled_from(CALLERS),
          flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, p: int, i: int, q: int, j: int, fresh: bool, c: Ctx, flags: int) -> None:
        parent = self.node_of_kind(p, stat.S_IFDIR)
        newparent = self.node_of_kind(q, stat.S_IFDIR)
        assert parent is not None and newparent is not None
        name = self.existing_name(parent, i)
        # NOREPLACE wants a free name, EXCHANGE an existing one.
        free = flags != RENAME_EXCHANGE and (fresh or flags == RENAME_NOREPLACE)
        newname = self.pick(list(NEW_NAMES), j) if free else self.existing_name(newparent, j)
        pfd, npfd = self.nodes[parent].fd, self.nodes[newparent].fd
        self.both("rename", lambda: self.w.front.rename(parent, name, newparent, newname, flags, c),
                  lambda: _check(lib.msb_renameat2(pfd, name, npfd, newname, flags)))

    # ---- files --------------------------------------------------------------------------
    def _adopt_handle(self, fh: int, node: int, fd: int, flags: int, is_dir: bool) -> None:
        assert fh not in self.handles, f"handle {fh} handed out twice"
        self.handles[fh] = HandleRef(node, fd, flags & os.O_ACCMODE, is_dir)

    @rule(p=st.integers(0, 1 << 16), j=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS),
          mode=st.sampled_from(MODES), umask=st.sampled_from([0, 0o022]),
          flags=st.sampled_from([os.O_RDWR, os.O_RDWR, os.O_WRONLY, os.O_RDONLY,
                                 os.O_RDWR | os.O_EXCL, os.O_RDWR | os.O_TRUNC]))
    def create(self, p: int, j: int, c: Ctx, mode: int, umask: int, flags: int) -> None:
        parent = self.node_of_kind(p, stat.S_IFDIR)
        assert parent is not None
        pfd = self.nodes[parent].fd
        # Half the time an existing name: CREATE then opens what is there (or EEXIST).
        name = self.free_name(parent, j) if j % 2 else self.existing_name(parent, j // 2)

        def native() -> tuple[int, int]:
            try:
                existing = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                existing = None
            if existing and stat.S_ISLNK(existing.st_mode) and not flags & os.O_EXCL:
                # O_CREAT | O_NOFOLLOW on a symlink. Natively, in a sticky world-writable
                # directory, the protected_symlinks sysctl may answer EACCES first; the
                # tree never follows a link, so that rule is not one it has to keep.
                raise OSError(errno.ELOOP, "a symlink")
            extra = os.O_NONBLOCK if existing and stat.S_ISFIFO(existing.st_mode) else 0
            fd = os.open(name, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | extra,
                         0o600, dir_fd=pfd)
            try:
                if existing is None:
                    self.new_owner(pfd, name, c, mode & ~umask & 0o7777)
                return fd, os.open(_proc(fd), os.O_PATH | os.O_CLOEXEC)
            except BaseException:
                os.close(fd)
                raise

        r = self.both("create", lambda: self.w.front.create(parent, name, mode, flags, umask, c),
                      native)
        if r:
            (nodeid, attrs, fh), (fd, nfd) = r
            self._adopt_handle(fh, nodeid, fd, flags, False)
            self.adopt(nodeid, nfd, attrs)

    @rule(p=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS), mode=st.sampled_from(MODES))
    def tmpfile(self, p: int, c: Ctx, mode: int) -> None:
        parent = self.node_of_kind(p, stat.S_IFDIR)
        assert parent is not None
        pfd = self.nodes[parent].fd
        want = mode & ~0o022 & 0o7777

        def native() -> tuple[int, int]:
            fd = os.open(_proc(pfd), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            ps = os.fstat(pfd)
            os.fchown(fd, c.uid, ps.st_gid if ps.st_mode & stat.S_ISGID else c.gid)
            os.fchmod(fd, want)
            return fd, os.open(_proc(fd), os.O_PATH | os.O_CLOEXEC)

        r = self.both("tmpfile", lambda: self.w.front.tmpfile(parent, mode, os.O_RDWR, 0o022, c),
                      native)
        if r:
            (nodeid, attrs, fh), (fd, nfd) = r
            self._adopt_handle(fh, nodeid, fd, os.O_RDWR, False)
            self.adopt(nodeid, nfd, attrs)

    @rule(i=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS), flags=st.sampled_from(OPEN_FLAGS))
    def open(self, i: int, c: Ctx, flags: int) -> None:
        n = self.node_of_kind(i, *((stat.S_IFIFO,) if i % 8 == 0 else (stat.S_IFREG,)))
        if n is None:
            return
        nfd = self.nodes[n].fd
        if _kind(nfd) == stat.S_IFIFO:
            flags = os.O_RDONLY if flags & os.O_ACCMODE == os.O_RDONLY else flags
            extra = os.O_NONBLOCK
        else:
            extra = 0
        r = self.both("open", lambda: self.w.front.open(n, flags, c),
                      lambda: os.open(_proc(nfd), flags | extra | os.O_CLOEXEC))
        if r:
            self._adopt_handle(r[0], n, r[1], flags, False)

    def file_handle(self, i: int, readable: bool = False, writable: bool = False,
                    rdwr: bool = False) -> int | None:
        ok = []
        for fh, h in sorted(self.handles.items()):
            if h.is_dir or _kind(h.fd) != stat.S_IFREG:
                continue
            if rdwr and h.acc != os.O_RDWR:
                continue
            if (readable and h.acc == os.O_WRONLY) or (writable and h.acc == os.O_RDONLY):
                continue
            ok.append(fh)
        return self.pick(ok, i) if ok else None

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1 << 16), off=st.integers(0, 8192), size=st.integers(0, 9000))
    def read(self, i: int, off: int, size: int) -> None:
        fh = self.file_handle(i, readable=True)
        if fh is None:
            return
        h = self.handles[fh]
        r = self.both("read", lambda: self.w.front.read(h.node, fh, off, size),
                      lambda: os.pread(h.fd, size, off))
        if r:
            assert r[0] == r[1], "read differs from the twin's bytes"

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1 << 16), off=st.integers(0, 8192), data=st.binary(min_size=1, max_size=300),
          c=st.sampled_from(CALLERS))
    def write(self, i: int, off: int, data: bytes, c: Ctx) -> None:
        fh = self.file_handle(i, writable=True)
        if fh is None:
            return
        h = self.handles[fh]
        r = self.both("write", lambda: self.w.front.write(h.node, fh, off, data, c),
                      lambda: os.pwrite(h.fd, data, off))
        if r:
            assert r[0] == r[1] == len(data)

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1 << 16), off=st.integers(0, 8192), length=st.integers(1, 20000),
          keep=st.booleans())
    def fallocate(self, i: int, off: int, length: int, keep: bool) -> None:
        fh = self.file_handle(i, writable=True)
        if fh is None:
            return
        h = self.handles[fh]
        mode = FALLOC_FL_KEEP_SIZE if keep else 0
        self.both("fallocate", lambda: self.w.front.fallocate(h.node, fh, mode, off, length),
                  lambda: _check(lib.msb_fallocate(h.fd, mode, off, length)))

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1 << 16), j=st.integers(0, 1 << 16), off=st.integers(0, 100),
          off_out=st.integers(0, 5000), length=st.integers(0, 5000))
    def copy_file_range(self, i: int, j: int, off: int, off_out: int, length: int) -> None:
        src, dst = self.file_handle(i, readable=True), self.file_handle(j, writable=True)
        if src is None or dst is None:
            return
        hs, hd = self.handles[src], self.handles[dst]
        r = self.both("copy_file_range",
                      lambda: self.w.front.copy_file_range(hs.node, src, off, hd.node, dst,
                                                           off_out, length),
                      lambda: os.copy_file_range(hs.fd, hd.fd, length, off, off_out))
        if r:
            assert r[0] == r[1]

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1 << 16), off=st.integers(0, 9000),
          whence=st.sampled_from([os.SEEK_SET, os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE]))
    def lseek(self, i: int, off: int, whence: int) -> None:
        fh = self.file_handle(i)
        if fh is None:
            return
        h = self.handles[fh]
        r = self.both("lseek", lambda: self.w.front.lseek(h.node, fh, off, whence),
                      lambda: os.lseek(h.fd, off, whence))
        if r:
            assert r[0] == r[1]

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1 << 16), owner=st.sampled_from(OWNERS))
    def flush(self, i: int, owner: int) -> None:
        files = sorted(fh for fh, h in self.handles.items() if not h.is_dir)
        if not files:
            return
        fh = self.pick(files, i)
        h = self.handles[fh]
        self.both("flush", lambda: self.w.front.flush(h.node, fh, owner), lambda: None)
        # The owner closed the file: its POSIX locks on it are gone, with their description.
        for buckets in (self.w.locks.get(h.node, {}).get(owner),):
            if buckets is not None:
                buckets[:] = [None] * (_TAIL + 1)
        self.lock_descs.discard((h.node, owner))

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1 << 16))
    def release(self, i: int) -> None:
        files = sorted(fh for fh, h in self.handles.items() if not h.is_dir)
        if not files:
            return
        fh = self.pick(files, i)
        h = self.handles.pop(fh)
        self.both("release", lambda: self.w.front.release(h.node, fh), lambda: os.close(h.fd))

    # ---- locks: POSIX record locks on read-write handles (see the bucket model) ----------
    def _lock_args(self, i: int, start: int, span: int, to_end: bool,
                   typ: int) -> tuple[int, HandleRef, Lock] | None:
        fh = self.file_handle(i, rdwr=True)
        if fh is None:
            return None
        end = OFFSET_MAX if to_end else min(start + span, _TAIL - 1)
        return fh, self.handles[fh], Lock(start, end, typ)

    def _holders(self, node: int, owner: int, lock: Lock, typ: int) -> list[int]:
        """The types of other owners' locks that conflict with ``typ`` over ``lock``."""
        out = []
        for o, buckets in self.w.locks.get(node, {}).items():
            if o != owner:
                out += [b for b in (buckets[k] for k in _buckets(lock)) if _conflicts(typ, b)]
        return out

    @precondition(lambda self: self.handles)
    @rule(**_LOCK_ARGS, typ=st.sampled_from([fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK]))
    def setlk(self, i: int, owner: int, start: int, span: int, to_end: bool, typ: int) -> None:
        args = self._lock_args(i, start, span, to_end, typ)
        if args is None:
            return
        fh, h, lock = args
        conflict = typ != fcntl.F_UNLCK and self._holders(h.node, owner, lock, typ)

        def model() -> None:
            if conflict:
                raise OSError(errno.EAGAIN, "held by another owner")

        self.both("setlk", lambda: self.w.front.setlk(h.node, fh, owner, lock), model)
        if typ != fcntl.F_UNLCK:
            self.lock_descs.add((h.node, owner))
        if not conflict:
            buckets = self.w.locks.setdefault(h.node, {}).setdefault(owner, [None] * (_TAIL + 1))
            for k in _buckets(lock):
                buckets[k] = None if typ == fcntl.F_UNLCK else typ

    @precondition(lambda self: self.handles)
    @rule(**_LOCK_ARGS, typ=st.sampled_from([fcntl.F_RDLCK, fcntl.F_WRLCK]))
    def getlk(self, i: int, owner: int, start: int, span: int, to_end: bool, typ: int) -> None:
        args = self._lock_args(i, start, span, to_end, typ)
        if args is None:
            return
        fh, h, lock = args
        holders = self._holders(h.node, owner, lock, typ)
        r = self.both("getlk", lambda: self.w.front.getlk(h.node, fh, owner, lock), lambda: holders)
        if r:
            got = r[0]
            if not holders:
                assert got.type == fcntl.F_UNLCK, f"getlk saw a lock the model has not: {got}"
            else:
                assert got.type in holders, f"getlk: {got}, conflicting types {holders}"
                assert got.start <= lock.end and got.end >= lock.start, f"{got} misses {lock}"

    # ---- directories --------------------------------------------------------------------
    @rule(i=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS))
    def opendir(self, i: int, c: Ctx) -> None:
        n = self.node_of_kind(i, stat.S_IFDIR)
        assert n is not None
        nfd = self.nodes[n].fd
        r = self.both("opendir", lambda: self.w.front.opendir(n, c),
                      lambda: os.open(_proc(nfd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        if r:
            self._adopt_handle(r[0], n, r[1], os.O_RDONLY, True)

    def dir_handle(self, i: int) -> int | None:
        dirs = sorted(fh for fh, h in self.handles.items() if h.is_dir)
        return self.pick(dirs, i) if dirs else None

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1 << 16))
    def readdir(self, i: int) -> None:
        fh = self.dir_handle(i)
        if fh is None:
            return
        h = self.handles[fh]
        def native() -> list[bytes]:
            if os.fstat(h.fd).st_nlink == 0:
                # getdents64 of a removed directory is ENOENT (what READDIR carries);
                # glibc's readdir, which os.listdir uses, hides it as the end.
                raise OSError(errno.ENOENT, "directory removed")
            return [b".", b"..", *(os.fsencode(n) for n in os.listdir(h.fd))]

        r = self.both("readdir", lambda: self.w.front.readdir(h.node, fh), native)
        if r:
            assert sorted(r[0]) == sorted(r[1]), "readdir differs from the twin's listing"

    @precondition(lambda self: self.handles)
    @rule(i=st.integers(0, 1 << 16))
    def releasedir(self, i: int) -> None:
        fh = self.dir_handle(i)
        if fh is None:
            return
        h = self.handles.pop(fh)
        self.both("releasedir", lambda: self.w.front.releasedir(h.node, fh), lambda: os.close(h.fd))

    @rule(i=st.integers(0, 1 << 16))
    def statfs(self, i: int) -> None:
        n = self.node_of_kind(i)
        assert n is not None
        nfd = self.nodes[n].fd
        r = self.both("statfs", lambda: self.w.front.statfs(n),
                      lambda: (os.statvfs(nfd).f_bsize, os.statvfs(nfd).f_namemax))
        if r:
            assert r[0] == r[1]

    # ---- xattrs -------------------------------------------------------------------------
    def xattr_node(self, i: int, having: bool = False) -> int:
        """A node for an xattr call; ``having``: mostly one whose twin has user xattrs."""
        if having and i % 4 != 3:
            have = sorted(n for n, r in self.nodes.items()
                          if _kind(r.fd) in (stat.S_IFREG, stat.S_IFDIR)
                          and os.listxattr(_proc(r.fd)))
            if have:
                return self.pick(have, i)
        n = self.node_of_kind(i, *(() if i % 8 == 0 else (stat.S_IFREG, stat.S_IFDIR)))
        assert n is not None
        return n

    @rule(i=st.integers(0, 1 << 16), name=st.sampled_from(XATTRS), value=st.binary(max_size=40),
          flags=st.sampled_from([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE]), c=st.sampled_from(CALLERS))
    def setxattr(self, i: int, name: bytes, value: bytes, flags: int, c: Ctx) -> None:
        n = self.xattr_node(i)
        nfd = self.nodes[n].fd
        self.both("setxattr", lambda: self.w.front.setxattr(n, name, value, flags, c),
                  lambda: os.setxattr(_proc(nfd), name, value, flags))

    @rule(i=st.integers(0, 1 << 16), j=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS))
    def getxattr(self, i: int, j: int, c: Ctx) -> None:
        # Always an xattr that is there when one is (the values are what is compared;
        # removexattr and the twin's checks keep exercising the misses).
        n = self.xattr_node((i & ~3) | 1, having=True)
        name = self.xattr_name(n, (j & ~3) | 1)
        nfd = self.nodes[n].fd
        r = self.both("getxattr", lambda: self.w.front.getxattr(n, name, c),
                      lambda: os.getxattr(_proc(nfd), name))
        if r:
            assert r[0] == r[1]

    @rule(i=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS))
    def listxattr(self, i: int, c: Ctx) -> None:
        n = self.xattr_node(i)
        nfd = self.nodes[n].fd
        r = self.both("listxattr", lambda: self.w.front.listxattr(n, c),
                      lambda: [os.fsencode(x) for x in os.listxattr(_proc(nfd))])
        if r:
            assert sorted(r[0]) == sorted(r[1])

    @rule(i=st.integers(0, 1 << 16), j=st.integers(0, 1 << 16), c=st.sampled_from(CALLERS))
    def removexattr(self, i: int, j: int, c: Ctx) -> None:
        n = self.xattr_node(i, having=True)
        name = self.xattr_name(n, j)
        nfd = self.nodes[n].fd
        self.both("removexattr", lambda: self.w.front.removexattr(n, name, c),
                  lambda: os.removexattr(_proc(nfd), name))

    # ---- after every step ---------------------------------------------------------------
    @invariant()
    def twin_equal(self) -> None:
        served, native = snapshot(self.w.served), snapshot(self.w.native)
        if served != native:
            diff = {k: (served.get(k), native.get(k)) for k in set(served) | set(native)
                    if served.get(k) != native.get(k)}
            raise AssertionError(f"served tree differs from the twin: {diff}")

    @invariant()
    def nothing_outside_changes(self) -> None:
        assert sentinel_state(self.w.base) == self.sentinel, "something outside the root changed"

    @invariant()
    def fds_bounded(self) -> None:
        live = len(self.nodes) - 1 + len(self.handles) + len(self.lock_descs)
        used = fd_count() - self.native_fds()
        assert used <= self.base_fds + live, (
            f"{used} fds in use, baseline {self.base_fds} + {live} the model holds")

    def teardown(self) -> None:
        try:
            self.w.front.destroy()
            for h in self.handles.values():
                os.close(h.fd)
            self.handles.clear()
            used = fd_count() - self.native_fds()
            assert used == self.base_fds, f"{used} fds after destroy, baseline {self.base_fds}"
        finally:
            self.w.close()
            for r in self.nodes.values():
                os.close(r.fd)
            self.nodes.clear()
            shutil.rmtree(self.w.base, ignore_errors=True)


def success_table(front: str) -> tuple[str, int, int]:
    """The per-operation table (calls, successes, fraction) and the totals."""
    counts = COUNTS[front]
    lines = [f"{'op':<16}{'calls':>8}{'ok':>8}{'ok%':>7}"]
    calls = oks = 0
    for op, (n, ok) in sorted(counts.items()):
        calls += n
        oks += ok
        lines.append(f"{op:<16}{n:>8}{ok:>8}{100 * ok / max(n, 1):>6.0f}%")
    lines.append(f"{'total':<16}{calls:>8}{oks:>8}{100 * oks / max(calls, 1):>6.0f}%")
    return "\n".join(lines), calls, oks


#: Every operation the machine drives; each must succeed at least once.
OPS = ("lookup", "forget", "batch_forget", "getattr", "setattr", "readlink", "mknod", "mkdir",
       "symlink", "link", "unlink", "rmdir", "rename", "create", "tmpfile", "open", "read",
       "write", "fallocate", "copy_file_range", "lseek", "flush", "release", "setlk", "getlk",
       "opendir", "readdir", "releasedir", "statfs", "setxattr", "getxattr", "listxattr",
       "removexattr")


def assert_deep(front: str) -> str:
    """Every operation reached success and more than half of all calls succeeded."""
    table, calls, oks = success_table(front)
    print(f"\nstateful {front}:\n{table}")
    never = [op for op in OPS if COUNTS[front][op][1] == 0]
    assert not never, f"never succeeded: {never}\n{table}"
    assert oks * 2 > calls, f"only {oks} of {calls} calls succeeded\n{table}"
    return table


def examples(default: int) -> int:
    """``MSBFS_STATEFUL_EXAMPLES=N`` for a long run."""
    return int(os.environ.get("MSBFS_STATEFUL_EXAMPLES", default))


def derandomized() -> bool:
    """The default run (CI) draws the same sequences every time: its "every operation
    succeeded at least once" check must not depend on the draw. A long run
    (``MSBFS_STATEFUL_EXAMPLES``) explores freshly each time."""
    return "MSBFS_STATEFUL_EXAMPLES" not in os.environ


@contextmanager
def process_independent_draws() -> Iterator[None]:
    """Hypothesis draws the same values whatever else the process has imported.

    Besides its seeded random, hypothesis now and then (5% of draws) picks a constant
    it mined from every local module in ``sys.modules`` (``_get_local_constants``; not
    the tests' own files). Derandomizing fixes the seed, not that pool: in a pytest
    process that had also collected tests/test_fuzz_campaign.py (tools.fuzz.*,
    vhost.frontend) the same "derandomized" run drew other sequences; its getxattr
    calls all missed (0 of 68), or it met a link case the usual draw never reaches.
    Inside this block the pool is empty. The cache of pool-derived choices is cleared on
    the way in and out, so neither side sees the other's entries."""
    real = providers._get_local_constants
    empty = providers.Constants()
    providers.CONSTANTS_CACHE.cache.clear()
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = real
        providers.CONSTANTS_CACHE.cache.clear()


def run_machine(machine: type[StatefulFs]) -> None:
    """``machine`` for 60 examples of 60 steps (``examples`` for a long run); the
    default run is derandomized and independent of the process it runs in."""
    fixed = derandomized()
    with process_independent_draws() if fixed else nullcontext():
        run_state_machine_as_test(machine, settings=settings(
            max_examples=examples(60), stateful_step_count=60, deadline=None,
            derandomize=fixed, suppress_health_check=list(HealthCheck)))
