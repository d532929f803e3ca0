"""The launcher's pure parts, no guest: agent framing, the guest mount script, the QEMU
and daemon command lines, and ``msbfs run`` argument handling."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from msbfs.cli import main as msbfs_main
from msbfs.errors import InvalidMountSpec, LaunchError
from msbfs.launcher.agent import (
    AgentError,
    Frame,
    FrameDecoder,
    encode_frame,
    encode_run,
    parse_exit,
)
from msbfs.launcher.daemon import ServedTree, msbfs_serve, request_queues, virtiofsd
from msbfs.launcher.image import GuestImage
from msbfs.launcher.qemu import BlockDevice, FsDevice, VmConfig, qemu_argv
from msbfs.launcher.sandbox import Sandbox, _Attached, guest_mount_script
from msbfs.mounts import Mount, MountOptions, resolve


def test_frames_survive_any_split() -> None:
    stream = encode_frame(b"O", b"hello") + encode_frame(b"X", b"exit 3") + encode_frame(b"H")
    for cut in range(len(stream) + 1):
        d = FrameDecoder()
        frames = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert frames == [Frame(b"O", b"hello"), Frame(b"X", b"exit 3"), Frame(b"H", b"")]


def test_oversized_frame_is_an_error() -> None:
    with pytest.raises(AgentError, match="exceeds"):
        FrameDecoder().feed(struct.pack("<cI", b"O", (1 << 20) + 1))


def test_run_request_layout() -> None:
    frame = encode_run(["echo", "a b"], {"K": "V"}, cwd="/w", uid=5, gid=6)
    kind, length = struct.unpack_from("<cI", frame)
    assert kind == b"R" and length == len(frame) - 5
    assert frame[5:].split(b"\0") == [b"5", b"6", b"/w", b"1", b"K=V", b"echo", b"a b", b""]
    with pytest.raises(AgentError, match="NUL"):
        encode_run(["a\0b"])
    with pytest.raises(AgentError, match="empty"):
        encode_run([])


def test_exit_frames() -> None:
    assert parse_exit(b"exit 0") == 0
    assert parse_exit(b"exit 255") == 255
    assert parse_exit(b"signal 9") == 137
    with pytest.raises(AgentError):
        parse_exit(b"exploded")


def test_mount_script_orders_parents_first_and_passes_flags(tmp_path: Path) -> None:
    ro = resolve(Mount.bind(tmp_path, MountOptions(readonly=True, noexec=True)))
    tmp = resolve(Mount.tmpfs(size_mib=4, nosuid=True))
    script = guest_mount_script([_Attached("/a/b/c", tmp), _Attached("/a", ro, tag="msb0")])
    lines = [ln for ln in script.splitlines() if ln.startswith("mount")]
    assert lines == ["mount -t virtiofs -o ro,noexec msb0 /a",
                     "mount -t tmpfs -o rw,nosuid,size=4m tmpfs /a/b/c"]


def test_command_lines(tmp_path: Path) -> None:
    tree = ServedTree(tag="t", guest_path="/g", volume="v",
                      options=MountOptions(readonly=True, nodev=True), quota_mib=7,
                      request_queues=2)
    argv = msbfs_serve(tree, 9)
    assert argv[1:] == ["-m", "msbfs", "serve", "--fd=9", "--tag=t", "--volume=v",
                        "--readonly", "--nodev", "--quota=7", "--num-request-queues=2"]
    assert request_queues(msbfs_serve, 4) == 4
    assert request_queues(virtiofsd, 4) == 1  # Debian's C virtiofsd has one
    cfg = VmConfig(GuestImage(tmp_path), tmp_path / "a.sock", tmp_path / "c.log", cpus=2,
                   memory_mib=300, accel="tcg", fs=[FsDevice("t", tmp_path / "f.sock", 2)],
                   disks=[BlockDevice(tmp_path / "d.img", "qcow2", True, "msbd0")])
    q = " ".join(qemu_argv(cfg))
    assert "memory-backend-memfd,id=mem,size=300M,share=on" in q
    assert "-smp 2" in q and "-accel tcg,thread=single" in q and "-no-reboot" in q
    assert "vhost-user-fs-pci,chardev=fs0,tag=t,queue-size=1024,num-request-queues=2" in q
    assert "driver=qcow2,file=f0,node-name=d0,read-only=on" in q
    # virtio-serial precedes every other virtio device: the agent port is vport0p1.
    assert q.index("virtio-serial-pci") < q.index("vhost-user-fs-pci") < q.index("virtio-blk")


def test_run_cli_rejects_bad_input(msb_home, capsys) -> None:
    assert msbfs_main(["run", "--mount", "data=bind:/tmp", "--", "true"]) == 1
    assert "expected /GUEST/PATH=SPEC" in capsys.readouterr().err
    assert msbfs_main(["run", "--mount", "/d=named:nope", "--", "true"]) == 1
    assert "nope" in capsys.readouterr().err
    assert msbfs_main(["run", "--tmpfs", "/t", "--tmpfs", "/t/", "--", "true"]) == 1
    assert "two mounts" in capsys.readouterr().err
    assert msbfs_main(["run", "--env", "NOEQUALS", "--", "true"]) == 1
    assert msbfs_main(["run", "--accel", "tcg"]) == 1
    assert "no command" in capsys.readouterr().err
    with pytest.raises(LaunchError):
        Sandbox({"relative": Mount.tmpfs()})
    with pytest.raises(InvalidMountSpec):
        Mount.parse("bogus:x")


def test_dry_run_prints_daemons_and_qemu(msb_home, tmp_path: Path, capsys) -> None:
    assert msbfs_main(["run", "--dry-run", "--accel", "tcg",
                       "--mount", f"/b=bind:{tmp_path}:ro,noexec",
                       "--mount", "/n=named:fresh:mode=create", "--tmpfs", "/t:size=8",
                       "--", "echo", "hi"]) == 0
    out = capsys.readouterr().out
    assert f"--shared-dir={tmp_path} --readonly --noexec" in out
    assert "--volume=fresh" in out
    assert "vhost-user-fs-pci" in out and "tag=msb1" in out
    assert "mount -t tmpfs -o rw,size=8m tmpfs /t" in out
    assert out.rstrip().endswith("# then: echo hi")
    # A dry run creates nothing, not even a volume its mode would create.
    assert msbfs_main(["volume", "ls"]) == 0
    assert "fresh" not in capsys.readouterr().out
