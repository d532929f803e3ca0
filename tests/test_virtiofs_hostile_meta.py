"""A hostile guest (and a busy host) against the C inode table and the C metadata path,
through the in-tree vhost-user frontend and real devices: what the differential test
(test_virtiofs_meta.py) cannot see because C and Python share the table.

- An inode whose fd the cache closed (only its file handle kept) is deleted on the host
  and its inode number reused by a new file (ext4 does so at once): the new file must
  get an inode of its own, not the dead one's node id, whose handle can only say ESTALE
  (the new name was unusable for as long as the guest held the old id);
- FORGET of a directory on one queue (answered in C, on that queue's thread) while
  another queue's slow path (Python) creates files in it: the tree was written for
  requests no FORGET cuts in half; a parent dropped between two steps of a CREATE made
  it fail ESTALE after the file and its fds were made, and left the fds open;
- INIT and DESTROY on one queue while three others look names up in C, with a small fd
  cache evicting all along: after the last DESTROY nothing is answered (C included),
  and the daemon holds no inode and no fd more than before;
- seeded random mixes of hostile requests on four request queues and hiprio at once
  (any node id, forgets of any count, creates and removals in directories forgotten
  meanwhile, handles released under readers): after DESTROY no inode, handle or fd is
  left;
- SETLKW requests that block, posted again after every stop and restart of the ring (a
  frontend's GET_VRING_BASE / SET_VRING_KICK; the parked requests' chains no longer
  count against the ring): each parked one was a thread of its own, without bound.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from msbfs.fuse import abi
from msbfs.fuse.kernel import Opcode, parse_attr_out, parse_entry, parse_open, parse_reply
from msbfs.tree import Policy

ROOT = 1
CACHE = 16  # the smallest fd cache the tree takes: eviction on every few lookups
U64 = (1 << 64) - 1


def _reuse_ino(root: Path, ino: int) -> str | None:
    """Create files until the host hands out ``ino`` again; the name, or None."""
    for k in range(256):
        p = root / f"new{k}"
        p.write_bytes(b"new file %d" % k)
        if p.stat().st_ino == ino:
            return p.name
    return None


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    """A small ext4 of our own, mounted from a loop image: ext4 hands a freed inode
    number to the next file at once, and no other process allocates there (the host's
    /tmp is shared with everything else running)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4")
    img, mnt = tmp_path / "ext4.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    if subprocess.run(["mount", "-o", "loop", str(img), str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a loop device here")
    try:
        root = mnt / "root"
        root.mkdir()
        yield root
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def _evict(c: Any, names: list[bytes]) -> None:
    """Nodes with fds (a lookup, then a use: a lookup alone adds a named node, no fd),
    as many as it takes to close the others'."""
    for n in names:
        e = parse_entry(await c.ok(c.r.lookup(ROOT, n)))
        await c.ok(c.r.getattr(e.nodeid))


@pytest.mark.parametrize("path", ["c", "python"])
@pytest.mark.parametrize("old_node", ["evicted", "named"])
async def test_reused_inode_number_gets_a_fresh_inode(fs_client: Callable[..., Any],
                                                      ext4: Path, path: str,
                                                      old_node: str) -> None:
    """The old file's node holds nothing that keeps the file alive: its fd was evicted
    (a handle kept: stale), or it was only looked up (a named node: its birth time is
    not the new file's)."""
    root = ext4
    others = [b"o%d" % i for i in range(3 * CACHE)]
    for n in others:
        (root / n.decode()).write_bytes(b"")
    (root / "old").write_bytes(b"old file")
    async with fs_client(root, max_inode_fds=CACHE) as c:
        c.device.meta.enabled = path == "c"
        old = parse_entry(await c.ok(c.r.lookup(ROOT, b"old")))
        if old_node == "evicted":
            await c.ok(c.r.getattr(old.nodeid))  # its fd, closed by the evictions below
            await _evict(c, others)
            stats = c.device.tree.statistics().extra
            # the root's, the cache's, and one over while every cached fd was used since
            # the CLOCK hand's last pass (csrc/inodes.c evict_one: one pass at most)
            assert stats["inode_fd_evictions"] > 0 and stats["inode_fds"] <= CACHE + 2
        else:
            assert c.device.tree.statistics().extra["inode_named"] == 1
        ino = (root / "old").stat().st_ino
        (root / "old").unlink()  # on the host, behind the guest's back
        name = _reuse_ino(root, ino)
        if name is None:
            pytest.fail("ext4 did not reuse the inode number")
        before = c.device.meta.statistics()["lookups"]
        new = parse_entry(await c.ok(c.r.lookup(ROOT, name.encode())))
        assert (c.device.meta.statistics()["lookups"] > before) == (path == "c")
        # The reply's attributes are the new file's either way; the node id must be one
        # that reaches it (the old one's handle names the deleted file: ESTALE).
        assert new.attr[0] == ino
        reply = await c.call(c.r.getattr(new.nodeid))
        assert reply.error == 0, f"GETATTR of the new file's node id: errno {reply.error}"
        assert parse_attr_out(reply.payload)[1][0] == ino
        assert new.nodeid != old.nodeid
        # The dead inode stays the guest's until it forgets it: ESTALE, never the new
        # file; then it goes.
        assert (await c.call(c.r.getattr(old.nodeid))).error != 0
        inodes = c.device.tree.statistics().inodes
        await c.fe.submit_many(0, [([c.r.forget(old.nodeid, 1)], [])])
        assert c.device.tree.statistics().inodes == inodes - 1


