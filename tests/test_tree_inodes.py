"""Inode table and containment: forget really closes fds, node ids are the tree's own,
resolution never follows a symlink or leaves the root, and submounts get their own
inode numbers."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from msbfs.tree import ROOT_ID, Policy, Tree
from tests.plugins.tree import (
    ROOT,
    as_unprivileged_daemon,
    err,
    fd_count,
    lookup_path,
    opened,
    walk,
)


def test_forget_releases_fds(tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(5000):
        (root / f"f{i}").write_bytes(b"")
    with Tree(root) as tree:
        baseline = fd_count()
        entries = [opened(tree, tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT))
                   for i in range(5000)]
        assert fd_count() >= baseline + 5000
        assert tree.statistics().inodes == 5001
        # A second lookup of each counts, but opens nothing new.
        again = [tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT) for i in range(5000)]
        assert [e.nodeid for e in again] == [e.nodeid for e in entries]
        assert fd_count() <= baseline + 5000 + 2
        tree.batch_forget((e.nodeid, 1) for e in entries)
        assert tree.statistics().inodes == 5001  # one lookup each is still held
        tree.batch_forget((e.nodeid, 1) for e in again)
        assert tree.statistics().inodes == 1
        assert fd_count() == baseline
        # Forgotten node ids are gone for good, and a new lookup gets a new id.
        assert err(lambda: tree.getattr(entries[0].nodeid, None, ROOT)) == errno.EBADF
        assert tree.lookup(ROOT_ID, b"f0", ROOT).nodeid > entries[-1].nodeid


def test_forgetting_most_of_a_walk_gives_the_table_back(tmp_path: Path) -> None:
    """Issue #11: a daemon told to forget a walk keeps neither the nodes nor their
    memory. The C table trims (malloc_trim, its indexes shrunk) once it has shrunk to
    half of its peak by 8,192 nodes or more: counted, never on a smaller drop."""
    root = tmp_path / "many"
    root.mkdir()
    for i in range(20_000):
        os.close(os.open(root / f"f{i}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    with Tree(root) as tree:
        inodes = tree._inodes
        baseline = inodes.open_fds
        ids = [tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT).nodeid for i in range(20_000)]
        assert len(inodes) == 20_001 and inodes.trims == 0
        tree.batch_forget((nid, 1) for nid in ids[:9_000])  # under half: kept as it is
        assert len(inodes) == 11_001 and inodes.trims == 0
        tree.batch_forget((nid, 1) for nid in ids[9_000:10_001])  # down to half
        assert len(inodes) == 10_000 and inodes.trims == 1
        tree.batch_forget((nid, 1) for nid in ids[10_001:])
        assert len(inodes) == 1 and inodes.open_fds == baseline
        # Once per halving by 8,192 or more (10,000 -> 1808 was the next), not per forget.
        assert inodes.trims == 2
        assert tree.statistics().extra["inode_trims"] == 2
        # The table works on after its indexes shrank: found again, new ids.
        again = [tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT) for i in range(0, 20_000, 7)]
        assert len(inodes) == 1 + len(again) and min(e.nodeid for e in again) > max(ids)
        assert tree.lookup(ROOT_ID, b"f7", ROOT).nodeid == again[1].nodeid


def test_destroy_closes_everything_but_the_root(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    before = fd_count()
    tree = Tree(tmp_path)
    baseline = fd_count()
    d = tree.lookup(ROOT_ID, b"d", ROOT)
    f = tree.lookup(d.nodeid, b"f", ROOT)
    tree.open(f.nodeid, os.O_RDONLY, ROOT)
    tree.opendir(d.nodeid, 0, ROOT)
    assert fd_count() == baseline + 4
    tree.destroy()
    assert fd_count() == baseline
    assert tree.statistics().inodes == 1 and tree.statistics().handles == 0
    assert tree.lookup(ROOT_ID, b"d", ROOT).nodeid  # still serving after DESTROY
    tree.close()
    assert fd_count() == before


def test_node_ids_and_hard_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"")
    os.link(tmp_path / "a", tmp_path / "b")
    with Tree(tmp_path) as tree:
        a = tree.lookup(ROOT_ID, b"a", ROOT)
        b = tree.lookup(ROOT_ID, b"b", ROOT)
        assert a.nodeid == b.nodeid  # one inode, one node id
        assert a.nodeid != a.attr.ino  # node ids are the tree's own counter
        assert a.attr.ino == os.stat(tmp_path / "a").st_ino
        assert a.generation == 0
        tree.forget(a.nodeid, 1)
        assert tree.getattr(a.nodeid, None, ROOT)[0].nlink == 2  # b's lookup keeps it
        tree.forget(a.nodeid, 1)
        assert tree.statistics().inodes == 1


def test_lookup_never_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "etc").symlink_to("/etc")
    (tmp_path / "dotdot").symlink_to("..")
    (tmp_path / "loop").symlink_to("loop")
    with Tree(tmp_path) as tree:
        etc = tree.lookup(ROOT_ID, b"etc", ROOT)
        assert etc.attr.mode & 0o170000 == 0o120000  # the link itself
        assert tree.readlink(etc.nodeid, ROOT) == b"/etc"
        # Using a symlink as a directory does not go through it.
        assert err(lambda: tree.lookup(etc.nodeid, b"passwd", ROOT)) == errno.ENOTDIR
        assert err(lambda: tree.opendir(etc.nodeid, 0, ROOT)) == errno.ENOTDIR
        assert err(lambda: tree.open(etc.nodeid, os.O_RDONLY, ROOT)) == errno.ELOOP
        assert err(lambda: tree.create(etc.nodeid, b"x", 0o644, os.O_WRONLY, 0, ROOT)) \
            == errno.ENOTDIR
        assert not os.path.exists("/etc/x-msbfs-test")
        loop = tree.lookup(ROOT_ID, b"loop", ROOT)
        assert tree.readlink(loop.nodeid, ROOT) == b"loop"
        dd = tree.lookup(ROOT_ID, b"dotdot", ROOT)
        assert err(lambda: tree.lookup(dd.nodeid, b"tmp", ROOT)) == errno.ENOTDIR
        # Creating through a dangling symlink's name does not follow it either.
        (tmp_path / "dangle").symlink_to(str(tmp_path.parent / "outside-created"))
        assert err(lambda: tree.create(ROOT_ID, b"dangle", 0o644, os.O_WRONLY | os.O_CREAT,
                                       0, ROOT)) == errno.ELOOP
        assert not (tmp_path.parent / "outside-created").exists()


def test_dotdot_never_leaves_the_root(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    with Tree(tmp_path) as tree:
        up = tree.lookup(ROOT_ID, b"..", ROOT)
        assert up.nodeid == ROOT_ID
        assert up.attr.ino == os.stat(tmp_path).st_ino
        a = tree.lookup(ROOT_ID, b"a", ROOT)
        b = tree.lookup(a.nodeid, b"b", ROOT)
        assert tree.lookup(b.nodeid, b"..", ROOT).nodeid == a.nodeid
        assert tree.lookup(a.nodeid, b"..", ROOT).nodeid == ROOT_ID
        assert tree.lookup(b.nodeid, b".", ROOT).nodeid == b.nodeid
        # Creating ops refuse . and .. (they exist), never touching the parent.
        assert err(lambda: tree.mkdir(ROOT_ID, b"..", 0o755, 0, ROOT)) == errno.EEXIST
        assert err(lambda: tree.symlink(ROOT_ID, b"..", b"x", ROOT)) == errno.EEXIST
        assert err(lambda: tree.rename(ROOT_ID, b"..", ROOT_ID, b"x", 0, ROOT)) == errno.EBUSY


def test_directory_moved_out_of_the_root_has_no_parent(tmp_path: Path) -> None:
    """A directory renamed out of the root behind the tree's back (the host moved it)
    must not lead the client to the host's directories through ``..``."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    with Tree(root) as tree:
        a = tree.lookup(ROOT_ID, b"a", ROOT)
        b = tree.lookup(a.nodeid, b"b", ROOT)
        os.rename(root / "a", tmp_path / "moved")
        assert tree.lookup(b.nodeid, b".", ROOT).nodeid == b.nodeid
        assert err(lambda: tree.lookup(b.nodeid, b"..", ROOT)) == errno.ENOENT
        assert err(lambda: tree.lookup(a.nodeid, b"..", ROOT)) == errno.ENOENT
        os.rename(tmp_path / "moved", root / "back")
        assert tree.lookup(b.nodeid, b"..", ROOT).nodeid == a.nodeid
        assert tree.lookup(a.nodeid, b"..", ROOT).nodeid == ROOT_ID


