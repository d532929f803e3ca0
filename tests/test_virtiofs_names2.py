"""RENAME, RENAME2, READLINK, SYMLINK and LINK answered in C (csrc/fuse_names2.c)
exactly as the Python codec and tree answer them: one request sequence goes through a
device with the C path on and one with it off (each over its own copy of one directory,
made and changed alike), through the in-tree vhost-user frontend; every reply must be
the same bytes, less an entry's inode number and times (tests/test_virtiofs_names.py's
rule), and the host trees the same afterwards (names, kinds, modes, owners, symlink
targets). The counters prove C answered; a quota keeps all but READLINK in Python."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from msbfs.fuse import abi
from msbfs.fuse.kernel import Opcode, Requests, parse_entry
from msbfs.tree import Policy
from tests.test_virtiofs_meta import ENTRY_ROOM, REQ, ROOT, U64, Step
from tests.test_virtiofs_names import ROOT_ONLY, _lookup_ids, _pair, _run_each

NOREPLACE, EXCHANGE, WHITEOUT = 1, 2, 4
HostChange = Callable[[Path], None]
LONG_TARGET = b"t" * 4000
EXTRA = 40


def _populate(root: Path) -> None:
    root.mkdir()
    (root / "f").write_bytes(b"x")
    (root / "g").write_bytes(b"gg")
    (root / "h").write_bytes(b"")
    (root / "d").mkdir()
    (root / "e").mkdir()
    (root / "full").mkdir()
    (root / "full" / "x").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "y").write_bytes(b"")
    (root / "sub" / "inner").mkdir()
    (root / "sg").mkdir()
    os.chmod(root / "sg", 0o2777)
    if os.geteuid() == 0:
        os.chown(root / "sg", 0, 3000)
    (root / ("n" * 255)).write_bytes(b"")
    (root / "link").symlink_to("f")
    (root / "dlink").symlink_to("d")
    (root / "out").symlink_to("/etc")           # out of the share: never followed
    (root / "long").symlink_to(LONG_TARGET.decode())
    (root / "away").mkdir()
    (root / "away" / "w").write_bytes(b"")
    (root / "moving").write_bytes(b"")
    for i in range(EXTRA):  # looked up to push the others' fds out of a small fd cache
        (root / f"e{i}").write_bytes(b"")


def _host_view(root: Path) -> list[tuple[str, int, int, int, str]]:
    out = []
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        target = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
        out.append((str(p.relative_to(root)), st.st_mode, st.st_uid, st.st_gid, target))
    return out


NODES = [b"f", b"g", b"d", b"e", b"full", b"sub", b"sg", b"link", b"dlink", b"out", b"long",
         b"away"]


def _rename_script(ids: dict[bytes, int]) -> list[Step | HostChange]:
    r = Requests(uid=1000, gid=1000)
    f, sub, link, out, away, d = (ids[n] for n in (b"f", b"sub", b"link", b"out", b"away", b"d"))

    def mv(p: int, a: bytes, np: int, b: bytes, room: int = 4096) -> Step:
        return (r.rename(p, a, np, b), [room], REQ)

    def mv2(p: int, a: bytes, np: int, b: bytes, flags: int, room: int = 4096) -> Step:
        return (r.rename2(p, a, np, b, flags), [room], REQ)

    def raw(op: int, p: int, body: bytes, **kw: int) -> Step:
        return (r.raw(op, p, body, **kw), [4096], REQ)

    n255, n256 = b"n" * 255, b"n" * 256
    pack, pack2 = abi.fuse_rename_in.pack, abi.fuse_rename2_in.pack
    return [
        # ordinary: a new name, back, over a file, across directories, both opcodes
        mv(ROOT, b"f", ROOT, b"f2"), mv2(ROOT, b"f2", ROOT, b"f", 0),
        mv(ROOT, b"h", ROOT, b"g"), mv(ROOT, b"g", sub, b"g"), mv2(sub, b"g", ROOT, b"g", 0),
        mv(ROOT, b"missing", ROOT, b"x"), mv(ROOT, b"f", ROOT, b"f"),
        # directories: over an empty one, over a non-empty one, file<->dir, into itself
        mv(ROOT, b"d", ROOT, b"full"), mv(ROOT, b"f", ROOT, b"e"), mv(ROOT, b"e", ROOT, b"g"),
        mv(ROOT, b"sub", sub, b"inner2"), mv(ROOT, b"sub", ids[b"sub"], b"x"),
        mv(ROOT, b"d", ROOT, b"e"), mv(ROOT, b"e", ROOT, b"d"),
        # flags: EXCHANGE a file and a dir, NOREPLACE onto an existing and a new name,
        # both at once (the kernel's EINVAL), WHITEOUT, unknown ones (the tree's EINVAL)
        mv2(ROOT, b"g", ROOT, b"d", EXCHANGE), mv2(ROOT, b"d", ROOT, b"g", EXCHANGE),
        mv2(ROOT, b"g", ROOT, b"missing", EXCHANGE),
        mv2(ROOT, b"g", ROOT, b"f", NOREPLACE), mv2(ROOT, b"g", ROOT, b"g3", NOREPLACE),
        mv2(ROOT, b"g3", ROOT, b"g", NOREPLACE | EXCHANGE),
        mv2(ROOT, b"g3", ROOT, b"g", WHITEOUT), mv2(ROOT, b"g", ROOT, b"g3", 8),
        mv2(ROOT, b"g3", ROOT, b"g", 0xFFFFFFFF), mv2(ROOT, b"g3", ROOT, b"g", 0),
        # names C hands back (the tree's EBUSY, EEXIST, EINVAL, ENOENT, ENAMETOOLONG)
        mv(ROOT, b".", ROOT, b"x"), mv(ROOT, b"..", ROOT, b"x"), mv(ROOT, b"f", ROOT, b"."),
        mv(ROOT, b"f", ROOT, b".."), mv2(ROOT, b"f", ROOT, b"..", NOREPLACE),
        mv(ROOT, b"sub/y", ROOT, b"y"), mv(ROOT, b"f", ROOT, b"sub/f"),
        mv(ROOT, b"", ROOT, b"x"), mv(ROOT, b"f", ROOT, b""),
        mv(ROOT, n256, ROOT, b"x"), mv(ROOT, b"f", ROOT, n256),
        mv(ROOT, n255, ROOT, b"m" * 255), mv(ROOT, b"m" * 255, ROOT, n255),
        # bodies: short, one name, no NUL, trailing bytes, extensions, a lying length
        raw(Opcode.RENAME, ROOT, pack(ROOT)[:7]), raw(Opcode.RENAME2, ROOT, pack2(ROOT, 0)[:12]),
        raw(Opcode.RENAME, ROOT, pack(ROOT) + b"f\0"), raw(Opcode.RENAME, ROOT, pack(ROOT) + b"f\0g"),
        raw(Opcode.RENAME, ROOT, pack(ROOT) + b"f"), raw(Opcode.RENAME, ROOT, pack(ROOT)),
        raw(Opcode.RENAME, ROOT, pack(ROOT) + b"f\0f1\0trailing"),
        raw(Opcode.RENAME2, ROOT, pack2(ROOT, 0) + b"f1\0f\0\0\0"),
        raw(Opcode.RENAME, ROOT, pack(ROOT) + b"f\0f1\0", extlen=1),
        raw(Opcode.RENAME, ROOT, pack(ROOT) + b"f\0f1\0", length=40),
        raw(Opcode.RENAME, ROOT, pack(ROOT) + b"f\0" + b"z" * 600 + b"\0"),
        mv(ROOT, b"f", ROOT, b"f1", room=15), mv(ROOT, b"f", ROOT, b"f1", room=0),
        mv(ROOT, b"f", ROOT, b"f1", room=16), mv(ROOT, b"f1", ROOT, b"f", room=16),
        # parents: unknown, a file, a symlink (inside, and out of the share: never
        # followed), as the old parent or the new one
        mv(0, b"f", ROOT, b"x"), mv(999, b"f", ROOT, b"x"), mv(U64, b"f", ROOT, b"x"),
        mv(ROOT, b"f", 0, b"x"), mv(ROOT, b"f", 999, b"x"), mv(ROOT, b"f", U64, b"x"),
        mv(f, b"x", ROOT, b"y"), mv(ROOT, b"g", f, b"y"), mv(link, b"x", ROOT, b"y"),
        mv(ROOT, b"g", out, b"passwd"), mv(out, b"passwd", ROOT, b"stolen"),
        mv(ROOT, b"g", ids[b"dlink"], b"y"),
        # symlinks as the names themselves: renamed, replaced, never followed
        mv(ROOT, b"out", ROOT, b"out2"), mv(ROOT, b"g", ROOT, b"out2"),
        mv(ROOT, b"out2", ROOT, b"g"), mv(ROOT, b"link", ROOT, b"dlink"),
        # the host renames things away mid-sequence: the name is gone (ENOENT); a parent
        # moved out of the root keeps its fd (both answer through it)
        lambda root: os.rename(root / "moving", root / "sub" / "moved"),
        mv(ROOT, b"moving", ROOT, b"m2"), mv(sub, b"moved", ROOT, b"moving"),
        lambda root: os.rename(root / "away", root.parent / "away"),
        mv(away, b"w", away, b"w2"), mv(away, b"w2", ROOT, b"w"), mv(ROOT, b"w", away, b"w"),
        mv(ROOT, b"away", ROOT, b"x"),
        lambda root: os.rmdir(root / "d") if (root / "d").is_dir() else None,
        mv(d, b"x", ROOT, b"y"), mv(ROOT, b"f", d, b"y"),
        (r.getattr(ROOT), [4096], REQ),
    ]


def _readlink_script(ids: dict[bytes, int]) -> list[Step | HostChange]:
    r = Requests(uid=1000, gid=1000)
    rl = r.readlink
    link, out, long = ids[b"link"], ids[b"out"], ids[b"long"]
    return [
        (rl(link), [4096], REQ), (rl(ids[b"dlink"]), [4096], REQ), (rl(out), [4096], REQ),
        (rl(long), [4096], REQ), (rl(long), [16 + 4000], REQ), (rl(long), [16 + 3999], REQ),
        (rl(link), [17], REQ), (rl(link), [16], REQ), (rl(link), [15], REQ), (rl(link), [0], REQ),
        (rl(ids[b"f"]), [4096], REQ), (rl(ids[b"d"]), [4096], REQ), (rl(ROOT), [4096], REQ),
        (rl(0), [4096], REQ), (rl(999), [4096], REQ), (rl(U64), [4096], REQ),
        (r.raw(Opcode.READLINK, link, b"ignored\0"), [4096], REQ),
        (r.raw(Opcode.READLINK, link, b"", extlen=1), [4096], REQ),
        # the host replaces the target behind the node's fd: the fd's link is read
        lambda root: os.rename(root / "link", root / "link.old"),
        lambda root: (root / "link").symlink_to("g"),
        (rl(link), [4096], REQ), (r.lookup(ROOT, b"link"), [4096], REQ),
    ]


def _symlink_script(ids: dict[bytes, int]) -> list[Step | HostChange]:
    f, sg, sub, out = (ids[n] for n in (b"f", b"sg", b"sub", b"out"))
    steps: list[Step | HostChange] = []
    for uid, gid in ((0, 0), (1000, 1000), (1000, 2000), (0, 1000)):
        r = Requests(uid=uid, gid=gid)
        tag = b"%d-%d-" % (uid, gid)
        for parent in (ROOT, sg, sub):
            for i, target in enumerate((b"f", b"../../../etc/passwd", b"/etc", b"x" * 255)):
                steps.append((r.symlink(parent, tag + b"%d" % i, target), [4096], REQ))
            steps.append((r.readlink(ids[b"link"]), [4096], REQ))
    r = Requests(uid=1000, gid=1000)
    steps += [
        (r.symlink(ROOT, b"empty", b""), [4096], REQ),                 # the host's ENOENT
        (r.symlink(ROOT, b"t4095", b"t" * 4095), [4096], REQ),
        (r.symlink(ROOT, b"t4096", b"t" * 4096), [4096], REQ),        # the tree's ENAMETOOLONG
        (r.symlink(ROOT, b"f", b"x"), [4096], REQ), (r.symlink(ROOT, b"link", b"x"), [4096], REQ),
        (r.symlink(ROOT, b".", b"x"), [4096], REQ), (r.symlink(ROOT, b"..", b"x"), [4096], REQ),
        (r.symlink(ROOT, b"", b"x"), [4096], REQ), (r.symlink(ROOT, b"a/b", b"x"), [4096], REQ),
        (r.symlink(ROOT, b"n" * 256, b"x"), [4096], REQ),
        (r.symlink(ROOT, b"s" * 255, b"x"), [4096], REQ),
        (r.symlink(f, b"x", b"x"), [4096], REQ), (r.symlink(out, b"x", b"x"), [4096], REQ),
        (r.symlink(0, b"x", b"x"), [4096], REQ), (r.symlink(999, b"x", b"x"), [4096], REQ),
        (r.symlink(U64, b"x", b"x"), [4096], REQ),
        (Requests(uid=0xFFFFFFFF).symlink(ROOT, b"noid", b"x"), [4096], REQ),
        (Requests(gid=0xFFFFFFFF).symlink(ROOT, b"noid", b"x"), [4096], REQ),
        (r.raw(Opcode.SYMLINK, ROOT, b"only\0"), [4096], REQ),
        (r.raw(Opcode.SYMLINK, ROOT, b"nonul"), [4096], REQ),
        (r.raw(Opcode.SYMLINK, ROOT, b""), [4096], REQ),
        (r.raw(Opcode.SYMLINK, ROOT, b"tr\0x\0trailing"), [4096], REQ),
        (r.raw(Opcode.SYMLINK, ROOT, b"ext\0x\0", extlen=1), [4096], REQ),
        (r.symlink(ROOT, b"room", b"x"), [ENTRY_ROOM - 1], REQ),
        (r.symlink(ROOT, b"room", b"x"), [16], REQ), (r.symlink(ROOT, b"room", b"x"), [4096], REQ),
        lambda root: os.rename(root / "sub", root.parent / "sub"),      # moved out: its fd
        (r.symlink(sub, b"outside", b"x"), [4096], REQ),
        lambda root: os.rename(root.parent / "sub" / "inner", root.parent / "inner"),
        lambda root: os.rmdir(root.parent / "inner"),
        (r.lookup(ROOT, b"room"), [4096], REQ), (r.getattr(ROOT), [4096], REQ),
    ]
    return steps


def _link_script(ids: dict[bytes, int]) -> list[Step | HostChange]:
    r = Requests(uid=1000, gid=1000)
    f, g, d, sub, link, out = (ids[n] for n in (b"f", b"g", b"d", b"sub", b"link", b"out"))
    ln = r.link
    return [
        (ln(f, ROOT, b"f-1"), [4096], REQ), (ln(f, sub, b"f-2"), [4096], REQ),
        (ln(f, ROOT, b"f-1"), [4096], REQ), (ln(f, ROOT, b"g"), [4096], REQ),      # EEXIST
        (ln(d, ROOT, b"d-1"), [4096], REQ),                                        # EPERM
        (ln(link, ROOT, b"link-1"), [4096], REQ), (ln(out, sub, b"out-1"), [4096], REQ),
        (r.readlink(link), [4096], REQ),
        (ln(f, ROOT, b"."), [4096], REQ), (ln(f, ROOT, b".."), [4096], REQ),
        (ln(f, ROOT, b""), [4096], REQ), (ln(f, ROOT, b"a/b"), [4096], REQ),
        (ln(f, ROOT, b"n" * 256), [4096], REQ), (ln(f, ROOT, b"l" * 255), [4096], REQ),
        (ln(0, ROOT, b"x"), [4096], REQ), (ln(999, ROOT, b"x"), [4096], REQ),
        (ln(U64, ROOT, b"x"), [4096], REQ), (ln(f, 999, b"x"), [4096], REQ),
        (ln(f, 0, b"x"), [4096], REQ), (ln(f, g, b"x"), [4096], REQ),
        (ln(f, link, b"x"), [4096], REQ), (ln(f, out, b"x"), [4096], REQ),
        (r.raw(Opcode.LINK, ROOT, abi.fuse_link_in.pack(f)), [4096], REQ),
        (r.raw(Opcode.LINK, ROOT, abi.fuse_link_in.pack(f)[:4]), [4096], REQ),
        (r.raw(Opcode.LINK, ROOT, abi.fuse_link_in.pack(f) + b"nonul"), [4096], REQ),
        (r.raw(Opcode.LINK, ROOT, abi.fuse_link_in.pack(f) + b"t\0rail"), [4096], REQ),
        (r.raw(Opcode.LINK, ROOT, abi.fuse_link_in.pack(f) + b"e\0", extlen=1), [4096], REQ),
        (ln(f, ROOT, b"room"), [ENTRY_ROOM - 1], REQ), (ln(f, ROOT, b"room"), [16], REQ),
        (ln(f, ROOT, b"room"), [ENTRY_ROOM], REQ),
        # the host unlinks every name of g: the fd still holds it (linked back by fd)
        lambda root: os.unlink(root / "g"),
        (ln(g, ROOT, b"g-back"), [4096], REQ),
        # a forget of the new lookups: the link counted one each, as Python does
        (r.forget(f, 3), [0], REQ), (r.getattr(f), [4096], REQ),
        lambda root: os.rename(root / "sub", root.parent / "sub"),
        (ln(f, sub, b"f-3"), [4096], REQ),
        lambda root: os.rename(root.parent / "sub", root / "sub"),
        (r.getattr(f), [4096], REQ), (r.getattr(ROOT), [4096], REQ),
    ]


POLICIES: dict[str, tuple[Policy, dict[str, Any]]] = {
    "default": (Policy(), {}),
    "readonly": (Policy(readonly=True), {}),
    "nosuid-nodev": (Policy(nosuid=True, nodev=True), {}),
    "quota": (Policy(quota_bytes=64 << 20, quota_inodes=500), {}),  # Python's, but READLINK
    # the smallest fd cache, overrun by lookups after the nodes the script uses: their
    # fds (parents, old nodes) are re-opened from their handles first
    "evicting": (Policy(), {"max_inode_fds": 1}),
}

SCRIPTS = {"rename": _rename_script, "readlink": _readlink_script,
           "symlink": _symlink_script, "link": _link_script}
COUNTER = {"rename": "renames", "readlink": "readlinks", "symlink": "symlinks",
           "link": "links"}


@ROOT_ONLY
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("op", list(SCRIPTS))
async def test_c_and_python_reply_the_same_bytes(
        fs_client: Callable[..., Any], tmp_path: Path, op: str, policy: str) -> None:
    """Each opcode's sequence, ordinary and hostile, as uid 1000 (and other callers for
    SYMLINK's owners): the same replies, the same host trees, the same inode table; C
    answered (its counter), and a quota or readonly tree keeps its rule."""
    pol, tree_kw = POLICIES[policy]
    async with _pair(fs_client, tmp_path, _populate, pol, **tree_kw) as (on, off, roots):
        ids = await _lookup_ids(on, off, NODES, opened=policy == "evicting")
        if policy == "evicting":
            await _lookup_ids(on, off, [b"e%d" % i for i in range(EXTRA)], opened=True)
        steps = SCRIPTS[op](ids)
        got = [await _run_each(c, root, steps) for c, root in ((on, roots[0]), (off, roots[1]))]
        for i, (a, b) in enumerate(zip(*got, strict=True)):
            assert a == b, f"reply {i}: C {a!r} != Python {b!r}"
        views = [_host_view(root) for root in roots]
        assert views[0] == views[1]
        outside = [_host_view(root.parent) for root in roots]  # what moved out, alike
        assert [v for v in outside[0] if not v[0].startswith("root")] == \
               [v for v in outside[1] if not v[0].startswith("root")]
        assert on.device.tree.statistics().inodes == off.device.tree.statistics().inodes
        if policy == "evicting":
            assert on.device.tree.statistics().extra["inode_fd_evictions"] > 0
        served = on.device.meta.names2_statistics()[COUNTER[op]]
        if policy == "quota" and op != "readlink":
            assert served == 0
            # what Python charged (a replaced file freed, a symlink made, a parent
            # grown) is the same on both sides
            used = [c.device.tree.statistics() for c in (on, off)]
            assert used[0].quota_used_inodes == used[1].quota_used_inodes
            assert used[0].quota_used_bytes == used[1].quota_used_bytes
        else:
            assert served >= 10, served
        assert off.device.meta.names2_statistics()[COUNTER[op]] == 0
        if policy == "readonly" and op != "readlink":  # nothing changed but by the host
            ref = tmp_path / "ref" / "root"
            ref.parent.mkdir()
            _populate(ref)
            for step in steps:
                if callable(step):
                    step(ref)
            assert _host_view(roots[0]) == _host_view(ref)
        assert Path("/etc/passwd").exists() and not (roots[0] / "stolen").exists()


@ROOT_ONLY
async def test_rename_keeps_node_ids(fs_client: Callable[..., Any], tmp_path: Path) -> None:
    """The inode table keys by (dev, ino), never by name: after a C rename the node id
    still names the file (GETATTR through it), a LOOKUP of the new name gives the same
    id, and the old name is gone."""
    (tmp_path / "a").write_bytes(b"abc")
    async with fs_client(tmp_path) as c:
        a = parse_entry(await c.ok(c.r.lookup(ROOT, b"a"))).nodeid
        assert (await c.call(c.r.rename2(ROOT, b"a", ROOT, b"b", NOREPLACE))).error == 0
        assert c.device.meta.names2_statistics()["renames"] == 1
        assert parse_entry(await c.ok(c.r.lookup(ROOT, b"b"))).nodeid == a
        assert (await c.call(c.r.lookup(ROOT, b"a"))).error == 2
        assert (await c.call(c.r.getattr(a))).error == 0
        assert (tmp_path / "b").read_bytes() == b"abc"


@ROOT_ONLY
async def test_names2_on_four_queues_at_once(fs_client: Callable[..., Any],
                                             tmp_path: Path) -> None:
    """Four request queues, each on its own serving thread and as its own user, make
    symlinks (owned by that user), hard links of one shared file (each counting one
    lookup of its node id, forgotten again by the queue right after), rename their
    symlinks and read them back through their node ids, then forget them: every
    answer is the one a lone thread gives, the shared file ends with every link, and
    the table ends as it began (nothing counted twice or lost)."""
    import trio
    (tmp_path / "f").write_bytes(b"")
    n = 32
    async with fs_client(tmp_path, request_queues=4) as c:
        r = c.r
        f = parse_entry(await c.ok(r.lookup(ROOT, b"f"))).nodeid
        inodes = c.device.tree.statistics().inodes
        before = c.device.meta.names2_statistics()
        errors: dict[int, list[int]] = {}

        def err(d: Any) -> int:
            return int(abi.fuse_out_header.unpack_from(bytes(d.data[:16]))[1])

        async def one_queue(q: int) -> None:
            user = Requests(uid=1000 + q, gid=1000 + q)
            mine = errors[q] = []
            for k in range(0, n, 8):
                reqs = [x for i in range(k, k + 8) for x in (
                    ([user.symlink(ROOT, b"s%d-%d" % (q, i), b"f")], [ENTRY_ROOM]),
                    ([user.link(f, ROOT, b"l%d-%d" % (q, i))], [ENTRY_ROOM]))]
                done = await c.fe.submit_many(q, reqs)
                mine += [err(d) for d in done]
                made = [parse_entry(bytes(d.data[16:ENTRY_ROOM])).nodeid for d in done[::2]]
                reqs = [x for i, s in zip(range(k, k + 8), made, strict=True) for x in (
                    ([r.forget(f, 1)], [0]),
                    ([user.rename2(ROOT, b"s%d-%d" % (q, i), ROOT, b"r%d-%d" % (q, i),
                                   NOREPLACE)], [64]),
                    ([user.readlink(s)], [64]), ([r.forget(s, 1)], [0]))]
                done = await c.fe.submit_many(q, reqs)
                mine += [err(d) for d, (req, _) in zip(done, reqs, strict=True)
                         if int.from_bytes(req[0][4:8], "little") != Opcode.FORGET]
                mine += [int(bytes(d.data[16:17]) == b"f") - 1 for d in done[2::4]]

        async with trio.open_nursery() as nursery:
            for q in range(1, 5):
                nursery.start_soon(one_queue, q)
        for mine in errors.values():
            assert mine == [0] * (2 * n + 2 * n + n)
        after = c.device.meta.names2_statistics()
        assert {k: after[k] - before[k] for k in after} == {
            "renames": 4 * n, "readlinks": 4 * n, "symlinks": 4 * n, "links": 4 * n}
        assert (tmp_path / "f").stat().st_nlink == 1 + 4 * n
        for q in range(1, 5):
            for i in range(n):
                p = tmp_path / f"r{q}-{i}"
                assert os.readlink(p) == "f" and p.lstat().st_uid == 1000 + q
        assert c.device.tree.statistics().inodes == inodes
        assert (await c.call(r.getattr(f))).error == 0