async def test_guest_unlink_then_create_reusing_the_number(fs_client: Callable[..., Any],
                                                           ext4: Path) -> None:
    """The guest itself: it holds an evicted file's id, unlinks the name, creates a new
    file that gets the same inode number. CREATE must not graft the new file's fd onto
    the dead node (whose old handle then comes back at the next eviction: ESTALE for
    the file just created)."""
    root = ext4
    others = [b"o%d" % i for i in range(3 * CACHE)]
    more = [b"p%d" % i for i in range(3 * CACHE)]
    for n in others + more:
        (root / n.decode()).write_bytes(b"")
    (root / "old").write_bytes(b"old file")
    async with fs_client(root, max_inode_fds=CACHE) as c:
        old = parse_entry(await c.ok(c.r.lookup(ROOT, b"old")))
        await c.ok(c.r.getattr(old.nodeid))  # its fd, closed by the evictions below
        await _evict(c, others)
        ino = old.attr[0]
        await c.ok(c.r.unlink(ROOT, b"old"))
        for k in range(64):
            payload = await c.ok(c.r.create(ROOT, b"new%d" % k, 0o644, os.O_RDWR))
            new = parse_entry(payload)
            fh = int.from_bytes(payload[-16:-8], "little")
            await c.call(c.r.release(new.nodeid, fh))
            if new.attr[0] == ino:
                break
        else:
            pytest.fail("ext4 did not reuse the inode number")
        evictions = c.device.tree.statistics().extra["inode_fd_evictions"]
        await _evict(c, more)  # the new file's fd goes too: its handle must be its own
        assert c.device.tree.statistics().extra["inode_fd_evictions"] >= evictions + 2 * CACHE
        reply = await c.call(c.r.getattr(new.nodeid))
        assert reply.error == 0, f"GETATTR of the file just created: errno {reply.error}"
        assert parse_attr_out(reply.payload)[1][0] == ino


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_forget_of_the_parent_on_another_queue_mid_create(
        fs_client: Callable[..., Any], tmp_path: Path) -> None:
    """Queue 1 creates files in ``d`` (a quota keeps CREATE's every step in the tree);
    queue 2 keeps forgetting ``d`` for good. Every CREATE either fails at once (EBADF:
    the id was gone before it began) or succeeds; none fails half-way (ESTALE), and
    once every handle is released and every inode forgotten the daemon holds exactly
    the fds it held before. Before the fix: ESTALE replies and leaked fds."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "d").mkdir()
    policy = Policy(quota_bytes=256 << 20, quota_inodes=100_000)
    async with fs_client(root, policy, request_queues=2) as c:
        r = c.r
        base_fds, base_inodes = _fds(), c.device.tree.statistics().inodes
        current = [0]
        errors: dict[int, int] = {}
        finished = trio.Event()

        async def creator() -> None:
            n = 0
            for _ in range(300):
                d = parse_entry(await c.ok(r.lookup(ROOT, b"d"))).nodeid
                current[0] = d
                creates = []
                for _ in range(12):
                    n += 1
                    creates.append(([r.create(d, b"f%d" % n, 0o644, os.O_RDWR)], [4096]))
                undo = []
                for done in await c.fe.submit_many(1, creates):
                    reply = parse_reply(bytes(done.data[:done.used_len]))
                    errors[reply.error] = errors.get(reply.error, 0) + 1
                    if reply.error == 0:
                        e = parse_entry(reply.payload)
                        fh = int.from_bytes(reply.payload[-16:-8], "little")
                        undo += [([r.release(e.nodeid, fh)], [4096]),
                                 ([r.forget(e.nodeid, 1)], [])]
                for k in range(0, len(undo), 32):
                    await c.fe.submit_many(1, undo[k:k + 32])
            finished.set()

        async def forgetter() -> None:
            while not finished.is_set():
                if current[0]:
                    await c.fe.submit_many(2, [([r.forget(current[0], U64)], [])])
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(creator)
            nursery.start_soon(forgetter)
        assert c.device.meta.statistics()["forgets"] > 0
        assert errors.get(0, 0) > 0
        assert set(errors) <= {0, errno.EBADF}, errors
        assert c.device.tree.statistics().inodes == base_inodes
        assert _fds() == base_fds


async def test_init_and_destroy_while_other_queues_look_up(fs_client: Callable[..., Any],
                                                           tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    names = [b"f%d" % i for i in range(200)]
    for n in names:
        (root / n.decode()).write_bytes(b"")
    async with fs_client(root, max_inode_fds=CACHE, request_queues=4) as c:
        r = c.r
        base_fds = _fds()
        answered: dict[int, int] = {}

        async def looker(q: int) -> None:
            for k in range(80):
                batch = [names[(q * 31 + k * 16 + i) % len(names)] for i in range(16)]
                for done in await c.fe.submit_many(q, [([r.lookup(ROOT, n)], [4096])
                                                       for n in batch]):
                    e = parse_reply(bytes(done.data[:done.used_len])).error
                    answered[e] = answered.get(e, 0) + 1

        async def restarter() -> None:
            for _ in range(40):
                for req in (r.init(), r.destroy(), r.init()):
                    await c.fe.submit_many(1, [([req], [4096])])
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            for q in (2, 3, 4):
                nursery.start_soon(looker, q)
            nursery.start_soon(restarter)
        assert answered.get(0, 0) > 0  # some lookups landed inside sessions
        await c.fe.submit_many(1, [([r.destroy()], [4096])])
        before = c.device.meta.statistics()["lookups"]
        for q in (1, 2, 3, 4):
            reply = await c.call(r.lookup(ROOT, names[q]))  # FuseClient: queue 1
            assert reply.error == errno.EIO
            done = await c.fe.submit_many(q, [([r.lookup(ROOT, names[q])], [4096])])
            assert parse_reply(bytes(done[0].data[:done[0].used_len])).error == errno.EIO
        assert c.device.meta.statistics()["lookups"] == before  # C answered none of them
        stats = c.device.tree.statistics()
        assert stats.inodes == 1 and stats.extra["inode_fds"] == 1
        assert _fds() == base_fds


def _hostile_batch(r: Any, rng: random.Random, ids: list[int],
                   handles: list[tuple[int, int, bool]]) -> list[bytes]:
    names = [b"n%d" % i for i in range(12)]
    batch = []
    for _ in range(rng.randrange(1, 12)):
        nid = rng.choice(ids) if rng.random() < 0.9 else rng.choice([0, U64, 999_999])
        name = rng.choice(names)
        k = rng.randrange(16)
        if k < 4:
            batch.append(r.lookup(nid, name))
        elif k == 4:
            batch.append(r.getattr(nid))
        elif k == 5:
            batch.append(r.create(nid, name, 0o644, os.O_RDWR))
        elif k == 6:
            batch.append(r.mkdir(nid, name))
        elif k == 7:
            batch.append(r.unlink(nid, name))
        elif k == 8:
            batch.append(r.rmdir(nid, name))
        elif k == 9:
            batch.append(r.opendir(nid))
        elif k == 10 and handles:
            n, fh, d = rng.choice(handles)
            batch.append(r.readdir(n, fh, 0, 4096, plus=True) if d else r.read(n, fh, 0, 4096))
        elif k == 11 and handles:
            n, fh, d = handles.pop(rng.randrange(len(handles)))
            batch.append(r.releasedir(n, fh) if d else r.release(n, fh))
        elif k == 12:
            batch.append(r.statfs(nid))
        elif k == 13:
            batch.append(r.lookup(nid, b".."))
        elif k == 14:
            batch.append(r.open(nid, os.O_RDONLY))
        else:
            batch.append(r.rename(nid, name, rng.choice(ids), rng.choice(names)))
    return batch


def _learn(request: bytes, reply_bytes: bytes, ids: list[int],
           handles: list[tuple[int, int, bool]]) -> int:
    """Node ids and handles a reply hands out, for later requests to use; its errno."""
    reply = parse_reply(reply_bytes)
    op = int.from_bytes(request[4:8], "little")
    nodeid = int.from_bytes(request[16:24], "little")
    if reply.error == 0 and op in (Opcode.LOOKUP, Opcode.CREATE, Opcode.MKDIR):
        e = parse_entry(reply.payload[:128])
        if e.nodeid not in ids:
            ids.append(e.nodeid)
        if op == Opcode.CREATE:
            handles.append((e.nodeid, int.from_bytes(reply.payload[128:136], "little"), False))
    elif reply.error == 0 and op in (Opcode.OPEN, Opcode.OPENDIR):
        handles.append((nodeid, parse_open(reply.payload)[0], op == Opcode.OPENDIR))
    return reply.error


@pytest.mark.parametrize("seed", range(4))
async def test_hostile_mixes_on_four_queues_leave_nothing(fs_client: Callable[..., Any],
                                                         tmp_path: Path, seed: int) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # Odd seeds with a quota: every step of a creating op stays in the tree.
    policy = Policy(quota_bytes=64 << 20, quota_inodes=10_000) if seed % 2 else Policy()
    async with fs_client(root, policy, max_inode_fds=CACHE, request_queues=4) as c:
        r = c.r
        base_fds = _fds()
        ids: list[int] = [ROOT]
        handles: list[tuple[int, int, bool]] = []
        ok = [0]

        async def queue(q: int) -> None:
            rng = random.Random(seed * 100 + q)
            for _ in range(60):
                batch = _hostile_batch(r, rng, ids, handles)
                replies = await c.fe.submit_many(q, [([b], [8192]) for b in batch])
                for req, done in zip(batch, replies, strict=True):
                    ok[0] += _learn(req, bytes(done.data[:done.used_len]), ids, handles) == 0
                forgets = [r.forget(rng.choice(ids), rng.choice([1, 2, U64]))
                           for _ in range(rng.randrange(0, 4))]
                if rng.random() < 0.3:
                    forgets.append(r.batch_forget([(rng.choice(ids), rng.choice([1, U64]))
                                                   for _ in range(rng.randrange(1, 6))]))
                if forgets:
                    await c.fe.submit_many(0, [([f], []) for f in forgets])

        async with trio.open_nursery() as nursery:
            for q in (1, 2, 3, 4):
                nursery.start_soon(queue, q)
        assert ok[0] > 50 and c.device.meta.statistics()["forgets"] > 0
        if not seed % 2:  # no quota: MKDIR/UNLINK/RMDIR went through C too (fuse_names.c)
            made = c.device.meta.names_statistics()
            assert made["mkdirs"] > 0 and made["unlinks"] + made["rmdirs"] > 0
        await c.fe.submit_many(1, [([r.destroy()], [4096])])
        stats = c.device.tree.statistics()
        assert (stats.inodes, stats.handles, stats.extra["inode_fds"]) == (1, 0, 1)
        assert _fds() == base_fds


def _threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


async def test_parked_setlkw_requests_are_bounded(fs_client: Callable[..., Any],
                                                  tmp_path: Path) -> None:
    """Four rings' worth of SETLKWs that must wait: at most MAX_DEFERRED park (a thread
    each), the rest are answered ENOLCK at once; the threads stay bounded."""
    from msbfs import virtiofs
    cap = virtiofs.MAX_DEFERRED
    per_ring = 300
    async with fs_client(tmp_path, queue_size=1024, slot_size=16384) as c:
        r = c.r
        p = await c.ok(r.create(ROOT, b"f"))
        e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        await c.ok(r.lk(Opcode.SETLK, e.nodeid, fh, 1, 0, 10, fcntl.F_WRLCK))
        threads = _threads()
        q = c.fe.queues[1]
        for _ in range(4):
            parked = c.device.deferred_running
            for _ in range(per_ring):  # owner 2 waits for owner 1's lock
                q.post([r.lk(Opcode.SETLKW, e.nodeid, fh, 2, 0, 10, fcntl.F_WRLCK)], [64])
            q.kick()
            with trio.fail_after(60):  # a failure bound only
                while q.used_idx() + c.device.deferred_running - parked < per_ring:
                    await trio.sleep(0.01)
            assert c.device.deferred_running <= cap
            await c.fe.stop_queue(1)  # the parked chains leave the ring, still waiting
            q.reset_rings()
            await c.fe.start_queue(1)
        assert c.device.deferred_running == cap
        assert _threads() <= threads + cap + 8
        # The refused ones said so; once owner 1 lets go, the parked ones finish.
        reply = await c.call(r.lk(Opcode.SETLKW, e.nodeid, fh, 2, 0, 10, fcntl.F_WRLCK))
        assert reply.error == errno.ENOLCK
        await c.ok(r.lk(Opcode.SETLK, e.nodeid, fh, 1, 0, 10, fcntl.F_UNLCK))
        with trio.fail_after(60):
            while c.device.deferred_running:
                await trio.sleep(0.01)
