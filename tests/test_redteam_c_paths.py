"""A hostile guest against the C request paths (issue 11: csrc/lookup.c, fuse_names.c,
fuse_readdir.c, handles.c, fuse_handles.c), on four request queues at once, through the
in-tree vhost-user frontend and a real ``VirtioFsDevice`` over a real host directory.

Each queue runs a seeded stream of LOOKUP, MKDIR, CREATE, UNLINK, RMDIR, ACCESS, OPEN,
OPENDIR, READDIRPLUS, RELEASE(DIR) and FORGET with the worst arguments a guest can pick:
node ids of files, symlinks (one pointing out of the share), FIFOs, unknown and huge
ids as parents; names with "/", "..", NUL, 255/256 bytes; callers 0, others and
0xffffffff; modes with every bit; handles of one kind released as the other, released
twice, read after release. The guest's side keeps a model of what it was handed (a
lookup per entry of LOOKUP/MKDIR/CREATE/READDIRPLUS, every fh), and afterwards gives
back exactly that. The invariants then, whatever the interleaving was:

- counts: the inode table holds the root alone (C counted no entry it did not return,
  nothing twice) and no handle is left;
- fds: the process holds as many fds as before the run (grace-deferred closes reclaimed);
- identity: every serving thread's fsuid/fsgid is the daemon's again, no ACCESS on any
  queue ever saw another thread's caller (a root-only file is readable by root and by
  nobody else, every time), and every MKDIR/CREATE answered was owned by its caller;
- containment: the directory outside the share, reachable through a symlink inside it,
  is byte for byte as it was.

And a real ``msbfs serve`` (sandboxed, four queues), with and without CAP_SETUID /
CAP_SETGID: ACCESS never answers as another caller or as the daemon.

Each check was seen red against a mutant of the C it guards, built in a scratch copy
(never this checkout): ACCESS without its restore (the identity probes, both tests),
MKDIR counting its new inode twice and READDIRPLUS counting an entry twice (the inode
table is not back to the root), RELEASEDIR not closing the fd (the fd count), the
switch's uid read-back removed (the real daemon without CAP_SETUID lets uid 1000 read
a mode-000 file), C MKDIR ignoring readonly, the creation rules without nosuid's
stored-mode mask (set-id on the host), the lookup's open following symlinks (a MKDIR
lands outside, with the host swapping a name to a symlink).

Two findings of this file were in the Python handle table (msbfs/tree/handles.py),
where a Python request and a C RELEASE(DIR) on another queue meet: see the last tests.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from msbfs._native import lib

from msbfs.fuse import abi
from msbfs.fuse.kernel import Requests, parse_dirents, parse_entry, parse_open, parse_reply
from msbfs.tree import Policy
from tests.plugins.virtiofs import FuseClient, run_serve
from tests.test_virtiofs_names import _fs_ids_of_threads
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

ROOT = abi.FUSE_ROOT_ID
HDR = abi.fuse_out_header.size
ENTRY = HDR + abi.FUSE_ENTRY_OUT_SIZE
CREATE_ROOM = ENTRY + abi.fuse_open_out.size
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, switching fsuid)")
OTHER = 4242          # owns the share's locked directory; a caller
NOBODY = 0xFFFFFFFF   # not an id: the tree's EINVAL / Python's
CALLERS = [(0, 0), (OTHER, OTHER), (1000, 1000), (0, 1000), (1000, 0), (NOBODY, 0), (0, NOBODY)]
ATTR_UID, ATTR_GID = 11, 12
NAMES = [b"a", b"b", b"c", b"d" * 255, b"x" * 256, b"..", b".", b"", b"a/b", b"../escape",
         b"f", b"secret", b"link_out", b"fifo", b"locked", b"sub"]
STEPS_PER_QUEUE = 1000
GONE = (errno.ENOENT, errno.ESTALE)   # a probe's node the guest removed meanwhile
QUEUES = 4


def _populate(share: Path, outside: Path) -> None:
    outside.mkdir()
    (outside / "keep").write_bytes(b"outside")
    (outside / "a").mkdir()
    share.mkdir()
    (share / "f").write_bytes(b"file")
    secret = share / "secret"
    secret.write_bytes(b"root only")
    os.chmod(secret, 0o000)
    (share / "link_out").symlink_to(outside)
    os.mkfifo(share / "fifo")
    locked = share / "locked"
    locked.mkdir(mode=0o700)
    os.chown(locked, OTHER, OTHER)
    (share / "sub").mkdir()
    (share / "sub" / "f").write_bytes(b"")
    for i in range(40):   # READDIRPLUS replies of several batches
        (share / "sub" / f"n{i:03}").write_bytes(b"")


def _snapshot(top: Path) -> list[tuple[str, int, int, int, bytes]]:
    out = []
    for p in sorted(top.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out.append((str(p.relative_to(top)), st.st_mode, st.st_uid, st.st_gid, data))
    return out


def _swap_on_the_host(share: Path, outside: Path, stop: threading.Event) -> int:
    """Exchange share/q1 (a directory, then a symlink to ``outside``) with share/.q1
    until ``stop``; recreate whichever the guest removed. How many exchanges."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    a, b = bytes(share / "q1"), bytes(share / ".q1")
    swaps = 0
    while not stop.is_set():
        if libc.renameat2(-100, a, -100, b, 2) == 0:   # AT_FDCWD, RENAME_EXCHANGE
            swaps += 1
            continue
        for p, make in ((share / "q1", lambda p: p.mkdir()),
                        (share / ".q1", lambda p: p.symlink_to(outside))):
            with contextlib.suppress(OSError):
                if not os.path.lexists(p):
                    make(p)
    return swaps


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class Guest:
    """What the hostile guest was handed, given back at the end."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.lookups: Counter[int] = Counter()
        self.files: dict[int, int] = {}   # fh -> node id
        self.dirs: dict[int, int] = {}
        self.nodes: dict[bytes, int] = {}   # a name's node id, for later parents/targets
        self.problems: list[str] = []
        self.errors: Counter[int] = Counter()   # replies by errno
        self.kept: Counter[int] = Counter()   # the probes' own nodes: given back last

    def entry(self, payload: bytes, who: tuple[int, int] | None = None) -> int:
        e = parse_entry(payload)
        self.lookups[e.nodeid] += 1
        if who is not None and e.attr[ATTR_UID] != who[0]:
            self.problems.append(f"node {e.nodeid} made for uid {who[0]} is owned by "
                                 f"{e.attr[ATTR_UID]}")
        return e.nodeid

    def made(self, payload: bytes, who: tuple[int, int] | None = None) -> int:
        """An entry MKDIR or CREATE answered: under nosuid never set-id, under
        readonly never at all (CREATE may have opened what exists: no owner check)."""
        e = parse_entry(payload)
        if self.policy.readonly:
            self.problems.append(f"made node {e.nodeid} in a readonly share")
        if self.policy.nosuid and e.mode & (stat.S_ISUID | stat.S_ISGID):
            self.problems.append(f"made node {e.nodeid} with mode {e.mode:o} under nosuid")
        return self.entry(payload, who)


async def _hostile_queue(c: Any, q: int, g: Guest, rng: random.Random, secret: int,
                         locked: int, sub: int) -> None:
    def node() -> int:
        pool = [ROOT, ROOT, sub, secret, locked, *g.nodes.values(), 0, 999_999, (1 << 64) - 1]
        return rng.choice(pool)

    def name() -> bytes:
        return rng.choice(NAMES) if rng.random() < 0.5 else f"q{rng.randrange(6)}".encode()

    async def call(req: bytes, room: int) -> Any:
        rep = await c.call(req, room, queue=q)
        g.errors[rep.error] += 1
        return rep

    for _ in range(STEPS_PER_QUEUE):
        uid, gid = rng.choice(CALLERS)
        r = Requests(uid=uid, gid=gid)
        op = rng.randrange(13)
        if op == 0:
            parent, nm = node(), name()
            rep = await call(r.lookup(parent, nm), ENTRY)
            if rep.error == 0:
                g.nodes[nm] = g.entry(rep.payload)
        elif op == 1:
            rep = await call(r.mkdir(node(), name(), rng.choice([0o7777, 0o755, 0o2775, 0]),
                                     rng.choice([0, 0o22, 0o7777, 0o10000])), ENTRY)
            if rep.error == 0:
                g.made(rep.payload, (uid, gid))
        elif op == 2:
            flags = rng.choice([os.O_RDWR, os.O_WRONLY | os.O_EXCL, os.O_RDONLY | os.O_TRUNC])
            rep = await call(r.create(node(), name(), rng.choice([0o6777, 0o644]), flags,
                                      rng.choice([0, 0o22])), CREATE_ROOM)
            if rep.error == 0:
                made = rep.payload[:abi.FUSE_ENTRY_OUT_SIZE]
                g.made(made)
                fh = parse_open(rep.payload[abi.FUSE_ENTRY_OUT_SIZE:])[0]
                g.files[fh] = parse_entry(made).nodeid
        elif op == 3:
            await call(rng.choice([r.unlink, r.rmdir])(node(), name()), HDR)
        elif op == 4:
            await call(r.access(node(), rng.randrange(9)), HDR)
        elif op == 5:
            # the identity probe: a root-only file, asked about by root and by others
            who = rng.choice([(0, 0), (OTHER, OTHER), (1000, 1000)])
            # (the guest may have removed it: ENOENT/ESTALE say nothing of identities)
            rep = await call(Requests(*who).access(secret, os.R_OK), HDR)
            if (rep.error == 0) != (who == (0, 0)) and rep.error not in GONE:
                g.problems.append(f"ACCESS R_OK of the root-only file as {who}: "
                                  f"{rep.error}")
        elif op == 6:
            nid = node()
            rep = await call(r.open(nid, rng.choice([os.O_RDONLY, os.O_RDWR, os.O_WRONLY])),
                             HDR + abi.fuse_open_out.size)
            if rep.error == 0:
                g.files[parse_open(rep.payload)[0]] = nid
        elif op == 7:
            nid = rng.choice([sub, sub, ROOT, node()])
            rep = await call(r.opendir(nid), HDR + abi.fuse_open_out.size)
            if rep.error == 0:
                g.dirs[parse_open(rep.payload)[0]] = nid
        elif op == 8 and (g.dirs or g.files):
            # mostly the handle's own node (C's), read on from anywhere; else any node
            fh, nid = rng.choice(sorted({**g.dirs, **g.files}.items()))
            rep = await call(r.readdir(nid if rng.random() < 0.8 else node(), fh,
                                       rng.choice([0, 0, 3, 10, 1 << 62]),
                                       rng.choice([80, 300, 4096]), plus=True),
                             rng.choice([HDR, 200, 4096 + HDR]))
            if rep.error == 0:
                for _name, _ino, _off, e in parse_dirents(rep.payload, plus=True):
                    if e is not None and e.nodeid:
                        g.lookups[e.nodeid] += 1
        elif op == 9 and (g.dirs or g.files):
            # either kind released as either kind, maybe twice
            fh = rng.choice(sorted({**g.dirs, **g.files}))
            as_dir = rng.random() < 0.5
            rep = await call(r.releasedir(ROOT, fh) if as_dir else r.release(ROOT, fh), HDR)
            if rep.error == 0:
                (g.dirs if fh in g.dirs else g.files).pop(fh)
        elif op == 10:
            # FORGET of what this guest holds, a part of it, on any queue; and ids it
            # was never handed
            held = [n for n, k in g.lookups.items() if k > g.kept[n]]
            if held:
                n = rng.choice(held)
                k = rng.randint(1, g.lookups[n] - g.kept[n])
                g.lookups[n] -= k
                await c.fe.submit(q, [r.forget(n, k)], [HDR])
            await c.fe.submit(q, [r.forget(rng.choice([999_999, (1 << 64) - 1]), 1 << 63)], [HDR])
        elif op == 12:
            # straight through a name that is (or the host makes) a symlink out of the
            # share: whatever its node is, nothing may land outside
            rep = await call(r.lookup(ROOT, rng.choice([b"link_out", b"q1"])), ENTRY)
            if rep.error == 0:
                via = g.entry(rep.payload)
                nm = rng.choice([b"a", b"keep", b"new"])
                made = await call(r.mkdir(via, nm), ENTRY)
                if made.error == 0:
                    g.made(made.payload, (uid, gid))
                made = await call(r.create(via, nm), CREATE_ROOM)
                if made.error == 0:
                    g.made(made.payload[:abi.FUSE_ENTRY_OUT_SIZE])
                    fh = parse_open(made.payload[abi.FUSE_ENTRY_OUT_SIZE:])[0]
                    g.files[fh] = parse_entry(made.payload).nodeid
                await call(r.unlink(via, nm), HDR)
                await call(r.rmdir(via, nm), HDR)
                opened = await call(r.opendir(via), HDR + abi.fuse_open_out.size)
                if opened.error == 0:
                    g.dirs[parse_open(opened.payload)[0]] = via
        elif op == 11:
            # the daemon's own CAP_DAC_OVERRIDE on this queue's thread: removing a name
            # in a directory only OTHER may write succeeds (ENOENT) as root would
            rep = await call(r.unlink(locked, b"nothing-here"), HDR)
            if rep.error != (errno.EROFS if g.policy.readonly else errno.ENOENT) \
                    and rep.error not in GONE:
                g.problems.append(f"UNLINK in the locked directory: {rep.error}")


async def _give_back(c: Any, g: Guest) -> None:
    for fh in sorted(g.files):
        rep = await c.call(c.r.release(ROOT, fh), HDR)
        assert rep.error == 0, (fh, rep)
    for fh in sorted(g.dirs):
        rep = await c.call(c.r.releasedir(ROOT, fh), HDR)
        assert rep.error == 0, (fh, rep)
    for n, k in g.lookups.items():
        if k:
            await c.fe.submit(1, [c.r.forget(n, k)], [HDR])
    assert parse_reply((await c.fe.submit(1, [c.r.getattr(ROOT)], [HDR + abi.FUSE_ATTR_OUT_SIZE])).data).error == 0


def _settle_fds() -> None:
    """Deferred closes whose grace period has passed are done (the queues are idle)."""
    lib.msb_grace_synchronize()
    lib.msb_grace_reclaim()


#: (seed, budgets): unbounded, and budgets the run reaches mid-stream (EMFILE from the
#: handle table, ENFILE from the inode table, mid-READDIRPLUS and mid-MKDIR/CREATE)
RUNS: dict[str, tuple[int, dict[str, int], Policy]] = {
    "unbounded-1": (1, {}, Policy()), "unbounded-2": (2, {}, Policy()),
    "budgets": (3, {"max_handles": 6, "max_inodes": 14}, Policy()),
    # nothing made, removed or changed in the share; nothing set-id made
    "readonly": (4, {}, Policy(readonly=True, noexec=True)),
    "nosuid": (5, {}, Policy(nosuid=True, nodev=True)),
    # the host swaps a name the guest uses between a directory and a symlink to the
    # outside, all through the run (renameat2 RENAME_EXCHANGE: never missing)
    "host-swaps": (6, {}, Policy()),
}
#: A longer campaign: MSBFS_REDTEAM_SEEDS=N adds N seeded runs of each kind.
_BASE = list(RUNS.items())[1:]
for _n in range(int(os.environ.get("MSBFS_REDTEAM_SEEDS", "0"))):
    for _k, (_s, _b, _p) in _BASE:   # host-swaps: by name prefix
        RUNS[f"{_k}-x{_n}"] = (1000 + 10 * _n + _s, _b, _p)


@ROOT_ONLY
@pytest.mark.parametrize("run", list(RUNS))
async def test_hostile_guest_on_four_queues_leaves_counts_fds_ids_and_outside_intact(
        fs_client: Callable[..., Any], tmp_path: Path, run: str) -> None:
    seed, budgets, policy = RUNS[run]
    share, outside = tmp_path / "share", tmp_path / "outside"
    _populate(share, outside)
    before_outside, before_share = _snapshot(outside), _snapshot(share)
    async with fs_client(share, policy, request_queues=QUEUES, queue_size=64,
                         max_inode_fds=8, **budgets) as c:
        assert c.device.meta.enabled
        _settle_fds()
        fds0 = _fd_count()   # the root's alone: every other fd comes from the guest
        secret = parse_entry(await c.ok(c.r.lookup(ROOT, b"secret"))).nodeid
        locked = parse_entry(await c.ok(c.r.lookup(ROOT, b"locked"))).nodeid
        g = Guest(policy)
        sub = parse_entry(await c.ok(c.r.lookup(ROOT, b"sub"))).nodeid
        for n in (secret, locked, sub):
            g.lookups[n] += 1
            g.kept[n] = 1
        stop = threading.Event()
        swaps: list[int] = []
        swapper = threading.Thread(target=lambda: swaps.append(
            _swap_on_the_host(share, outside, stop)))
        if run.startswith("host-swaps"):
            swapper.start()
        try:
            async with trio.open_nursery() as n:
                for q in range(1, QUEUES + 1):
                    n.start_soon(_hostile_queue, c, q, g, random.Random(seed * 100 + q),
                                 secret, locked, sub)
        finally:
            stop.set()
            if swapper.is_alive():
                swapper.join()
        assert swaps != [0], "the host never swapped"
        assert g.problems[:5] == [], len(g.problems)
        names = c.device.meta.names_statistics()
        opened = c.device.meta.open_statistics()
        meta = c.device.meta.statistics()
        # the C paths really answered a share of it
        assert names["mkdirs"] and names["accesses"] and names["unlinks"] + names["rmdirs"]
        assert opened["opens"] and opened["opendirs"]
        assert opened["creates"] or policy.readonly   # readonly: answered with EROFS
        assert meta["readdirs"] and meta["lookups"]
        if budgets:   # both budgets were reached
            assert g.errors[errno.EMFILE] and g.errors[errno.ENFILE], g.errors
        await _give_back(c, g)
        _settle_fds()
        st = c.device.tree.statistics()
        assert (st.inodes, st.handles) == (1, 0), (st, names, opened)
        assert _fd_count() == fds0
        assert _fs_ids_of_threads() == {("0", "0")}
    assert _snapshot(outside) == before_outside
    if policy.readonly:
        assert _snapshot(share) == before_share
    if policy.nosuid:   # on the host, not only as reported (the shape may hide it)
        setid = [m for m in _snapshot(share) if m[1] & (stat.S_ISUID | stat.S_ISGID)]
        assert setid == []


async def _access_storm(c: Any, secret: int, locked: int, rounds: int) -> list[str]:
    """On every request queue at once: ACCESS R_OK of a root-only file as uid 1000 and
    as root, and a removal only the daemon's own identity may do, interleaved. What
    each must answer, whatever another queue's thread was switched to meanwhile."""
    wrong: list[str] = []
    stranger, root = Requests(1000, 1000), Requests(0, 0)

    async def one_queue(q: int) -> None:
        for _ in range(rounds):
            reqs = [([stranger.access(secret, os.R_OK)], [HDR]),
                    ([root.access(secret, os.R_OK)], [HDR]),
                    ([root.unlink(locked, b"nothing-here")], [HDR])] * 4
            done = await c.fe.submit_many(q, reqs)
            for i, d in enumerate(done):
                err = parse_reply(d.data).error
                if i % 3 == 0 and err == 0:
                    wrong.append(f"queue {q}: uid 1000 may read a mode-000 file")
                elif i % 3 == 1 and err != 0:
                    wrong.append(f"queue {q}: root may not read it ({err})")
                elif i % 3 == 2 and err != errno.ENOENT:
                    wrong.append(f"queue {q}: the daemon's own removal said {err}")

    async with trio.open_nursery() as n:
        for q in range(1, QUEUES + 1):
            n.start_soon(one_queue, q)
    return wrong


