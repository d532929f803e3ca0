"""SETATTR answered in C (csrc/fuse_setattr.c) exactly as the Python codec and tree
answer it: the same ordinary and hostile request sequences go through a device with the
C path on and one with it off, through the in-tree vhost-user frontend, and every reply
must be the same bytes (tests/test_virtiofs_meta.py's rule), the host the same
afterwards (modes, owners and the times a request set), and C's counters must show it
answered. Each device serves its own copy of one directory, made alike with the same
times, so a reply differs only in what two copies cannot share: the inode number, the
ctime (every change sets it to "now") and a time the request set to "now" (compared
as being one)."""

from __future__ import annotations

import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from msbfs.fuse import abi
from msbfs.fuse.kernel import Opcode, Requests, parse_open
from msbfs.tree import Policy
from msbfs.tree import types as t
from tests.test_virtiofs_meta import REQ, U64, Step
from tests.test_virtiofs_names import ATTR_REPLY, _lookup_ids, _masked, _pair, _run_each

MODE, UID, GID, SIZE = t.FATTR_MODE, t.FATTR_UID, t.FATTR_GID, t.FATTR_SIZE
ATIME, MTIME, FH = t.FATTR_ATIME, t.FATTR_MTIME, t.FATTR_FH
ATIME_NOW, MTIME_NOW = t.FATTR_ATIME_NOW, t.FATTR_MTIME_NOW
LOCKOWNER, CTIME, KILL = t.FATTR_LOCKOWNER, t.FATTR_CTIME, t.FATTR_KILL_SUIDGID
TIMES = ATIME | MTIME | ATIME_NOW | MTIME_NOW
#: the made-alike times of every node (a day after the epoch: an old, ordinary time)
T0 = 86400 * 1_000_000_000 + 123
NODES = [b"f", b"setid", b"x", b"d", b"link", b"fifo", b"null", b"g", b"gone"]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, chown)")
SETATTR_IN = abi.fuse_setattr_in


def _populate(root: Path) -> None:
    root.mkdir()
    for name, mode in (("f", 0o644), ("setid", 0o6755), ("x", 0o755), ("g", 0o640),
                       ("gone", 0o600)):
        (root / name).write_bytes(b"data")
        os.chmod(root / name, mode)
    (root / "d").mkdir()
    (root / "link").symlink_to("f")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    _reset_times(root)


#: a time set to "now" during the test is after this (the copies differ in the rest)
_BEFORE_THE_TEST = int(time.time()) - 1


def _recent(sec: bytes) -> bytes:
    """A "now" time, as whether it is one (a given time in its place is not)."""
    return bytes([int.from_bytes(sec, "little") >= _BEFORE_THE_TEST]) + bytes(7)


def _mask_reply(request: bytes, reply: bytes) -> bytes:
    """What two copies of one directory cannot share: a SETATTR's attributes keep the
    atime and mtime unless the request set them to "now"; other replies as
    tests/test_virtiofs_names.py masks them."""
    if int.from_bytes(request[4:8], "little") != Opcode.SETATTR or len(reply) != ATTR_REPLY \
            or reply[4:8] != bytes(4):
        return _masked(reply)
    valid = _valid(request)
    b = bytearray(reply)
    b[32:40] = bytes(8)                       # ino
    b[72:80], b[88:92] = bytes(8), bytes(4)   # ctime
    if valid & ATIME_NOW:
        b[56:64], b[80:84] = _recent(b[56:64]), bytes(4)
    if valid & (MTIME_NOW | SIZE):  # a truncate's mtime is "now" too
        b[64:72], b[84:88] = _recent(b[64:72]), bytes(4)
    return bytes(b)


def _reset_times(root: Path) -> None:
    """After a time set to "now" (different in each copy): the made-alike times again."""
    for p in [*root.iterdir(), root]:
        os.utime(p, ns=(T0, T0), follow_symlinks=False)


def _valid(request: bytes) -> int:
    return int.from_bytes(request[40:44], "little") if len(request) >= 44 else 0


