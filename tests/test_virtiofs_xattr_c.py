"""GETXATTR and LISTXATTR answered in C (csrc/fuse_xattr.c) exactly as the Python codec
and tree answer them: the same ordinary and hostile request sequences go through a
device with the C path on and one with it off, over the same directory, through the
in-tree vhost-user frontend, and every reply must be the same bytes
(tests/test_virtiofs_meta.py's rule). Under the default xattr map, with POSIX ACLs,
under maps that pass, rename or refuse ``security.*``, under nosuid, with xattrs off,
and under a map whose answer depends on the caller (C must leave that name to Python).
Also: C really answered (its counters), and it answers no name the tree's rule did not
decide for every caller."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from msbfs.fastxattr import HOT_NAMES, compile_hot
from msbfs.fuse import abi
from msbfs.fuse.kernel import Opcode, Requests, parse_entry
from msbfs.tree import Policy, Tree
from tests.test_tree_inodes import with_submount  # noqa: F401  (a fixture)
from tests.test_virtiofs_meta import REQ, ROOT, U64, HostStep, Step, _both

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0,
                               reason="needs root (security.* and trusted.* on the host)")

# VFS_CAP_REVISION_2 with CAP_NET_RAW (13) permitted and effective: 20 bytes.
CAP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
SELINUX = b"system_u:object_r:etc_t:s0\0"   # 27 bytes
_UNDEF = 0xFFFFFFFF


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as the xattr carries it (version 2, then tag/perm/id entries)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


#: user::rw- user:1000:rwx group::r-- mask::rwx other::r--: 44 bytes, not a mode alone
ACL = _acl((0x01, 6, _UNDEF), (0x02, 7, 1000), (0x04, 4, _UNDEF), (0x10, 7, _UNDEF),
           (0x20, 4, _UNDEF))
PREFIX = b"user.virtiofs."

MAPS = {
    # name: (tree keywords, policy)
    "default": ({}, Policy()),
    "posix-acl": ({"posix_acl": True}, Policy()),
    "pass-security": ({"xattrmap": ":ok:all:::"}, Policy()),
    "nosuid-pass": ({"xattrmap": ":ok:all:::"}, Policy(nosuid=True)),
    "rename-security": ({"xattrmap": ":prefix:all:security.:user.virtiofs.: "
                                     ":ok:all:::"}, Policy()),
    "refuse-security": ({"xattrmap": ":unsupported:all:security.:security.: :ok:all:::"},
                        Policy()),
    "map-everything": ({"xattrmap": ":map::user.virtiofs.:"}, Policy()),
    # the caller decides: root reads trusted.*, others get ENODATA (XattrRule)
    "security-as-trusted": ({"xattrmap": ":prefix:all:security.:trusted.virtiofs.: "
                                         ":ok:all:::"}, Policy()),
    "off": ({"xattr": False}, Policy()),
}


def _populate(root: Path, big: bool) -> None:
    """Files with and without xattrs, on the host, in the namespaces every map sees
    differently. ``big``: values past C's stack buffer too (tmpfs takes them)."""
    (root / "plain").write_bytes(b"")
    (root / "d").mkdir()
    (root / "cap").write_bytes(b"\x7fELF")
    os.setxattr(root / "cap", "security.capability", CAP)
    os.setxattr(root / "cap", "user.x", b"u")
    (root / "acl").write_bytes(b"")
    os.setxattr(root / "acl", "system.posix_acl_access", ACL)
    (root / "dacl").mkdir()
    os.setxattr(root / "dacl", "system.posix_acl_default", ACL)
    (root / "sel").write_bytes(b"")
    os.setxattr(root / "sel", "security.selinux", SELINUX)
    (root / "priv").write_bytes(b"")
    os.setxattr(root / "priv", "trusted.t", b"host's own")
    os.setxattr(root / "priv", "trusted.virtiofs.security.capability", CAP)
    os.setxattr(root / "priv", "security.foo", b"label")
    (root / "mapped").write_bytes(b"")
    os.setxattr(root / "mapped", PREFIX + b"security.capability", b"v" * 3000)
    os.setxattr(root / "mapped", PREFIX + b"security.selinux", b"")   # empty value
    os.setxattr(root / "mapped", PREFIX + b"system.posix_acl_access", b"a" * 20)
    (root / "link").symlink_to("cap")
    os.mkfifo(root / "fifo")
    if big:
        (root / "big").write_bytes(b"")
        os.setxattr(root / "big", PREFIX + b"security.capability", b"c" * 4097)
        os.setxattr(root / "big", PREFIX + b"security.selinux", b"s" * 4096)
        os.setxattr(root / "big", "security.selinux", b"S" * 6000)


