"""The handshake prelude (vhost/prelude.py, vhost/replay.py, msbfs/serve.py): QEMU's
device-realize questions are answered before the daemon has built its tree, nothing a
guest controls is taken before the backend (confined) runs, and the backend stands by
every answer the prelude gave or closes the connection."""

from __future__ import annotations

import array
import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from vhost._native import lib as vhost_lib

from msbfs.fuse.kernel import parse_entry
from msbfs.serve import GATE_ENV
from tests.plugins.virtiofs import FuseClient
from vhost import backend
from vhost.connection import Connection
from vhost.echo import EchoDevice
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam
from vhost.messages import (
    BASE_FEATURES,
    BASE_PROTOCOL_FEATURES,
    HEADER,
    MemRegion,
    ProtocolFeature,
    Request,
    U64Payload,
    build,
    encode,
)
from vhost.prelude import EXPECTED_SIZE, MAX_TAKEN, Prelude, realize_answers
from vhost.replay import ReplayConnection

ROOT = 1
#: a failure bound only: every wait below polls the state that proves the event
DEADLINE = 60


@contextmanager
def _gated_daemon(tmp_path: Path, share: Path) -> Iterator[tuple[str, int, subprocess.Popen]]:
    """``msbfs serve --fd`` on a socket we listen on, held before it builds its tree
    until a byte is written to the gate (the fd yielded)."""
    path = str(tmp_path / "fs.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    gate_r, gate_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "msbfs", "serve", f"--fd={listener.fileno()}",
         f"--shared-dir={share}", "--log-level=debug"],
        env={**os.environ, GATE_ENV: str(gate_r)}, pass_fds=(listener.fileno(), gate_r),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(gate_r)
    listener.close()
    try:
        yield path, gate_w, proc
    finally:
        os.close(gate_w)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


async def _realize(fe: Frontend) -> None:
    """What QEMU 7.2 asks while it realizes vhost-user-fs-pci (and waits for)."""
    assert await fe.get_u64(Request.GET_FEATURES) == int(BASE_FEATURES)
    proto = await fe.get_u64(Request.GET_PROTOCOL_FEATURES)
    assert proto == int(BASE_PROTOCOL_FEATURES)
    fe.protocol_features = proto & (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK
                                    | ProtocolFeature.BACKEND_REQ)
    await fe.request(Request.SET_PROTOCOL_FEATURES, U64Payload(fe.protocol_features))
    fe.need_reply = True
    assert await fe.get_u64(Request.GET_QUEUE_NUM) == 2
    assert await fe.get_u64(Request.GET_MAX_MEM_SLOTS) == vhost_lib.MSB_MAX_MEMREGS
    ours, theirs = socket.socketpair()
    try:
        await fe.request(Request.SET_BACKEND_REQ_FD, fds=[theirs.fileno()])  # acked
    finally:
        theirs.close()
        ours.close()
    await fe.request(Request.SET_OWNER)  # acked
    assert await fe.get_u64(Request.GET_FEATURES) == int(BASE_FEATURES)


async def test_the_realize_handshake_is_answered_before_the_tree_is_built(
        tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_bytes(b"hello")
    with _gated_daemon(tmp_path, share) as (path, gate, proc):
        with trio.fail_after(DEADLINE):
            fe = await Frontend.connect(path, GuestRam(((0, 48 << 20),)))
            # Every answer comes while the daemon is held before its tree.
            await _realize(fe)
        assert proc.poll() is None
        os.write(gate, b"x")
        with trio.fail_after(DEADLINE):
            # The rest of the session, on the same connection: the backend replayed what
            # the prelude took and agrees with every answer, or it would have hung up.
            await fe.handshake([32, 32], slot_size=300 << 10)
            c = FuseClient(fe)
            await c.init()
            entry = await c.ok(c.r.lookup(ROOT, b"f"))
            assert parse_entry(entry).nodeid > ROOT
            await fe.close()
            assert await trio.to_thread.run_sync(proc.wait) == 0
        assert proc.stderr is not None
        log = proc.stderr.read().decode()
    # The 9 above at least (it goes on taking the same kinds until the daemon is ready).
    taken = re.search(r"prelude: took (\d+) messages", log)
    assert taken and int(taken.group(1)) >= 9, log


async def test_a_daemon_that_cannot_serve_fails_before_answering(tmp_path: Path) -> None:
    """A missing shared directory is an error before the prelude starts: QEMU's first
    question meets a closed connection, not an answer."""
    path = str(tmp_path / "fs.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "msbfs", "serve", f"--fd={listener.fileno()}",
         f"--shared-dir={tmp_path / 'missing'}"],
        pass_fds=(listener.fileno(),), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    listener.close()  # the daemon's copy is the only one: its exit refuses the frontend
    with trio.fail_after(DEADLINE):
        with pytest.raises((EOFError, OSError)):
            fe = await Frontend.connect(path)
            await fe.get_u64(Request.GET_FEATURES)
        assert await trio.to_thread.run_sync(proc.wait) == 1
    assert proc.stderr is not None
    assert "missing" in proc.stderr.read().decode()
    proc.stderr.close()


def _send(s: socket.socket, request: Request, payload: bytes = b"", fds: list[int] | None = None,
          need_reply: bool = False) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] \
        if fds else []
    s.sendmsg([build(request, payload, need_reply=need_reply)], anc)


