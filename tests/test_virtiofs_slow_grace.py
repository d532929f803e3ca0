"""The slow path's grace section (issue 11): a Python request that looked a handle's fd
up keeps that number its own until it ends, whatever another queue's C path releases.

``_serve_slow`` runs each Python request inside a grace section (``msb_fs_slow_begin`` /
``msb_fs_slow_end`` in csrc/fuse_datapath.c). A C RELEASE on another queue takes the
handle out of the table and closes its fd only once every section older than it has
ended (``msb_grace_defer_close``). Without the slow path's section the fd is closed at
once, a new open takes the number, and the Python READ still holding it reads another
file: a data leak across files.

Made deterministic: the tree's handle lookup is wrapped so the slow READ stops right
after it got the fd (a READ whose reply room is smaller than its size is Python's: C
hands it back and the codec clamps). While it stands there, queue 2's C path answers
a RELEASE of the handle and this process (the daemon's) opens another file until it
gets the released number back or gives up; then the READ goes on. It must return the
released file's bytes, never the other file's.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import trio

from msbfs.fuse.kernel import Reply
from tests.plugins.threads import until_async
from tests.test_virtiofs_setlkw_release import create

F_DATA = b"F" * 4096  # the handle's file
G_DATA = b"G" * 4096  # the file that would take its number
ROOM = 1024  # < the READ's size + header: C hands the READ to Python
MAX_OPENS = 64  # host opens tried to get the released number back (the lowest free one)


async def test_a_c_release_never_closes_the_fd_a_slow_read_holds(
        fs_client: Any, tmp_path: Path) -> None:
    (tmp_path / "g").write_bytes(G_DATA)
    async with fs_client(tmp_path, request_queues=2) as c:
        nodeid, fh = await create(c, b"f")
        await c.ok(c.r.write(nodeid, fh, 0, F_DATA))
        table = c.device.tree._handles
        lookup = table.file
        held: list[int] = []  # the fd the gated READ looked up
        arrived, go = threading.Event(), threading.Event()

        def gated(n: int) -> Any:
            h = lookup(n)
            if n == fh and not held:
                held.append(h.fd)
                arrived.set()
                go.wait(60)  # the test's failure bound, never the expected path
            return h

        table.file = gated  # the white-box part: a gate between the lookup and the pread
        reply: list[Reply] = []
        opened: list[int] = []
        try:
            async with trio.open_nursery() as n:
                async def slow_read() -> None:
                    reply.append(await c.call(c.r.read(nodeid, fh, 0, len(F_DATA)), ROOM,
                                              queue=1))
                n.start_soon(slow_read)
                assert await until_async(arrived.is_set), "the READ never reached Python"
                assert c.device.lock.locked()  # it is the slow path's, in its section
                # C answers the RELEASE (the slow path's lock is held: Python could not)
                with trio.fail_after(30):
                    await c.ok(c.r.release(nodeid, fh), queue=2)
                for _ in range(MAX_OPENS):
                    fd = os.open(tmp_path / "g", os.O_RDONLY | os.O_CLOEXEC)
                    opened.append(fd)
                    if fd == held[0]:
                        break
                go.set()
        finally:
            go.set()
            table.file = lookup
            for fd in opened:
                os.close(fd)
        data = reply[0].ok()
        assert data, reply[0]
        assert set(data) != {ord("G")}, "the slow READ read another file through a reused fd"
        assert data == F_DATA[:len(data)]
        # The handle is gone: the next READ of it is refused, not served from g.
        gone = await c.call(c.r.read(nodeid, fh, 0, 16), ROOM, queue=1)
        assert gone.error != 0
