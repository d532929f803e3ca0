"""The host mount's request loop (msbfs/hostmount_loop.py): pyfuse3 takes queued
requests without a scheduler pass, yet a handler parked in a worker thread (fsync)
neither stalls the mount nor starves under a flood of requests."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import trio

from msbfs import hostmount_loop, mount_daemon, mountinfo
from tests.plugins.hostmount import needs_root, wait_for

# The daemon under test: a real `msbfs mount`, except that the tree's fsync parks (in
# pyfuse3's worker thread, as every fsync does) until a gate file exists, and the loop's
# count of requests taken without a scheduler pass is written out at exit.
_DAEMON = r"""
import os, sys, time
from msbfs import hostmount_loop
from msbfs.cli import main
from msbfs.tree import Tree

side = sys.argv[3]
real_fsync = Tree.fsync

def fsync(self, fh, datasync):
    open(os.path.join(side, "entered"), "w").close()
    while not os.path.exists(os.path.join(side, "gate")):
        time.sleep(0.01)  # the daemon's worker thread, parked like a slow disk
    return real_fsync(self, fh, datasync)

Tree.fsync = fsync
real_installed = hostmount_loop.installed

def installed():
    cm = real_installed()
    low = cm.__enter__()
    class Wrap:
        def __enter__(self): return low
        def __exit__(self, *exc):
            with open(os.path.join(side, "skipped"), "w") as f:
                f.write(str(low.skipped_total))
            return cm.__exit__(*exc)
    return Wrap()

hostmount_loop.installed = installed
sys.exit(main(["mount", sys.argv[1], sys.argv[2], "--foreground"]))
"""


def _flood(path: Path, stop: threading.Event, count: list[int]) -> None:
    while not stop.is_set():
        try:
            os.getxattr(path, "user.none")
        except OSError:
            pass
        count[0] += 1


@needs_root
def test_parked_fsync_neither_stalls_nor_starves(tmp_path: Path) -> None:
    src, mnt, side = tmp_path / "src", tmp_path / "mnt", tmp_path / "side"
    for d in (src, mnt, side):
        d.mkdir()
    (src / "f").write_text("data")
    proc = subprocess.Popen([sys.executable, "-c", _DAEMON, str(src), str(mnt), str(side)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        synced: list[int] = []

        def do_fsync() -> None:
            fd = os.open(mnt / "f", os.O_RDWR)
            try:
                os.fsync(fd)
                synced.append(1)
            finally:
                os.close(fd)

        syncer = threading.Thread(target=do_fsync, daemon=True)
        syncer.start()
        assert wait_for(lambda: (side / "entered").exists(), 60)
        # The fsync is parked in the daemon: the mount still answers everything else.
        done: list[int] = []

        def other_requests() -> None:
            for i in range(50):
                (mnt / f"n{i}").write_text("x")
                os.stat(mnt / f"n{i}")
            done.append(1)

        worker = threading.Thread(target=other_requests, daemon=True)
        worker.start()
        worker.join(60)
        assert done, "the mount stalled behind a parked fsync"
        assert not synced
        # A flood of requests from several threads keeps /dev/fuse busy; the fsync's
        # completion must still get through (the loop yields every YIELD_EVERY).
        stop = threading.Event()
        counts = [[0] for _ in range(3)]
        flooders = [threading.Thread(target=_flood, args=(mnt / "f", stop, c), daemon=True)
                    for c in counts]
        for t in flooders:
            t.start()
        assert wait_for(lambda: sum(c[0] for c in counts) > 200, 60)
        (side / "gate").touch()
        syncer.join(60)
        flooding = all(t.is_alive() for t in flooders)
        stop.set()
        for t in flooders:
            t.join(60)
        assert synced, "the fsync never completed under a flood of requests"
        assert flooding
    finally:
        (side / "gate").touch()  # a failed run must not leave the daemon parked
        if mountinfo.mount_state(str(mnt)) != "none":
            mount_daemon.unmount(str(mnt))
        if proc.poll() is None:
            proc.wait(timeout=60)
    # The fast path ran at all: queued requests were taken without parking.
    assert int((side / "skipped").read_text()) > 0


def test_ready_fd_is_taken_without_parking_but_yields_every_so_often() -> None:
    """Deterministic: a pipe that stays readable; another task that needs one scheduler
    pass to run. The fast path returns at once, yet the other task runs within
    2 * YIELD_EVERY waits."""
    low = hostmount_loop._Lowlevel()
    r, w = os.pipe()
    os.write(w, b"x")
    bound = 10 * hostmount_loop.YIELD_EVERY
    waits = [0]
    other_ran_after: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            while not other_ran_after and waits[0] < bound:
                await low.wait_readable(r)
                waits[0] += 1
            nursery.cancel_scope.cancel()

    async def other() -> None:
        other_ran_after.append(waits[0])

    try:
        trio.run(main)
    finally:
        os.close(r)
        os.close(w)
    # trio runs a pass's tasks in random order: `other` runs at the first real yield or
    # at the next one, never later.
    assert other_ran_after and other_ran_after[0] <= 2 * hostmount_loop.YIELD_EVERY, \
        "a readable fd starved every other task"
    assert low.skipped_total > 0


def test_empty_fd_parks_until_written() -> None:
    low = hostmount_loop._Lowlevel()
    r, w = os.pipe()
    woke: list[bool] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def writer() -> None:
                await trio.lowlevel.checkpoint()
                os.write(w, b"x")

            nursery.start_soon(writer)
            await low.wait_readable(r)
            woke.append(True)

    try:
        trio.run(main)
    finally:
        os.close(r)
        os.close(w)
    assert woke and low.skipped_total == 0


def test_uncontended_lock_does_not_yield_and_contended_one_waits() -> None:
    order: list[str] = []

    async def main() -> None:
        lock = hostmount_loop._Lock()
        async with trio.open_nursery() as nursery:
            async def second() -> None:
                order.append("second started")
                async with lock:
                    order.append("second")

            nursery.start_soon(second)
            async with lock:  # uncontended: `second` must not get to run here
                order.append("first")
                await trio.lowlevel.checkpoint()  # now second runs and waits for the lock
                order.append("first done")

    trio.run(main)
    # (trio orders a pass's tasks at random: only what the lock decides is fixed)
    assert order[0] == "first" and order[-1] == "second", order
    assert sorted(order) == sorted(["first", "second started", "first done", "second"])


def test_uncontended_lock_takes_no_checkpoint() -> None:
    """Deterministic: in a cancelled scope any checkpoint raises Cancelled, so taking
    the lock there proves the acquire went through no scheduler pass."""
    took: list[bool] = []

    async def main() -> None:
        lock = hostmount_loop._Lock()
        with trio.CancelScope() as scope:
            scope.cancel()
            async with lock:
                took.append(True)

    trio.run(main)
    assert took
