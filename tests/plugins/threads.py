"""Waiting for a thread's state instead of waiting for time.

A test that must know "this thread is now asleep in the kernel waiting for a lock" reads
the thread's wait channel (``/proc/self/task/<tid>/wchan``): a POSIX or OFD lock wait
sleeps in ``fcntl_setlk``, a flock wait in ``*lock_inode_wait``. Polled with a generous
deadline that only bounds a failure.

- ``waits_on_lock(tid)``: the thread sleeps in a lock wait now.
- ``lock_waiters()``: every thread of this process that does (for threads a library
  started, whose id the test does not know).
- ``until_async(predicate)``: poll with a deadline from a trio task (from a thread:
  ``tests.plugins.hostmount.wait_for``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import trio

_LOCK_WAIT = re.compile(r"fcntl_setlk|lock_inode_wait|flock")


def _wchan(tid: int) -> str:
    try:
        with open(f"/proc/self/task/{tid}/wchan") as f:
            return f.read()
    except FileNotFoundError:  # the thread ended
        return ""


def waits_on_lock(tid: int | None) -> bool:
    return tid is not None and _LOCK_WAIT.search(_wchan(tid)) is not None


def lock_waiters() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task") if waits_on_lock(int(t))]


async def until_async(predicate: Callable[[], bool], deadline_s: float = 30.0) -> bool:
    with trio.move_on_after(deadline_s):
        while not predicate():
            await trio.sleep(0.001)
        return True
    return False
