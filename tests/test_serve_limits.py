"""``msbfs serve`` limits a guest (issue 9): an inode quota from the volume record or
``--quota-inodes``, and virtiofsd's ``-o posix_lock/no_posix_lock, flock/no_flock``.
Real daemons on real sockets, driven by the in-tree frontend."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

import pytest
import trio

from msbfs.fuse import abi
from msbfs.fuse.abi import Opcode
from msbfs.fuse.kernel import parse_entry, parse_open
from tests.plugins.virtiofs import FuseClient, run_serve
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

ROOT = 1


async def _connect(sock: str) -> tuple[FuseClient, int]:
    fe = await Frontend.connect(sock, GuestRam(((0, 48 << 20),)))
    await fe.handshake([32, 32], slot_size=300 << 10)
    c = FuseClient(fe)
    init = await c.init()
    flags = abi.fuse_init_out.unpack_from(init)[3]
    return c, flags


async def _wait_exit(proc) -> int:  # type: ignore[no-untyped-def]
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(proc.wait)


async def _fill_inodes(c: FuseClient, limit: int) -> list[int]:
    """Make files until ENOSPC; returns the errors seen (the last must be ENOSPC)."""
    files, made = 0, 0
    while True:
        r = await c.call(c.r.mknod(ROOT, b"f%d" % files, 0o100644))
        files += 1
        if r.error:
            return [made, r.error]
        made += 1
        assert made <= limit


async def test_inode_quota_from_the_volume_record(tmp_path: Path, msb_home: Path) -> None:
    from msbfs import volumes

    volumes.create_volume("small", quota_mib=64, quota_inodes=20)
    assert volumes.get_volume("small").quota_inodes == 20
    sock = str(tmp_path / "s")
    with run_serve(["--volume=small"], sock) as proc:
        c, _ = await _connect(sock)
        st = abi.fuse_kstatfs.unpack(await c.ok(c.r.statfs()))
        assert (st[3], st[4]) == (20, 19)  # files, ffree: the root is one
        made, error = await _fill_inodes(c, 20)
        assert (made, error) == (19, errno.ENOSPC)
        assert len(os.listdir(volumes.get_volume("small").path)) == 19
        await c.fe.close()
        assert await _wait_exit(proc) == 0


async def test_quota_inodes_option_on_a_directory(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "old").mkdir()  # two inodes in use already
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={share}", "--quota-inodes=5"], sock) as proc:
        c, _ = await _connect(sock)
        made, error = await _fill_inodes(c, 5)
        assert (made, error) == (3, errno.ENOSPC)
        await c.fe.close()
        assert await _wait_exit(proc) == 0


@pytest.mark.parametrize("opts, posix, flock", [
    ([], True, True),
    (["-o", "no_posix_lock"], False, True),
    (["-o", "no_flock,no_posix_lock"], False, False),
])
async def test_lock_options(tmp_path: Path, opts: list[str], posix: bool, flock: bool) -> None:
    (tmp_path / "f").write_bytes(b"x")
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={tmp_path}", *opts], sock) as proc:
        c, flags = await _connect(sock)
        assert bool(flags & abi.FUSE_POSIX_LOCKS) == posix
        assert bool(flags & abi.FUSE_FLOCK_LOCKS) == flock
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"f")))
        fh, _ = parse_open(await c.ok(c.r.open(e.nodeid, os.O_RDWR)))
        r = await c.call(c.r.lk(Opcode.SETLK, e.nodeid, fh, 1, 0, 10, fcntl.F_WRLCK))
        assert r.error == (0 if posix else errno.ENOSYS)
        # a server-side POSIX lock is a host lock: visible to a host process
        assert _host_lock(tmp_path / "f") == (fcntl.F_WRLCK if posix else fcntl.F_UNLCK)
        r = await c.call(c.r.lk(Opcode.SETLK, e.nodeid, fh, 2, 0, 0, fcntl.F_RDLCK, flock=True))
        assert r.error == (0 if flock else errno.ENOSYS)
        await c.fe.close()
        assert await _wait_exit(proc) == 0


def _host_lock(path: Path) -> int:
    """The type of the lock a host process would meet writing ``path`` (F_UNLCK: none)."""
    fmt = struct.Struct("@hhqqi4x")  # struct flock
    fd = os.open(path, os.O_RDWR)
    try:
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, fmt.pack(fcntl.F_WRLCK, 0, 0, 0, 0))
    finally:
        os.close(fd)
    return fmt.unpack(got)[0]


def _daemon_fds(pid: int) -> int:
    """Open fds of the serving process (a confined daemon serves from its child)."""
    best = 0
    for p in [pid, *_children(pid)]:
        try:
            best = max(best, len(os.listdir(f"/proc/{p}/fd")))
        except OSError:
            pass
    return best


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        out: list[int] = []
        for t in tasks:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
        return out
    except OSError:
        return []


async def test_a_client_that_never_lets_go_cannot_starve_the_daemon(tmp_path: Path) -> None:
    """Opens without RELEASE, lookups of unlinked files without FORGET: past its budget
    the guest's own requests fail (EMFILE, ENFILE) while the daemon stays inside its fd
    limit and goes on serving (issue 9, point 7)."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_bytes(b"data")
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={share}", "--rlimit-nofile=256"], sock) as proc:
        c, _ = await _connect(sock)
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"f")))
        errors: set[int] = set()
        opened = 0
        for _ in range(300):
            r = await c.call(c.r.open(e.nodeid, os.O_RDONLY))
            if r.error:
                errors.add(r.error)
                break
            opened += 1
        assert errors == {errno.EMFILE} and 0 < opened < 256
        # the daemon kept fds of its own: a name it never saw still resolves
        (share / "g").write_bytes(b"")
        await c.ok(c.r.lookup(ROOT, b"g"))
        # pinned inodes: created, looked up and unlinked, never forgotten
        pinned_errors: set[int] = set()
        for i in range(400):
            r = await c.call(c.r.mknod(ROOT, b"p%d" % i, 0o100644))
            if r.error:
                pinned_errors.add(r.error)
                break
            await c.ok(c.r.unlink(ROOT, b"p%d" % i))
        assert pinned_errors == {errno.ENFILE}
        assert _daemon_fds(proc.pid) < 256
        # still serving: reads of an open handle, lookups of known names, statfs
        assert (await c.call(c.r.getattr(e.nodeid))).error == 0
        assert (await c.call(c.r.statfs())).error == 0
        assert parse_entry(await c.ok(c.r.lookup(ROOT, b"f"))).nodeid == e.nodeid
        await c.fe.close()
        assert await _wait_exit(proc) == 0
