"""``VolumeFs``: host-side file operations on a named volume, contained to its root.

Every path is relative to the volume root and resolved by the kernel with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` from an fd of the root, never by
string checks: ``..`` above the root, absolute paths and symlinks that lead out fail
with ``PathEscape`` even when another thread swaps a symlink in mid-operation. Ops with
no ``openat2`` form (mkdir, unlink, rmdir) resolve the parent that way and then act on
the last component with the ``*at`` call, which never follows a symlink there.

``ContainedRoot`` holds all of that; ``VolumeFs`` is the public face over it. It shares
with the tree (``msbfs/tree``) the kernel's containment (the same openat2 resolve flags)
and the quota, through the volume's shared usage counter (``msbfs.usage``): what
VolumeFs writes, a serving guest or host mount sees charged, and the other way round,
with no walk per write. It does not share the tree's component-by-component lookup: VolumeFs follows symlinks that stay inside and
calls ``..`` above the root an escape, where a client's lookup of ``..`` at the root
is the root.

A disk volume's files live inside its ext4 image: ``DiskVolumeFs`` mounts the image
with fuse2fs on a private directory (per ``with`` block, or per call outside one) while
holding the volume's serving lock EXCLUSIVELY, so it refuses with ``VolumeInUse`` while
a sandbox or host mount uses the disk (ext4 mounted twice is corruption).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat as stat_mod
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from msbfs import diskimage, serving_lock
from msbfs.errors import InvalidArgument, PathEscape
from msbfs.syscalls import RESOLVE_CONTAINED, openat2

if TYPE_CHECKING:
    from msbfs.tree.policy import QuotaAccount
    from msbfs.usage import VolumeUsage
    from msbfs.volumes import VolumeHandle

StrPath = str | os.PathLike[str]

_BLOCK = 4096
_EAGAIN_RETRIES = 64


def _rel(path: StrPath) -> str:
    """The relative path as given; absolute paths are refused before any syscall."""
    p = os.fspath(path)
    if not isinstance(p, str):
        raise InvalidArgument(f"path must be str, not {type(p).__name__}")
    if p.startswith("/"):
        raise PathEscape(f"{p!r}: absolute paths are not allowed (paths are relative to "
                         f"the volume root)")
    if "\0" in p:
        raise InvalidArgument(f"{p!r}: path contains a NUL byte")
    return p or "."


@contextlib.contextmanager
def _escapes_as(path: str) -> Iterator[None]:
    """EXDEV is how openat2 says "resolution tried to leave the root"."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise PathEscape(f"{path!r} escapes the volume root") from None
        raise


def usage_bytes(root: str | Path) -> int:
    """Blocks in use below ``root`` (st_blocks * 512), counting each inode once, never
    following symlinks and never crossing into another filesystem: the directory-volume
    quota's own count (``msbfs.tree.policy.walk_usage``), so ``msbfs volume`` and statfs
    inside a sandbox agree by construction."""
    # Imported here: the tree package is only needed once usage is asked for, not to
    # list or create volumes.
    from msbfs.tree.policy import walk_usage

    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return walk_usage(fd)
    finally:
        os.close(fd)


class ContainedRoot:
    """Path operations beneath one directory, through an ``O_PATH`` fd of it."""

    def __init__(self, root: str | Path) -> None:
        self.path = str(root)
        self.fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._finalizer = weakref.finalize(self, os.close, self.fd)

    def close(self) -> None:
        self._finalizer()

    def open(self, path: str, flags: int, mode: int = 0) -> int:
        """An fd for ``path`` resolved beneath the root (symlinks followed while they
        stay inside, unless ``flags`` has O_NOFOLLOW)."""
        with _escapes_as(path):
            for _ in range(_EAGAIN_RETRIES):
                try:
                    return openat2(self.fd, path, flags, mode, RESOLVE_CONTAINED)
                except BlockingIOError:
                    # The kernel saw a rename somewhere on the system while walking a
                    # ``..`` and could not prove it stayed beneath: openat2(2) says retry.
                    continue
            return openat2(self.fd, path, flags, mode, RESOLVE_CONTAINED)

    @contextlib.contextmanager
    def parent(self, path: str) -> Iterator[tuple[int, str]]:
        """``(fd of the containing directory, last component)``, for the ``*at`` calls.
        The last component is never ``.`` or ``..`` (callers handle those first)."""
        head, _, name = path.rstrip("/").rpartition("/")
        fd = self.open(head or ".", os.O_PATH | os.O_DIRECTORY)
        try:
            yield fd, name
        finally:
            os.close(fd)


def _last_is_dot(path: str) -> bool:
    return path.rstrip("/").rpartition("/")[2] in ("", ".", "..")


