"""What every class's session shares: a frontend connected to the daemon with a
deadline on everything, the outcome of one session, and the liveness probe.

A class module provides ``async def run(fe_factory, rng, budget, stats, replay)``
returning a ``Result``: how many inputs it sent, the steps it logged (for a reproducer)
and, if something went unanswered past the deadline, a hang description.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from msbfs.fuse.kernel import Requests, parse_reply
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

#: How long any one answer may take before it is a hang. A failure bound, generous for
#: a niced daemon on a shared 2-core machine, never a wait.
DEADLINE = 20.0
#: virtio-fs queues: hiprio (0) and one request queue (1).
HIPRIO, REQUESTS = 0, 1


class Hang(Exception):
    """Something the daemon must answer was not answered within DEADLINE."""


@dataclass
class Result:
    inputs: int = 0
    steps: list[Any] = field(default_factory=list)
    hang: str | None = None


@asynccontextmanager
async def connected(sock: Path, ram: GuestRam | None = None) -> AsyncIterator[Frontend]:
    with trio.fail_after(DEADLINE):
        fe = await Frontend.connect(str(sock), ram)
    try:
        yield fe
    finally:
        await fe.close()


async def fuse_start(fe: Frontend, queue_sizes: tuple[int, ...] = (64, 64),
                     slot_size: int = 64 * 1024) -> Requests:
    """Handshake, INIT and GETATTR of the root: the start of every FUSE-speaking session
    and, on a fresh connection, the liveness probe. Raises Hang past the deadline."""
    r = Requests()
    try:
        with trio.fail_after(DEADLINE):
            await fe.handshake(queue_sizes, slot_size=slot_size)
            parse_reply((await fe.submit(REQUESTS, [r.init()], [4096])).data).ok()
            parse_reply((await fe.submit(REQUESTS, [r.getattr(1)], [4096])).data).ok()
    except trio.TooSlowError:
        raise Hang("handshake, INIT or GETATTR of the root unanswered") from None
    return r


async def probe(sock: Path) -> str | None:
    """A fresh connection must be served: None if it is, else what failed."""
    try:
        async with connected(sock) as fe:
            await fuse_start(fe, (16, 16), 8192)
    except Hang as e:
        return f"liveness probe: {e}"
    except trio.TooSlowError:
        return "liveness probe: connect unanswered"
    except (OSError, EOFError) as e:
        return f"liveness probe: {type(e).__name__}: {e}"
    return None
