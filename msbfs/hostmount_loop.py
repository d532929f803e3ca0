"""pyfuse3's worker loop without two scheduler passes per request.

pyfuse3's ``_session_loop`` (pyfuse3/internal.pxi) does, for every request: take a
``trio.Lock`` (so only one task waits on /dev/fuse: trio refuses two waiters on one fd),
``await trio.lowlevel.wait_readable(fd)``, then read and process the request. Both
awaits go through trio's scheduler even when nothing has to wait: an uncontended
``Lock.acquire`` still yields (a cancel-shielded checkpoint) and ``wait_readable``
always parks the task until an epoll pass reports the fd. Profiled on a getxattr
(ENODATA) loop: two scheduler passes and two epoll calls per request, about a third of
the daemon's CPU per request.

pyfuse3 looks both up through its module global ``trio`` (the hook its own asyncio mode
replaces, ``pyfuse3.asyncio.enable``), so ``installed()`` swaps in ``_FastTrio``: trio
itself except

* ``Lock``: an uncontended acquire takes the lock without yielding (a contended one
  parks as before, so at most one task ever waits on the fd);
* ``lowlevel.wait_readable``: when a zero-timeout ``poll`` says the fd is readable
  already (requests are queued), returns without parking.

What keeps the rest of the daemon served: the loop still yields for real every
``YIELD_EVERY`` requests and whenever /dev/fuse is empty, so a handler parked in a
worker thread (``fsync``: ``hostmount._blocking``) resumes and the signal watcher runs
under a steady flood of requests too; and a handler that parks still lets another task
take the next request (pyfuse3 starts one when no task is left waiting), so a long fsync
never stalls the mount.
"""

from __future__ import annotations

import contextlib
import select
import types
from collections.abc import Iterator
from typing import Any

import pyfuse3
import trio

#: Requests taken without a scheduler pass before the loop yields for real once.
YIELD_EVERY = 32


class _Lock:
    """``trio.Lock`` whose uncontended acquire does not yield."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


class _Lowlevel:
    """``trio.lowlevel`` with a ``wait_readable`` that does not park when the fd is
    readable already (at most ``YIELD_EVERY - 1`` times in a row)."""

    def __init__(self) -> None:
        self._polls: dict[int, select.poll] = {}
        self._skipped = 0
        #: requests taken without a scheduler pass (tests read it: the fast path ran)
        self.skipped_total = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)

    def _ready(self, fd: int) -> bool:
        p = self._polls.get(fd)
        if p is None:
            p = self._polls[fd] = select.poll()
            p.register(fd, select.POLLIN)
        return bool(p.poll(0))

    async def wait_readable(self, fd: int) -> None:
        if self._skipped < YIELD_EVERY - 1 and self._ready(fd):
            self._skipped += 1
            self.skipped_total += 1
            return
        self._skipped = 0
        await trio.lowlevel.wait_readable(fd)


class _FastTrio(types.SimpleNamespace):
    """What pyfuse3 sees as ``trio``: trio, but for ``Lock`` and ``lowlevel``."""

    Lock = _Lock

    def __init__(self) -> None:
        super().__init__()
        self.lowlevel = _Lowlevel()

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


@contextlib.contextmanager
def installed() -> Iterator[_Lowlevel]:
    """pyfuse3's loop on ``_FastTrio`` for the duration (its ``lowlevel`` yielded)."""
    fast = _FastTrio()
    saved = pyfuse3.trio  # type: ignore[attr-defined]
    pyfuse3.trio = fast  # type: ignore[attr-defined]
    try:
        yield fast.lowlevel
    finally:
        pyfuse3.trio = saved  # type: ignore[attr-defined]
