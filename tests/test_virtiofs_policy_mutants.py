"""virtio-fs tests written for tools/mutants (issue 13): each rule here had a mutant that
dropped it and no test on this front went red. Requests go through the in-tree
vhost-user frontend into a real ``VirtioFsDevice`` (the C data path included), as a
hostile guest kernel would send them, and every check looks at the host as well as at
the reply."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from msbfs.fuse import abi
from msbfs.fuse.kernel import parse_attr_out, parse_entry, parse_open
from msbfs.tree import Policy
from msbfs.tree.policy import walk_counts
from msbfs.tree.types import FATTR_KILL_SUIDGID, FATTR_MODE, OFFSET_MAX
from tests.test_tree_hardening import _write_fds_on

ROOT = 1
MODE, RDEV = 9, 13  # fuse_attr field positions
SETID = stat.S_ISUID | stat.S_ISGID


async def test_access_answers_readonly_and_noexec(fs_client, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    (tmp_path / "f").chmod(0o777)
    async with fs_client(tmp_path, Policy(readonly=True, noexec=True)) as c:
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"f")))
        assert (await c.call(c.r.access(e.nodeid, os.W_OK))).error == errno.EROFS
        assert (await c.call(c.r.access(e.nodeid, os.X_OK))).error == errno.EACCES
        await c.ok(c.r.access(e.nodeid, os.R_OK))  # reading stays allowed
    async with fs_client(tmp_path) as c:  # the control: the host says yes to both
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"f")))
        await c.ok(c.r.access(e.nodeid, os.W_OK | os.X_OK))


async def test_nosuid_never_stores_or_reports_setid(fs_client, tmp_path: Path) -> None:
    (tmp_path / "host-setuid").write_bytes(b"")
    (tmp_path / "host-setuid").chmod(0o4755)
    async with fs_client(tmp_path, Policy(nosuid=True)) as c:
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"host-setuid")))
        assert e.attr[MODE] & 0o7777 == 0o755  # the host's bit is not shown
        p = await c.ok(c.r.create(ROOT, b"made", mode=0o6755))
        made = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        d = parse_entry(await c.ok(c.r.mkdir(ROOT, b"dir", mode=0o2775)))
        _, attr = parse_attr_out(await c.ok(c.r.setattr(e.nodeid, valid=FATTR_MODE,
                                                         mode=0o6755)))
        assert attr[MODE] & SETID == 0
        for entry in (made, d):
            assert entry.attr[MODE] & SETID == 0
    for name in ("made", "dir", "host-setuid"):
        assert os.stat(tmp_path / name).st_mode & SETID == 0, name


async def test_nodev_neither_creates_nor_names_devices(fs_client, tmp_path: Path) -> None:
    os.mknod(tmp_path / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    async with fs_client(tmp_path, Policy(nodev=True)) as c:
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"zero")))
        assert stat.S_ISCHR(e.attr[MODE]) and e.attr[RDEV] == 0  # no device to reach
        for name, kind in ((b"null", stat.S_IFCHR), (b"loop", stat.S_IFBLK)):
            reply = await c.call(c.r.mknod(ROOT, name, kind | 0o666, os.makedev(1, 3)))
            assert reply.error == errno.EPERM
            assert not os.path.lexists(tmp_path / name.decode())
        await c.ok(c.r.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o644))  # not a device
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    async with fs_client(tmp_path) as c:  # the control: without nodev, the real rdev
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"zero")))
        assert e.attr[RDEV] == os.makedev(1, 5)


async def test_no_device_is_opened_by_open_or_create(fs_client, tmp_path: Path) -> None:
    os.mknod(tmp_path / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    for policy, code in ((Policy(), errno.EBADF), (Policy(nodev=True), errno.EACCES)):
        async with fs_client(tmp_path, policy) as c:
            tree = c.device.tree
            e = parse_entry(await c.ok(c.r.lookup(ROOT, b"zero")))
            assert (await c.call(c.r.open(e.nodeid, os.O_RDONLY))).error == code
            assert (await c.call(c.r.create(ROOT, b"zero", flags=os.O_RDONLY))).error == code
            assert tree.statistics().handles == 0


async def test_quota_refuses_fallocate_and_xattrs_past_it(fs_client, tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"f{i}").write_bytes(b"")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        used, _ = walk_counts(fd)
    finally:
        os.close(fd)
    # room for two 4 KiB blocks: the host filesystem itself would take an xattr block
    # per file, so only the quota can be what refuses the third file's
    async with fs_client(tmp_path, Policy(quota_bytes=used + (8 << 10))) as c:
        tree = c.device.tree
        nodes = [parse_entry(await c.ok(c.r.lookup(ROOT, f"f{i}".encode()))).nodeid
                 for i in range(4)]
        fh, _ = parse_open(await c.ok(c.r.open(nodes[0], os.O_RDWR)))
        reply = await c.call(c.r.fallocate(nodes[0], fh, 0, 1 << 20))
        assert reply.error == errno.ENOSPC
        assert os.stat(tmp_path / "f0").st_blocks == 0
        await c.ok(c.r.release(nodes[0], fh))
        errors = [(await c.call(c.r.setxattr(n, b"user.big", b"x" * 3000))).error
                  for n in nodes]
        assert errors[0] == 0 and errors[-1] == errno.ENOSPC, errors
        assert tree.quota is not None and tree.quota.used <= used + (8 << 10)
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        assert walk_counts(fd)[0] <= used + (8 << 10)
    finally:
        os.close(fd)


async def test_inode_quota_stops_create(fs_client, tmp_path: Path) -> None:
    async with fs_client(tmp_path, Policy(quota_inodes=3)) as c:  # the root and 2 more
        errors = []
        for i in range(5):
            reply = await c.call(c.r.create(ROOT, f"f{i}".encode()))
            errors.append(reply.error)
            if not reply.error:
                fh, _ = parse_open(reply.payload[abi.FUSE_ENTRY_OUT_SIZE:])
                await c.ok(c.r.release(parse_entry(reply.payload).nodeid, fh))
        assert errors == [0, 0, errno.ENOSPC, errno.ENOSPC, errno.ENOSPC], errors
    assert sorted(os.listdir(tmp_path)) == ["f0", "f1"]


async def test_names_are_single_components_that_stay_inside(fs_client, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").write_bytes(b"")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"host\n")
    async with fs_client(root) as c:
        assert (await c.call(c.r.lookup(ROOT, b"a/b"))).error == errno.EINVAL
        for name in (b"../outside/secret", b"../outside"):
            assert (await c.call(c.r.lookup(ROOT, name))).error == errno.EINVAL
            assert (await c.call(c.r.mkdir(ROOT, name + b"-made"))).error == errno.EINVAL
            assert (await c.call(c.r.unlink(ROOT, name))).error == errno.EINVAL
        # '..' of the root is the root itself, never the host's parent
        up = parse_entry(await c.ok(c.r.lookup(ROOT, b"..")))
        assert up.nodeid == ROOT and up.ino == os.stat(root).st_ino
        # a directory moved out of the root behind the daemon's back has no parent
        # (its node holds its fd and follows it out: the walk up says so)
        (root / "c").write_bytes(b"c")
        a = parse_entry(await c.ok(c.r.lookup(ROOT, b"a")))
        named = parse_entry(await c.ok(c.r.lookup(ROOT, b"c")))
        os.rename(root / "a", tmp_path / "moved")
        assert (await c.call(c.r.lookup(a.nodeid, b".."))).error == errno.ENOENT
        # a file only looked up (a named node, csrc/inodes.h), moved out: never
        # reached; its name beneath the root holds nothing now
        os.rename(root / "c", tmp_path / "moved-c")
        for req in (c.r.getattr(named.nodeid), c.r.open(named.nodeid, os.O_RDONLY)):
            assert (await c.call(req)).error == errno.ESTALE
    assert sorted(os.listdir(tmp_path)) == ["moved", "moved-c", "outside", "root"]
    assert (tmp_path / "outside" / "secret").read_bytes() == b"host\n"


async def test_default_map_refuses_trusted_even_with_cap_sys_admin(fs_client,
                                                                   tmp_path: Path) -> None:
    # In-process the device runs as root with CAP_SYS_ADMIN: the kernel would accept
    # trusted.*, so only the map is what refuses.
    (tmp_path / "f").write_bytes(b"")
    os.setxattr(tmp_path / "f", "trusted.host", b"mark")
    async with fs_client(tmp_path) as c:
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"f")))
        assert (await c.call(c.r.setxattr(e.nodeid, b"trusted.overlay.opaque", b"y"))).error \
            == errno.EPERM
        assert (await c.call(c.r.getxattr(e.nodeid, b"trusted.host", 100))).error \
            == errno.ENODATA
        names = (await c.ok(c.r.listxattr(e.nodeid, 4096))).split(b"\0")
        assert b"trusted.host" not in names
    assert "trusted.overlay.opaque" not in os.listxattr(tmp_path / "f")


async def test_kill_suidgid_alone_and_on_write(fs_client, tmp_path: Path) -> None:
    for name in ("alone", "written"):
        (tmp_path / name).write_bytes(b"#!/bin/sh\n")
        (tmp_path / name).chmod(0o6755)
    async with fs_client(tmp_path) as c:
        alone = parse_entry(await c.ok(c.r.lookup(ROOT, b"alone")))
        await c.ok(c.r.setattr(alone.nodeid, valid=FATTR_KILL_SUIDGID))
        assert stat.S_IMODE(os.stat(tmp_path / "alone").st_mode) == 0o6755
        w = parse_entry(await c.ok(c.r.lookup(ROOT, b"written")))
        fh, _ = parse_open(await c.ok(c.r.open(w.nodeid, os.O_RDWR)))
        # an unprivileged writer: the guest kernel asks the server to clear the bits
        # (HANDLE_KILLPRIV_V2); with no quota this WRITE reaches the C data path first
        await c.ok(c.r.write(w.nodeid, fh, 0, b"#", flags=abi.FUSE_WRITE_KILL_SUIDGID))
        assert stat.S_IMODE(os.stat(tmp_path / "written").st_mode) == 0o755
        await c.ok(c.r.release(w.nodeid, fh))


async def test_locks_keep_the_handles_access_mode(fs_client, tmp_path: Path) -> None:
    exe = tmp_path / "tool"
    exe.write_bytes(b"#!/bin/sh\n")
    exe.chmod(0o755)
    async with fs_client(tmp_path, Policy(readonly=True)) as c:
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"tool")))
        fh, _ = parse_open(await c.ok(c.r.open(e.nodeid, os.O_RDONLY)))
        await c.ok(c.r.lk(abi.Opcode.SETLK, e.nodeid, fh, 7, 0, OFFSET_MAX, fcntl.F_RDLCK))
        assert c.device.tree.statistics().extra["lock_fds"] == 1
        assert _write_fds_on(exe) == []  # no re-open with more access than the handle
        reply = await c.call(c.r.lk(abi.Opcode.SETLK, e.nodeid, fh, 7, 0, 10, fcntl.F_WRLCK))
        assert reply.error == errno.EBADF
        # refused before anything is taken: no lock description for an owner that
        # holds no lock (the host kernel would say EBADF too, but only after the
        # daemon had opened one for it)
        reply = await c.call(c.r.lk(abi.Opcode.SETLK, e.nodeid, fh, 8, 0, 10, fcntl.F_WRLCK))
        assert reply.error == errno.EBADF
        assert c.device.tree.statistics().extra["lock_fds"] == 1
        await c.ok(c.r.flush(e.nodeid, fh, 7))
        await c.ok(c.r.release(e.nodeid, fh))


async def test_inode_budget_answers_enfile_and_keeps_serving(fs_client, tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"n{i}").write_bytes(b"")
    async with fs_client(tmp_path, max_inodes=20) as c:
        errors = [(await c.call(c.r.lookup(ROOT, f"n{i}".encode()))).error for i in range(40)]
        assert errno.ENFILE in errors and errors[0] == 0
        assert c.device.tree.statistics().inodes <= 20
        await c.ok(c.r.getattr(ROOT))  # the daemon still serves


async def test_a_named_node_never_reaches_what_took_its_name(fs_client, tmp_path: Path) -> None:
    """A lookup adds a named node (csrc/inodes.h: no fd until its first use); when its
    name holds another object by then (a symlink out of the root, a FIFO, a directory,
    a file whose number the filesystem reused), every use of the node id says ESTALE:
    the C paths' and the tree's (the second client: C off)."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_bytes(b"host\n")
    names = (b"link", b"fifo", b"dir", b"file")
    for n in names:
        (root / n.decode()).write_bytes(b"inside")
    for c_on in (True, False):
        async with fs_client(root) as c:
            c.device.meta.enabled = c_on
            nodes = [parse_entry(await c.ok(c.r.lookup(ROOT, n))).nodeid for n in names]
            for n in names:
                (root / n.decode()).unlink()
            (root / "link").symlink_to(tmp_path / "secret")
            os.mkfifo(root / "fifo")
            (root / "dir").mkdir()
            (root / "file").write_bytes(b"a new file")
            for node in nodes:
                for req in (c.r.getattr(node), c.r.open(node, os.O_RDONLY),
                            c.r.getxattr(node, b"user.x", 64)):
                    assert (await c.call(req)).error == errno.ESTALE
        for n in names:
            p = root / n.decode()
            p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
            p.write_bytes(b"inside")
    assert (tmp_path / "secret").read_bytes() == b"host\n"
