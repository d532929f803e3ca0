"""Tree tests written for tools/mutants (issue 13): rules whose mutant no tree test
caught. Containment here is checked where it matters, outside the root: a name with
``/`` or ``..`` must neither reach nor change anything beside the served directory,
whichever layer (the tree's one-component names, openat2's RESOLVE_BENEATH) stops it."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from msbfs.tree import ROOT_ID, Lock, Tree
from tests.plugins.tree import ROOT, err, walk


def _snapshot(d: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(d)): (p.stat().st_mode,
                                     p.read_bytes() if p.is_file() else b"")
            for p in sorted(d.rglob("*"))}


def test_names_with_slash_or_dotdot_never_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host only\n")
    before = _snapshot(tmp_path)
    with Tree(root) as tree:
        sub = tree.lookup(ROOT_ID, b"sub", ROOT).nodeid
        for parent in (ROOT_ID, sub):
            for name in (b"../outside/secret", b"../outside", b"../../outside/secret",
                         b"../root/../outside"):
                assert err(lambda p=parent, n=name: tree.lookup(p, n, ROOT)) is not None, name
                assert err(lambda p=parent, n=name: tree.mkdir(p, n + b"-made", 0o755, 0,
                                                                ROOT)) is not None, name
                assert err(lambda p=parent, n=name: tree.create(
                    p, n + b"-new", 0o644, os.O_RDWR, 0, ROOT)) is not None, name
                assert err(lambda p=parent, n=name: tree.symlink(p, n + b"-l", b"x",
                                                                  ROOT)) is not None, name
                assert err(lambda p=parent, n=name: tree.unlink(p, n, ROOT)) is not None, name
    assert _snapshot(tmp_path) == before  # nothing beside (or in) the root changed


def test_write_lock_on_a_read_only_handle_takes_nothing(tmp_path: Path) -> None:
    """EBADF as POSIX says, before any lock description is opened for the owner (the
    host kernel refuses F_WRLCK on the read-only description too, but a refusal that
    comes only after the daemon opened one leaves the owner a description it never
    locked with)."""
    (tmp_path / "f").write_bytes(b"data")
    with Tree(tmp_path) as tree:
        fh = tree.open(walk(tree, "f"), os.O_RDONLY, ROOT).fh
        for owner in (1, 2, 3):
            assert err(lambda o=owner: tree.setlk(fh, o, Lock(0, 9, fcntl.F_WRLCK))) \
                == errno.EBADF
        assert tree.statistics().extra["lock_fds"] == 0
        tree.release(fh)