def test_racing_symlink_swap_never_escapes(tmp_path: Path) -> None:
    """A thread keeps swapping a directory for a symlink to / while lookups run: every
    lookup either finds the directory's own entry or fails; none reaches the host's /.
    Both outcomes must really occur (the race ran), each counted."""
    import threading
    from collections import Counter
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "etc").mkdir()
    own_etc = os.stat(root / "d" / "etc").st_ino
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set():
            try:
                os.rename(root / "d", root / "d.real")
                os.symlink("/", root / "d")
                os.unlink(root / "d")
                os.rename(root / "d.real", root / "d")
                swaps += 1
            except OSError:
                pass

    th = threading.Thread(target=swapper)
    th.start()
    host_etc = os.stat("/etc").st_ino
    outcomes: Counter[str] = Counter()
    try:
        with Tree(root) as tree:
            # Not a time budget: run until both outcomes were seen often enough, with an
            # iteration bound only as the failure limit.
            for _ in range(200_000):
                if outcomes["found"] >= 50 and outcomes["etc:ENOTDIR"] >= 5:
                    break
                try:
                    d = tree.lookup(ROOT_ID, b"d", ROOT)
                except OSError as e:
                    outcomes[f"d:{errno.errorcode[e.errno]}"] += 1
                    continue
                try:
                    e = tree.lookup(d.nodeid, b"etc", ROOT)
                except OSError as ex:
                    outcomes[f"etc:{errno.errorcode[ex.errno]}"] += 1
                else:
                    assert e.attr.ino != host_etc
                    assert e.attr.ino == own_etc
                    outcomes["found"] += 1
                    tree.forget(e.nodeid, 1)
                tree.forget(d.nodeid, 1)
    finally:
        stop.set()
        th.join()
    # The race really ran: lookups found the directory, and some found the symlink in
    # its place (the lookup under it then fails ENOTDIR instead of reaching /etc).
    assert swaps > 0, outcomes
    assert outcomes["found"] >= 50 and outcomes["etc:ENOTDIR"] >= 5, outcomes
    # A failure is the name being gone or not a directory, never something else.
    allowed = {"d:ENOENT", "etc:ENOENT", "etc:ENOTDIR", "etc:ESTALE"}
    assert set(outcomes) - {"found"} <= allowed, outcomes