@ROOT_ONLY
@pytest.mark.parametrize("modcaps", ["", "-setuid:-setgid", "-setuid", "-setgid"])
async def test_a_real_daemon_never_answers_access_as_another_caller(
        tmp_path: Path, modcaps: str) -> None:
    """A real ``msbfs serve`` (sandboxed, supplementary groups dropped: C ACCESS switches)
    on four queues, with and without the capabilities a switch needs (--modcaps): a
    switch the kernel ignores must never let uid 1000 read a mode-000 file, and no
    thread is ever left switched (root's ACCESS and the daemon's own removal in a 0700
    directory of another owner keep their answers on every queue)."""
    share = tmp_path / "share"
    _populate(share, tmp_path / "outside")
    sock = str(tmp_path / "vfs.sock")
    args = [f"--shared-dir={share}", f"--num-request-queues={QUEUES}", "--log-level=error"]
    args += [f"--modcaps={modcaps}"] if modcaps else []
    with run_serve(args, sock):
        fe = await Frontend.connect(sock, GuestRam(((0, 48 << 20),)))
        try:
            await fe.handshake([32] * (1 + QUEUES), slot_size=64 << 10)
            c = FuseClient(fe)
            await c.init()
            secret = parse_entry(await c.ok(c.r.lookup(ROOT, b"secret"))).nodeid
            locked = parse_entry(await c.ok(c.r.lookup(ROOT, b"locked"))).nodeid
            wrong = await _access_storm(c, secret, locked, 25)
        finally:
            await fe.close()
    assert wrong[:5] == [], len(wrong)