def _with_resets(steps: list[Step | Callable[[Path], None]]) -> list[Step | Callable[[Path], None]]:
    """``_reset_times`` first (a quota's usage walk at start read the directories: their
    atimes are "now"), and after each request that may set a time to "now"."""
    out: list[Step | Callable[[Path], None]] = [_reset_times]
    for step in steps:
        out.append(step)
        if not callable(step) and _valid(step[0]) & (ATIME_NOW | MTIME_NOW | SIZE):
            out.append(_reset_times)
    return out


def _host_view(root: Path) -> list[tuple[Any, ...]]:
    """What a request may have changed, each node's (the ctime is "now" in each copy).
    By name, not by listing: reading a directory would set its atime."""
    out = []
    for name in NODES:
        p = root / name.decode()
        if p.is_symlink() or p.exists():
            st = p.lstat()
            out.append((name, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_atime_ns,
                        st.st_mtime_ns))
    return out


def _sa(r: Requests, node: int, valid: int, *, fh: int = 0, mode: int = 0, size: int = 0,
        uid: int = 0, gid: int = 0, at: tuple[int, int] = (0, 0),
        mt: tuple[int, int] = (0, 0), room: int = 4096) -> Step:
    return (r.setattr(node, valid=valid, fh=fh, mode=mode, size=size, uid=uid, gid=gid,
                      atime=at, mtime=mt), [room], REQ)


MODES = [0o644, 0o4755, 0o2755, 0o2745, 0o6777, 0o7777, 0o1777, 0, 0o170644, 0o177777,
         0o200000, 0xFFFFFFFF, 0o100600]
#: (tv_sec on the wire, u32 nsec): ordinary, before 1970 (the kernel's signed time64_t
#: in a u64), nsec past a second (carried), and at and beyond what ext4/tmpfs keep and
#: what a 64-bit tv_sec holds (the last one is EINVAL: Python's)
TIMESPECS = [(0, 0), (1_700_000_000, 5), (U64, 0), (U64, 999_999_999), (1 << 31, 0),
             ((1 << 31) - 1, 999_999_999), (1 << 33, 7), (16_725_225_600, 0), (1 << 62, 1),
             ((1 << 63) - 1, 999_999_999), ((1 << 63) - 1, 10**9), (1 << 63, 0),
             ((1 << 64) - (1 << 33), 3), (5, 3 * 10**9 + 7), (5, 0xFFFFFFFF),
             (U64, 0xFFFFFFFF), (U64 - 5, 2 * 10**9)]


