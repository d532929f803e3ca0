"""The backend against the in-tree frontend over real Unix sockets: handshake variants,
every request type, error answers, fd hygiene, ring stop/restart, broken rings."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.plugins.vhost import VhostPair
from vhost.backend import BASE_PROTOCOL_FEATURES, serve_fd, serve_path
from vhost.connection import Connection
from vhost.echo import EchoDevice
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam
from vhost.messages import (
    Config,
    Feature,
    MemRegion,
    MemTable,
    MessageError,
    ProtocolFeature,
    Request,
    U64Payload,
    VringAddr,
    VringFile,
    VringState,
    build,
    encode,
)
from vhost.virtqueue import Virtqueue

DISCONNECTED = (EOFError, ConnectionResetError, BrokenPipeError)
ROOT = Path(__file__).resolve().parent.parent


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def echo_check(fe: Frontend, queue: int, n: int = 8, indirect: bool = False) -> None:
    reqs = [([os.urandom(i * 7 + 1), b"tail"], [i * 7 + 5]) for i in range(n)]
    per = fe.queues[queue].size if indirect else fe.queues[queue].size // 3
    done = []
    for k in range(0, n, per):
        done += await fe.submit_many(queue, reqs[k:k + per], indirect=indirect)
    for (readable, _), c in zip(reqs, done, strict=True):
        assert c.data == b"".join(readable)
        assert c.used_len == len(c.data)


async def test_handshake_negotiates_and_serves(vhost_pair: VhostPair) -> None:
    dev = EchoDevice(num_queues=2)
    async with vhost_pair(dev, [128, 64]) as (fe, be):
        want = (Feature.VERSION_1 | Feature.RING_INDIRECT_DESC | Feature.RING_EVENT_IDX
                | Feature.PROTOCOL_FEATURES)
        assert fe.backend_features & want == want
        assert not fe.backend_features & Feature.LOG_ALL
        assert fe.backend_protocol_features & BASE_PROTOCOL_FEATURES == BASE_PROTOCOL_FEATURES
        assert be.features == fe.features and be.owner
        assert be.protocol_features == fe.protocol_features
        assert be.backend_req_fd >= 0
        assert dev.started == {0, 1}
        await echo_check(fe, 0)
        await echo_check(fe, 1, indirect=True)
        assert await fe.get_u64(Request.GET_QUEUE_NUM) == 2
        assert await fe.get_u64(Request.GET_MAX_MEM_SLOTS) == 32
        assert be.errors == 0
    assert dev.started == set()  # queue_stopped on disconnect


LAYOUTS = {
    "one": [(0, 8 << 20)],
    # adjacent regions (a chain may cross) and one above 4 GiB
    "three": [(0, 2 << 20), (2 << 20, 4 << 20), (1 << 32, 4 << 20)],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mem_slots", [False, True], ids=["mem_table", "mem_slots"])
@pytest.mark.parametrize("event_idx", [True, False], ids=["event_idx", "no_event_idx"])
async def test_handshake_variants(vhost_pair: VhostPair, layout: str, mem_slots: bool,
                                  event_idx: bool) -> None:
    features = Feature.VERSION_1 | Feature.PROTOCOL_FEATURES | Feature.RING_INDIRECT_DESC
    if event_idx:
        features |= Feature.RING_EVENT_IDX
    ram = GuestRam(LAYOUTS[layout])
    async with vhost_pair(EchoDevice(), [32], ram=ram, mem_slots=mem_slots,
                          features=int(features)) as (fe, be):
        assert be.memory.statistics()["regions"] == len(LAYOUTS[layout])
        assert bool(be.queues[0].c.event_idx) == event_idx
        for _ in range(3):
            await echo_check(fe, 0, n=10)
            await echo_check(fe, 0, n=10, indirect=True)
        stats = be.queues[0].statistics()
        assert stats["popped"] == stats["pushed"] == 60


async def test_without_protocol_features_rings_start_enabled(vhost_pair: VhostPair) -> None:
    dev = EchoDevice()
    features = int(Feature.VERSION_1 | Feature.RING_EVENT_IDX)
    async with vhost_pair(dev, [16], features=features) as (fe, _be):
        assert fe.protocol_features == 0
        await fe.get_u64(Request.GET_FEATURES)  # no REPLY_ACK: a round trip syncs
        assert dev.started == {0}
        await echo_check(fe, 0)
        with pytest.raises(DISCONNECTED):
            # ENABLE needs PROTOCOL_FEATURES; no REPLY_ACK either, so: disconnect
            await fe.request(Request.SET_VRING_ENABLE, VringState(0, 1))
            await fe.get_u64(Request.GET_FEATURES)


async def test_stop_and_resume_from_base(vhost_pair: VhostPair) -> None:
    dev = EchoDevice()
    async with vhost_pair(dev, [16]) as (fe, be):
        await echo_check(fe, 0, n=5)
        gen = be.queues[0].generation
        base = await fe.stop_queue(0)
        assert base == 5
        assert be.queues[0].generation > gen
        assert dev.started == set()
        assert be.queues[0].kick_fd == -1 and be.queues[0].call_fd == -1
        # a request posted while stopped waits for the restart
        q = fe.queues[0]
        p = q.post([b"while stopped"], [64])
        q.kick(force=True)
        await fe.start_queue(0, base=base)
        assert dev.started == {0}
        assert (await q.wait(p)).data == b"while stopped"
        await echo_check(fe, 0, n=12)  # wraps the 16-entry ring
        assert await fe.stop_queue(0) == 18


async def test_enable_disable(vhost_pair: VhostPair) -> None:
    dev = EchoDevice()
    async with vhost_pair(dev, [16], enable=False) as (fe, be):
        assert dev.started == set()
        q = fe.queues[0]
        p = q.post([b"x"], [8])
        q.kick(force=True)
        await fe.get_u64(Request.GET_FEATURES)  # the backend has seen everything so far
        assert be.queues[0].pending() == 1
        await fe.request(Request.SET_VRING_ENABLE, VringState(0, 1))
        assert dev.started == {0}
        assert (await q.wait(p)).data == b"x"
        await fe.request(Request.SET_VRING_ENABLE, VringState(0, 0))
        assert dev.started == set()
        with pytest.raises(MessageError):
            await fe.request(Request.SET_VRING_ENABLE, VringState(0, 2))


async def test_config_space(vhost_pair: VhostPair) -> None:
    dev = EchoDevice()
    async with vhost_pair(dev, [16]) as (fe, _):
        assert await fe.get_config(0, 16) == bytes(16)
        await fe.request(Request.SET_CONFIG, Config(4, 3, 0, b"tag"))
        assert await fe.get_config(2, 6) == b"\0\0tag\0"
        assert await fe.get_config(8, 16) is None  # past the device's 16 bytes: empty reply
        with pytest.raises(MessageError):
            await fe.request(Request.SET_CONFIG, Config(14, 4, 0, b"long"))
        assert await fe.get_config(0, 4) == bytes(4)  # still answering


@pytest.mark.parametrize(("request_", "body", "why"), [
    (Request.SET_FEATURES, U64Payload(1 << 40), "feature not offered"),
    (Request.SET_PROTOCOL_FEATURES, U64Payload(ProtocolFeature.INFLIGHT_SHMFD),
     "protocol feature not offered"),
    (Request.SET_VRING_NUM, VringState(0, 100), "not a power of two"),
    (Request.SET_VRING_NUM, VringState(0, 2048), "too big"),
    (Request.SET_VRING_NUM, VringState(5, 16), "no such queue"),
    (Request.SET_VRING_BASE, VringState(0, 1 << 16), "base too big"),
    (Request.SET_VRING_BASE, VringState(0, 3), "queue is started"),
    (Request.SET_VRING_ADDR, VringAddr(0, 0, 1 << 50, 1 << 50, 1 << 50, 0),
     "rings outside memory"),
    (Request.SET_VRING_ADDR, VringAddr(0, 1, 0, 0, 0, 0), "logging never offered"),
    (Request.SET_VRING_KICK, VringFile(0, False), "polling"),
    (Request.SET_LOG_BASE, U64Payload(0), "log not offered"),
    (Request.REM_MEM_REG, MemRegion(1 << 40, 4096, 0, 0), "no such region"),
    (Request.SEND_RARP, U64Payload(0), "not a net device"),
])
async def test_invalid_requests_get_a_failed_ack(vhost_pair: VhostPair, request_: Request,
                                                 body: object, why: str) -> None:
    async with vhost_pair(EchoDevice(), [16], mem_slots=True) as (fe, be):
        before = open_fds()
        with pytest.raises(MessageError, match="failed"):
            await fe.request(request_, body)  # type: ignore[arg-type]
        assert be.errors == 1
        assert open_fds() == before
        await echo_check(fe, 0)  # still serving


async def test_unknown_and_malformed_requests(vhost_pair: VhostPair) -> None:
    async with vhost_pair(EchoDevice(), [16]) as (fe, be):
        base = open_fds()
        # unknown type, with fds attached: a failed ack, and the fds are closed
        fds = [os.eventfd(0) for _ in range(3)]
        await fe.send_raw(build(999, b"junk", need_reply=True), fds)
        for fd in fds:
            os.close(fd)
        reply = await fe.recv_reply(999)
        assert struct.unpack("<Q", reply.payload)[0] != 0
        # right type, wrong fd count
        fd = os.eventfd(0)
        await fe.send_raw(build(Request.SET_OWNER, need_reply=True), [fd])
        os.close(fd)
        assert struct.unpack("<Q", (await fe.recv_reply(Request.SET_OWNER)).payload)[0] != 0
        # wrong payload size
        await fe.send_raw(build(Request.SET_VRING_NUM, b"\x00" * 5, need_reply=True))
        assert struct.unpack("<Q", (await fe.recv_reply(Request.SET_VRING_NUM)).payload)[0]
        assert be.errors == 3
        assert open_fds() == base
        await echo_check(fe, 0)


async def test_error_without_reply_closes_the_connection(vhost_pair: VhostPair) -> None:
    async with vhost_pair(EchoDevice(), [16]) as (fe, _be):
        await fe.request(Request.SET_VRING_NUM, VringState(9, 16), need_reply=False)
        with pytest.raises(DISCONNECTED):
            await fe.get_u64(Request.GET_FEATURES)


async def test_get_vring_base_bad_index_closes(vhost_pair: VhostPair) -> None:
    async with vhost_pair(EchoDevice(), [16]) as (fe, _):
        with pytest.raises(DISCONNECTED):
            await fe.request(Request.GET_VRING_BASE, VringState(7, 0))


async def test_framing_error_closes(vhost_pair: VhostPair) -> None:
    async with vhost_pair(EchoDevice(), [16]) as (fe, _):
        await fe.send_raw(struct.pack("<III", Request.GET_FEATURES, 1, 1 << 20))
        with pytest.raises(DISCONNECTED):
            await fe.recv_reply(Request.GET_FEATURES)


async def test_memory_changes_while_running(vhost_pair: VhostPair) -> None:
    ram = GuestRam([(0, 4 << 20), (8 << 20, 1 << 20)])
    async with vhost_pair(EchoDevice(), [16], ram=ram) as (fe, be):
        old_mem, gen = be.queues[0].c.mem, be.queues[0].generation
        await fe.set_memory()  # same regions, fresh mappings: rings must follow
        assert be.queues[0].c.mem != old_mem
        assert be.queues[0].generation > gen
        assert be.memory.statistics()["retired"] == 0
        await echo_check(fe, 0)
        # overlapping regions are refused and the old table stays
        r = ram.regions[0].as_message()
        with pytest.raises(MessageError):
            await fe.request(Request.SET_MEM_TABLE, MemTable((r, r)), fds=[ram.fd, ram.fd])
        await echo_check(fe, 0)


async def test_add_and_remove_regions(vhost_pair: VhostPair) -> None:
    ram = GuestRam([(0, 4 << 20), (1 << 30, 1 << 20)])
    async with vhost_pair(EchoDevice(), [16], ram=ram, mem_slots=True) as (fe, be):
        assert be.memory.statistics()["regions"] == 2
        extra = ram.regions[1].as_message()
        await fe.request(Request.REM_MEM_REG, extra)
        assert be.memory.statistics()["regions"] == 1
        await echo_check(fe, 0)  # rings are in region 0
        with pytest.raises(MessageError):  # overlaps region 0
            await fe.request(Request.ADD_MEM_REG, ram.regions[0].as_message(), fds=[ram.fd])
        await fe.request(Request.ADD_MEM_REG, extra, fds=[ram.fd])
        assert be.memory.statistics()["regions"] == 2
        # a buffer in the re-added region is readable by the backend
        q = fe.queues[0]
        gpa = extra.gpa + 4096
        ram.write(gpa, b"far away")
        q.write_desc(0, gpa, 8, 1, 1)
        q.write_desc(1, gpa + 100, 8, 2, 0)
        q.publish([0])
        q.kick(force=True)
        await fe.get_u64(Request.GET_FEATURES)
        while q.used_idx() != q.avail_idx:
            await trio.lowlevel.wait_readable(q.call_fd)
            os.eventfd_read(q.call_fd)
        assert ram.read(gpa + 100, 8) == b"far away"


async def test_reset_device(vhost_pair: VhostPair) -> None:
    dev = EchoDevice()
    async with vhost_pair(dev, [16]) as (fe, be):
        await echo_check(fe, 0)
        await fe.request(Request.RESET_DEVICE)
        assert dev.resets == 1 and dev.started == set() and be.features == 0
        await fe.request(Request.SET_FEATURES, U64Payload(fe.features))
        fe.queues[0].reset_rings()
        await fe.start_queue(0)
        await echo_check(fe, 0)
        await fe.request(Request.RESET_OWNER)  # deprecated: stops the rings
        assert dev.started == set()


async def test_broken_ring_signals_error_and_restarts(vhost_pair: VhostPair) -> None:
    async with vhost_pair(EchoDevice(), [16]) as (fe, be):
        q = fe.queues[0]
        q.write_desc(0, 0x1000, 8, 1, 1)  # 0 -> 1 -> 0: a loop
        q.write_desc(1, 0x1000, 8, 1, 0)
        q.publish([0])
        q.kick(force=True)
        await trio.lowlevel.wait_readable(q.err_fd)
        assert q.error_signalled()
        assert be.queues[0].broken
        await fe.restart_queue(0)
        assert not be.queues[0].broken
        await echo_check(fe, 0)


class SliceDevice(EchoDevice):
    """Replies ``readable[2:5]`` at writable offset 1 (exercises the Chain helpers);
    a request starting with b"boom" makes the handler raise."""

    async def handle_kick(self, index: int, vq: Virtqueue) -> None:
        for c in vq.pop():
            head = bytearray(4)
            assert c.readinto(head) == min(4, c.out_len)
            if head == b"boom":
                raise RuntimeError("device bug")
            part = c.read(2, 3)
            c.write(b"<", 0)
            n = c.write(part, 1)
            vq.push(c.head, 1 + n)
        vq.notify()


async def test_chain_helpers_and_device_errors(vhost_pair: VhostPair) -> None:
    async with vhost_pair(SliceDevice(), [16]) as (fe, be):
        c = await fe.submit(0, [b"ab", b"cdefg"], [2, 2])
        assert c.data == b"<cde" and c.used_len == 4
        c = await fe.submit(0, [b"abc"], [8])
        assert c.data == b"<c"  # only one byte past offset 2
        q = fe.queues[0]
        q.post([b"boom"], [8])
        q.kick(force=True)
        await trio.lowlevel.wait_readable(q.err_fd)  # the bug breaks only that ring
        assert q.error_signalled() and be.queues[0].broken
        assert await fe.get_u64(Request.GET_FEATURES) == fe.backend_features


class FaultyConfigDevice(EchoDevice):
    def get_config(self, offset: int, size: int) -> bytes:
        raise ZeroDivisionError("device bug")


async def test_device_bug_in_a_message_is_answered_not_fatal(vhost_pair: VhostPair) -> None:
    async with vhost_pair(FaultyConfigDevice(), [16]) as (fe, be):
        assert await fe.get_config(0, 4) is None
        assert be.errors == 1
        await echo_check(fe, 0)


async def test_new_kick_fd_while_running_keeps_position(vhost_pair: VhostPair) -> None:
    async with vhost_pair(EchoDevice(), [16]) as (fe, be):
        await echo_check(fe, 0, n=7)
        q = fe.queues[0]
        old = q.kick_fd
        q.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        os.close(old)
        await fe.request(Request.SET_VRING_KICK, VringFile(0, True), fds=[q.kick_fd])
        await echo_check(fe, 0, n=7)
        assert be.queues[0].statistics()["popped"] == 14


@pytest.mark.parametrize("kind", ["file", "pipe", "memfd"])
@pytest.mark.parametrize("which", [Request.SET_VRING_KICK, Request.SET_VRING_CALL,
                                   Request.SET_VRING_ERR])
async def test_vring_fds_must_be_eventfds(vhost_pair: VhostPair, tmp_path: Path, kind: str,
                                          which: Request) -> None:
    """A kick fd is waited on with epoll and call/err fds are written to: anything but
    an eventfd is refused (a regular file would stop the queue with EPERM, or take
    8-byte writes), the fd is closed and the ring goes on as before."""
    async with vhost_pair(EchoDevice(), [16]) as (fe, be):
        await echo_check(fe, 0)
        before = open_fds()
        if kind == "file":
            fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
        elif kind == "pipe":
            r, fd = os.pipe()
            os.close(r)
        else:
            fd = os.memfd_create("x")
        try:
            with pytest.raises(MessageError, match="failed"):
                await fe.request(which, VringFile(0, True), fds=[fd])
        finally:
            os.close(fd)
        assert be.errors == 1
        assert open_fds() == before
        await echo_check(fe, 0)  # the old fds still work
    if kind == "file":
        assert (tmp_path / "f").read_bytes() == b""


async def test_fds_all_closed_after_disconnect(vhost_pair: VhostPair) -> None:
    before = open_fds()
    async with vhost_pair(EchoDevice(num_queues=3), [16, 16, 16], mem_slots=True) as (fe, _):
        await echo_check(fe, 2)
    assert open_fds() == before


async def test_serve_path_in_a_subprocess(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "vhost.echo", "--socket-path", path,
                             "--queues", "2", "--ready-fd", str(w)], pass_fds=[w], cwd=ROOT)
    os.close(w)
    try:
        await trio.lowlevel.wait_readable(r)  # readiness pipe, no sleeping
        assert os.read(r, 1) == b"1"
        fe = await Frontend.connect(path)
        await fe.handshake([64, 64])
        await echo_check(fe, 0, n=20)
        await echo_check(fe, 1, n=20, indirect=True)
        assert proc.poll() is None
        await fe.close()
        assert await trio.to_thread.run_sync(proc.wait, 60) == 0  # exits 0 on disconnect
        assert not os.path.exists(path)
    finally:
        os.close(r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("listening", [True, False])
async def test_serve_fd(tmp_path: Path, listening: bool) -> None:
    dev = EchoDevice()
    if listening:
        path = str(tmp_path / "s")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(1)
        server_fd = lsock.detach()
    else:
        a, b = socket.socketpair()
        server_fd = a.detach()
    async with trio.open_nursery() as n:
        n.start_soon(serve_fd, dev, server_fd)
        if listening:
            fe = await Frontend.connect(path)
        else:
            b.setblocking(False)
            fe = Frontend(Connection(trio.socket.from_stdlib_socket(b)))
        await fe.handshake([16])
        await echo_check(fe, 0)
        await fe.close()


async def test_serve_path_replaces_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    async with trio.open_nursery() as n:
        await n.start(serve_path, EchoDevice(), path)
        fe = await Frontend.connect(path)
        await fe.handshake([16])
        await echo_check(fe, 0)
        await fe.close()


def test_encode_used_by_frontend_matches_parser() -> None:
    # the frontend and backend share one codec; a mem table survives the round trip
    t = MemTable((MemRegion(0, 4096, 1 << 40, 8192),))
    from vhost.messages import parse_request
    assert parse_request(Request.SET_MEM_TABLE, 1, encode(t), [3]).body == t


async def test_message_split_across_writes(vhost_pair: VhostPair) -> None:
    async with vhost_pair(EchoDevice(), [16]) as (fe, _):
        data = build(Request.GET_QUEUE_NUM)
        for i in range(len(data)):  # one byte per send: the backend reassembles
            await fe.send_raw(data[i:i + 1])
            await trio.lowlevel.checkpoint()
        reply = await fe.recv_reply(Request.GET_QUEUE_NUM)
        assert struct.unpack("<Q", reply.payload) == (1,)


async def test_too_many_fds_closes_cleanly(vhost_pair: VhostPair) -> None:
    before = open_fds()
    async with vhost_pair(EchoDevice(), [16]) as (fe, _):
        fds = [os.eventfd(0) for _ in range(12)]  # more than any message may carry
        try:
            await fe.send_raw(build(Request.SET_OWNER, need_reply=True), fds)
        finally:
            for fd in fds:
                os.close(fd)
        with pytest.raises(DISCONNECTED):
            await fe.recv_reply(Request.SET_OWNER)
    assert open_fds() == before


async def test_end_of_stream_inside_a_message(vhost_pair: VhostPair) -> None:
    before = open_fds()
    async with vhost_pair(EchoDevice(), [16]) as (fe, _):
        fd = os.eventfd(0)
        await fe.send_raw(build(Request.SET_VRING_CALL, struct.pack("<Q", 0))[:15], [fd])
        os.close(fd)
        fe.conn.sock.shutdown(socket.SHUT_WR)
        with pytest.raises(DISCONNECTED):
            await fe.recv_reply(Request.SET_VRING_CALL)
    assert open_fds() == before  # the fd that came with the partial message is closed


async def test_call_fd_can_be_withdrawn_and_restored(vhost_pair: VhostPair) -> None:
    async with vhost_pair(EchoDevice(), [16]) as (fe, be):
        q = fe.queues[0]
        await fe.request(Request.SET_VRING_CALL, VringFile(0, False))  # "invalid fd": polling
        assert be.queues[0].call_fd == -1
        p = q.post([b"polled"], [16])
        q.kick(force=True)
        await fe.request(Request.SET_VRING_CALL, VringFile(0, True), fds=[q.call_fd])
        assert be.queues[0].call_fd >= 0
        q.kick(force=True)  # nudge: the first completion may have gone unsignalled
        assert (await q.wait(p)).data == b"polled"
        await echo_check(fe, 0)


class PausingDevice(EchoDevice):
    """Pops, then waits for ``release`` before answering: a handler in the middle of
    its work when the memory table changes."""

    def __init__(self) -> None:
        super().__init__()
        self.popped = trio.Event()
        self.release = trio.Event()

    async def handle_kick(self, index: int, vq: Virtqueue) -> None:
        chains = vq.pop()
        if not chains:
            return
        self.popped.set()
        await self.release.wait()
        vq.push_many([(c.head, c.write(c.read())) for c in chains])
        vq.notify()


async def test_memory_is_not_unmapped_under_a_running_handler(vhost_pair: VhostPair) -> None:
    dev = PausingDevice()
    async with vhost_pair(dev, [16]) as (fe, be):
        q = fe.queues[0]
        p = q.post([b"still mapped"], [32])
        q.kick(force=True)
        await dev.popped.wait()
        await fe.set_memory()  # new mappings; the handler holds chains into the old ones
        assert be.memory.statistics()["retired"] == 1
        dev.release.set()
        assert (await q.wait(p)).data == b"still mapped"
        assert be.memory.statistics()["retired"] == 0  # released once the handler ended
