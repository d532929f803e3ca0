"""The device interface: what a vhost-user device (virtio-fs, an echo device, a block
device...) implements on top of the generic backend in ``vhost.backend``.

The backend owns the protocol, memory and rings; a device only states its features,
config space and queue count, and serves a queue when it is kicked:

    class Echo(VhostUserDevice):
        num_queues = 1
        async def handle_kick(self, index, vq):
            while chains := vq.pop(64):
                for c in chains:
                    c.write(c.read())
                vq.push_many([(c.head, min(c.out_len, c.in_len)) for c in chains])
                vq.notify()

Rules for ``handle_kick``: pop until ``pop()`` returns fewer than asked (the backend
calls again only on the next kick); push every popped chain once; call ``notify()``
after pushing. Chains stay valid while the handler runs (guest memory is pinned); a
device that keeps chains beyond its handler must hold ``backend.memory.pinned()``.
``vq.pop`` raises ``QueueBroken`` when the guest broke the ring: let it propagate
(the backend stops serving that queue) or catch it and return.

A handler may also keep serving past one kick, on a thread of its own that waits for
kicks itself (msbfs's virtio-fs device does). It must then return soon after
``interrupt`` (from the backend's thread, having pushed every chain it popped): the
backend calls it before stopping the ring and before changing anything a handler uses
(guest memory, ring addresses, call/err fds), waits for the return, and calls
``handle_kick`` again afterwards if the ring still runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vhost.virtqueue import Virtqueue


class ConfigError(Exception):
    """Raised by get_config/set_config for an access the device refuses."""


class VhostUserDevice:
    """Subclass and override. Defaults: no config space, no extra features."""

    #: number of virtqueues, including any control/hiprio queue
    num_queues: int = 1
    #: how many chains Virtqueue.pop() may return at once (its reusable C buffer)
    pop_batch: int = 64
    #: whether ``handle_kick`` runs ring work on other threads (see ``interrupt``): the
    #: backend then quiesces the rings before changing what they use. A handler on the
    #: trio thread runs between checkpoints only, and the chains it holds keep their
    #: (retired) memory until it returns, so it is never waited for.
    serves_on_threads: bool = False

    def device_features(self) -> int:
        """Device-specific virtio feature bits (VERSION_1, INDIRECT_DESC, EVENT_IDX
        and PROTOCOL_FEATURES are added by the backend)."""
        return 0

    def protocol_features(self) -> int:
        """Extra VHOST_USER_PROTOCOL_F_* bits beyond what the backend offers itself
        (MQ, REPLY_ACK, BACKEND_REQ, RESET_DEVICE, CONFIGURE_MEM_SLOTS). A device with
        its own config space adds CONFIG here."""
        return 0

    def get_config(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of the virtio config space."""
        raise ConfigError("device has no config space")

    def set_config(self, offset: int, data: bytes) -> None:
        raise ConfigError("device config space is read-only")

    def queue_started(self, index: int, vq: Virtqueue) -> None:
        """The ring is set up, started and enabled: kicks will be delivered."""

    def queue_stopped(self, index: int, vq: Virtqueue) -> None:
        """The ring was stopped (GET_VRING_BASE), disabled, reset, or the frontend left.
        No more pops or pushes on it until queue_started again."""

    def reset(self) -> None:
        """RESET_DEVICE / RESET_OWNER: forget per-session state."""

    def interrupt(self, index: int, vq: Virtqueue) -> None:
        """Ask queue ``index``'s running ``handle_kick`` to return soon (called on the
        backend's thread while it runs). Handlers that return once drained need
        nothing here."""

    async def handle_kick(self, index: int, vq: Virtqueue) -> None:
        """The driver made buffers available on queue ``index``: pop, serve, push,
        notify. Also called once when a queue starts (buffers may predate the kick)."""
        raise NotImplementedError
