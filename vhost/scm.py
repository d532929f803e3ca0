"""SCM_RIGHTS on a vhost-user socket, without trio: the ancillary buffer a message's fds
need and the fds out of what ``recvmsg`` returned. Shared by ``vhost.connection`` (trio)
and ``vhost.prelude`` (a plain thread, before trio is imported)."""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Sequence

from vhost.messages import MAX_FDS

FD_SIZE = array.array("i").itemsize
#: room for the most fds one message may carry; more is MSG_CTRUNC (a framing error)
ANC_SIZE = socket.CMSG_SPACE(MAX_FDS * FD_SIZE)


def fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % FD_SIZE])
            fds.extend(arr)
    return fds


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
