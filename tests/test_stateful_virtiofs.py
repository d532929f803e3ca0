"""Stateful fuzzing over a live virtio-fs session (issue 13, point 4).

The machine of tests/plugins/stateful.py, but every operation is a raw FUSE request
through the in-tree vhost-user frontend (``fs_client``), with the uid/gid of the FUSE
header set per caller; FORGET and BATCH_FORGET go on the hiprio queue with no writable
part, as Linux sends them, and teardown is a FUSE DESTROY. Hypothesis runs in a worker
thread (its API is synchronous); each example asks the trio loop for a fresh session and
sends every request to it with ``trio.from_thread.run``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from msbfs.fuse import abi
from msbfs.fuse.abi import Opcode
from msbfs.fuse.kernel import Reply, parse_attr_out, parse_dirents, parse_entry, parse_open
from msbfs.tree import FATTR_ATIME, FATTR_MTIME, Ctx, Lock, SetAttr
from tests.plugins.stateful import Attrs, StatefulFs, assert_deep, run_machine
from tests.plugins.virtiofs import HIPRIO, FuseClient

BIG = 16384  # reply room for reads (the machine reads at most 9,000 bytes) and listings


def _attrs(a: tuple[int, ...]) -> Attrs:
    # fuse_attr: ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid
    return Attrs(a[9], a[10], a[11], a[12], a[1], a[4] * 1_000_000_000 + a[7])


class FuseFront:
    """The Front protocol as FUSE requests: node ids and handles are the session's."""

    def __init__(self, c: FuseClient) -> None:
        self.c = c
        self.r = c.r

    def _call(self, request: bytes | None, reply: int = 8192, queue: int = 1) -> Reply:
        assert request is not None
        return trio.from_thread.run(self.c.call, request, reply, queue)

    def _as(self, c: Ctx | None) -> Any:
        self.r.uid, self.r.gid = (c.uid, c.gid) if c is not None else (0, 0)
        return self.r

    def _ok(self, request: bytes, reply: int = 8192) -> bytes:
        return self._call(request, reply).ok()

    def _entry(self, request: bytes) -> tuple[int, Attrs]:
        e = parse_entry(self._ok(request))
        return e.nodeid, _attrs(e.attr)

    def lookup(self, p: int, name: bytes, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self._as(c).lookup(p, name))

    def forget(self, n: int, k: int) -> None:
        done = trio.from_thread.run(self.c.raw, [self._as(None).forget(n, k)], [], HIPRIO)
        assert done.used_len == 0

    def batch_forget(self, items: list[tuple[int, int]]) -> None:
        done = trio.from_thread.run(self.c.raw, [self._as(None).batch_forget(items)], [], HIPRIO)
        assert done.used_len == 0

    def getattr(self, n: int, c: Ctx) -> Attrs:
        return _attrs(parse_attr_out(self._ok(self._as(c).getattr(n)))[1])

    def setattr(self, n: int, sa: SetAttr, c: Ctx) -> Attrs:
        t = divmod(sa.mtime_ns, 1_000_000_000)
        times = {"atime": t, "mtime": t} if sa.valid & (FATTR_ATIME | FATTR_MTIME) else {}
        req = self._as(c).setattr(n, valid=sa.valid, size=sa.size, mode=sa.mode, uid=sa.uid,
                                  gid=sa.gid, **times)
        return _attrs(parse_attr_out(self._ok(req))[1])

    def readlink(self, n: int, c: Ctx) -> bytes:
        return self._ok(self._as(c).readlink(n))

    def mknod(self, p: int, name: bytes, mode: int, umask: int, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self._as(c).mknod(p, name, mode, 0, umask))

    def mkdir(self, p: int, name: bytes, mode: int, umask: int, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self._as(c).mkdir(p, name, mode, umask))

    def symlink(self, p: int, name: bytes, target: bytes, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self._as(c).symlink(p, name, target))

    def link(self, n: int, p: int, name: bytes, c: Ctx) -> tuple[int, Attrs]:
        return self._entry(self._as(c).link(n, p, name))

    def unlink(self, p: int, name: bytes, c: Ctx) -> None:
        self._ok(self._as(c).unlink(p, name))

    def rmdir(self, p: int, name: bytes, c: Ctx) -> None:
        self._ok(self._as(c).rmdir(p, name))

    def rename(self, p: int, name: bytes, np: int, newname: bytes, flags: int, c: Ctx) -> None:
        r = self._as(c)
        self._ok(r.rename2(p, name, np, newname, flags) if flags else r.rename(p, name, np, newname))

    def _created(self, request: bytes) -> tuple[int, Attrs, int]:
        p = self._ok(request)
        e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        return e.nodeid, _attrs(e.attr), fh

    def create(self, p: int, name: bytes, mode: int, flags: int, umask: int,
               c: Ctx) -> tuple[int, Attrs, int]:
        return self._created(self._as(c).create(p, name, mode, flags, umask))

    def tmpfile(self, p: int, mode: int, flags: int, umask: int, c: Ctx) -> tuple[int, Attrs, int]:
        r = self._as(c)
        return self._created(r.raw(Opcode.TMPFILE, p, abi.fuse_create_in.pack(flags, mode, umask, 0)
                                   + b"\0"))

    def open(self, n: int, flags: int, c: Ctx) -> int:
        return parse_open(self._ok(self._as(c).open(n, flags)))[0]

    def read(self, n: int, fh: int, off: int, size: int) -> bytes:
        return self._ok(self._as(None).read(n, fh, off, size), BIG)

    def write(self, n: int, fh: int, off: int, data: bytes, c: Ctx) -> int:
        (count,) = abi.fuse_write_out.unpack(self._ok(self._as(c).write(n, fh, off, data)))
        return count

    def fallocate(self, n: int, fh: int, mode: int, off: int, length: int) -> None:
        self._ok(self._as(None).fallocate(n, fh, off, length, mode))

    def copy_file_range(self, n: int, fh: int, off: int, n_out: int, fh_out: int,
                        off_out: int, length: int) -> int:
        p = self._ok(self._as(None).copy_file_range(n, fh, off, n_out, fh_out, off_out, length))
        return abi.fuse_write_out.unpack(p)[0]

    def lseek(self, n: int, fh: int, off: int, whence: int) -> int:
        return abi.fuse_lseek_out.unpack(self._ok(self._as(None).lseek(n, fh, off, whence)))[0]

    def flush(self, n: int, fh: int, owner: int) -> None:
        self._ok(self._as(None).flush(n, fh, owner))

    def release(self, n: int, fh: int) -> None:
        self._ok(self._as(None).release(n, fh))

    def getlk(self, n: int, fh: int, owner: int, lock: Lock) -> Lock:
        req = self._as(None).lk(Opcode.GETLK, n, fh, owner, lock.start, lock.end, lock.type)
        return Lock(*abi.fuse_lk_out.unpack(self._ok(req)))

    def setlk(self, n: int, fh: int, owner: int, lock: Lock) -> None:
        self._ok(self._as(None).lk(Opcode.SETLK, n, fh, owner, lock.start, lock.end, lock.type))

    def opendir(self, n: int, c: Ctx) -> int:
        return parse_open(self._ok(self._as(c).opendir(n)))[0]

    def readdir(self, n: int, fh: int) -> list[bytes]:
        names: list[bytes] = []
        off = 0
        while True:  # small buffers: the listing resumes from the last cookie
            got = parse_dirents(self._ok(self._as(None).readdir(n, fh, off, 256), 512))
            if not got:
                return names
            names += [name for name, _ino, _off, _e in got]
            off = got[-1][2]

    def releasedir(self, n: int, fh: int) -> None:
        self._ok(self._as(None).releasedir(n, fh))

    def statfs(self, n: int) -> tuple[int, int]:
        s = abi.fuse_kstatfs.unpack(self._ok(self._as(None).statfs(n)))
        return s[5], s[6]

    def setxattr(self, n: int, name: bytes, value: bytes, flags: int, c: Ctx) -> None:
        self._ok(self._as(c).setxattr(n, name, value, flags))

    def getxattr(self, n: int, name: bytes, c: Ctx) -> bytes:
        return self._ok(self._as(c).getxattr(n, name, BIG), BIG)

    def listxattr(self, n: int, c: Ctx) -> list[bytes]:
        data = self._ok(self._as(c).listxattr(n, BIG), BIG)
        return [x for x in data.split(b"\0") if x]

    def removexattr(self, n: int, name: bytes, c: Ctx) -> None:
        self._ok(self._as(c).removexattr(n, name))

    def destroy(self) -> None:
        self._ok(self._as(None).destroy())


