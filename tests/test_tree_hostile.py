"""Hostile input: random calls with random arguments (node ids, handles, names, numbers
out of every range) against a live tree. Each call either succeeds or raises OSError;
nothing else escapes, nothing outside the root changes, no fd leaks."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from msbfs.tree import Ctx, Lock, Policy, SetAttr, Tree
from tests.plugins.tree import fd_count, populate

ints = st.one_of(st.integers(-3, 40), st.integers(-(1 << 70), 1 << 70),
                 st.sampled_from([0, 1, 2, 0x20, 0o100, 0o4755, (1 << 63) - 1, 1 << 63, -1]))
names = st.one_of(st.sampled_from([b"file", b"sub", b"link", b"abs", b"up", b".", b"..",
                                   b"", b"a/b", b"x\0y", b"new", b"private", b"a" * 256]),
                  st.binary(max_size=20))
ctxs = st.sampled_from([Ctx(), Ctx(1000, 1000, groups=()), Ctx(1001, 5, groups=(7,)),
                        Ctx(0, 1000)])

METHODS: dict[str, list[Any]] = {
    "lookup": [ints, names, ctxs], "forget": [ints, ints], "getattr": [ints, ints, ctxs],
    "readlink": [ints, ctxs], "mknod": [ints, names, ints, ints, ints, ctxs],
    "mkdir": [ints, names, ints, ints, ctxs], "symlink": [ints, names, names, ctxs],
    "link": [ints, ints, names, ctxs], "unlink": [ints, names, ctxs],
    "rmdir": [ints, names, ctxs], "rename": [ints, names, ints, names, ints, ctxs],
    "open": [ints, ints, ctxs], "create": [ints, names, ints, ints, ints, ctxs],
    "tmpfile": [ints, ints, ints, ints, ctxs], "read": [ints, ints, ints],
    "write": [ints, ints, st.binary(max_size=64), ctxs, st.booleans()],
    "data_fd": [ints, st.booleans()], "flush": [ints, ints], "release": [ints], "fsync": [ints, st.booleans()],
    "fallocate": [ints, ints, ints, ints], "lseek": [ints, ints, ints],
    "copy_file_range": [ints, ints, ints, ints, ints, ints],
    "getlk": [ints, ints, st.builds(Lock, ints, ints, ints)],
    "setlk": [ints, ints, st.builds(Lock, ints, ints, ints), st.booleans()],
    "opendir": [ints, ints, ctxs], "readdir": [ints, ints], "releasedir": [ints],
    "fsyncdir": [ints, st.booleans()], "statfs": [ints], "access": [ints, ints, ctxs],
    "setxattr": [ints, names, st.binary(max_size=16), ints, ctxs],
    "getxattr": [ints, names, ints, ctxs], "listxattr": [ints, ctxs],
    "removexattr": [ints, names, ctxs],
    "setattr": [ints, st.builds(SetAttr, ints, st.one_of(st.none(), ints), ints, ints, ints,
                                ints, ints, ints, ints), ctxs],
}

calls = st.lists(st.one_of(*[st.tuples(st.just(m), st.tuples(*args))
                             for m, args in METHODS.items()]), min_size=1, max_size=40)


#: successes and calls of the random test, per method (the surface it reaches: see the
#: mixed test below for the depth)
RANDOM_COUNTS: dict[str, int] = {}
RANDOM_CALLS: dict[str, int] = {}


def world(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh populated root beside a sentinel directory ``outside`` (with a file)."""
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    os.chmod(base, 0o755)
    (base / "outside").mkdir()
    (base / "outside" / "keep").write_bytes(b"keep")
    root = base / "root"
    root.mkdir()
    populate(root)
    return base, root


