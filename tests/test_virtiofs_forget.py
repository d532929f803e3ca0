"""FORGET as a Linux guest sends it: on the hiprio queue, in a chain with no writable
part (there is no reply). Issue 9, point 8: such FORGETs were refused for lack of reply
room, so every inode a guest ever looked up stayed open in the daemon, deleted files
included, and their blocks stayed allocated on the host."""

from __future__ import annotations

import os
from pathlib import Path

from msbfs.fuse import abi
from msbfs.fuse.kernel import parse_entry, parse_open
from msbfs.tree import Policy

ROOT = 1
HIPRIO = 0


def _deleted_fds() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith("(deleted)") and "forget-victim" in target:
            out.append(target)
    return out


async def test_forget_without_reply_room_drops_the_inode(fs_client, tmp_path: Path) -> None:
    async with fs_client(tmp_path) as c:
        r = c.r
        tree = c.device.tree
        base = tree.statistics().inodes
        e = parse_entry(await c.ok(r.mkdir(ROOT, b"d")))
        assert tree.statistics().inodes == base + 1
        done = await c.raw([r.forget(e.nodeid, 1)], [], queue=HIPRIO)
        assert done.used_len == 0
        assert tree.statistics().inodes == base
        # BATCH_FORGET the same way
        ids = [parse_entry(await c.ok(r.lookup(ROOT, b"d"))).nodeid for _ in range(3)]
        assert len(set(ids)) == 1 and tree.statistics().inodes == base + 1
        done = await c.raw([r.batch_forget([(ids[0], 3)])], [], queue=HIPRIO)
        assert done.used_len == 0
        assert tree.statistics().inodes == base


async def test_deleted_files_release_their_space(fs_client, tmp_path: Path) -> None:
    """create, write, release, unlink, forget (the guest's `rm` of a closed file): no fd
    of the daemon holds the file afterwards, and a quota'd tree gets its blocks back."""
    async with fs_client(tmp_path, Policy(quota_bytes=4 << 20)) as c:
        r = c.r
        tree = c.device.tree
        used0 = tree.quota.used
        for i in range(20):
            name = b"forget-victim-%d" % i
            p = await c.ok(r.create(ROOT, name, 0o644))
            e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
            fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
            await c.ok(r.write(e.nodeid, fh, 0, b"x" * 32768))
            await c.ok(r.release(e.nodeid, fh))
            await c.ok(r.unlink(ROOT, name))
            await c.raw([r.forget(e.nodeid, 1)], [], queue=HIPRIO)
        assert _deleted_fds() == []
        assert tree.quota.used <= used0 + 4096  # the root directory may have grown a block
