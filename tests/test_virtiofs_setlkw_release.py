"""A parked SETLKW against RELEASE/FLUSH of its handle on other request queues
(red-team finding 4; msbfs/tree/record_locks.py, "the pin rule").

The guest is hostile: it may send SETLKW(fh) on one queue and RELEASE(fh) plus OPENs on
others at once. The RELEASE closes the handle's fd and the OPENs reuse its number; a
SETLKW that looked at that number after parking took its lock on another file, one the
guest never locked (the red team saw ENOENT 18 times in 3,000 rounds, the number freed
but not yet reused).

- the race made deterministic: the lock table's internal lock is replaced by a gate the
  test holds, so whoever resolves the SETLKW's description stops right there. If that is
  a parked thread outside the slow path (the bug), the RELEASE and the OPENs are served
  while it stands at the gate, which is exactly the red team's interleaving; then the
  gate opens. Afterwards no other file carries a lock, and the lock is on the file the
  SETLKW named.
- FLUSH and RELEASE while the SETLKW waits in the kernel for a host lock: the waiter's
  description is not closed under it (no fd of it is left once it returns), it answers
  EBADF (its owner closed the file meanwhile), and no file keeps a lock.
- a SETLKW refused past MAX_DEFERRED gives back what it pinned: FLUSH closes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from pathlib import Path
from typing import Any

import trio

from msbfs.fuse import abi
from msbfs.fuse.abi import Opcode
from msbfs.fuse.kernel import Reply, parse_entry, parse_open
from tests.plugins.threads import lock_waiters, until_async

ROOT = abi.FUSE_ROOT_ID
OTHERS = 8  # files opened meanwhile: the lowest free numbers, the released one first
_FLOCK = struct.Struct("@hhqqi4x")


class Gate:
    """Stands in for ``RecordLocks._lock``: counts who arrives, holds them while the
    test holds ``inner``."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.arrived = 0

    def __enter__(self) -> Gate:
        self.arrived += 1
        self.inner.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def host_lock_type(path: Path) -> int:
    """What a host process sees over the whole file: F_UNLCK when nobody holds a lock."""
    fd = os.open(path, os.O_RDWR)
    try:
        arg = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        return _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_OFD_GETLK, arg))[0]
    finally:
        os.close(fd)


def open_on(path: Path) -> int:
    """This process's fds open on ``path``'s file for I/O (the nodes' O_PATH fds not
    counted): the handles and lock descriptions."""
    st = os.stat(path)
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            s = os.stat(f"/proc/self/fd/{name}")
            with open(f"/proc/self/fdinfo/{name}") as f:
                flags = int(f.read().split("flags:")[1].split()[0], 8)
        except (FileNotFoundError, IndexError):
            continue  # closed meanwhile
        if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino) and not flags & os.O_PATH:
            n += 1
    return n


async def create(c: Any, name: bytes) -> tuple[int, int]:
    p = await c.ok(c.r.create(ROOT, name, 0o644, os.O_RDWR))
    e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
    fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
    return e.nodeid, fh


async def release_and_open_others(c: Any, nodeid: int, fh: int, others: list[int],
                                  opened: list[int]) -> None:
    """RELEASE on queue 2, then OPEN every other file on queue 3 (their fds take the
    lowest free numbers: the released handle's first)."""
    await c.ok(c.r.release(nodeid, fh), queue=2)
    for n in others:
        fh_n, _ = parse_open(await c.ok(c.r.open(n, os.O_RDWR), queue=3))
        opened.append(fh_n)