def _reply(s: socket.socket) -> tuple[int, int]:
    data = s.recv(HEADER.size + 8)
    request, _, size = HEADER.unpack_from(data)
    assert size == 8
    return request, int.from_bytes(data[HEADER.size:], "little")


async def test_the_prelude_stops_at_guest_memory_and_leaves_it_unread() -> None:
    """A memory region (what the guest's rings live in) is never the prelude's: it stops
    before it and the message, fd included, is still in the socket for the backend."""
    front, back = socket.socketpair()
    prelude = Prelude(back, realize_answers(num_queues=2, max_mem_slots=8)).start()
    _send(front, Request.GET_FEATURES)
    assert _reply(front) == (Request.GET_FEATURES, int(BASE_FEATURES))
    memfd = os.memfd_create("guest")
    os.ftruncate(memfd, 4096)
    region = encode(MemRegion(0, 4096, 0x10000, 0))
    _send(front, Request.ADD_MEM_REG, region, [memfd])
    with trio.fail_after(DEADLINE):
        while prelude.running:
            await trio.sleep(0.01)  # polls the thread's state; the deadline bounds it
    record = prelude.finish()
    try:
        assert [HEADER.unpack_from(t.data)[0] for t in record.taken] == [Request.GET_FEATURES]
        assert prelude.stopped_by.startswith(f"request {int(Request.ADD_MEM_REG)}")
        assert record.conn is not None
        data, anc, _, _ = record.conn.recvmsg(HEADER.size + len(region), 64)
        assert HEADER.unpack_from(data)[0] == Request.ADD_MEM_REG
        assert anc, "the region's fd was taken"
        for _, _, blob in anc:
            for fd in memoryview(blob).cast("i"):
                os.close(fd)
    finally:
        record.close()
        os.close(memfd)
        front.close()
        back.close()


@pytest.mark.parametrize("queues_told", [2, 3])
async def test_the_backend_stands_by_the_preludes_answers_or_hangs_up(
        queues_told: int, caplog: pytest.LogCaptureFixture) -> None:
    """A prelude that told the frontend 3 queues for a 2-queue device: the backend's
    replay sees it and closes the connection. Told the truth, the session goes on."""
    front, back = socket.socketpair()
    answers = realize_answers(num_queues=queues_told,
                              max_mem_slots=vhost_lib.MSB_MAX_MEMREGS)
    prelude = Prelude(back, answers).start()
    _send(front, Request.GET_QUEUE_NUM)
    assert _reply(front) == (Request.GET_QUEUE_NUM, queues_told)
    record = prelude.finish()
    back.close()  # the prelude works on its own copy of a connected socket
    assert record.conn is not None
    conn = ReplayConnection(trio.socket.from_stdlib_socket(record.conn), record.taken)
    record.conn, record.taken = None, []
    fe = Frontend(Connection(trio.socket.from_stdlib_socket(front)))
    caplog.set_level(logging.ERROR, "vhost.replay")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.serve, EchoDevice(num_queues=2), conn)
            if queues_told == 2:
                assert await fe.get_u64(Request.GET_FEATURES) == int(BASE_FEATURES)
                assert conn.replayed == 1
                await fe.close()
            else:
                with pytest.raises((EOFError, OSError)):
                    await fe.get_u64(Request.GET_FEATURES)
                assert "the prelude answered" in caplog.text
                await fe.close()


