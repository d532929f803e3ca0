"""The xattr policy through a real ``msbfs serve`` process, driven by the in-tree
vhost-user frontend as a hostile guest kernel would drive it: raw SETXATTR/GETXATTR/
LISTXATTR on the default map, and on a remapping map under nosuid."""

from __future__ import annotations

import argparse
import errno
import os
import struct
import subprocess
import sys
from pathlib import Path

from msbfs.fuse.kernel import parse_entry
from tests.plugins.virtiofs import run_serve
from tests.test_virtiofs_serve import connect

ROOT = 1
# VFS_CAP_REVISION_2 with CAP_NET_RAW (13) permitted and effective.
CAP = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def names(reply: bytes) -> list[bytes]:
    return [n for n in reply.split(b"\0") if n]


def shared(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "dir").mkdir()
    (src / "prog").write_bytes(b"\x7fELF")
    (src / "prog").chmod(0o755)
    os.setxattr(src / "prog", "security.capability", CAP)  # a host binary with a capability
    os.setxattr(src / "dir", "trusted.host", b"h")
    return src


async def test_default_map_refuses_privileged_namespaces(tmp_path: Path) -> None:
    src = shared(tmp_path)
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={src}"], sock):
        c = await connect(sock)
        r = c.r
        d = parse_entry(await c.ok(r.lookup(ROOT, b"dir"))).nodeid
        prog = parse_entry(await c.ok(r.lookup(ROOT, b"prog"))).nodeid
        assert (await c.call(r.setxattr(d, b"trusted.overlay.opaque", b"y"))).error == errno.EPERM
        assert (await c.call(r.setxattr(d, b"security.evm", b"x"))).error == errno.EPERM
        assert (await c.call(r.getxattr(d, b"trusted.host", 64))).error == errno.ENODATA
        assert (await c.call(r.getxattr(prog, b"security.capability", 64))).error == errno.ENODATA
        await c.ok(r.setxattr(d, b"user.k", b"v"))
        assert names(await c.ok(r.listxattr(d, 4096))) == [b"user.k"]
        assert names(await c.ok(r.listxattr(prog, 4096))) == []
        await c.fe.close()
    assert set(os.listxattr(src / "dir")) == {"trusted.host", "user.k"}


async def test_xattrmap_option_remaps_and_nosuid_hides_capabilities(tmp_path: Path) -> None:
    src = shared(tmp_path)
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={src}", "-o", "xattrmap=:map:trusted.:user.virtiofs.:",
                    "--nosuid"], sock):
        c = await connect(sock)
        r = c.r
        d = parse_entry(await c.ok(r.lookup(ROOT, b"dir"))).nodeid
        prog = parse_entry(await c.ok(r.lookup(ROOT, b"prog"))).nodeid
        await c.ok(r.setxattr(d, b"trusted.overlay.opaque", b"y"))
        assert await c.ok(r.getxattr(d, b"trusted.overlay.opaque", 64)) == b"y"
        assert names(await c.ok(r.listxattr(d, 4096))) == [b"trusted.overlay.opaque"]
        # This map passes security.*: nosuid alone keeps the capability out of sight.
        assert (await c.call(r.getxattr(prog, b"security.capability", 64))).error == errno.ENODATA
        assert names(await c.ok(r.listxattr(prog, 4096))) == []
        assert (await c.call(r.setxattr(d, b"security.capability", CAP))).error == errno.EPERM
        await c.fe.close()
    assert set(os.listxattr(src / "dir")) == {"trusted.host", "user.virtiofs.trusted.overlay.opaque"}


def test_bad_maps_stop_the_daemon_at_start(tmp_path: Path) -> None:
    for flag in ("--xattrmap=:prefix:client:trusted.", "-oxattrmap=:nope:all:::"):
        r = subprocess.run([sys.executable, "-m", "msbfs", "serve", f"--shared-dir={tmp_path}",
                            f"--socket-path={tmp_path}/s", flag],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert r.returncode == 1 and "xattrmap" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_the_launcher_passes_a_trees_map_to_its_daemon(tmp_path: Path) -> None:
    from msbfs.launcher.daemon import ServedTree, msbfs_serve
    from msbfs.serve_options import add_arguments, options_from_args

    tree = ServedTree(tag="t", guest_path="/g", shared_dir=tmp_path, xattrmap="/map/trusted./u./")
    argv = msbfs_serve(tree, 9)
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert options_from_args(p.parse_args(argv[4:])).xattrmap == "/map/trusted./u./"
    assert not any("xattrmap" in a for a in msbfs_serve(ServedTree("t", "/g", tmp_path), 9))
