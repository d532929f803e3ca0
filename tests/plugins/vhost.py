"""Fixtures for driving a vhost-user backend with the in-tree frontend.

``vhost_pair`` (async context manager factory, usable by any device's tests):

    async def test_x(vhost_pair):
        async with vhost_pair(MyDevice(), queue_sizes=[128, 128]) as (fe, backend):
            done = await fe.submit(1, [request_bytes], [reply_size])

It starts ``serve`` for the device on one end of a Unix socketpair in a background task
of the test's trio loop (same process: a stray access outside guest memory would fault
the test itself), connects a ``Frontend`` on the other end, runs the handshake (unless
``handshake=False``), and on exit closes the frontend and waits for ``serve`` to return.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio

from vhost.backend import Backend
from vhost.connection import Connection
from vhost.device import VhostUserDevice
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

VhostPair = Callable[..., AbstractAsyncContextManager[tuple[Frontend, Backend]]]


@asynccontextmanager
async def start_vhost_pair(device: VhostUserDevice, queue_sizes: Sequence[int] = (128,),
                           *, handshake: bool = True, ram: GuestRam | None = None,
                           **handshake_args: Any) -> AsyncIterator[tuple[Frontend, Backend]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    backend = Backend(device, Connection(trio.socket.from_stdlib_socket(a)))
    fe = Frontend(Connection(trio.socket.from_stdlib_socket(b)), ram)
    finished = trio.Event()

    async def run_backend() -> None:
        try:
            await backend.run()
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_backend)
        try:
            if handshake:
                await fe.handshake(queue_sizes, **handshake_args)
            yield fe, backend
        finally:
            await fe.close()
            with trio.move_on_after(30):  # a hung backend fails the test, not the suite
                await finished.wait()
            if not finished.is_set():
                nursery.cancel_scope.cancel()
                pytest.fail("backend did not return after the frontend disconnected")


@pytest.fixture
def vhost_pair() -> VhostPair:
    return start_vhost_pair