async def test_a_connected_fd_is_answered_by_the_prelude_then_served(tmp_path: Path) -> None:
    """virtiofsd's --fd may be a connected socket (no accept): the prelude answers on it
    (while the daemon is held before its tree) and the backend takes over the same
    connection."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_bytes(b"x")
    ours, theirs = socket.socketpair()
    gate_r, gate_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "msbfs", "serve", f"--fd={theirs.fileno()}",
         f"--shared-dir={share}"],
        env={**os.environ, GATE_ENV: str(gate_r)}, pass_fds=(theirs.fileno(), gate_r),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    theirs.close()
    os.close(gate_r)
    try:
        with trio.fail_after(DEADLINE):
            fe = Frontend(Connection(trio.socket.from_stdlib_socket(ours)),
                          GuestRam(((0, 48 << 20),)))
            assert await fe.get_u64(Request.GET_FEATURES) == int(BASE_FEATURES)
            os.write(gate_w, b"x")
            await fe.handshake([32, 32], slot_size=300 << 10)
            c = FuseClient(fe)
            await c.init()
            assert parse_entry(await c.ok(c.r.lookup(ROOT, b"f"))).nodeid > ROOT
            await fe.close()
            assert await trio.to_thread.run_sync(proc.wait) == 0
    finally:
        os.close(gate_w)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_a_frontend_that_never_reads_cannot_block_the_prelude() -> None:
    """The daemon's start-up joins the prelude: a frontend that asks and never reads the
    answers must not keep it in a blocking send. It stops taking (the question left
    unread) once the socket has no room for an answer."""
    front, back = socket.socketpair()
    front.setblocking(False)
    prelude = Prelude(back, realize_answers(num_queues=2, max_mem_slots=8)).start()
    try:
        with trio.fail_after(DEADLINE):
            while prelude.running:
                with contextlib.suppress(BlockingIOError):
                    _send(front, Request.GET_FEATURES)
                await trio.sleep(0)
        record = prelude.finish()
        assert prelude.stopped_by == "the frontend is not reading its answers"
        assert record.taken and all(t.answer for t in record.taken)
        record.close()
    finally:
        front.close()
        back.close()


async def test_the_prelude_takes_a_bounded_number_of_messages() -> None:
    front, back = socket.socketpair()
    prelude = Prelude(back, realize_answers(num_queues=2, max_mem_slots=8)).start()
    try:
        for _ in range(MAX_TAKEN + 1):
            _send(front, Request.SET_OWNER)  # no answer: nothing for the frontend to read
        with trio.fail_after(DEADLINE):
            while prelude.running:
                await trio.sleep(0.01)  # polls the thread's state; the deadline bounds it
        record = prelude.finish()
        assert len(record.taken) == MAX_TAKEN
        assert prelude.stopped_by == f"{MAX_TAKEN} messages taken"
        record.close()
    finally:
        front.close()
        back.close()


@pytest.mark.parametrize("seed", range(20))
async def test_hostile_bytes_before_confinement_take_only_realize_messages(seed: int) -> None:
    """The prelude runs before the sandbox, so whatever a frontend sends it must take only
    whole messages of its kinds and sizes (the rest stays unread for the confined backend)
    and end when asked. Random streams: valid realize messages mixed with junk."""
    import random

    rng = random.Random(seed)
    front, back = socket.socketpair()
    stream = bytearray()
    for _ in range(rng.randrange(1, 12)):
        kind = rng.random()
        if kind < 0.6:  # a realize message, sometimes with a wrong size or flags
            request = rng.choice(list(EXPECTED_SIZE))
            size = EXPECTED_SIZE[request] if rng.random() < 0.8 else rng.randrange(0, 64)
            flags = rng.choice((1, 1, 9, 5, 0, 2, 0xFFFFFFFF))
            stream += HEADER.pack(request, flags, size) + rng.randbytes(size)
        else:  # anything at all
            stream += rng.randbytes(rng.randrange(1, 40))
    front.sendall(bytes(stream))
    front.shutdown(socket.SHUT_WR)
    prelude = Prelude(back, realize_answers(num_queues=2, max_mem_slots=8)).start()
    try:
        with trio.fail_after(DEADLINE):
            while prelude.running:
                await trio.sleep(0.01)  # polls the thread's state; the deadline bounds it
        record = prelude.finish()
        offset = 0
        for t in record.taken:  # a prefix of the stream, whole messages, known kinds
            request, flags, size = HEADER.unpack_from(t.data)
            assert EXPECTED_SIZE[request] == size and len(t.data) == HEADER.size + size
            assert flags & 3 == 1 and not flags & ~0xB
            assert bytes(stream[offset:offset + len(t.data)]) == t.data
            offset += len(t.data)
        record.close()
    finally:
        front.close()
        back.close()
