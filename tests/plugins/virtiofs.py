"""Fixtures for the virtio-fs daemon, driven by the in-tree vhost-user frontend.

- ``fs_client``: an async context manager factory. ``async with fs_client(tmp_dir) as c``
  serves ``tmp_dir`` with a ``VirtioFsDevice`` in this process (``vhost_pair``), runs
  FUSE INIT, and yields a ``FuseClient``.
- ``serve_process``: starts a real ``msbfs serve`` subprocess on a socket and yields
  ``(proc, socket_path)`` once the socket accepts connections (polled, with a deadline).
- ``FuseClient.call(request, reply_size)`` -> ``msbfs.fuse.kernel.Reply``; ``ok()`` the
  same, raising ``OSError`` on error replies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from msbfs.fuse.kernel import Reply, Requests, parse_reply
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

HIPRIO, REQUEST_QUEUE = 0, 1
DEFAULT_REPLY = 8192


class FuseClient:
    """The guest kernel's part: FUSE requests through the request queue."""

    def __init__(self, fe: Frontend, req: Requests | None = None) -> None:
        self.fe = fe
        self.r = req or Requests()

    async def call(self, request: bytes | Sequence[bytes], reply_size: int | Sequence[int] = DEFAULT_REPLY,
                   queue: int = REQUEST_QUEUE) -> Reply:
        readable = [request] if isinstance(request, bytes) else list(request)
        sizes = [reply_size] if isinstance(reply_size, int) else list(reply_size)
        done = await self.fe.submit(queue, readable, sizes)
        return parse_reply(done.data)

    async def ok(self, request: bytes, reply_size: int = DEFAULT_REPLY,
                 queue: int = REQUEST_QUEUE) -> bytes:
        return (await self.call(request, reply_size, queue)).ok()

    async def raw(self, readable: Sequence[bytes], sizes: Sequence[int], queue: int = REQUEST_QUEUE):
        return await self.fe.submit(queue, readable, sizes)

    async def init(self) -> bytes:
        return await self.ok(self.r.init())


@pytest.fixture
def fs_client(vhost_pair: Callable[..., Any]) -> Callable[..., AbstractAsyncContextManager[FuseClient]]:
    from msbfs.tree import Policy, Tree
    from msbfs.virtiofs import VirtioFsDevice

    @asynccontextmanager
    async def start(root: Path, policy: Policy | None = None, *, slot_size: int = 64 * 1024,
                    ram_mib: int | None = None, queue_size: int = 64, request_queues: int = 1, **tree_kw: Any) -> AsyncIterator[FuseClient]:
        tree = Tree(root, policy or Policy(), **tree_kw)
        dev = VirtioFsDevice(tree, tag="test", num_request_queues=request_queues)
        try:
            if ram_mib is None:  # both queues' slots, plus room for crafted buffers
                ram_mib = ((1 + request_queues) * queue_size * slot_size >> 20) + 16
            ram = GuestRam(((0, ram_mib << 20),))
            async with vhost_pair(dev, [queue_size] * (1 + request_queues), ram=ram,
                                  slot_size=slot_size) as (fe, backend):
                c = FuseClient(fe)
                c.device = dev  # type: ignore[attr-defined]
                c.backend = backend  # type: ignore[attr-defined]
                await c.init()
                yield c
        finally:
            tree.close()

    return start


def wait_for_socket(path: str, proc: subprocess.Popen, deadline: float = 30.0) -> None:
    """Until the socket file exists: ``msbfs serve`` renames it into place only once it
    listens, so its existence is the readiness signal (a probe connection would use up
    the daemon's one frontend)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"msbfs serve exited early with {proc.returncode}")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            import stat as _stat
            if _stat.S_ISSOCK(st.st_mode):
                return
        time.sleep(0.01)  # polling a condition with a deadline, not waiting a fixed time
    raise TimeoutError(f"{path} did not appear")


@contextmanager
def run_serve(args: Sequence[str], sock: str, env: dict[str, str] | None = None,
              **popen: Any) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "msbfs", "serve", f"--socket-path={sock}", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, **popen)
    try:
        wait_for_socket(sock, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()


@pytest.fixture
def serve_process() -> Callable[..., Any]:
    return run_serve

