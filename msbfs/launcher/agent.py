"""The host side of the guest command channel (the guest side is ``msbfs/guest/agent.c``).

Frames, both directions: one type byte, a little-endian u32 payload length, the payload.
Host to guest: ``R`` run (NUL-terminated uid, gid, cwd, env count, env entries, argv) and
``Q`` quit. Guest to host: ``H`` hello, ``S`` started, ``O``/``E`` stdout/stderr bytes,
``X`` exit (``exit N`` or ``signal N``). ``FrameDecoder`` and ``encode_run`` are sans-I/O;
``AgentChannel`` drives them over the connected Unix socket QEMU's virtio-serial chardev
dials into.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from msbfs.errors import LaunchError

HEADER = struct.Struct("<cI")
MAX_FRAME = 1 << 20


class AgentError(LaunchError):
    """The guest agent broke the protocol or went away."""


@dataclass(frozen=True)
class Frame:
    type: bytes
    payload: bytes


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    #: Seconds from sending the request to the guest reporting the command started.
    start_latency: float = 0.0

    def __iter__(self):  # (status, stdout, stderr), as the guest fixture's tests unpack it
        return iter((self.exit_code, self.stdout, self.stderr))


class FrameDecoder:
    """Bytes in, frames out. A length above ``MAX_FRAME`` is a protocol error."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise AgentError(f"agent frame of {length} bytes exceeds {MAX_FRAME}")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append(Frame(kind, bytes(self._buf[HEADER.size:end])))
            del self._buf[:end]
        return frames


def encode_frame(kind: bytes, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise AgentError(f"request of {len(payload)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(kind, len(payload)) + payload


def _field(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    if b"\0" in raw:
        raise AgentError(f"NUL byte in command field {raw!r}")
    return raw + b"\0"


def encode_run(argv: Sequence[str | bytes], env: Mapping[str, str] | None = None,
               cwd: str = "", uid: int = 0, gid: int = 0) -> bytes:
    if not argv:
        raise AgentError("empty command")
    entries = [f"{k}={v}" for k, v in (env or {}).items()]
    fields: Iterable[str | bytes] = [str(uid), str(gid), cwd, str(len(entries)), *entries,
                                     *argv]
    return encode_frame(b"R", b"".join(_field(f) for f in fields))


def parse_exit(payload: bytes) -> int:
    """``exit N`` -> N; ``signal N`` -> 128 + N, as a shell reports it."""
    kind, _, num = payload.decode(errors="replace").partition(" ")
    if kind == "exit" and num.isdigit():
        return int(num)
    if kind == "signal" and num.isdigit():
        return 128 + int(num)
    raise AgentError(f"bad exit frame {payload!r}")


#: Environment a command gets unless the caller gives one.
DEFAULT_ENV = {"PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "HOME": "/root", "TERM": "dumb"}

Sink = Callable[[bytes], None]


class AgentChannel:
    """One connected agent. ``alive`` is polled while waiting so that a dead QEMU ends a
    wait with an error instead of a hang."""

    def __init__(self, sock: socket.socket, alive: Callable[[], str | None],
                 on_eof: Callable[[], str | None] | None = None) -> None:
        self._sock = sock
        self._sock.setblocking(False)
        self._alive = alive
        #: Called when the guest hangs up, to say why (e.g. after QEMU has exited).
        self._on_eof = on_eof or alive
        self._decoder = FrameDecoder()
        self._pending: list[Frame] = []
        self._sel = selectors.DefaultSelector()
        self._sel.register(sock, selectors.EVENT_READ)
        #: A command is in flight: the agent will not read a quit request until it ends.
        self.busy = False

    def close(self) -> None:
        self._sel.close()
        self._sock.close()

    def _next_frame(self, deadline: float | None) -> Frame:
        while not self._pending:
            why = self._alive()
            if why:
                raise AgentError(why)
            timeout = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if timeout <= 0:
                raise AgentError("timed out waiting for the guest agent")
            if not self._sel.select(timeout):
                continue
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError as e:
                raise AgentError(f"agent channel failed: {e}") from e
            if not data:
                why = self._on_eof()
                raise AgentError(why or "the guest closed the agent channel")
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    def _send(self, data: bytes) -> None:
        self._sock.setblocking(True)
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise AgentError(self._alive() or f"agent channel failed: {e}") from e
        finally:
            self._sock.setblocking(False)

    def wait_hello(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        frame = self._next_frame(deadline)
        if frame.type != b"H":
            raise AgentError(f"expected the agent's hello, got {frame!r}")

    def run(self, argv: Sequence[str | bytes], env: Mapping[str, str] | None = None,
            cwd: str = "", uid: int = 0, gid: int = 0, timeout: float | None = None,
            on_stdout: Sink | None = None, on_stderr: Sink | None = None) -> RunResult:
        if self.busy:
            # The previous command timed out or was interrupted and may still be running;
            # its frames would be taken for this one's.
            raise AgentError("an earlier command did not finish; close this guest")
        request = encode_run(argv, DEFAULT_ENV if env is None else env, cwd, uid, gid)
        sent = time.monotonic()
        deadline = None if timeout is None else sent + timeout
        self.busy = True
        self._send(request)
        out: list[bytes] = []
        err: list[bytes] = []
        latency = 0.0
        while True:
            frame = self._next_frame(deadline)
            if frame.type == b"O":
                (on_stdout or out.append)(frame.payload)
            elif frame.type == b"E":
                (on_stderr or err.append)(frame.payload)
            elif frame.type == b"S":
                latency = time.monotonic() - sent
            elif frame.type == b"X":
                self.busy = False
                return RunResult(parse_exit(frame.payload), b"".join(out), b"".join(err),
                                 latency)
            else:
                raise AgentError(f"unexpected agent frame {frame!r}")

    def quit(self) -> None:
        """Ask the guest to sync and power off; the caller waits for QEMU to exit."""
        try:
            self._send(encode_frame(b"Q"))
        except AgentError:
            pass  # already gone: the caller reaps QEMU either way