async def test_a_release_while_a_setlkw_is_parked_never_moves_its_lock(
        fs_client: Any, tmp_path: Path) -> None:
    async with fs_client(tmp_path, request_queues=3) as c:
        nodeid, fh = await create(c, b"f")
        # Created (their handles stay open) before the race: the nodes' own fds must
        # not be what takes the number being freed, the OPENs' handles must.
        others = [(await create(c, b"g%d" % i))[0] for i in range(OTHERS)]
        gate = Gate()
        tree = c.device.tree
        tree._locks._lock = gate  # the white-box part: a gate where the fd is resolved
        gate.inner.acquire()
        reply: list[Reply] = []
        opened: list[int] = []
        try:
            async with trio.open_nursery() as n:
                async def setlkw() -> None:
                    reply.append(await c.call(c.r.lk(Opcode.SETLKW, nodeid, fh, 2, 0, 10,
                                                     fcntl.F_WRLCK), queue=1))
                n.start_soon(setlkw)
                assert await until_async(lambda: gate.arrived == 1)
                if c.device.lock.locked():
                    # Resolved on the slow path (nothing else was in flight): RELEASE
                    # and OPEN cannot run before it, so there is no window to open.
                    gate.inner.release()
                    await release_and_open_others(c, nodeid, fh, others, opened)
                else:
                    # Resolved by a parked thread: the window the red team hit.
                    await release_and_open_others(c, nodeid, fh, others, opened)
                    gate.inner.release()
        finally:
            if gate.inner.locked() and not reply:
                gate.inner.release()
        assert reply[0].error == 0, reply[0]
        # No other file has a lock; it is on f, the file the SETLKW named.
        for i in range(OTHERS):
            assert host_lock_type(tmp_path / f"g{i}") == fcntl.F_UNLCK, f"g{i} got f's lock"
        assert host_lock_type(tmp_path / "f") == fcntl.F_WRLCK


async def test_a_flush_while_a_setlkw_waits_keeps_its_fd_until_it_returns(
        fs_client: Any, tmp_path: Path) -> None:
    async with fs_client(tmp_path, request_queues=3) as c:
        nodeid, fh = await create(c, b"f")
        others = [(await create(c, b"g%d" % i))[0] for i in range(OTHERS)]
        host = os.open(tmp_path / "f", os.O_RDWR)
        try:
            fcntl.fcntl(host, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
            reply: list[Reply] = []
            opened: list[int] = []
            async with trio.open_nursery() as n:
                async def setlkw() -> None:
                    reply.append(await c.call(c.r.lk(Opcode.SETLKW, nodeid, fh, 2, 0, 10,
                                                     fcntl.F_WRLCK), queue=1))
                n.start_soon(setlkw)
                # Parked, and asleep in the kernel waiting for the host's lock.
                assert await until_async(lambda: c.device.deferred_running == 1
                                         and bool(lock_waiters()))
                # the handle, owner 2's description, and the host's fd holding the lock
                assert open_on(tmp_path / "f") == 3
                await c.ok(c.r.flush(nodeid, fh, 2), queue=2)  # drops owner 2's locks
                # The waiter's description stays open (pinned): FLUSH closed nothing.
                assert open_on(tmp_path / "f") == 3
                await release_and_open_others(c, nodeid, fh, others, opened)
                fcntl.fcntl(host, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))
        finally:
            os.close(host)
        assert await until_async(lambda: c.device.deferred_running == 0)
        # Its owner closed the file while it waited: no lock, said so.
        assert reply[0].error == errno.EBADF, reply[0]
        for name in ["f", *(f"g{i}" for i in range(OTHERS))]:
            assert host_lock_type(tmp_path / name) == fcntl.F_UNLCK, f"{name} keeps a lock"
        # The waiter closed the pinned description when it returned: nothing is open
        # on f any more (its handle was released).
        assert open_on(tmp_path / "f") == 0


async def test_a_refused_setlkw_leaves_no_description_behind(
        fs_client: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """Past MAX_DEFERRED a SETLKW is answered ENOLCK without parking: the description it
    pinned while being resolved is unpinned, so the owner's FLUSH closes it."""
    from msbfs import virtiofs
    monkeypatch.setattr(virtiofs, "MAX_DEFERRED", 0)
    async with fs_client(tmp_path) as c:
        nodeid, fh = await create(c, b"f")
        reply = await c.call(c.r.lk(Opcode.SETLKW, nodeid, fh, 2, 0, 10, fcntl.F_WRLCK))
        assert reply.error == errno.ENOLCK
        assert open_on(tmp_path / "f") == 2  # the handle, owner 2's description
        await c.ok(c.r.flush(nodeid, fh, 2))
        assert open_on(tmp_path / "f") == 1, "the refused SETLKW's pin kept it open"
        await c.ok(c.r.release(nodeid, fh))