@pytest.fixture
def with_submount(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    (root / "mnt").mkdir(parents=True)
    (root / "plain").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "msbfs-test", str(root / "mnt")],
                   check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "mnt")], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_submount_distinct_inodes(with_submount: Path) -> None:
    root = with_submount
    (root / "mnt" / "f").write_bytes(b"on tmpfs")
    (root / "plainfile").write_bytes(b"")
    for announce in (True, False):
        with Tree(root, announce_submounts=announce) as tree:
            mnt = tree.lookup(ROOT_ID, b"mnt", ROOT)
            plain = tree.lookup(ROOT_ID, b"plain", ROOT)
            assert mnt.attr.submount is announce
            assert plain.attr.submount is False
            f = tree.lookup(mnt.nodeid, b"f", ROOT)
            assert f.attr.submount is False  # only the directory where the fs changes
            host = os.stat(root / "mnt" / "f")
            assert f.attr.ino != host.st_ino  # tagged: never collides with the root's fs
            assert f.attr.ino & ((1 << 48) - 1) == host.st_ino
            # Stable: the same file reports the same number every time, readdir agrees.
            assert tree.getattr(f.nodeid, None, ROOT)[0].ino == f.attr.ino
            fh = tree.opendir(mnt.nodeid, 0, ROOT).fh
            assert {e.name: e.ino for e in tree.readdir(fh, 0)}[b"f"] == f.attr.ino
            tree.releasedir(fh)
            m_id, f_id = mnt.nodeid, f.nodeid
            assert err(lambda t=tree, m=m_id: t.rename(m, b"f", ROOT_ID, b"g", 0, ROOT)) \
                == errno.EXDEV
            assert err(lambda t=tree, n=f_id: t.link(n, ROOT_ID, b"g", ROOT)) == errno.EXDEV
            assert tree.statfs(mnt.nodeid).blocks == 1024  # tmpfs size=4m in 4k blocks


def test_root_given_as_fd(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"1")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with Tree(fd, Policy()) as tree:
            assert tree.lookup(ROOT_ID, b"x", ROOT).attr.size == 1
        os.fstat(fd)  # the caller's fd is the caller's: still open
    finally:
        os.close(fd)


def test_walk_helper_agrees_with_host(tmp_path: Path) -> None:
    (tmp_path / "p" / "q").mkdir(parents=True)
    with Tree(tmp_path) as tree:
        node = walk(tree, "p/q")
        assert tree.getattr(node, None, ROOT)[0].ino == os.stat(tmp_path / "p" / "q").st_ino


