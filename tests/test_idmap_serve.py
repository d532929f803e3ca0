"""Id maps through the real fronts: ``msbfs-virtiofsd`` started with libvirt's argv for an
unprivileged session (``--uid-map=:0:1000:1: --gid-map=:0:1000:1:``) on an inherited
socket, driven by the in-tree frontend; a bad map stopping the daemon with virtiofsd's
reason; and ``msbfs mount -o uid_map=...,translate_gid=...`` seen by host users."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from msbfs.fuse import abi
from msbfs.fuse.kernel import Requests, parse_attr_out, parse_entry, parse_open
from msbfs.tree import FATTR_UID
from tests.plugins.hostmount import MountFactory, needs_root, py_as
from tests.plugins.virtiofs import FuseClient
from vhost.connection import Connection
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

ROOT = 1
UID, GID = 11, 12  # fuse_attr fields


def libvirt_argv(fd: int, shared: Path) -> list[str]:
    """What libvirt (qemuVirtioFSBuildCommandLine, separate-options) runs for a session
    domain whose user is 1000:1000."""
    return [sys.executable, "-m", "msbfs.virtiofsd", f"--fd={fd}", "--shared-dir", str(shared),
            "--cache", "auto", "--xattr", "--thread-pool-size=0",
            "--uid-map=:0:1000:1:", "--gid-map=:0:1000:1:"]


async def wait_exit(proc: subprocess.Popen[bytes], limit: float = 30) -> int:
    with trio.fail_after(limit):
        return await trio.to_thread.run_sync(proc.wait)


@pytest.mark.skipif(os.geteuid() != 0, reason="owning files as uid 1000 needs root")
async def test_libvirt_uid_map_command_line(tmp_path: Path) -> None:
    shared = tmp_path / "share"
    shared.mkdir()
    (shared / "users").write_text("the session user's file")
    os.chown(shared / "users", 1000, 1000)
    (shared / "roots").write_text("the host root's file")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(libvirt_argv(theirs.fileno(), shared), pass_fds=[theirs.fileno()],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    theirs.close()
    try:
        ours.setblocking(False)
        fe = Frontend(Connection(trio.socket.from_stdlib_socket(ours)), GuestRam(((0, 16 << 20),)))
        await fe.handshake([16, 16])
        c = FuseClient(fe)  # the guest's root: uid 0, gid 0
        await c.init()
        users = parse_entry(await c.ok(c.r.lookup(ROOT, b"users")))
        assert (users.attr[UID], users.attr[GID]) == (0, 0)
        roots = parse_entry(await c.ok(c.r.lookup(ROOT, b"roots")))
        assert (roots.attr[UID], roots.attr[GID]) == (65534, 65534)  # outside the namespace

        p = await c.ok(c.r.create(ROOT, b"made-by-guest-root"))
        e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        await c.ok(c.r.release(e.nodeid, fh))
        st = os.stat(shared / "made-by-guest-root")
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert (e.attr[UID], e.attr[GID]) == (0, 0)
        _, attr = parse_attr_out(await c.ok(c.r.getattr(e.nodeid)))
        assert (attr[UID], attr[GID]) == (0, 0)

        # A guest user outside the map may look and read, but not create as itself.
        user = FuseClient(fe, Requests(uid=1000, gid=1000, pid=2))
        await user.ok(user.r.lookup(ROOT, b"users"))
        assert (await user.call(user.r.mkdir(ROOT, b"nope"))).error == errno.EPERM
        assert not (shared / "nope").exists()
        # ... nor chown to an id the namespace cannot name.
        chown = c.r.setattr(e.nodeid, valid=FATTR_UID, uid=1000)
        assert (await c.call(chown)).error == errno.EPERM
        assert os.stat(shared / "made-by-guest-root").st_uid == 1000
        await fe.close()
        assert await wait_exit(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.parametrize("flag, says", [
    ("--uid-map=0:1000:1", "A delimiter has been found that does not match the delimiter"),
    ("--translate-gid=squash-guest:0:1000", "Invalid ID map length (expected 3 elements, "
                                            "got 2 elements)"),
    ("--translate-uid=map:0:1000:10", "intersects previously added entry"),
])
def test_a_bad_map_stops_the_daemon_at_start(tmp_path: Path, flag: str, says: str) -> None:
    argv = [sys.executable, "-m", "msbfs", "serve", f"--socket-path={tmp_path / 's'}",
            f"--shared-dir={tmp_path}", "--translate-uid=guest:5:6:1", flag]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and says in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.fuse
@needs_root
def test_host_mount_with_a_map(host_mount: MountFactory) -> None:
    """Host user 1000 sees its files on the source (owned by 2000) as its own, creates
    files the source gets as 2000, and a forbidden group cannot own anything."""
    m = host_mount(options="allow_other,translate_uid=map:1000:2000:1,gid_map=:1000:2000:1:")
    os.chmod(m.mnt, 0o777)  # through the mount: the kernel caches the root's attributes
    (m.source / "f").write_text("x")
    os.chown(m.source / "f", 2000, 2000)
    st = os.stat(m.mnt / "f")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert os.stat(m.mnt).st_gid == 65534  # root's group is outside the namespace map
    r = py_as(1000, 1000, "import os; open('new', 'w').write('y'); "
              "s = os.stat('new'); print(s.st_uid, s.st_gid)", cwd=str(m.mnt))
    assert r.returncode == 0 and r.stdout.split() == ["1000", "1000"], r.stderr
    src = os.stat(m.source / "new")
    assert (src.st_uid, src.st_gid) == (2000, 2000)
    # uid 1001 is not in the translation: it passes through; gid 1001 is outside the
    # namespace map, so that caller cannot own a new file.
    r = py_as(1001, 1001, "open('other', 'w')", cwd=str(m.mnt))
    assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
    assert not (m.source / "other").exists()


def test_launcher_passes_a_served_trees_maps_to_its_daemon(tmp_path: Path) -> None:
    import argparse

    from msbfs import serve_options
    from msbfs.launcher.daemon import ServedTree, msbfs_serve

    tree = ServedTree("t", "/data", shared_dir=tmp_path, uid_map=(":0:1000:1:",),
                      gid_map=(":0:1000:1:",), translate_uid=("forbid-guest:5:1",))
    argv = msbfs_serve(tree, 3)
    assert argv[1:4] == ["-m", "msbfs", "serve"]
    p = argparse.ArgumentParser()
    serve_options.add_arguments(p)
    uids, gids = serve_options.id_maps(serve_options.options_from_args(p.parse_args(argv[4:])))
    assert (uids.to_host(0), gids.to_host(0), uids.to_guest(1000)) == (1000, 1000, 0)
    assert not uids.allows(5)