def snapshot(path: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.lstat().st_mode, p.lstat().st_size) for p in path.rglob("*"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(seq=calls, quota=st.sampled_from([None, 1 << 16]), cache=st.sampled_from([0, 16]))
def test_random_calls_only_raise_oserror(tmp_path: Path, seq: list[tuple[str, tuple[Any, ...]]],
                                         quota: int | None, cache: int) -> None:
    base, root = world(tmp_path)
    outside_before = snapshot(base / "outside")
    before_fds = fd_count()
    tree = Tree(root, Policy(quota_bytes=quota), max_inode_fds=cache)
    try:
        for method, args in seq:
            # A few real node ids and handles so calls get past the first check.
            args = tuple(a % 8 if type(a) is int and method in ("lookup", "getattr") and i == 0
                         else a for i, a in enumerate(args))
            try:
                if method == "data_fd":
                    result = tree.data_fd(args[0], write=args[1])
                elif method == "setlk":
                    result = tree.setlk(*args[:3], is_flock=args[3])
                else:
                    result = getattr(tree, method)(*args)
                if method == "readdir":
                    list(result)
                RANDOM_COUNTS[method] = RANDOM_COUNTS.get(method, 0) + 1
            except OSError:
                pass
            RANDOM_CALLS[method] = RANDOM_CALLS.get(method, 0) + 1
    finally:
        tree.close()
    assert fd_count() == before_fds
    assert snapshot(base / "outside") == outside_before


# ---- hostile inputs mixed into valid sequences ---------------------------------------------
# The random calls above rarely get past the first check, so "nothing outside the root
# changes" would hold even for a tree that followed every symlink. Here each step is a
# valid operation on live node ids, handles and names, or the same operation with one
# hostile argument: a name with '/', '..', NUL or 256 bytes, the node id of a forgotten
# inode, the handle of a released file, or a symlink leading out of the root as the node
# to follow through (lookup/create/mkdir/rename/link beneath it, open it).
HOSTILE_NAMES = (b"../outside/keep", b"..", b"x\0y", b"a" * 256, b"sub/inner", b"/etc/passwd")
OUT_TARGETS = (b"../outside", b"../../outside/keep", b"/etc", b"../outside/keep")
VALID_OPS = ("lookup", "create", "write", "read", "mkdir", "symlink", "rename", "link",
             "setxattr", "getxattr", "unlink", "release", "forget", "open")
HOSTILE_COUNTS: dict[str, list[int]] = {}

steps = st.lists(st.tuples(st.sampled_from(VALID_OPS), st.integers(0, 1 << 16),
                           st.sampled_from(["valid"] * 3 + ["name", "forgotten", "released",
                                                             "symlink"])),
                 min_size=5, max_size=40)


class Mixed:
    """Live state of one sequence: node ids (with lookup counts), open handles, and what
    a hostile step may reuse (forgotten ids, released handles, out-of-root symlinks)."""

    def __init__(self, tree: Tree) -> None:
        self.t = tree
        self.dirs: list[int] = [1]
        self.files: dict[int, int] = {}  # node id -> lookups
        self.handles: dict[int, int] = {}  # fh -> node id
        self.links: list[int] = []  # node ids of symlinks leading out of the root
        self.forgotten: list[int] = []
        self.released: list[int] = []
        # (parent, name) of the files and symlinks valid steps made: a valid unlink takes
        # one of them. Guessing names failed in every example of about one run in six.
        self.made: list[tuple[int, bytes]] = []
        self.n = 0

    def new_name(self) -> bytes:
        self.n += 1
        return b"n%d" % self.n

    def step(self, op: str, i: int, how: str) -> str | None:
        """Run one step; returns the label it is counted under (None: not run)."""
        t, ctx = self.t, Ctx(1000 + i % 2, 1000 + i % 2)
        pick = lambda seq: seq[i % len(seq)]  # noqa: E731 - a one-liner used everywhere here
        parent = pick(self.dirs)
        name = self.new_name()
        node = pick(sorted(self.files)) if self.files else None
        fh = pick(sorted(self.handles)) if self.handles else None
        if how == "name":
            name = pick(HOSTILE_NAMES)
            how = "dotdot" if name == b".." else how  # '..' is a name lookup may resolve
        elif how == "forgotten" and self.forgotten:
            node = parent = pick(self.forgotten)
        elif how == "released" and self.released:
            fh = pick(self.released)
        elif how == "symlink":
            if not self.links or i % 3 == 0:
                e = t.symlink(1, self.new_name(), pick(OUT_TARGETS), ctx)
                self.links.append(e.nodeid)
            node = parent = pick(self.links)
        else:
            how = "valid"
        label = f"{op} {how}"
        if op in ("read", "write") and fh is None and how == "valid":
            # A handle to act on first (else the step is not run at all: read went
            # untried in whole runs often enough to make the coverage check flaky).
            e, o = t.create(parent, self.new_name(), 0o644, os.O_RDWR, 0o022, ctx)
            self._got(e.nodeid, e.attr.mode)
            self.handles[o.fh] = e.nodeid
            fh = o.fh
        if op == "lookup":
            e = t.lookup(parent, pick([b"file", b"sub", b"link", b"up", b"abs"]) if how == "valid" else name, ctx)
            self._got(e.nodeid, e.attr.mode)
        elif op in ("create", "open"):
            if op == "open" and node is not None and how != "name":
                o = t.open(node, os.O_RDWR, ctx)
                self.handles[o.fh] = node
            else:
                e, o = t.create(parent, name, 0o644, os.O_RDWR, 0o022, ctx)
                self._got(e.nodeid, e.attr.mode)
                self.handles[o.fh] = e.nodeid
                if how == "valid":
                    self.made.append((parent, name))
        elif op == "write":
            if fh is None:
                return None  # nothing to act on yet: not counted
            assert t.write(fh, i % 100, b"data" * (i % 5 + 1), ctx) > 0
        elif op == "read":
            if fh is None:
                return None  # nothing to act on yet: not counted
            t.read(fh, 0, 64)
        elif op == "mkdir":
            e = t.mkdir(parent, name, 0o755, 0o022, ctx)
            self.dirs.append(e.nodeid)
        elif op == "symlink":
            t.symlink(parent, name, b"file", ctx)
            if how == "valid":
                self.made.append((parent, name))
        elif op == "rename":
            t.rename(1, pick([b"file", b"sub", b"n1", b"n2", b"n3"]), parent, name, 0, ctx)
        elif op == "link":
            src = node if node is not None else parent
            t.link(src, parent if how != "valid" else 1, name, ctx)
        elif op in ("setxattr", "getxattr"):
            # Every other valid step on the root, so a get mostly finds what a set made.
            target = 1 if how == "valid" and i % 2 == 0 else node if node is not None else parent
            if op == "setxattr":
                t.setxattr(target, b"user.k", b"v", 0, ctx)
            else:
                assert t.getxattr(target, b"user.k", 0, ctx) == b"v"
        elif op == "unlink":
            if how == "valid" and self.made:
                parent, name = self.made.pop(i % len(self.made))
            elif how == "valid":
                name = pick([b"n1", b"n2", b"n3", b"n4"])
            t.unlink(parent, name, ctx)
        elif op == "release":
            if fh is None:
                return None  # nothing to act on yet: not counted
            t.release(fh)
            self.handles.pop(fh, None)
            self.released.append(fh)
        elif op == "forget":
            if node is None:
                return None  # nothing to act on yet: not counted
            t.forget(node, self.files.pop(node, 1))  # a forgotten id again: ignored
            if node in self.links:
                self.links.remove(node)
            self.forgotten.append(node)
        return label

    def _got(self, nodeid: int, mode: int) -> None:
        if stat.S_ISDIR(mode):
            if nodeid not in self.dirs:
                self.dirs.append(nodeid)
        else:
            self.files[nodeid] = self.files.get(nodeid, 0) + 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(seq=steps)
# Every valid step once, in an order where each succeeds: the random draws alone left
# "release valid" (it needs a handle a create or open made before) undrawn in a full run
# under load, so test_hostile_mix_reached_deep failed on luck, not on the tree.
@example(seq=[(op, 0, "valid") for op in ("create", "write", "read", "open", "release",
                                           "lookup", "mkdir", "symlink", "rename", "link",
                                           "setxattr", "getxattr", "unlink", "forget")])
def test_hostile_inputs_in_valid_sequences(tmp_path: Path, seq: list[tuple[str, int, str]]) -> None:
    base, root = world(tmp_path)
    # The root starts with the xattr a valid getxattr asks for, so whether getxattr ever
    # succeeds does not hang on a setxattr having been drawn first (150 random examples
    # drew none before a get in about one run of five).
    os.setxattr(root, "user.k", b"v")
    outside_before = snapshot(base / "outside"), sorted(os.listdir(base))
    before_fds = fd_count()
    tree = Tree(root)
    m = Mixed(tree)
    try:
        for op, i, how in seq:
            label: str | None = f"{op} {how}"
            try:
                label = m.step(op, i, how)
                ok = True
            except OSError:
                ok = False
            if label is None:
                continue
            c = HOSTILE_COUNTS.setdefault(label, [0, 0])
            c[0] += 1
            c[1] += ok
            if how == "symlink" and op in ("lookup", "create", "mkdir", "rename", "link") and ok:
                raise AssertionError(f"{op} went through a symlink node")
            assert (snapshot(base / "outside"), sorted(os.listdir(base))) == outside_before
    finally:
        tree.close()
    assert fd_count() == before_fds


def test_hostile_mix_reached_deep() -> None:
    """The valid part of the mixed sequences succeeds for every operation (so the
    checks above ran after real creates, writes, renames, links and xattrs)."""
    if not HOSTILE_COUNTS:
        pytest.skip("runs after test_hostile_inputs_in_valid_sequences")
    print(f"\nrandom calls: {sum(RANDOM_COUNTS.values())} of {sum(RANDOM_CALLS.values())} "
          f"succeeded: {sorted(RANDOM_COUNTS.items())}")
    rows = sorted(HOSTILE_COUNTS.items())
    print("\nhostile mix:\n" + "\n".join(f"{k:<22}{n:>6}{ok:>6}" for k, (n, ok) in rows))
    never = [op for op in VALID_OPS if HOSTILE_COUNTS.get(f"{op} valid", [0, 0])[1] == 0]
    assert not never, f"valid steps that never succeeded: {never}"
    escaped = [k for k, (_n, ok) in rows if k.endswith(" name") and ok and not k.startswith(
        ("write", "read", "release", "forget", "open", "setxattr", "getxattr"))]
    assert not escaped, f"hostile names accepted: {escaped}"