NODES = ("plain", "d", "cap", "acl", "dacl", "sel", "priv", "mapped", "link", "fifo", "big")
NAMES = (*HOT_NAMES, b"user.x", b"trusted.t")
SIZES = (0, 1, 19, 20, 21, 27, 44, 2999, 3000, 4096, 4097, 6000, 65536, 0xFFFFFFFF)
ROOMS = (8, 16, 17, 23, 24, 35, 36, 37, 43, 60, 61, 3015, 3016, 3017, 4111, 4112, 4113,
         6016, 60000)


def _script(r: Requests, ids: dict[str, int], root: Path) -> list[Step | HostStep]:
    def get(node: int, name: bytes, size: int, room: int = 8192) -> Step:
        return (r.getxattr(node, name, size), [room], REQ)

    def lst(node: int, size: int, room: int = 8192) -> Step:
        return (r.listxattr(node, size), [room], REQ)

    def raw(op: int, node: int, body: bytes, room: int = 4096, **kw: int) -> Step:
        return (r.raw(op, node, body, **kw), [room], REQ)

    size_in = abi.fuse_getxattr_in.pack
    cap = ids["cap"]
    steps: list[Step | HostStep] = []
    # every name on every node, at sizes around each value's length
    for node in ids.values():
        steps += [get(node, name, size) for name in NAMES for size in SIZES]
        steps += [lst(node, size) for size in (0, 1, 8, 4096, 0xFFFFFFFF)]
    # reply rooms around each value's length: 20, 27, 44, 3000, 4096, 6000 bytes
    for key in ("cap", "sel", "acl", "mapped", "big"):
        if key in ids:
            steps += [get(ids[key], name, size, room) for name in HOT_NAMES
                      for size in (0, 44, 4096, 0xFFFFFFFF) for room in ROOMS]
    for key in ("plain", "cap"):
        steps += [lst(ids[key], size, room) for size in (0, 4096) for room in ROOMS]
    steps += [
        # unknown node ids
        get(0, b"security.capability", 64), get(999, b"security.capability", 64),
        get(U64, b"security.capability", 0), lst(0, 64), lst(999, 0), lst(U64, 64),
        # bodies C must hand back: short, no name, unterminated, long names, trailing
        # bytes after the NUL, extensions, a lying length
        raw(Opcode.GETXATTR, cap, b""), raw(Opcode.GETXATTR, cap, b"\0\1\0\0"),
        raw(Opcode.GETXATTR, cap, size_in(64)),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"security.capability"),
        raw(Opcode.GETXATTR, cap, size_in(0) + b"system.posix_acl_access"),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"\0"),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"security.capability\0trailing"),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"security.capability\0\0"),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"security.capabilit\0"),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"security.capabilityy\0"),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"security.capability" + b"x" * 300 + b"\0"),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"user." + b"x" * 250 + b"\0"),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"user." + b"x" * 251 + b"\0"),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"security.capability\0", extlen=1),
        raw(Opcode.GETXATTR, cap, size_in(64) + b"security.capability\0", length=30),
        raw(Opcode.LISTXATTR, cap, b""), raw(Opcode.LISTXATTR, cap, b"\0\0\0"),
        raw(Opcode.LISTXATTR, ids["plain"], size_in(64) + b"junk"),
        raw(Opcode.LISTXATTR, ids["plain"], size_in(64), extlen=1),
    ]
    # the host changes a node's xattrs between requests (both devices see each change)
    plain = ids["plain"]

    def host(change: Callable[[Path], None]) -> HostStep:
        return lambda: change(root)

    steps += [
        host(lambda p: os.setxattr(p / "plain", "security.capability", CAP)),
        get(plain, b"security.capability", 0), get(plain, b"security.capability", 64),
        lst(plain, 0), lst(plain, 4096),
        host(lambda p: os.removexattr(p / "plain", "security.capability")),
        get(plain, b"security.capability", 64), lst(plain, 0), lst(plain, 64),
    ]
    return steps


