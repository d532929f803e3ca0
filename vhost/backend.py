"""The vhost-user backend: the protocol state machine between a frontend (QEMU, or
``vhost.frontend``) and a ``VhostUserDevice``.

State rules (vhost-user.rst "Ring states"):
- a ring is *started* by SET_VRING_KICK (with size, addresses and memory known) and
  *stopped* by GET_VRING_BASE, which answers with the next avail index to resume from;
- with PROTOCOL_FEATURES negotiated a ring starts disabled until SET_VRING_ENABLE 1,
  otherwise it is enabled at once;
- a ring is served (one task: wait the kick eventfd, call ``device.handle_kick``) only
  while started AND enabled; ``device.queue_started/queue_stopped`` bracket that;
- stopping lets a running ``handle_kick`` finish (no popped chain is abandoned), then
  no more pops or pushes happen on that ring. A device whose handler keeps serving
  (a thread that waits for kicks itself) is asked to return with ``device.interrupt``;
- nothing a running handler uses changes under it: a memory table change
  (SET_MEM_TABLE, ADD/REM_MEM_REG), new ring addresses, call or error fds and features
  first quiesce the rings (``_quiesced``: interrupt every running handler, wait until
  each has returned, apply the change, then call each again at once, as it may have
  returned before draining its ring). So a handler running on another thread never
  reads an unmapped region or signals a closed fd.

Errors: a well-framed but invalid message is answered with a failed REPLY_ACK when the
frontend asked for one (or an empty GET_CONFIG reply); if the frontend expects no reply
there is no way to report it, so the connection is closed. A framing error closes the
connection. Every fd received is either kept by the state it was sent for or closed.
A guest that breaks a ring only breaks that ring. ``serve`` returns when the frontend
disconnects.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from vhost._native import ffi, lib
from vhost.connection import Connection, close_fds
from vhost.device import ConfigError, VhostUserDevice
from vhost.memory import GuestMemory, GuestMemoryError
from vhost.messages import (
    BASE_FEATURES,
    BASE_PROTOCOL_FEATURES,
    HAS_REPLY,
    Config,
    Feature,
    FramingError,
    MemRegion,
    MemTable,
    Message,
    MessageError,
    Payload,
    ProtocolFeature,
    Request,
    U64Payload,
    VringAddr,
    VringFile,
    VringState,
    build_ack,
    build_reply,
    parse_request,
)
from vhost.virtqueue import MAX_QUEUE_SIZE, QueueBroken, Virtqueue

log = logging.getLogger("vhost.backend")

class Disconnect(Exception):
    """Close the connection (an error that cannot be reported in a reply)."""


@dataclass
class _Runner:
    """The serving task of one started+enabled ring."""

    stopping: bool = False
    wait_scope: trio.CancelScope | None = None
    done: trio.Event = field(default_factory=trio.Event)
    #: inside device.handle_kick right now
    active: bool = False
    #: set when the running handle_kick returns
    idle: trio.Event = field(default_factory=trio.Event)
    #: call handle_kick again without waiting for a kick (it was interrupted)
    again: bool = False


class Backend:
    """One connection's worth of backend state. ``await Backend(dev, conn).run()``."""

    def __init__(self, device: VhostUserDevice, conn: Connection) -> None:
        self.device = device
        self.conn = conn
        self.memory = GuestMemory()
        self.queues = [Virtqueue(i, device.pop_batch) for i in range(device.num_queues)]
        self.features = 0
        self.protocol_features = 0
        self.owner = False
        self.backend_req_fd = -1
        self.errors = 0
        self.messages = 0
        self._runners: dict[int, _Runner] = {}
        self._nursery: trio.Nursery | None = None
        self._paused = 0                  # quiesce depth: no handler starts while > 0
        self._resume = trio.Event()
        #: quiesces that had to interrupt a running handler (tests prove overlap by it)
        self.quiesce_waits = 0

    # ---- features --------------------------------------------------------------------

    def offered_features(self) -> int:
        return int(BASE_FEATURES) | self.device.device_features()

    def offered_protocol_features(self) -> int:
        return int(BASE_PROTOCOL_FEATURES) | self.device.protocol_features()

    def _proto(self, f: ProtocolFeature) -> bool:
        return bool(self.protocol_features & f)

    # ---- main loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the frontend disconnects (or sends something unrecoverable)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._message_loop()
                finally:
                    # A handler on a thread cannot be cancelled: ask it to return.
                    for index, r in self._runners.items():
                        r.stopping = True
                        if r.active:
                            self.device.interrupt(index, self.queues[index])
                    nursery.cancel_scope.cancel()
        finally:
            self._teardown()

    async def _message_loop(self) -> None:
        while True:
            try:
                raw = await self.conn.recv_message()
            except FramingError as e:
                log.warning("closing connection: %s", e)
                return
            except OSError as e:
                log.info("connection error: %s", e)
                return
            if raw is None:
                log.debug("frontend disconnected")
                return
            request, flags, payload, fds = raw
            self.messages += 1
            log.debug("<- %s flags=%#x size=%d fds=%d", _name(request), flags, len(payload),
                      len(fds))
            try:
                try:
                    msg = parse_request(request, flags, payload, fds)
                except MessageError:
                    close_fds(fds)
                    raise
                try:
                    body = await self._dispatch(msg)
                finally:
                    close_fds(msg.fds)  # every fd no handler took
                if msg.request in HAS_REPLY:
                    assert body is not None
                    await self.conn.send(build_reply(msg.request, body))
                elif msg.need_reply and self._proto(ProtocolFeature.REPLY_ACK):
                    await self.conn.send(build_ack(msg.request, True))
            except (MessageError, GuestMemoryError) as e:
                self.errors += 1
                log.warning("vhost-user %s: %s", _name(request), e)
                try:
                    reported = await self._report_failure(request, flags)
                except OSError as send_error:
                    # The frontend hung up before hearing of its error: a disconnect
                    # like any other, not an escape from the loop (it ended the daemon).
                    log.info("connection error: %s", send_error)
                    return
                if not reported:
                    log.warning("closing connection: the error cannot be reported")
                    return
            except Disconnect as e:
                log.warning("closing connection: %s", e)
                return
            except OSError as e:
                log.info("connection error: %s", e)
                return
            except Exception:
                # a bug (ours or the device's) while handling one message: say so, answer
                # it as failed, and keep the daemon up
                self.errors += 1
                log.exception("vhost-user %s: internal error", _name(request))
                try:
                    if not await self._report_failure(request, flags):
                        return
                except OSError:
                    return

    async def _report_failure(self, request: int, flags: int) -> bool:
        """Tell the frontend a request failed; False if the protocol has no way to."""
        if request == Request.GET_CONFIG:
            await self.conn.send(build_reply(request, b""))  # spec: empty = error
            return True
        if flags & 0x8 and self._proto(ProtocolFeature.REPLY_ACK) \
                and request not in HAS_REPLY:
            await self.conn.send(build_ack(request, False))
            return True
        return False

    async def _dispatch(self, msg: Message) -> Payload | None:
        handler = getattr(self, "_on_" + Request(msg.request).name.lower(), None)
        if handler is None:
            raise MessageError(f"{Request(msg.request).name} is not supported", errno.ENOSYS)
        return await handler(msg)

    # ---- handlers (each returns the reply body for HAS_REPLY requests) ---------------

    async def _on_get_features(self, msg: Message) -> Payload:
        return U64Payload(self.offered_features())

    async def _on_set_features(self, msg: Message) -> None:
        assert isinstance(msg.body, U64Payload)
        f = msg.body.value
        extra = f & ~self.offered_features()
        if extra:
            raise MessageError(f"features {extra:#x} were not offered")
        self.features = f
        async with self._quiesced():
            for vq in self.queues:
                vq.c.event_idx = bool(f & Feature.RING_EVENT_IDX)
                vq.c.indirect = bool(f & Feature.RING_INDIRECT_DESC)
        for vq in self.queues:
            if not f & Feature.PROTOCOL_FEATURES and vq.started and not vq.enabled:
                vq.enabled = True
                await self._sync_queue(vq)

    async def _on_get_protocol_features(self, msg: Message) -> Payload:
        return U64Payload(self.offered_protocol_features())

    async def _on_set_protocol_features(self, msg: Message) -> None:
        assert isinstance(msg.body, U64Payload)
        extra = msg.body.value & ~self.offered_protocol_features()
        if extra:
            raise MessageError(f"protocol features {extra:#x} were not offered")
        self.protocol_features = msg.body.value

    async def _on_set_owner(self, msg: Message) -> None:
        self.owner = True

    async def _on_reset_owner(self, msg: Message) -> None:
        # deprecated; the spec recommends treating it as "disable all rings"
        for vq in self.queues:
            await self._stop_queue(vq)

    async def _on_reset_device(self, msg: Message) -> None:
        for vq in self.queues:
            await self._stop_queue(vq)
            self._forget_queue(vq)
        self.features = 0
        self.device.reset()

    async def _on_get_queue_num(self, msg: Message) -> Payload:
        return U64Payload(len(self.queues))

    async def _on_get_max_mem_slots(self, msg: Message) -> Payload:
        return U64Payload(lib.MSB_MAX_MEMREGS)

    async def _on_set_mem_table(self, msg: Message) -> None:
        assert isinstance(msg.body, MemTable)
        async with self._quiesced():
            self.memory.set_table(msg.body.regions, msg.fds)
            self._memory_changed()

    async def _on_add_mem_reg(self, msg: Message) -> None:
        assert isinstance(msg.body, MemRegion)
        async with self._quiesced():
            self.memory.add(msg.body, msg.fds[0])
            self._memory_changed()

    async def _on_rem_mem_reg(self, msg: Message) -> None:
        assert isinstance(msg.body, MemRegion)
        async with self._quiesced():
            self.memory.remove(msg.body)
            self._memory_changed()

    async def _on_set_vring_num(self, msg: Message) -> None:
        assert isinstance(msg.body, VringState)
        vq = self._vq(msg.body.index)
        n = msg.body.num
        if not 1 <= n <= MAX_QUEUE_SIZE or n & (n - 1):
            raise MessageError(f"queue size {n} (power of two, 1..{MAX_QUEUE_SIZE})")
        if vq.started:
            raise MessageError(f"queue {vq.index} is started")
        vq.size = n

    async def _on_set_vring_addr(self, msg: Message) -> None:
        assert isinstance(msg.body, VringAddr)
        a = msg.body
        vq = self._vq(a.index)
        if a.flags:  # VRING_F_LOG or unknown bits
            raise MessageError("ring logging requested but LOG_ALL was never offered")
        addrs = (a.desc, a.avail, a.used)
        if vq.size and self.memory.mappings:
            probe = ffi.new("struct msb_vq *")
            lib.msb_vq_init(probe)
            if lib.msb_vq_setup(probe, self.memory.table, vq.size, *addrs) < 0:
                raise MessageError(f"queue {vq.index}: rings are not inside guest memory "
                                   "or misaligned")
        vq.addrs = addrs
        if not vq.started:
            return
        async with self._quiesced():
            moved = lib.msb_vq_remap(vq.c, self.memory.table, *addrs) >= 0
        if not moved:
            await self._stop_queue(vq)
            raise MessageError(f"queue {vq.index}: cannot move rings")

    async def _on_set_vring_base(self, msg: Message) -> None:
        assert isinstance(msg.body, VringState)
        vq = self._vq(msg.body.index)
        if msg.body.num > 0xFFFF:
            raise MessageError(f"vring base {msg.body.num} does not fit 16 bits")
        if vq.started:
            raise MessageError(f"queue {vq.index} is started")
        vq.base = msg.body.num

    async def _on_get_vring_base(self, msg: Message) -> Payload:
        assert isinstance(msg.body, VringState)
        vq = self._vq(msg.body.index)
        await self._stop_queue(vq)
        base = int(vq.c.last_avail_idx) if vq.c.desc != ffi.NULL else vq.base
        vq.base = base
        self._forget_queue(vq, keep_config=True)
        return VringState(vq.index, base)

    async def _on_set_vring_kick(self, msg: Message) -> None:
        assert isinstance(msg.body, VringFile)
        vq = self._vq(msg.body.index)
        if not msg.body.has_fd:
            raise MessageError("polling rings (no kick fd) are not supported")
        new = _take_eventfd(msg)  # refused before the running ring is touched
        if vq.started:
            # a new kick fd for a running ring: carry on from where it is, not from
            # the SET_VRING_BASE it started with
            await self._stop_queue(vq)
            vq.base = int(vq.c.last_avail_idx)
        _close_watched(vq.kick_fd)
        vq.kick_fd = new
        await self._start_queue(vq)

    async def _on_set_vring_call(self, msg: Message) -> None:
        assert isinstance(msg.body, VringFile)
        vq = self._vq(msg.body.index)
        new = _take_eventfd(msg)
        async with self._quiesced():  # no handler signals the old fd as it closes
            _close_watched(vq.c.call_fd)
            vq.c.call_fd = new

    async def _on_set_vring_err(self, msg: Message) -> None:
        assert isinstance(msg.body, VringFile)
        vq = self._vq(msg.body.index)
        new = _take_eventfd(msg)
        async with self._quiesced():
            _close_watched(vq.c.err_fd)
            vq.c.err_fd = new

    async def _on_set_vring_enable(self, msg: Message) -> None:
        assert isinstance(msg.body, VringState)
        vq = self._vq(msg.body.index)
        if not self.features & Feature.PROTOCOL_FEATURES:
            raise MessageError("SET_VRING_ENABLE without PROTOCOL_FEATURES negotiated")
        if msg.body.num not in (0, 1):
            raise MessageError(f"SET_VRING_ENABLE {msg.body.num}")
        vq.enabled = bool(msg.body.num)
        await self._sync_queue(vq)

    async def _on_get_config(self, msg: Message) -> Payload:
        assert isinstance(msg.body, Config)
        c = msg.body
        try:
            data = self.device.get_config(c.offset, c.size)
        except ConfigError as e:
            raise MessageError(str(e)) from None
        if len(data) != c.size:
            raise MessageError(f"device returned {len(data)} config bytes for {c.size}")
        return Config(c.offset, c.size, c.flags, bytes(data))

    async def _on_set_config(self, msg: Message) -> None:
        assert isinstance(msg.body, Config)
        try:
            self.device.set_config(msg.body.offset, msg.body.data)
        except ConfigError as e:
            raise MessageError(str(e)) from None

    async def _on_set_backend_req_fd(self, msg: Message) -> None:
        if self.backend_req_fd >= 0:
            os.close(self.backend_req_fd)
        self.backend_req_fd = msg.take_fd(0)

    # ---- queue lifecycle -----------------------------------------------------------------

    def _vq(self, index: int) -> Virtqueue:
        if not 0 <= index < len(self.queues):
            raise MessageError(f"queue index {index} (device has {len(self.queues)})")
        return self.queues[index]

    async def _start_queue(self, vq: Virtqueue) -> None:
        if not vq.size or vq.addrs is None:
            raise MessageError(f"queue {vq.index}: kick before size and addresses")
        if lib.msb_vq_setup(vq.c, self.memory.table, vq.size, *vq.addrs) < 0:
            raise MessageError(f"queue {vq.index}: rings are not inside guest memory")
        vq.generation += 1
        vq.c.last_avail_idx = vq.base
        vq.c.event_idx = bool(self.features & Feature.RING_EVENT_IDX)
        vq.c.indirect = bool(self.features & Feature.RING_INDIRECT_DESC)
        vq.started = True
        if not self.features & Feature.PROTOCOL_FEATURES:
            vq.enabled = True
        await self._sync_queue(vq)

    async def _sync_queue(self, vq: Virtqueue) -> None:
        """Run the ring's serving task iff it is started and enabled."""
        should = vq.started and vq.enabled and vq.kick_fd >= 0
        running = vq.index in self._runners
        if should and not running:
            self._spawn(vq)
        elif running and not should:
            await self._halt(vq)

    def _spawn(self, vq: Virtqueue) -> None:
        assert self._nursery is not None
        r = _Runner()
        self._runners[vq.index] = r
        self.device.queue_started(vq.index, vq)
        self._nursery.start_soon(self._serve_queue, vq, r)

    async def _halt(self, vq: Virtqueue) -> None:
        r = self._runners.pop(vq.index, None)
        if r is None:
            return
        r.stopping = True
        if r.wait_scope is not None:
            r.wait_scope.cancel()
        if r.active:
            self.device.interrupt(vq.index, vq)
        await r.done.wait()
        vq.generation += 1
        self.device.queue_stopped(vq.index, vq)

    async def _stop_queue(self, vq: Virtqueue) -> None:
        await self._halt(vq)
        vq.started = False

    def _forget_queue(self, vq: Virtqueue, keep_config: bool = False) -> None:
        """Drop a stopped queue's fds and rings (GET_VRING_BASE, reset)."""
        for fd in (vq.kick_fd, vq.c.call_fd, vq.c.err_fd):
            _close_watched(fd)
        vq.kick_fd = -1
        vq.c.call_fd = -1
        vq.c.err_fd = -1
        vq.c.desc = ffi.NULL
        vq.c.avail = ffi.NULL
        vq.c.used = ffi.NULL
        if not keep_config:
            vq.size = 0
            vq.addrs = None
            vq.base = 0
            vq.enabled = False

    async def _serve_queue(self, vq: Virtqueue, r: _Runner) -> None:
        kick_fd = vq.kick_fd
        try:
            first = True
            while not r.stopping:
                if not first and not r.again:
                    with trio.CancelScope() as scope:
                        r.wait_scope = scope
                        await trio.lowlevel.wait_readable(kick_fd)
                    r.wait_scope = None
                    if r.stopping:
                        break
                    try:
                        if not os.read(kick_fd, 8):
                            log.warning("queue %d: kick fd reached end of file", vq.index)
                            break
                    except BlockingIOError:
                        continue
                first = False
                if self._paused:
                    with trio.CancelScope() as scope:
                        r.wait_scope = scope
                        while self._paused:
                            await self._resume.wait()
                    r.wait_scope = None
                    if r.stopping:
                        break
                r.again = False
                r.active = True
                r.idle = trio.Event()
                try:
                    with self.memory.pinned():
                        await self.device.handle_kick(vq.index, vq)
                finally:
                    r.active = False
                    r.idle.set()
        except QueueBroken as e:
            log.warning("%s; it is no longer served", e)
        except Exception:
            # a device bug must not take the connection (and every other queue) down;
            # the ring is marked broken and the frontend told through the error eventfd
            log.exception("queue %d: device handler failed; queue no longer served",
                          vq.index)
            if not vq.c.broken:
                vq.c.broken = 1
                if vq.c.err_fd >= 0:
                    with contextlib.suppress(OSError):
                        os.eventfd_write(vq.c.err_fd, 1)
        finally:
            r.done.set()

    @contextlib.asynccontextmanager
    async def _quiesced(self) -> AsyncIterator[None]:
        """No ring's handler runs inside: running ones are interrupted and waited for,
        and each is called again (without waiting for a kick) once this ends. Only for a
        device that serves on threads (``serves_on_threads``); any other handler is on
        this thread and keeps the memory its chains point into until it returns."""
        if not self.device.serves_on_threads:
            yield
            return
        self._paused += 1
        try:
            for index, r in list(self._runners.items()):
                r.again = True
                if r.active:
                    self.quiesce_waits += 1
                    self.device.interrupt(index, self.queues[index])
            for r in list(self._runners.values()):
                while r.active:
                    await r.idle.wait()
            yield
        finally:
            self._paused -= 1
            if not self._paused:
                self._resume.set()
                self._resume = trio.Event()

    def _memory_changed(self) -> None:
        """Re-point running rings at the new memory table, then free the old one."""
        for vq in self.queues:
            vq.generation += 1
            if vq.c.desc != ffi.NULL and vq.addrs is not None:
                if lib.msb_vq_remap(vq.c, self.memory.table, *vq.addrs) < 0:
                    log.warning("queue %d: rings left guest memory; queue broken", vq.index)
                    vq.c.broken = 1
                    vq.c.mem = self.memory.table
        self.memory.collect()

    def _teardown(self) -> None:
        for vq in self.queues:
            if vq.index in self._runners:
                self._runners.pop(vq.index)
                with contextlib.suppress(Exception):
                    self.device.queue_stopped(vq.index, vq)
            vq.started = False
            self._forget_queue(vq)
        if self.backend_req_fd >= 0:
            os.close(self.backend_req_fd)
            self.backend_req_fd = -1
        self.memory.close()
        self.conn.close()

    def statistics(self) -> dict[str, object]:
        return {"messages": self.messages, "errors": self.errors,
                "memory": self.memory.statistics(),
                "queues": [vq.statistics() for vq in self.queues]}