class Sessions:
    """Fresh virtio-fs sessions on the trio loop, one per example, for the machine's
    thread: ``open(served)`` returns a client, ``close()`` ends the session."""

    def __init__(self, fs_client: Callable[..., Any]) -> None:
        self.fs_client = fs_client
        self.want, self.want_rx = trio.open_memory_channel[Path](0)
        self.ready_tx, self.ready = trio.open_memory_channel[FuseClient](0)
        self.done, self.done_rx = trio.open_memory_channel[None](0)
        self.closed_tx, self.closed = trio.open_memory_channel[None](0)

    async def serve(self) -> None:
        async for root in self.want_rx:
            async with self.fs_client(root) as c:
                await self.ready_tx.send(c)
                await self.done_rx.receive()
            await self.closed_tx.send(None)

    def open(self, served: Path) -> FuseClient:
        trio.from_thread.run(self.want.send, served)
        return trio.from_thread.run(self.ready.receive)

    def close(self) -> None:
        trio.from_thread.run(self.done.send, None)
        trio.from_thread.run(self.closed.receive)


async def test_stateful_virtiofs(fs_client: Callable[..., Any]) -> None:
    sessions = Sessions(fs_client)

    class VirtioFsMachine(StatefulFs):
        front_name = "virtiofs"

        def open_front(self, served: Path) -> tuple[FuseFront, Callable[[], None]]:
            return FuseFront(sessions.open(served)), sessions.close

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sessions.serve)
        await trio.to_thread.run_sync(run_machine, VirtioFsMachine)
        nursery.cancel_scope.cancel()
    assert_deep("virtiofs")