@asynccontextmanager
async def _pair(fs_client: Callable[..., Any], root: Path, config: str) -> Any:
    """Two devices over one directory, C on and off."""
    tree_kw, policy = MAPS[config]
    async with fs_client(root, policy, **tree_kw) as on, fs_client(root, policy, **tree_kw) as off:
        off.device.meta.enabled = False
        assert on.device.meta.enabled
        yield on, off


async def _ids(on: Any, off: Any) -> dict[str, int]:
    ids = {}
    for name in NODES:
        got = [await c.call(c.r.lookup(ROOT, name.encode())) for c in (on, off)]
        assert got[0].error == got[1].error
        if got[0].error == 0:
            ids[name] = parse_entry(got[0].payload).nodeid
            assert parse_entry(got[1].payload).nodeid == ids[name]
    ids["root"] = ROOT
    return ids


@pytest.fixture(params=["ext4", "tmpfs"])
def share(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """The shared directory: on the test's own filesystem, or on tmpfs, where values
    larger than C's 4 KiB buffer exist."""
    if request.param == "ext4":
        root = tmp_path / "root"
        root.mkdir()
        _populate(root, big=False)
        yield root
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        _populate(Path(d), big=True)
        yield Path(d)


@ROOT_ONLY
@pytest.mark.parametrize("config", list(MAPS))
async def test_getxattr_listxattr_c_and_python_reply_the_same_bytes(
        fs_client: Callable[..., Any], share: Path, config: str) -> None:
    async with _pair(fs_client, share, config) as (on, off):
        ids = await _ids(on, off)
        for uid in (1000, 0):
            steps = _script(Requests(uid=uid, gid=uid), ids, share)
            assert await _both(on, off, steps) == len(steps)
        served = on.device.meta.xattr_statistics()
        assert off.device.meta.xattr_statistics() == dict.fromkeys(served, 0)
        if config == "off":
            assert served["enosys"] > 1000 and served["getxattrs"] == 0
            return
        hot = compile_hot(on.device.tree)
        assert served["listxattrs"] > 50 and served["enosys"] == 0
        # each tabled name is C's on every node it reached the host for
        assert served["getxattrs"] > 100 * len(hot)
        if config == "security-as-trusted":  # the caller decides: none of those in C
            assert sorted(hot) == [b"system.posix_acl_access", b"system.posix_acl_default"]
        else:
            assert sorted(hot) == sorted(HOT_NAMES)


@ROOT_ONLY
async def test_c_answers_only_names_the_rule_decided_for_every_caller(
        fs_client: Callable[..., Any], tmp_path: Path) -> None:
    """What the differential test cannot tell apart: under a map that sends
    security.capability to trusted.*, C answers it for nobody (root's answer differs
    from everyone else's), and the host value reaches root only."""
    _populate(tmp_path, big=False)
    tree_kw, policy = MAPS["security-as-trusted"]
    async with fs_client(tmp_path, policy, **tree_kw) as c:
        priv = parse_entry(await c.ok(c.r.lookup(ROOT, b"priv"))).nodeid
        before = c.device.meta.xattr_statistics()["getxattrs"]
        for uid, value in ((0, CAP), (1000, None)):
            r = Requests(uid=uid, gid=uid)
            reply = await c.call(r.getxattr(priv, b"security.capability", 64))
            assert (reply.payload if value else reply.error) == (value or 61)  # ENODATA
        assert c.device.meta.xattr_statistics()["getxattrs"] == before
        await c.call(c.r.getxattr(priv, b"system.posix_acl_access", 64))
        assert c.device.meta.xattr_statistics()["getxattrs"] == before + 1


@ROOT_ONLY
async def test_host_privileged_xattrs_stay_hidden(fs_client: Callable[..., Any],
                                                  tmp_path: Path) -> None:
    """What a client must see of the host's own security.* and trusted.* under the
    default map, whoever asks, whether C or Python answers: nothing (DESIGN.md, "Trust
    and permissions"). The differential test alone would pass if both sides leaked."""
    _populate(tmp_path, big=False)
    async with fs_client(tmp_path, Policy()) as c:
        ids = {n: parse_entry(await c.ok(c.r.lookup(ROOT, n.encode()))).nodeid
               for n in ("cap", "sel", "priv")}
        before = c.device.meta.xattr_statistics()["getxattrs"]
        for uid in (0, 1000):
            r = Requests(uid=uid, gid=uid)
            for node, name in ((ids["cap"], b"security.capability"),
                               (ids["sel"], b"security.selinux"),
                               (ids["priv"], b"security.foo"), (ids["priv"], b"trusted.t")):
                for size in (0, 4096):
                    assert (await c.call(r.getxattr(node, name, size))).error == 61  # ENODATA
            assert (await c.ok(r.listxattr(ids["cap"], 4096))).split(b"\0") == [b"user.x", b""]
            assert await c.ok(r.listxattr(ids["priv"], 4096)) == b""
            assert await c.ok(r.listxattr(ids["sel"], 4096)) == b""
        # the two hot names, four times each, were C's
        assert c.device.meta.xattr_statistics()["getxattrs"] == before + 8


@ROOT_ONLY
async def test_other_filesystems_stay_python(fs_client: Callable[..., Any],
                                             with_submount: Path) -> None:  # noqa: F811
    """A node on another filesystem than the root's (the tree tags its inode numbers:
    fuse_meta.c's rule) is Python's, for GETXATTR and LISTXATTR alike; the same
    requests on the root's filesystem are C's."""
    root = with_submount
    (root / "mnt" / "f").write_bytes(b"")
    (root / "plain" / "f").write_bytes(b"")
    async with fs_client(root, Policy()) as c:
        async def node(*path: bytes) -> int:
            nid = ROOT
            for name in path:
                nid = parse_entry(await c.ok(c.r.lookup(nid, name))).nodeid
            return nid

        async def served(nid: int) -> tuple[int, int]:
            before = c.device.meta.xattr_statistics()
            assert (await c.call(c.r.getxattr(nid, b"security.capability", 0))).error == 61
            assert await c.ok(c.r.listxattr(nid, 64)) == b""
            after = c.device.meta.xattr_statistics()
            return (after["getxattrs"] - before["getxattrs"],
                    after["listxattrs"] - before["listxattrs"])

        assert await served(await node(b"mnt")) == (0, 0)
        assert await served(await node(b"mnt", b"f")) == (0, 0)
        assert await served(await node(b"plain", b"f")) == (1, 1)


def test_hot_names_are_the_rules_answers(tmp_path: Path) -> None:
    """The table C looks answers up in is the tree's own rule run for each name (under
    the default map security.* is ENODATA, ACLs off are EOPNOTSUPP; a renaming map's
    host names), never a second copy."""
    cases = {
        "default": {b"security.capability": 61, b"security.selinux": 61,
                    b"system.posix_acl_access": 95, b"system.posix_acl_default": 95},
        "posix-acl": {b"system.posix_acl_access": b"system.posix_acl_access"},
        "nosuid-pass": {b"security.capability": 61, b"security.selinux": b"security.selinux"},
        "rename-security": {b"security.capability": PREFIX + b"security.capability"},
        "refuse-security": {b"security.capability": 95},
        "map-everything": {b"system.posix_acl_access": 95,
                           b"security.selinux": PREFIX + b"security.selinux"},
    }
    for config, want in cases.items():
        tree_kw, policy = MAPS[config]
        with Tree(tmp_path, policy, **tree_kw) as tree:
            hot = compile_hot(tree)
            assert {k: hot[k] for k in want} == want, config