def _script(ids: dict[bytes, int], fhs: dict[str, int]) -> list[Step | Callable[[Path], None]]:
    r = Requests(uid=1000, gid=1000)
    f, x, d, link = ids[b"f"], ids[b"x"], ids[b"d"], ids[b"link"]
    steps: list[Step | Callable[[Path], None]] = []
    # every mode on every kind, alone and with the bits the tree ignores beside it
    for name in NODES[:-1]:
        for mode in MODES:
            steps.append(_sa(r, ids[name], MODE, mode=mode))
        steps.append(_sa(r, ids[name], MODE | CTIME | LOCKOWNER, mode=0o640))
        steps.append(_sa(r, ids[name], MODE | KILL, mode=0o6711))
    # handles: the node's own (fchmod), another node's (ignored), a directory's, a
    # released one, numbers that never were
    for fh in (fhs["f"], fhs["x"], fhs["d"], fhs["released"], 999, 0, U64):
        steps += [_sa(r, f, MODE | FH, fh=fh, mode=0o4711), _sa(r, x, FH, fh=fh),
                  _sa(r, f, MODE | ATIME | FH, fh=fh, mode=0o600, at=(77, 8)),
                  _sa(r, link, MODE | FH, fh=fh, mode=0o600)]
    # times: each timespec as atime and as mtime, NOW beside a given time (NOW wins)
    for sec, nsec in TIMESPECS:
        steps += [_sa(r, f, ATIME, at=(sec, nsec)), _sa(r, x, MTIME, mt=(sec, nsec)),
                  _sa(r, link, ATIME | MTIME, at=(sec, nsec), mt=(nsec, sec & 0xFFFFFFFF)),
                  _sa(r, d, MODE | MTIME, mode=0o2700, mt=(sec, nsec))]
    steps += [_sa(r, f, ATIME_NOW), _sa(r, f, MTIME_NOW), _sa(r, x, ATIME | ATIME_NOW, at=(9, 9)),
              _sa(r, x, MTIME | MTIME_NOW | ATIME, at=(9, 9), mt=(1, 1)),
              _sa(r, d, TIMES | MODE, mode=0o755, at=(3, 3), mt=(4, 4))]
    # nothing to change: no mutation, a stat (readonly answers it too)
    for valid in (0, CTIME, LOCKOWNER, KILL, 1 << 20, 0xFFFFF000 & ~0xFFF):
        steps.append(_sa(r, f, valid))
    # owners (the daemon's fchownat: a regular file's set-id bits go as the host drops
    # them), beside a mode and times, of a symlink itself, ids that are none (EINVAL)
    setid = ids[b"setid"]
    steps += [_sa(r, d, UID | GID, uid=1000, gid=1000), _sa(r, link, UID | GID, uid=5, gid=6),
              _sa(r, setid, UID, uid=1000), _sa(r, setid, MODE, mode=0o6755),
              _sa(r, setid, GID | CTIME, gid=2000), _sa(r, setid, MODE, mode=0o6755),
              _sa(r, f, UID | MODE | MTIME, uid=0xFFFFFFFE, mode=0o4644, mt=(1, 2)),
              _sa(r, x, GID, gid=0xFFFFFFFF), _sa(r, x, UID | GID, uid=0xFFFFFFFF),
              _sa(r, d, UID | GID | FH, fh=fhs["x"], uid=0, gid=0),
              _sa(r, d, UID | GID | FH, fh=fhs["d"], uid=0, gid=0)]
    # A chown beside KILL_SUIDGID: C's while the node has no set-id bit (nothing to
    # kill), Python's while it has one. A caller not in the file's group kills even a
    # lone S_ISGID (no group exec), which the host's own chown by the daemon (holding
    # CAP_FSETID) keeps: only the tree's rule clears it.
    stranger = Requests(uid=1000, gid=1000)
    steps += [_sa(r, f, UID | KILL, uid=0), _sa(r, d, UID | GID | KILL, uid=0, gid=0),
              _sa(r, f, MODE, mode=0o2644), _sa(stranger, f, UID | KILL, uid=0),
              _sa(r, f, MODE, mode=0o644)]
    # Python's: size, owner beside KILL_SUIDGID of a set-id file
    steps += [_sa(r, f, SIZE, size=3), _sa(r, ids[b"setid"], SIZE | KILL, size=1),
              _sa(r, ids[b"setid"], UID | KILL, uid=0), _sa(r, ids[b"setid"], GID | KILL, gid=0),
              _sa(r, x, MODE | UID, mode=0o700, uid=0), _sa(r, x, MODE | SIZE | MTIME, mode=0o711,
                                                          size=2, mt=(5, 5)),
              _sa(r, d, SIZE, size=0), _sa(r, f, UID, uid=0xFFFFFFFF)]
    # unknown node ids, hostile bodies and room
    body = SETATTR_IN.pack(MODE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0o600, 0, 0)
    steps += [_sa(r, 0, MODE, mode=0o600), _sa(r, 999, ATIME, at=(1, 1)), _sa(r, U64, 0),
              (r.raw(Opcode.SETATTR, f, body[:87]), [4096], REQ),
              (r.raw(Opcode.SETATTR, f, b""), [4096], REQ),
              (r.raw(Opcode.SETATTR, f, body + b"trailing"), [4096], REQ),
              (r.raw(Opcode.SETATTR, f, body, extlen=1), [4096], REQ),
              (r.raw(Opcode.SETATTR, f, body, length=200), [4096], REQ),
              _sa(r, f, MODE, mode=0o600, room=ATTR_REPLY - 1), _sa(r, f, MODE, mode=0o604, room=16),
              _sa(r, f, MODE, mode=0o606, room=ATTR_REPLY)]
    # the host changes under the guest: a mode, a name removed (the inode lives on)
    steps += [lambda root: os.chmod(root / "g", 0o4777), _sa(r, ids[b"g"], ATIME, at=(1, 2)),
              lambda root: os.unlink(root / "gone"), _sa(r, ids[b"gone"], MODE, mode=0o2711),
              _sa(r, ids[b"gone"], MTIME_NOW)]
    return steps


