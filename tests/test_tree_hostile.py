"""Hostile input: random calls with random arguments (node ids, handles, names, numbers
out of every range) against a live tree. Each call either succeeds or raises OSError;
nothing else escapes, nothing outside the root changes, no fd leaks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
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


def snapshot(path: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.lstat().st_mode, p.lstat().st_size) for p in path.rglob("*"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(seq=calls, quota=st.sampled_from([None, 1 << 16]), cache=st.sampled_from([0, 16]))
def test_random_calls_only_raise_oserror(tmp_path: Path, seq: list[tuple[str, tuple[Any, ...]]],
                                         quota: int | None, cache: int) -> None:
    import tempfile
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    os.chmod(base, 0o755)
    (base / "outside").mkdir()
    (base / "outside" / "keep").write_bytes(b"keep")
    root = base / "root"
    root.mkdir()
    populate(root)
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
            except OSError:
                pass
    finally:
        tree.close()
    assert fd_count() == before_fds
    assert snapshot(base / "outside") == outside_before
