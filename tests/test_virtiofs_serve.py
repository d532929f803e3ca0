"""``msbfs serve`` as a real process on a real socket, driven by the in-tree frontend:
the virtiofsd command line, exit on disconnect, SIGTERM, policy, volumes, sandboxes."""

from __future__ import annotations

import errno
import grp
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from msbfs.fuse import abi
from msbfs.fuse.kernel import parse_entry, parse_open, u32
from tests.plugins.virtiofs import FuseClient, run_serve
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

ROOT = 1


async def connect(sock: str) -> FuseClient:
    fe = await Frontend.connect(sock, GuestRam(((0, 48 << 20),)))
    await fe.handshake([32, 32], slot_size=300 << 10)
    c = FuseClient(fe)
    await c.init()
    return c


async def wait_exit(proc: subprocess.Popen, limit: float = 30) -> int:
    with trio.fail_after(limit):
        return await trio.to_thread.run_sync(proc.wait)


async def test_serve_io_then_exit_zero_on_disconnect(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sock = str(tmp_path / "vfs.sock")
    with run_serve([f"--shared-dir={src}", "--tag=t1", "--cache=auto", "--socket-group=disk",
                    "--thread-pool-size=4"], sock) as proc:
        st = os.stat(sock)
        assert st.st_gid == grp.getgrnam("disk").gr_gid and stat.S_IMODE(st.st_mode) == 0o660
        c = await connect(sock)
        cfg = await c.fe.get_config(0, 40)
        assert cfg is not None and cfg[:2] == b"t1"
        p = await c.ok(c.r.create(ROOT, b"hello.txt"))
        e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        assert u32(await c.ok(c.r.write(e.nodeid, fh, 0, b"from the guest\n"))) == 15
        await c.ok(c.r.release(e.nodeid, fh))
        assert (src / "hello.txt").read_bytes() == b"from the guest\n"
        await c.fe.close()
        assert await wait_exit(proc) == 0
    assert not os.path.exists(sock)


async def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    sock = str(tmp_path / "s")
    # the Rust virtiofsd's tunables that mean nothing here are accepted (kata, libvirt)
    with run_serve([f"--shared-dir={tmp_path}", "--seccomp=kill", "--no-readdirplus",
                    "--inode-file-handles=never", "--sandbox=none"], sock) as proc:
        c = await connect(sock)
        await c.ok(c.r.getattr(ROOT))
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc) == 0
        await c.fe.close()
    assert not os.path.exists(sock)


async def test_old_dash_o_form_and_policy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "prog").write_bytes(b"#!/bin/sh\n")
    (src / "prog").chmod(0o755)
    sock = str(tmp_path / "s")
    with run_serve(["-o", f"source={src},cache=none,no_xattr", "--readonly", "--noexec"], sock) as proc:
        c = await connect(sock)
        r = c.r
        assert (await c.call(r.mkdir(ROOT, b"d"))).error == errno.EROFS
        e = parse_entry(await c.ok(r.lookup(ROOT, b"prog")))
        assert e.entry_valid == 0  # cache=none: the C virtiofsd's spelling of never
        assert (await c.call(r.open(e.nodeid, os.O_RDONLY | abi.FMODE_EXEC))).error == errno.EACCES
        assert (await c.call(r.open(e.nodeid, os.O_WRONLY))).error == errno.EROFS
        # no_xattr: ENOSYS, as the C virtiofsd (the kernel then answers EOPNOTSUPP itself)
        assert (await c.call(r.getxattr(e.nodeid, b"user.x", 10))).error == errno.ENOSYS
        fh, flags = parse_open(await c.ok(r.open(e.nodeid, os.O_RDONLY)))
        assert flags & abi.FOPEN_DIRECT_IO
        assert await c.ok(r.read(e.nodeid, fh, 0, 100)) == b"#!/bin/sh\n"
        await c.fe.close()
        assert await wait_exit(proc) == 0
    assert not (src / "d").exists()


async def test_named_volume_holds_its_lock_and_quota(tmp_path: Path, msb_home: Path) -> None:
    from msbfs import volumes

    volumes.create_volume("data", quota_mib=1)
    sock = str(tmp_path / "s")
    env = dict(os.environ)
    with run_serve(["--volume=data"], sock, env=env) as proc:
        c = await connect(sock)
        assert volumes.volume_in_use("data")
        p = await c.ok(c.r.create(ROOT, b"f"))
        e = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
        fh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
        chunk = b"q" * (256 << 10)
        errs = [(await c.call(c.r.write(e.nodeid, fh, i * len(chunk), chunk), 24)).error
                for i in range(6)]
        assert errs[0] == 0 and (errno.ENOSPC in errs or errno.EDQUOT in errs)
        blocks, bfree, bavail, *_, frsize = abi.fuse_kstatfs.unpack(await c.ok(c.r.statfs()))
        # statfs describes the 1 MiB quota exactly (not 0 bytes, not the host's disk), and
        # the quota is spent: what is free is less than the chunk that was refused.
        assert frsize > 0 and blocks * frsize == 1 << 20
        assert bavail <= bfree and bfree * frsize < len(chunk)
        host_used = os.stat(Path(volumes.get_volume("data").path) / "f").st_blocks * 512
        assert host_used > 0 and (blocks - bfree) * frsize >= host_used
        await c.fe.close()
        assert await wait_exit(proc) == 0
    assert not volumes.volume_in_use("data")
    assert (Path(volumes.get_volume("data").path) / "f").exists()


