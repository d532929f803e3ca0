"""The inode fd cache is invisible: the same random operations on a tree with a tiny
cache (constant eviction and re-opening by file handle) and on one that keeps every fd
give the same results, errno for errno."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msbfs.tree import FATTR_MODE, ROOT_ID, SetAttr, Tree
from tests.plugins.tree import ROOT, err, fd_count, opened

DIRS = ["", "a", "a/b", "c"]
NAMES = [b"f1", b"f2", b"f3", b"g", b"h"]

ops = st.lists(st.one_of(
    st.tuples(st.just("create"), st.sampled_from(DIRS), st.sampled_from(NAMES)),
    st.tuples(st.just("mkdir"), st.sampled_from(DIRS), st.sampled_from(NAMES)),
    st.tuples(st.just("unlink"), st.sampled_from(DIRS), st.sampled_from(NAMES)),
    st.tuples(st.just("rmdir"), st.sampled_from(DIRS), st.sampled_from(NAMES)),
    st.tuples(st.just("rename"), st.sampled_from(DIRS), st.sampled_from(NAMES),
              st.sampled_from(DIRS), st.sampled_from(NAMES)),
    st.tuples(st.just("link"), st.sampled_from(DIRS), st.sampled_from(NAMES),
              st.sampled_from(DIRS), st.sampled_from(NAMES)),
    st.tuples(st.just("write"), st.sampled_from(DIRS), st.sampled_from(NAMES),
              st.binary(min_size=1, max_size=30)),
    st.tuples(st.just("chmod"), st.sampled_from(DIRS), st.sampled_from(NAMES),
              st.sampled_from([0o600, 0o644, 0o755])),
    st.tuples(st.just("stat"), st.sampled_from(DIRS), st.sampled_from(NAMES)),
    st.tuples(st.just("list"), st.sampled_from(DIRS)),
    st.tuples(st.just("forget_all")),
), min_size=5, max_size=60)


class Driver:
    """Runs path-named operations on a tree, holding every lookup like a kernel would
    (until ``forget_all``), and normalises results so two trees can be compared."""

    def __init__(self, tree: Tree) -> None:
        self.t = tree
        self.held: list[int] = []

    def node(self, path: str) -> int:
        n = ROOT_ID
        for part in path.split("/"):
            if part:
                n = self.t.lookup(n, part.encode(), ROOT).nodeid
                self.held.append(n)
        return n

    def run(self, op: tuple[Any, ...]) -> Any:
        t, kind = self.t, op[0]
        if kind == "create":
            e, o = t.create(self.node(op[1]), op[2], 0o644, os.O_RDWR, 0o022, ROOT)
            self.held.append(e.nodeid)
            t.release(o.fh)
            return e.attr.mode
        if kind == "mkdir":
            e = t.mkdir(self.node(op[1]), op[2], 0o755, 0o022, ROOT)
            self.held.append(e.nodeid)
            return e.attr.nlink
        if kind == "unlink":
            return t.unlink(self.node(op[1]), op[2], ROOT)
        if kind == "rmdir":
            return t.rmdir(self.node(op[1]), op[2], ROOT)
        if kind == "rename":
            return t.rename(self.node(op[1]), op[2], self.node(op[3]), op[4], 0, ROOT)
        if kind == "link":
            src = self.node(f"{op[1]}/{op[2].decode()}")
            e = t.link(src, self.node(op[3]), op[4], ROOT)
            self.held.append(e.nodeid)
            return e.attr.nlink
        if kind == "write":
            n = self.node(f"{op[1]}/{op[2].decode()}")
            fh = t.open(n, os.O_RDWR, ROOT).fh
            try:
                return t.write(fh, 3, op[3], ROOT)
            finally:
                t.release(fh)
        if kind == "chmod":
            n = self.node(f"{op[1]}/{op[2].decode()}")
            return t.setattr(n, SetAttr(valid=FATTR_MODE, mode=op[3]), ROOT)[0].mode
        if kind == "stat":
            n = self.node(f"{op[1]}/{op[2].decode()}")
            a = t.getattr(n, None, ROOT)[0]
            return (a.mode, a.size, a.nlink, a.uid)
        if kind == "list":
            fh = t.opendir(self.node(op[1]), 0, ROOT).fh
            try:
                return sorted(e.name for e in t.readdir(fh, 0))
            finally:
                t.releasedir(fh)
        if kind == "forget_all":
            t.batch_forget((n, 1) for n in self.held)
            self.held = []
            return t.statistics().inodes
        raise AssertionError(kind)


def outcome(d: Driver, op: tuple[Any, ...]) -> Any:
    result: list[Any] = []
    code = err(lambda: result.append(d.run(op)))
    return ("errno", code) if code is not None else ("ok", result[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="open_by_handle_at needs CAP_DAC_READ_SEARCH")
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_tiny_cache_behaves_like_no_cache(tmp_path: Path, seq: list[tuple[Any, ...]]) -> None:
    import tempfile
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    roots = []
    for side in ("cached", "plain"):
        r = base / side
        for d in DIRS:
            (r / d).mkdir(parents=True, exist_ok=True)
        for i in range(40):  # enough inodes to keep a 16-fd cache churning
            (r / f"pad{i}").write_bytes(b"")
        roots.append(r)
    before = fd_count()
    cached, plain = Tree(roots[0], max_inode_fds=16), Tree(roots[1], max_inode_fds=0)
    try:
        dc, dp = Driver(cached), Driver(plain)
        for i in range(40):
            for d in (dc, dp):
                d.held.append(opened(d.t, d.t.lookup(ROOT_ID, f"pad{i}".encode(), ROOT)).nodeid)
        for op in seq:
            assert outcome(dc, op) == outcome(dp, op), op
        stats = cached.statistics().extra
        assert stats["inode_fd_evictions"] > 0  # the cache really churned
        assert stats["inode_fds"] <= 16 + 1 + 4  # + the root, + a few in use
    finally:
        cached.close()
        plain.close()
    assert fd_count() == before