@pytest.mark.parametrize("plus", [False, True])
async def test_a_c_releasedir_racing_a_python_readdir_leaves_no_python_state(
        fs_client: Callable[..., Any], tmp_path: Path, plus: bool) -> None:
    """A READDIR C hands to Python (the request's node id is not the handle's: the tree
    answers it from the handle) on one queue, the same handle's RELEASEDIR (C's, while
    Python keeps no state for it) on another, many times. Whichever wins, the handle is
    gone afterwards: the tree keeps no decoded stream for it (it would answer a later
    READDIR of the released fh from an fd closed after the grace period, whose number a
    new open reuses), and a READDIR of it is EBADF."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "other").mkdir()
    for i in range(8):
        (tmp_path / "sub" / f"n{i}").write_bytes(b"")
        (tmp_path / "other" / f"secret{i}").write_bytes(b"")
    async with fs_client(tmp_path, request_queues=2, queue_size=64) as c:
        sub = parse_entry(await c.ok(c.r.lookup(ROOT, b"sub"))).nodeid
        other = parse_entry(await c.ok(c.r.lookup(ROOT, b"other"))).nodeid
        dirs = c.device.tree._handles._dirs
        released_by_c = stale = 0
        for _ in range(60):
            fhs = [parse_open(await c.ok(c.r.opendir(sub)))[0] for _ in range(24)]
            before = c.device.meta.open_statistics()["releasedirs"]
            results: dict[int, list[Any]] = {}

            async def post(q: int, reqs: list[bytes], results: dict[int, list[Any]]) -> None:
                results[q] = await c.fe.submit_many(q, [([r], [4096 + HDR]) for r in reqs])

            async with trio.open_nursery() as n:
                n.start_soon(post, 1, [c.r.readdir(ROOT, fh, 0, 4096, plus) for fh in fhs],
                             results)
                # in the opposite order: the two queues meet on some handle mid-way
                n.start_soon(post, 2, [c.r.releasedir(sub, fh) for fh in reversed(fhs)],
                             results)
            released_by_c += c.device.meta.open_statistics()["releasedirs"] - before
            assert all(parse_reply(d.data).error == 0 for d in results[2])
            stale += sum(fh in dirs for fh in fhs)
            # the released fds' numbers, once closed, go to new handles of another
            # directory: a released fh must not list it
            _settle_fds()
            others = [parse_open(await c.ok(c.r.opendir(other)))[0] for _ in range(24)]
            for fh in fhs:
                rep = await c.call(c.r.readdir(sub, fh, 0, 4096, plus), 4096 + HDR)
                listed = [e[0] for e in parse_dirents(rep.payload, plus)] if not rep.error else []
                assert rep.error == errno.EBADF, (fh, rep.error, listed)
            for fh in others:
                await c.ok(c.r.releasedir(other, fh))
        assert released_by_c, "C released none: the race was never run"
        assert stale == 0, f"{stale} released handles kept their Python stream"



async def test_a_c_release_landing_inside_a_lock_request_leaves_no_lock_on_the_host(
        fs_client: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SETLK (Python's) and the same handle's RELEASE (C's while no lock request named
    it) on another queue: the RELEASE lands between the lock request finding the handle
    and marking it for Python (placed there deterministically: the real C release, run
    right after ``HandleTable.file`` returned). The lock request must then answer EBADF
    and lock nothing: a lock through the released handle would outlive every handle (no
    RELEASE is left to drop it), held on the host file where native processes see it."""
    import fcntl
    import struct

    from msbfs.tree.handles import HandleTable

    target = tmp_path / "f"
    target.write_bytes(b"x" * 4096)
    file = HandleTable.file
    raced: list[int] = []

    def file_then_released(self: HandleTable, fh: int) -> Any:
        h = file(self, fh)
        # on a thread of its own, as a queue thread's C RELEASE: the fd is closed once
        # this request's grace section ends (this thread's own release would close it
        # at once, which no other queue can do)
        t = threading.Thread(target=lambda: raced.append(lib.msb_handles_release(self.c, fh, 0)))
        t.start()
        t.join()
        return h

    async with fs_client(tmp_path) as c:
        node = parse_entry(await c.ok(c.r.lookup(ROOT, b"f"))).nodeid
        fh = parse_open(await c.ok(c.r.open(node, os.O_RDWR)))[0]
        monkeypatch.setattr(HandleTable, "file", file_then_released)
        rep = await c.call(c.r.lk(abi.Opcode.SETLK, node, fh, owner=7, start=0, end=0,
                                  typ=fcntl.F_WRLCK), HDR)
        monkeypatch.undo()
        assert raced == [1], "the C release did not take the handle"
        assert rep.error == errno.EBADF, rep
        fd = os.open(target, os.O_RDWR)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("@hhqqi4x", fcntl.F_WRLCK,
                                                           os.SEEK_SET, 0, 0, 0))
        finally:
            os.close(fd)
        assert c.device.tree.statistics().extra["lock_fds"] == 0

