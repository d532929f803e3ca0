"""The backend against the real frontend it is written for: QEMU 7.2's
vhost-user-fs-pci runs its device-init handshake with us (no guest needed: -S)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import trio

from vhost.backend import Backend, accept_one, listen
from vhost.echo import EchoDevice
from vhost.messages import Feature, ProtocolFeature, Request

QEMU = shutil.which("qemu-system-x86_64")
QBOOT = Path("/usr/share/qemu/qboot.rom")
BIOS = ["-bios", str(QBOOT)] if QBOOT.exists() else []  # boots faster than SeaBIOS


class Recorder(EchoDevice):
    """The echo device without a config space (like virtio-fs: QEMU owns it)."""

    def protocol_features(self) -> int:
        return 0


@pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64")
async def test_qemu_device_init_handshake(tmp_path: Path) -> None:
    path = str(tmp_path / "fs.sock")
    listener = await listen(path)
    proc = await trio.lowlevel.open_process(
        [QEMU, "-accel", "tcg", "-m", "64", "-S", "-display", "none", "-monitor", "none",
         "-serial", "none", "-nodefaults",
         "-object", "memory-backend-memfd,id=mem,size=64M,share=on",
         "-numa", "node,memdev=mem", "-chardev", f"socket,id=c,path={path}",
         "-device", "vhost-user-fs-pci,chardev=c,tag=t,num-request-queues=2"],
        stderr=subprocess.PIPE)
    try:
        with trio.fail_after(60):
            conn = await accept_one(listener)
        listener.close()
        be = Backend(Recorder(num_queues=3), conn)
        seen: list[int] = []
        init_done = trio.Event()
        real_dispatch = be._dispatch

        async def record(msg):  # type: ignore[no-untyped-def]
            seen.append(msg.request)
            try:
                return await real_dispatch(msg)
            finally:
                # QEMU's init ends with SET_VRING_CALL/ERR for every queue
                if seen.count(Request.SET_VRING_ERR) == 3:
                    init_done.set()

        be._dispatch = record  # type: ignore[method-assign]
        async with trio.open_nursery() as n:
            n.start_soon(be.run)
            with trio.fail_after(60):
                await init_done.wait()
            assert be.errors == 0
            assert be.owner
            assert be.protocol_features & ProtocolFeature.REPLY_ACK
            assert be.protocol_features & ProtocolFeature.MQ
            assert be.backend_req_fd >= 0
            assert seen[:2] == [Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES]
            assert Request.GET_QUEUE_NUM in seen
            proc.kill()
            await proc.wait()
        # QEMU gone: serve returned by itself (the nursery closed)
        assert conn.closed
        assert proc.stderr is not None
        err = (await proc.stderr.receive_some(65536) or b"").decode()
        assert "warning" not in err.lower(), err
        assert not be.features & Feature.LOG_ALL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class RingWatcher(Recorder):
    """Counts queue starts/stops; ``wait_for(starts, stops)`` returns once every queue in
    ``watched`` has reached those counts."""

    def __init__(self, num_queues: int, watched: set[int]) -> None:
        super().__init__(num_queues=num_queues)
        self.watched = watched
        self.starts = dict.fromkeys(range(num_queues), 0)
        self.stops = dict.fromkeys(range(num_queues), 0)
        self._changed = trio.Event()

    def queue_started(self, index: int, vq) -> None:  # type: ignore[no-untyped-def]
        super().queue_started(index, vq)
        self.starts[index] += 1
        self._changed.set()

    def queue_stopped(self, index: int, vq) -> None:  # type: ignore[no-untyped-def]
        super().queue_stopped(index, vq)
        self.stops[index] += 1
        self._changed.set()

    async def wait_for(self, starts: int, stops: int) -> None:
        while not all(self.starts[i] >= starts and self.stops[i] >= stops
                      for i in self.watched):
            self._changed = trio.Event()
            await self._changed.wait()


async def qmp(path: str, *commands: str) -> None:
    """Run QMP commands (no arguments) and wait for each one's return."""
    s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await s.connect(path)
    stream = trio.SocketStream(s)
    buf = b""

    async def response() -> dict:
        nonlocal buf
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if "return" in msg or "error" in msg:
                    return msg
            data = await stream.receive_some(65536)
            if not data:
                raise EOFError("QMP closed")
            buf += data

    async with stream:
        for cmd in ("qmp_capabilities", *commands):
            await stream.send_all(json.dumps({"execute": cmd}).encode() + b"\n")
            reply = await response()
            assert "return" in reply, reply


@pytest.mark.guest
@pytest.mark.skipif(QEMU is None, reason="needs qemu-system-x86_64")
async def test_qemu_starts_stops_and_restarts_the_rings(
        tmp_path: Path, guest_image) -> None:  # type: ignore[no-untyped-def]
    """Boot the guest kernel alone (no initramfs: it stops at the root mount, after
    device probing). Its virtio-fs driver sets DRIVER_OK, so QEMU runs the full start:
    features, memory, NUM/BASE/ADDR/KICK/CALL/ENABLE for the rings the driver set up
    (hiprio and one request ring per vCPU on Linux >= 6.11: with one vCPU the third ring
    stays stopped). Pausing the VM (QMP stop) makes QEMU stop them (ENABLE 0,
    GET_VRING_BASE); resuming (cont) starts them again from the bases we reported."""
    path = str(tmp_path / "fs.sock")
    qmp_path = str(tmp_path / "qmp.sock")
    listener = await listen(path)
    proc = await trio.lowlevel.open_process(
        [QEMU, "-accel", "tcg", "-m", "256", "-display", "none", "-monitor", "none",
         "-nodefaults", "-serial", "none", *BIOS, "-kernel", str(guest_image.kernel),
         "-append", "quiet panic=0", "-qmp", f"unix:{qmp_path},server=on,wait=off",
         "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
         "-numa", "node,memdev=mem", "-chardev", f"socket,id=c,path={path}",
         "-device", "vhost-user-fs-pci,chardev=c,tag=t,num-request-queues=2,queue-size=256"])
    try:
        with trio.fail_after(60):
            conn = await accept_one(listener)
        listener.close()
        dev = RingWatcher(3, watched={0, 1})
        be = Backend(dev, conn)
        async with trio.open_nursery() as n:
            n.start_soon(be.run)
            with trio.fail_after(120):
                await dev.wait_for(starts=1, stops=0)
                for vq in be.queues[:2]:
                    assert vq.size == 256 and vq.started and vq.enabled and not vq.broken
                    assert vq.call_fd >= 0 and vq.kick_fd >= 0
                assert not be.queues[2].started and dev.starts[2] == 0
                await qmp(qmp_path, "stop")
                await dev.wait_for(starts=1, stops=1)
                assert not any(vq.started for vq in be.queues)
                await qmp(qmp_path, "cont")
                await dev.wait_for(starts=2, stops=1)
            assert be.errors == 0
            assert be.memory.statistics()["regions"] >= 1
            assert be.features & Feature.VERSION_1
            proc.kill()
            await proc.wait()
        assert conn.closed and dev.started == set()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