class VolumeFs:
    """File operations on a volume's contents. Use as a context manager to keep the
    root fd (and, for disk volumes, the fuse2fs mount) across calls; outside ``with``
    every call sets up what it needs itself."""

    def __init__(self, root: str | Path, *, quota_bytes: int | None = None,
                 quota_inodes: int | None = None, usage: VolumeUsage | None = None) -> None:
        """``usage``: the volume's shared counter (``msbfs.usage``), charged by every
        change; without one, a quota is checked against a counter of this VolumeFs's
        own, counted once when it is first needed."""
        from msbfs.tree.policy import Policy, QuotaAccount

        self._root_path = str(root)
        self._quota_bytes = quota_bytes
        self._held: ContainedRoot | None = None
        self._depth = 0
        self._usage = usage
        limits = Policy(quota_bytes=quota_bytes, quota_inodes=quota_inodes)
        self._account: QuotaAccount | None = None
        if usage is not None or limits.inode_limit is not None:
            self._account = QuotaAccount(quota_bytes, 0, limits.inode_limit, 0, store=usage)
            self._counted = usage is not None

    # ---- life cycle ------------------------------------------------------------------
    @property
    def root(self) -> str:
        """The absolute host path of the volume's data directory."""
        return self._root_path

    def __enter__(self) -> VolumeFs:
        if self._depth == 0:
            self._held = self._open_root()
        self._depth += 1
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._close_root()

    def close(self) -> None:
        self._depth = 0
        self._close_root()

    def _open_root(self) -> ContainedRoot:
        return ContainedRoot(self._root_path)

    def _close_root(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()

    @contextlib.contextmanager
    def _tree(self) -> Iterator[ContainedRoot]:
        if self._held is not None:
            yield self._held
            return
        with self:
            assert self._held is not None
            yield self._held

    # ---- reading -----------------------------------------------------------------------
    def read(self, path: StrPath) -> bytes:
        p = _rel(path)
        with self._tree() as t:
            fd = t.open(p, os.O_RDONLY)
            with os.fdopen(fd, "rb") as f:
                return f.read()

    def read_text(self, path: StrPath, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def exists(self, path: StrPath) -> bool:
        """Whether something exists there (a dangling symlink does not count). Paths
        that escape still raise ``PathEscape``: that is an error, not an answer."""
        p = _rel(path)
        with self._tree() as t:
            try:
                os.close(t.open(p, os.O_PATH))
            except (FileNotFoundError, NotADirectoryError):
                return False
            return True

    def stat(self, path: StrPath, *, follow_symlinks: bool = True) -> os.stat_result:
        p = _rel(path)
        flags = os.O_PATH if follow_symlinks else os.O_PATH | os.O_NOFOLLOW
        with self._tree() as t:
            fd = t.open(p, flags)
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)

    def listdir(self, path: StrPath = ".") -> list[str]:
        """Names in a directory, sorted."""
        p = _rel(path)
        with self._tree() as t:
            fd = t.open(p, os.O_RDONLY | os.O_DIRECTORY)
            try:
                return sorted(os.listdir(fd))
            finally:
                os.close(fd)

    # ---- writing -----------------------------------------------------------------------
    def write(self, path: StrPath, data: bytes | bytearray | memoryview) -> None:
        """Create or truncate the file and write ``data`` (new files get mode 0o644)."""
        p = _rel(path)
        view = memoryview(data).cast("B")
        with self._tree() as t, self._charged(t, p) as old:
            if self._account is not None:
                growth = -(-len(view) // _BLOCK) * _BLOCK - _allocated(old)
                self._account.reserve(growth + (_BLOCK if old is None else 0))
                if old is None:
                    self._account.reserve_inode()
            # One openat2 for the whole path: the kernel resolves and creates atomically
            # beneath the root, so no swapped-in symlink can redirect the create.
            fd = t.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            finally:
                os.close(fd)

    def write_text(self, path: StrPath, text: str, encoding: str = "utf-8") -> None:
        self.write(path, text.encode(encoding))

    # ---- the quota: what each change allocated, charged to the volume's one count ----
    def _account_for(self, t: ContainedRoot) -> QuotaAccount | None:
        """The account, counted from the volume itself the first time a VolumeFs with no
        shared counter needs one (a bare directory with a quota)."""
        acc = self._account
        if acc is not None and not self._counted:
            from msbfs.tree.policy import walk_counts

            acc._used, acc._inodes = walk_counts(t.fd)
            self._counted = True
        return acc

    @contextlib.contextmanager
    def _charged(self, t: ContainedRoot, p: str) -> Iterator[os.stat_result | None]:
        """Around a change of ``p``: yields its lstat before (None: absent); afterwards
        charges what the change did to it and to its directory."""
        acc = self._account_for(t)
        if acc is None:
            yield None
            return
        before, dir_before = self._lstats(t, p)
        try:
            yield before
        finally:
            after, dir_after = self._lstats(t, p)
            self._charge(acc, before, after)
            self._charge(acc, dir_before, dir_after)

    @staticmethod
    def _lstats(t: ContainedRoot, p: str) -> tuple[os.stat_result | None,
                                                    os.stat_result | None]:
        try:
            with t.parent(p) as (dirfd, name):
                d = os.fstat(dirfd)
                try:
                    return os.lstat(name, dir_fd=dirfd), d
                except FileNotFoundError:
                    return None, d
        except (FileNotFoundError, NotADirectoryError):
            return None, None

    @staticmethod
    def _charge(acc: QuotaAccount, before: os.stat_result | None,
                after: os.stat_result | None) -> None:
        if before is not None and after is not None and (
                (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino)):
            # replaced by another inode: one gone, one made
            VolumeFs._charge(acc, before, None)
            before = None
        if (after is None and before is not None and before.st_nlink > 1
                and not stat_mod.S_ISDIR(before.st_mode)):
            return  # another name keeps the inode and its blocks
        inodes = (before is None) - (after is None)
        acc.charge(_allocated(after) - _allocated(before), inodes)

    def mkdir(self, path: StrPath) -> None:
        """Create a directory and any missing parents (mode 0o755); fine if it exists."""
        p = _rel(path)
        parts = [c for c in p.split("/") if c]
        with self._tree() as t:
            for i, name in enumerate(parts):
                prefix = "/".join(parts[:i + 1])
                if name not in (".", ".."):
                    with self._charged(t, prefix) as old, t.parent(prefix) as (dirfd, _):
                        if old is None and self._account is not None:
                            self._account.reserve_inode()
                            self._account.reserve(_BLOCK)
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(name, 0o755, dir_fd=dirfd)
                # What is there now must be a directory inside the root (it may be a
                # symlink to one inside; one leading out is an escape).
                try:
                    os.close(t.open(prefix, os.O_PATH | os.O_DIRECTORY))
                except NotADirectoryError:
                    raise FileExistsError(errno.EEXIST, "exists and is not a directory",
                                          prefix) from None

    def remove(self, path: StrPath) -> None:
        """Remove a file, symlink or empty directory (a symlink itself, not its target)."""
        p = _rel(path)
        with self._tree() as t:
            if _last_is_dot(p):
                os.close(t.open(p, os.O_PATH))  # escapes still say so
                raise OSError(errno.EBUSY if p.strip("/.") == "" else errno.EINVAL,
                              "cannot remove '.' or '..'", p)
            with self._charged(t, p), t.parent(p) as (dirfd, name):
                st = os.lstat(name, dir_fd=dirfd)
                if stat_mod.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=dirfd)
                else:
                    os.unlink(name, dir_fd=dirfd)

    def remove_all(self, path: StrPath) -> None:
        """Remove a path and everything below it; nothing there is not an error. Never
        follows a symlink, so a link to a directory elsewhere loses only the link."""
        p = _rel(path)
        with self._tree() as t:
            if _last_is_dot(p):
                os.close(t.open(p, os.O_PATH))
                raise InvalidArgument(f"{p!r}: cannot remove the volume root or '.'/'..'; "
                                      f"remove the volume instead")
            try:
                parent = contextlib.ExitStack()
                dirfd, name = parent.enter_context(t.parent(p))
            except (FileNotFoundError, NotADirectoryError):
                return
            with parent:
                acc = self._account_for(t)
                charge = None if acc is None else functools.partial(VolumeFs._charge, acc)
                _remove_tree_at(dirfd, name, charge)


def _allocated(st: os.stat_result | None) -> int:
    return 0 if st is None else st.st_blocks * 512


Charge = Callable[[os.stat_result | None, os.stat_result | None], None]


def _remove_tree_at(dirfd: int, name: str, charge: Charge | None = None) -> None:
    """Remove ``name`` below ``dirfd`` and everything in it, each removal charged."""
    try:
        st = os.lstat(name, dir_fd=dirfd)
    except FileNotFoundError:
        return
    if not stat_mod.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dirfd)
        if charge is not None:
            charge(st, None)
        return
    # O_NOFOLLOW: if a symlink was swapped in since the lstat, this fails (ELOOP or
    # ENOTDIR) instead of descending into wherever it points.
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=dirfd)
    try:
        for child in os.listdir(fd):
            _remove_tree_at(fd, child, charge)
        st = os.fstat(fd)  # its blocks now, as it goes
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)
    if charge is not None:
        charge(st, None)


class DiskVolumeFs(VolumeFs):
    """``VolumeFs`` over the ext4 inside a disk volume's image, through fuse2fs."""

    def __init__(self, volume: VolumeHandle,
                 lock: Callable[[], serving_lock.VolumeLock] | None = None) -> None:
        super().__init__(volume.path)
        self._volume = volume
        self._lock = lock or (lambda: serving_lock.acquire(volume.name, exclusive=True))
        self._stack: contextlib.ExitStack | None = None

    def _open_root(self) -> ContainedRoot:
        assert self._volume.image_path is not None
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self._lock())
            mnt = stack.enter_context(diskimage.fuse2fs_mounted(Path(self._volume.image_path)))
            tree = ContainedRoot(mnt)
            stack.callback(tree.close)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return tree

    def _close_root(self) -> None:
        self._held = None
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
