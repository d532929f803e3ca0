"""Tree.lookup through csrc/lookup.c (the virtio-fs C path's own lookup, issue 11) answers
exactly as the Python lookup it replaces for plain names: the same request sequence on
two trees over one directory, one with the C lookup and one with it forced to hand every
name back, must give equal Entries (attributes after the policy's shape and id maps,
node ids, submount flags), equal errnos and equal tables. What C must hand back (other
filesystems, a full table) is checked to reach the Python rules."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from msbfs.tree import Policy
from msbfs.tree import tree as tree_mod
from msbfs.tree.idmap import IdMap
from msbfs.tree.tree import Tree
from msbfs.tree.types import ROOT_ID, Ctx
from tests.test_tree_inodes import with_submount  # noqa: F401  (a fixture)
from tests.test_virtiofs_meta import _populate

ROOT = Ctx(0, 0, 0, 0)
NAMES = [b"a", b"b", b"d", b"s", b"setid", b"fifo", b"null", b"n" * 255, b"a", b"nope",
         b".", b"..", b"m", b"d"]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every answer csrc/lookup.c gives Tree.lookup, in order."""
    answers: list[int] = []
    real = tree_mod._c_lookup

    def spy(*args: Any) -> int:
        r: int = real(*args)
        answers.append(r)
        return r

    monkeypatch.setattr(tree_mod, "_c_lookup", spy)
    return answers


def _python_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree_mod, "_c_lookup", lambda *a: tree_mod._UNDECIDED)


def _outcome(tree: Tree, parent: int, name: bytes) -> Any:
    try:
        return tree.lookup(parent, name, ROOT)
    except OSError as e:
        return e.errno


def _run(tree: Tree, names: list[bytes]) -> list[Any]:
    """Each name beneath the root, then each beneath "d" and "m" (node ids from the
    first pass), then everything forgotten once and looked up again (cold again)."""
    out = [_outcome(tree, ROOT_ID, n) for n in names]
    for sub in (b"d", b"m"):
        e = tree.lookup(ROOT_ID, sub, ROOT)
        out += [e, *(_outcome(tree, e.nodeid, n) for n in (b"f", b"k", b"nope", b".."))]
    for e in list(out):
        if not isinstance(e, int):
            tree.forget(e.nodeid, 1)
    out += [_outcome(tree, ROOT_ID, n) for n in names]
    st = tree.statistics()
    # every inode is held by an fd, or by its name (C adds named nodes: csrc/inodes.h)
    return [*out, st.inodes, st.extra["inode_fds"] + st.extra["inode_named"]]


@pytest.mark.parametrize("policy,ids", [
    (Policy(), False),
    (Policy(nosuid=True, nodev=True, squash_uid=4242, squash_gid=4343), False),
    (Policy(), True),
], ids=["plain", "shaped", "id-mapped"])
def test_c_lookup_answers_as_python(tmp_path: Path, policy: Policy, ids: bool,
                                    counted: list[int],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _populate(tmp_path)
    if os.geteuid() == 0:
        os.chown(tmp_path / "d", 1234, 5678)  # owner and group differ from the rest
    maps: dict[str, IdMap] = {}
    if ids:
        maps = {"uid_map": IdMap(["host:0:4242:1"]), "gid_map": IdMap(["host:0:77:1"],
                                                                      what="GID")}
    with Tree(tmp_path, policy, **maps) as tree:  # type: ignore[arg-type]
        with_c = _run(tree, NAMES)
    decided = [r for r in counted if r >= 0 or r == -errno.ENOENT]
    # it really answered: every plain name of the root's filesystem, warm and cold
    assert len(decided) >= 2 * (len(NAMES) - 2) + 2 * 3
    assert -errno.ENOENT in decided
    _python_only(monkeypatch)
    with Tree(tmp_path, policy, **maps) as tree:  # type: ignore[arg-type]
        assert _run(tree, NAMES) == with_c
    if ids:
        e = next(x for x in with_c if not isinstance(x, int))
        assert e.attr.uid == 4242  # the id map's rule applied to C's attributes


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("announce", [True, False])
def test_other_filesystems_get_the_python_rules(with_submount: Path,  # noqa: F811
                                                announce: bool, counted: list[int]) -> None:
    """C sees one device: a name on another filesystem (a tagged st_ino, a submount
    flag) is handed back to the Python lookup, for a name and beneath it."""
    root = with_submount
    (root / "mnt" / "f").write_bytes(b"on tmpfs")
    with Tree(root, announce_submounts=announce) as tree:
        mnt = tree.lookup(ROOT_ID, b"mnt", ROOT)
        assert counted[-1] == tree_mod._UNDECIDED
        f = tree.lookup(mnt.nodeid, b"f", ROOT)
        assert counted[-1] == tree_mod._UNDECIDED
        assert mnt.attr.submount is announce
        host = os.stat(root / "mnt" / "f")
        assert f.attr.ino != host.st_ino and f.attr.ino & ((1 << 48) - 1) == host.st_ino
        again = tree.lookup(ROOT_ID, b"mnt", ROOT)  # warm: still the Python rule
        assert (again.nodeid, again.attr) == (mnt.nodeid, mnt.attr)
        plain = tree.lookup(ROOT_ID, b"plain", ROOT)
        assert counted[-1] >= 0 and plain.attr.submount is False


def test_full_table_is_enfile(tmp_path: Path, counted: list[int]) -> None:
    """A cold name past the table's bound: C hands it back, the tree says ENFILE; a
    name already held still answers (no new inode)."""
    (tmp_path / "x").write_bytes(b"")
    (tmp_path / "y").write_bytes(b"")
    with Tree(tmp_path, max_inodes=2) as tree:  # the root and one more
        x = tree.lookup(ROOT_ID, b"x", ROOT)
        with pytest.raises(OSError) as e:
            tree.lookup(ROOT_ID, b"y", ROOT)
        assert e.value.errno == errno.ENFILE
        assert counted[-1] == tree_mod._UNDECIDED
        assert tree.lookup(ROOT_ID, b"x", ROOT).nodeid == x.nodeid
        assert counted[-1] >= 0


def test_bad_parents_and_names_keep_their_errnos(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with Tree(tmp_path) as tree:
        f = tree.lookup(ROOT_ID, b"f", ROOT).nodeid
        cases: Iterator[tuple[int, bytes, int]] = iter([
            (f, b"x", errno.ENOTDIR), (12345, b"f", errno.EBADF), (1 << 70, b"f", errno.EBADF),
            (-1, b"f", errno.EBADF), (ROOT_ID, b"a/b", errno.EINVAL),
            (ROOT_ID, b"a\0b", errno.EINVAL), (ROOT_ID, b"", errno.ENOENT),
            (ROOT_ID, b"x" * 256, errno.ENAMETOOLONG)])
        for parent, name, want in cases:
            with pytest.raises(OSError) as e:
                tree.lookup(parent, name, ROOT)
            assert e.value.errno == want, (parent, name)