def test_fd_limit_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """One fd per looked-up inode: the tree lifts the soft RLIMIT_NOFILE to the hard one
    so a large walk is bounded by the kernel's lookups, not by 1024."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 1024:
        pytest.skip("needs a finite hard limit above 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        with Tree(tmp_path):
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_ops_on_a_symlink_inode_act_on_the_link(tmp_path: Path) -> None:
    """Everything that goes through /proc/self/fd/N of a symlink's O_PATH fd reaches the
    link itself, never its target."""
    from msbfs.tree import FATTR_MODE, FATTR_SIZE, SetAttr
    (tmp_path / "target").write_bytes(b"data")
    (tmp_path / "link").symlink_to("target")
    with Tree(tmp_path) as tree:
        n = tree.lookup(ROOT_ID, b"link", ROOT).nodeid
        tree.link(n, ROOT_ID, b"hard", ROOT)
        assert os.path.islink(tmp_path / "hard")
        assert os.lstat(tmp_path / "link").st_nlink == 2
        assert err(lambda: tree.setxattr(n, b"user.x", b"1", 0, ROOT)) == errno.EPERM
        assert err(lambda: tree.setattr(n, SetAttr(valid=FATTR_MODE, mode=0o600), ROOT)) \
            == errno.EOPNOTSUPP
        assert err(lambda: tree.setattr(n, SetAttr(valid=FATTR_SIZE, size=0), ROOT)) \
            == errno.EINVAL
        assert (tmp_path / "target").read_bytes() == b"data"
        assert os.stat(tmp_path / "target").st_mode & 0o777 != 0o600
        assert os.listxattr(tmp_path / "target") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="open_by_handle_at needs CAP_DAC_READ_SEARCH")
def test_fd_cache_holds_more_inodes_than_fds(tmp_path: Path) -> None:
    """The kernel may hold lookups on far more inodes than the process may have fds:
    past the cache size the least recently used inode fds are closed and re-opened from
    file handles on demand, and every operation still reaches the right inode."""
    from msbfs.tree import SetAttr
    before = fd_count()
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(600):
        (src / f"f{i:03}").write_bytes(b"%d" % i)
    (src / "d" / "inner").write_bytes(b"inner")
    (src / "sym").symlink_to("f001")
    with Tree(src, max_inode_fds=50) as tree:
        baseline = fd_count()
        entries = {i: opened(tree, tree.lookup(ROOT_ID, f"f{i:03}".encode(), ROOT))
                   for i in range(600)}
        d = opened(tree, tree.lookup(ROOT_ID, b"d", ROOT))
        sym = opened(tree, tree.lookup(ROOT_ID, b"sym", ROOT))
        assert fd_count() <= baseline + 50 + 2  # the cache, plus one fd per mount
        stats = tree.statistics()
        assert stats.inodes == 603 and stats.extra["inode_fds"] <= 50 + 1  # + the root
        # Every inode still answers, through a re-opened fd, as itself.
        for i, e in entries.items():
            attr, _t = tree.getattr(e.nodeid, None, ROOT)
            assert attr.ino == os.stat(src / f"f{i:03}").st_ino
            assert attr.size == len(b"%d" % i)
        assert tree.statistics().extra["inode_fd_reopens"] > 0
        assert fd_count() <= baseline + 50 + 2
        assert tree.readlink(sym.nodeid, ROOT) == b"f001"
        inner = tree.lookup(d.nodeid, b"inner", ROOT)  # through an evicted parent dir
        assert inner.attr.size == 5
        fh = tree.open(entries[7].nodeid, os.O_RDWR, ROOT).fh
        assert tree.read(fh, 0, 10) == b"7"
        tree.release(fh)
        tree.setattr(entries[8].nodeid, SetAttr(valid=1, mode=0o600), ROOT)
        assert os.stat(src / "f008").st_mode & 0o777 == 0o600
        tree.setxattr(entries[9].nodeid, b"user.k", b"v", 0, ROOT)
        assert os.getxattr(src / "f009", b"user.k") == b"v"
        # A name removed while its inode's fd was closed: the inode is gone (ESTALE),
        # nothing else is opened in its place.
        victim = entries[0].nodeid
        for i in range(100, 200):  # make f000 the least recently used again
            tree.getattr(entries[i].nodeid, None, ROOT)
        os.unlink(src / "f000")
        (src / "f000").write_bytes(b"a different file")
        assert err(lambda: tree.getattr(victim, None, ROOT)) == errno.ESTALE
        # Forgetting everything closes every inode fd again.
        tree.batch_forget([(e.nodeid, 1) for e in entries.values()] +
                          [(d.nodeid, 1), (sym.nodeid, 1), (inner.nodeid, 1)])
        assert tree.statistics().inodes == 1
        assert fd_count() <= baseline + 2
    assert fd_count() == before


def test_unlinked_inodes_are_never_evicted(tmp_path: Path) -> None:
    """A file with no name left lives only through our fd: it stays pinned."""
    (tmp_path / "doomed").write_bytes(b"last words")
    for i in range(40):
        (tmp_path / f"f{i}").write_bytes(b"")
    with Tree(tmp_path, max_inode_fds=16) as tree:
        doomed = opened(tree, tree.lookup(ROOT_ID, b"doomed", ROOT))
        os.unlink(tmp_path / "doomed")
        for i in range(40):
            opened(tree, tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT))
        attr, _t = tree.getattr(doomed.nodeid, None, ROOT)
        assert attr.nlink == 0 and attr.size == 10


def test_fd_cache_off_without_file_handles() -> None:
    """procfs has no file handles: a tree over it cannot re-open a closed inode fd, so
    it never closes one (every inode keeps its fd, as without a cache)."""
    names = [n.encode() for n in os.listdir("/proc") if not n.isdigit()][:40]
    with Tree("/proc", max_inode_fds=16) as tree:
        found = 0
        for n in names:
            try:
                tree.lookup(ROOT_ID, n, ROOT)
                found += 1
            except OSError:
                continue
        assert found > 16
        stats = tree.statistics().extra
        assert stats["inode_fd_evictions"] == 0 and stats["inode_fds"] == found + 1


def test_fd_cache_can_be_turned_off(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"f{i}").write_bytes(b"")
    with Tree(tmp_path, max_inode_fds=0) as tree:
        for i in range(40):
            opened(tree, tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT))
        assert tree.statistics().extra["inode_fds"] == 41
        assert tree.statistics().extra["inode_fd_evictions"] == 0


def test_fd_cache_off_when_handles_cannot_be_reopened(tmp_path: Path) -> None:
    """An unprivileged process can make file handles but not open them (no
    CAP_DAC_READ_SEARCH): a cache asked for anyway must not strand any inode."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}").write_bytes(b"x" * i)
    src_fd = os.open(src, os.O_PATH)

    def sizes_as_1000() -> str:
        with Tree(src_fd, max_inode_fds=16) as tree:
            ids = [tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT).nodeid for i in range(40)]
            return repr([tree.getattr(n, None, ROOT)[0].size for n in ids])

    out = as_unprivileged_daemon(sizes_as_1000)
    os.close(src_fd)
    assert out == repr(list(range(40)))