def _random_script(ids: dict[bytes, int], fhs: dict[str, int], seed: int,
                   n: int) -> list[Step | Callable[[Path], None]]:
    """Every valid-bit combination C could see (the 12 bits and some unknown ones),
    with modes, times, handles and nodes drawn from the interesting ones."""
    rnd = random.Random(seed)
    r = Requests(uid=rnd.choice([0, 1000]), gid=1000)
    nodes = [ids[nm] for nm in NODES] + [999]
    handles = [*fhs.values(), 12345]
    steps: list[Step | Callable[[Path], None]] = []
    for _ in range(n):
        valid = rnd.getrandbits(12) | (rnd.getrandbits(32) & 0xFFFFF000 if rnd.random() < 0.1 else 0)
        if valid & (SIZE | KILL) and rnd.random() < 0.7:
            valid &= ~(SIZE | KILL)  # keep C's share of the draws large
        steps.append(_sa(r, rnd.choice(nodes), valid, fh=rnd.choice(handles),
                         mode=rnd.choice(MODES), size=rnd.choice([0, 1, 5, 4096]),
                         uid=rnd.choice([0, 1000, 0xFFFFFFFF]), gid=rnd.choice([0, 1000]),
                         at=rnd.choice(TIMESPECS), mt=rnd.choice(TIMESPECS)))
    return steps


async def _handles(on: Any, off: Any, ids: dict[bytes, int]) -> dict[str, int]:
    """File handles of f and x, a directory handle of d, and one released: the same
    numbers on both devices (one counter each, the same opens)."""
    r = Requests()
    fhs: dict[str, int] = {}
    for key, req in (("f", r.open(ids[b"f"], os.O_RDONLY)), ("x", r.open(ids[b"x"], os.O_RDONLY)),
                     ("d", r.opendir(ids[b"d"])), ("released", r.open(ids[b"g"], os.O_RDONLY))):
        got = [parse_open(await c.ok(req))[0] for c in (on, off)]
        assert got[0] == got[1]
        fhs[key] = got[0]
    for c in (on, off):
        await c.ok(r.release(ids[b"g"], fhs["released"]))
    return fhs


POLICIES = {
    "default": Policy(),
    "nosuid": Policy(nosuid=True),
    "readonly": Policy(readonly=True),
    "nosuid-nodev-noexec": Policy(nosuid=True, nodev=True, noexec=True),
    "quota": Policy(quota_bytes=64 << 20, quota_inodes=500),  # SIZE charged: Python's
}


async def _compare(fs_client: Callable[..., Any], tmp_path: Path, policy: Policy,
                   script: Callable[[dict[bytes, int], dict[str, int]], list[Any]]
                   ) -> tuple[Any, Any, int]:
    async with _pair(fs_client, tmp_path, _populate, policy) as (on, off, roots):
        ids = await _lookup_ids(on, off, NODES)
        fhs = await _handles(on, off, ids)
        steps = _with_resets(script(ids, fhs))
        got = [await _run_each(c, root, steps, _mask_reply) for c, root in ((on, roots[0]), (off, roots[1]))]
        requests = [s[0] for s in steps if not callable(s)]
        for i, (a, b) in enumerate(zip(*got, strict=True)):
            assert a == b, f"reply {i} to {requests[i][:64].hex()}: C {a!r} != Python {b!r}"
        assert _host_view(roots[0]) == _host_view(roots[1])
        assert off.device.meta.setattr_statistics()["setattrs"] == 0
        return on.device.meta.setattr_statistics(), on.device.meta.statistics(), len(steps)


