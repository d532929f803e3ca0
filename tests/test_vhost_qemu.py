"""The backend against the real frontend it is written for: QEMU 7.2's
vhost-user-fs-pci runs its device-init handshake with us (no guest needed: -S)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from vhost.backend import Backend, accept_one, listen
from vhost.echo import EchoDevice
from vhost.messages import Feature, ProtocolFeature, Request

QEMU = shutil.which("qemu-system-x86_64")


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
