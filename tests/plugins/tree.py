"""Fixtures for the sandboxed tree, driven directly (no FUSE).

- ``twin``: two identical directories, ``native`` (plain syscalls) and ``served`` (a
  ``Tree`` over it), for "the tree gives exactly the errno Linux gives" comparisons.
- ``make_tree(policy=..., **kw)``: a Tree over a fresh populated directory (closed at
  teardown).
- ``USER``/``OTHER``: non-root callers (uid/gid 1000 and 1001).
- helpers: ``err(fn)`` → errno or None; ``walk(tree, "a/b")`` → node id;
  ``lookup_path(tree, "a/../b")`` → Entry; ``fd_count()``;
  ``as_unprivileged_daemon(body)`` runs ``body`` in a child that dropped root for uid 1000.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from msbfs.tree import ROOT_ID, Ctx, Entry, Policy, Tree
from tests.plugins.credentials import credentials

ROOT = Ctx(0, 0)
USER = Ctx(1000, 1000, groups=())
OTHER = Ctx(1001, 1001, groups=())


def err(fn: Callable[[], Any]) -> int | None:
    """The errno ``fn`` fails with, or None when it succeeds (anything else propagates:
    the tree must never let a non-OSError out for client input)."""
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


def as_unprivileged_daemon(body: Callable[[], str], uid: int = 1000, gid: int = 1000) -> str:
    """Run ``body`` in a forked child that drops root for good (groups, gid, uid), as an
    unprivileged daemon would run, and return the text it produced. The child exits
    non-zero if ``body`` raises, and that fails the caller."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(rd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.write(wr, body().encode())
            status = 0
        finally:
            os._exit(status)
    os.close(wr)
    with os.fdopen(rd) as f:
        out = f.read()
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return out


def errname(code: int | None) -> str:
    return "ok" if code is None else errno_mod.errorcode.get(code, str(code))


def walk(tree: Tree, path: str, ctx: Ctx = ROOT) -> int:
    node = ROOT_ID
    for part in path.split("/"):
        if part:
            node = tree.lookup(node, part.encode(), ctx).nodeid
    return node


def lookup_path(tree: Tree, path: str, ctx: Ctx = ROOT) -> Entry:
    """Resolve a relative path from the root with the tree's own lookups, one component
    at a time (never following a symlink, ``..`` never above the root). Keeps one lookup
    on the result only: forget it once. An absolute path is EINVAL."""
    if path.startswith("/"):
        raise OSError(errno_mod.EINVAL, os.strerror(errno_mod.EINVAL))
    node, entry = ROOT_ID, None
    for part in path.split("/"):
        if not part or part == ".":
            continue
        try:
            nxt = tree.lookup(node, part.encode(), ctx)
        finally:
            if entry is not None:
                tree.forget(entry.nodeid, 1)
        entry, node = nxt, nxt.nodeid
    return entry if entry is not None else tree.lookup(ROOT_ID, b".", ctx)


def opened(tree: Tree, entry: Entry) -> Entry:
    """``entry``'s node after its first use: a lookup adds a named node (csrc/inodes.h:
    no fd), whose fd is opened when something needs it. Tests of the fd cache and of
    fds closed at FORGET use nodes that hold one."""
    assert tree._inodes.get(entry.nodeid).fd >= 0
    return entry


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def populate(d: Path) -> None:
    """The same small world in every twin: files, dirs, links, modes and owners that the
    errno cases rely on."""
    (d / "file").write_bytes(b"hello world")
    (d / "sub").mkdir()
    (d / "sub" / "inner").write_bytes(b"x" * 100)
    (d / "empty").mkdir()
    (d / "link").symlink_to("file")
    (d / "abs").symlink_to("/etc")
    (d / "up").symlink_to("../..")
    (d / "private").mkdir(mode=0o700)
    (d / "private" / "secret").write_bytes(b"s")
    (d / "sticky").mkdir()
    os.chmod(d / "sticky", 0o1777)
    (d / "sticky" / "rootfile").write_bytes(b"r")
    (d / "shared").mkdir()
    os.chmod(d / "shared", 0o777)
    (d / "ro0600").write_bytes(b"p")
    os.chmod(d / "ro0600", 0o600)
    (d / "userfile").write_bytes(b"u")
    os.chown(d / "userfile", 1000, 1000)
    os.chmod(d, 0o755)


@dataclass
class Twin:
    native: Path
    served: Path
    tree: Tree
    native_fd: int

    def as_caller(self, ctx: Ctx) -> Any:
        """Credentials for the native side, exactly as the tree switches them."""
        return credentials(ctx.uid, ctx.gid, ctx.groups or ())

    def node(self, path: str, ctx: Ctx = ROOT) -> int:
        return walk(self.tree, path, ctx)


@contextlib.contextmanager
def open_twin(base: Path) -> Iterator[Twin]:
    """A fresh twin below ``base`` (created): for tests that need many worlds."""
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    native, served = base / "native", base / "served"
    native.mkdir()
    served.mkdir()
    populate(native)
    populate(served)
    tree = Tree(served)
    nfd = os.open(native, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield Twin(native, served, tree, nfd)
    finally:
        os.close(nfd)
        tree.close()


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Twin]:
    with open_twin(tmp_path) as t:
        yield t


@pytest.fixture
def make_tree(tmp_path: Path) -> Iterator[Callable[..., Tree]]:
    trees: list[Tree] = []
    os.chmod(tmp_path, 0o755)

    def make(policy: Policy | None = None, **kw: Any) -> Tree:
        d = tmp_path / f"root{len(trees)}"
        d.mkdir()
        populate(d)
        t = Tree(d, policy or Policy(), **kw)
        t.path = d  # type: ignore[attr-defined]
        trees.append(t)
        return t

    yield make
    for t in trees:
        t.close()