@ROOT_ONLY
@pytest.mark.parametrize("policy", list(POLICIES))
async def test_setattr_c_and_python_reply_the_same_bytes(
        fs_client: Callable[..., Any], tmp_path: Path, policy: str) -> None:
    """Modes with set-id bits (nosuid stores none of them: on the host, not only in the
    shaped reply), type bits and bits beyond, every kind of node, handles of the node,
    of another node, released or never opened, UTIME_NOW/OMIT, times at and past the
    host filesystem's range and a 64-bit tv_sec's, unknown node ids, short and long
    bodies, no room, what stays Python's (size, owner, KILL_SUIDGID beside them), and
    readonly's EROFS from the policy's own rule."""
    served, meta, _n = await _compare(fs_client, tmp_path, POLICIES[policy], _script)
    assert served["setattrs"] >= 150
    if policy != "readonly":  # else EROFS before any
        assert served["chmods"] >= 80 and served["utimes"] >= 60 and served["chowns"] >= 5
    assert meta["handed"] >= 30  # SIZE, UID/GID, hostile bodies, EINVAL times and modes


@ROOT_ONLY
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_setattr_random_valid_bits_c_and_python_agree(
        fs_client: Callable[..., Any], tmp_path: Path, seed: int) -> None:
    """Every valid-bit combination from a seeded generator, on every kind of node and
    handle, default and nosuid: the same replies and the same host."""
    policy = Policy(nosuid=seed % 2 == 1)
    served, _meta, n = await _compare(
        fs_client, tmp_path, policy, lambda ids, fhs: _random_script(ids, fhs, seed, 400))
    assert served["setattrs"] >= n // 8


@ROOT_ONLY
async def test_setattr_of_evicted_inodes_re_opens_them(fs_client: Callable[..., Any],
                                                       tmp_path: Path) -> None:
    """Inodes whose fds the cache closed (16 fds for 40 files): C re-opens each from its
    handle as the tree does, then chmods and sets the times through it; the same replies
    and the same host."""
    names = [f"e{i}".encode() for i in range(40)]

    def populate(root: Path) -> None:
        _populate(root)
        for nm in names:
            (root / nm.decode()).write_bytes(b"")
        _reset_times(root)

    async with _pair(fs_client, tmp_path, populate, Policy(nosuid=True),
                     max_inode_fds=16) as (on, off, roots):
        ids = await _lookup_ids(on, off, names, opened=True)
        assert on.device.tree.statistics().extra["inode_fd_evictions"] > 0
        r = Requests()
        steps: list[Step | Callable[[Path], None]] = []
        for k, nm in enumerate(names * 2):
            steps += [_sa(r, ids[nm], MODE, mode=0o4750 + k % 8),
                      _sa(r, ids[nm], ATIME | MTIME, at=(k, k), mt=(2 * k, 0))]
        got = [await _run_each(c, root, steps, _mask_reply) for c, root in
               ((on, roots[0]), (off, roots[1]))]
        assert got[0] == got[1]
        view = [[(st.st_mode, st.st_atime_ns, st.st_mtime_ns)
                 for st in (os.stat(root / nm.decode()) for nm in names)] for root in roots]
        assert view[0] == view[1]
        assert on.device.meta.setattr_statistics()["setattrs"] >= len(steps)
        assert on.device.tree.statistics().extra["inode_fd_evictions"] > 40


@ROOT_ONLY
@pytest.mark.parametrize("policy", ["default", "readonly"])
async def test_setattr_every_valid_bit_combination(fs_client: Callable[..., Any],
                                                   tmp_path: Path, policy: str) -> None:
    """All 4,096 combinations of the 12 FATTR bits, each on a file through its own
    handle and on a directory through a file's handle: every one answered alike,
    whichever side of the line between C's and Python's it falls on."""
    def script(ids: dict[bytes, int], fhs: dict[str, int]) -> list[Any]:
        r = Requests()
        return [_sa(r, node, valid, fh=fhs["x"], mode=0o4711 + valid % 7, size=valid % 5,
                    uid=valid % 3, gid=valid % 2, at=(valid, 7), mt=(valid + 1, 10**9 + 1))
                for valid in range(1 << 12) for node in (ids[b"x"], ids[b"d"])]
    served, _meta, _n = await _compare(fs_client, tmp_path, POLICIES[policy], script)
    # C's share, every one of it: no SIZE bit (1/2 of each node's 4,096), except, on the
    # file, a chown beside KILL_SUIDGID without MODE while the file has a set-id bit
    # (the caller's group decides what is killed): at most 3/4 of 1/8 of those 2,048
    half = 1 << 11
    assert half + half - 3 * half // 4 // 2 <= served["setattrs"] <= 2 * half