def _take_eventfd(msg: Message) -> int:
    """The eventfd a SET_VRING_KICK/CALL/ERR brings, or -1 for none. Only an eventfd is
    taken: the kick fd is waited on with epoll (a regular file or a memfd there fails
    the queue's task with EPERM) and the call/err fds are written 8 bytes at a time (to
    a file that would be data)."""
    assert isinstance(msg.body, VringFile)
    new = msg.take_fd(0) if msg.body.has_fd else -1
    if new >= 0 and not _is_eventfd(new):
        os.close(new)
        raise MessageError("a vring kick/call/err fd must be an eventfd")
    return new


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def _close_watched(fd: int) -> None:
    """Close an fd a queue task may have waited on: trio is told first, or its epoll
    registration outlives the fd and a later fd with the same number fails (EBADF)."""
    if fd >= 0:
        trio.lowlevel.notify_closing(fd)
        os.close(fd)


def _name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return f"request {request}"


# ---- entry points ------------------------------------------------------------------------


async def serve(device: VhostUserDevice, sock: trio.socket.SocketType | Connection) -> Backend:
    """Serve one connected frontend until it disconnects; returns the finished Backend
    (its statistics stay readable)."""
    conn = sock if isinstance(sock, Connection) else Connection(sock)
    backend = Backend(device, conn)
    await backend.run()
    return backend


async def listen(path: str) -> trio.socket.SocketType:
    """A listening Unix socket at ``path`` (replacing a stale socket file)."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.exists(path) and not os.path.isdir(path):
            import stat
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
    s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await s.bind(path)
        s.listen(1)
    except BaseException:
        s.close()
        raise
    return s


async def accept_one(listener: trio.socket.SocketType) -> Connection:
    conn, _ = await listener.accept()
    return Connection(conn)


async def serve_path(device: VhostUserDevice, path: str,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> Backend:
    """virtiofsd's --socket-path: listen, signal readiness, serve ONE frontend, return."""
    listener = await listen(path)
    try:
        task_status.started()
        conn = await accept_one(listener)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    return await serve(device, conn)


async def serve_fd(device: VhostUserDevice, fd: int) -> Backend:
    """virtiofsd's --fd: a listening socket (accept one) or an already connected one."""
    adopted = Connection.from_fd(fd)
    if not adopted.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return await serve(device, adopted)
    try:
        conn = await accept_one(adopted.sock)
    finally:
        adopted.close()
    return await serve(device, conn)