async def test_keep_serving_survives_a_bogus_frontend(tmp_path: Path) -> None:
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={tmp_path}", "--keep-serving"], sock) as proc:
        fe = await Frontend.connect(sock)
        await fe.send_raw(b"\xff" * 7)  # not even a message header
        await fe.send_raw(b"\x01\x00\x00\x00\x01\x00\x00\x00\xff\xff\x00\x00")  # lying size
        await fe.close()
        c = await connect(sock)  # the daemon takes the next frontend
        await c.ok(c.r.getattr(ROOT))
        await c.fe.close()
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc) == 0


@pytest.mark.parametrize("sandbox", ["namespace", "chroot"])
async def test_sandboxes(tmp_path: Path, sandbox: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "in").write_text("x")
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={src}", f"--sandbox={sandbox}"], sock) as proc:
        c = await connect(sock)  # INIT answered: the sandbox is entered
        # The serving process: namespace forks it into its own pid namespace.
        pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0]) \
            if sandbox == "namespace" else proc.pid
        root = Path(f"/proc/{pid}/root")
        # Its root holds the share and a /proc and nothing of the host's files.
        assert {p.name for p in root.iterdir()} <= {"shared", "proc", "old"}
        assert (root / "shared" / "in").read_text() == "x" and not (root / "etc").exists()
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        seen = {p.name for p in (root / "proc").iterdir() if p.name.isdigit()}
        if sandbox == "namespace":
            assert seen == {"1"}  # its own pid namespace: no host process
        else:
            assert str(os.getpid()) in seen  # chroot keeps the host's pids in view
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"in")))
        await c.ok(c.r.setxattr(e.nodeid, b"user.k", b"v"))  # needs /proc/self/fd inside
        await c.ok(c.r.mkdir(ROOT, b"made"))
        await c.fe.close()
        assert await wait_exit(proc) == 0
    assert (src / "made").is_dir() and os.getxattr(src / "in", "user.k") == b"v"


def test_cli_surface(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "msbfs", "serve"]
    out = subprocess.run([*run, "--print-capabilities"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["type"] == "fs"
    out = subprocess.run([sys.executable, "-m", "msbfs.virtiofsd", "--print-capabilities"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["type"] == "fs"
    for bad, msg in [
        ([f"--socket-path={tmp_path}/s"], "exactly one of --shared-dir"),
        ([f"--shared-dir={tmp_path}/nope", f"--socket-path={tmp_path}/s"], "does not exist"),
        ([f"--shared-dir={tmp_path}", f"--socket-path={tmp_path}/s", "-o", "bogus"], "unknown option"),
        ([f"--shared-dir={tmp_path}", f"--socket-path={tmp_path}/s", "--tag=" + "x" * 40], "tag"),
        ([f"--shared-dir={tmp_path}", "--fd=0"], "not a socket"),
        ([f"--shared-dir={tmp_path}", f"--socket-path={tmp_path}/s", "--xattrmap=:map::"], "xattrmap"),
    ]:
        r = subprocess.run([*run, *bad], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert r.returncode == 1, (bad, r.stderr)
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


async def test_connected_fd_and_the_c_virtiofsd_command_line(tmp_path: Path) -> None:
    """libvirt-style: an inherited, already connected socket, and the C virtiofsd's
    exact argv through the msbfs-virtiofsd entry point."""
    import socket

    from vhost.connection import Connection

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = [sys.executable, "-m", "msbfs.virtiofsd", f"--fd={theirs.fileno()}",
            "-o", f"source={tmp_path},cache=auto,sandbox=chroot,xattr,flock,no_posix_lock",
            "--thread-pool-size=0", "-f", "-o", "log_level=warn"]
    proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
    theirs.close()
    try:
        ours.setblocking(False)
        fe = Frontend(Connection(trio.socket.from_stdlib_socket(ours)),
                      GuestRam(((0, 16 << 20),)))
        await fe.handshake([16, 16])
        c = FuseClient(fe)
        await c.init()
        await c.ok(c.r.mkdir(ROOT, b"via-fd"))
        await fe.close()
        assert await wait_exit(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "via-fd").is_dir()