def test_open_files_keep_their_inode_fd(tmp_path: Path) -> None:
    """An inode with an open handle is never evicted, so a file the host unlinks while a
    client has it open still answers getattr (nlink 0), even without the handle."""
    for i in range(60):
        (tmp_path / f"f{i}").write_bytes(b"")
    (tmp_path / "open").write_bytes(b"12345")
    with Tree(tmp_path, max_inode_fds=16) as tree:
        node = tree.lookup(ROOT_ID, b"open", ROOT).nodeid
        fh = tree.open(node, os.O_RDONLY, ROOT).fh
        for i in range(60):
            tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT)
        os.unlink(tmp_path / "open")
        attr, _t = tree.getattr(node, None, ROOT)
        assert attr.nlink == 0 and attr.size == 5
        tree.release(fh)
        # Everything open at once: the cache goes over its size rather than loop or fail.
        handles = [tree.open(tree.lookup(ROOT_ID, f"f{i}".encode(), ROOT).nodeid,
                             os.O_RDONLY, ROOT).fh for i in range(60)]
        assert tree.statistics().extra["inode_fds"] > 16
        for h in handles:
            tree.release(h)


def test_lookup_path_walks_with_client_lookups(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"12")
    (tmp_path / "a" / "ln").symlink_to("b")
    with Tree(tmp_path) as tree:
        e = lookup_path(tree, "a/b/f")
        assert e.attr.size == 2 and e.attr.ino == os.stat(tmp_path / "a/b/f").st_ino
        # only the result keeps a lookup, and it pins its parent while it is a named
        # node (csrc/inodes.h: opened beneath that parent at its first use)
        assert tree.statistics().inodes == 3
        assert lookup_path(tree, "a/./b/../b/f").nodeid == e.nodeid
        assert lookup_path(tree, "../../a/b/f").nodeid == e.nodeid  # .. stops at the root
        assert lookup_path(tree, "").nodeid == ROOT_ID
        assert err(lambda: lookup_path(tree, "a/ln/f")) == errno.ENOTDIR  # never followed
        assert err(lambda: lookup_path(tree, "/etc/passwd")) == errno.EINVAL
        assert err(lambda: lookup_path(tree, "a/missing")) == errno.ENOENT
        tree.forget(e.nodeid, 3)
        assert tree.statistics().inodes == 1
