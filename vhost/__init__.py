"""A reusable vhost-user backend (the device side of QEMU's vhost-user protocol).

Layers, each usable alone:

- ``vhost.messages``   wire format, sans-I/O: bytes + fds in, typed messages out.
- ``vhost.connection`` the trio Unix-socket connection with SCM_RIGHTS fd passing.
- ``vhost.memory``     guest memory regions mapped locally and the C memory table.
- ``vhost.virtqueue``  one split virtqueue (C in csrc/virtq.c) with Python helpers.
- ``vhost.device``     what a device implements (``VhostUserDevice``).
- ``vhost.backend``    the protocol state machine: ``serve(device, sock)``.
- ``vhost.frontend``   the role QEMU plays, for tests and benchmarks without a VM.
- ``vhost.echo``       a test device (readable bytes echoed into the writable part).

The C side (csrc/virtq.h) is usable from other C units: ``Virtqueue.c`` is the
``struct msb_vq *`` of a queue.
"""

from vhost.device import VhostUserDevice
from vhost.virtqueue import Chain, Virtqueue

__all__ = ["Chain", "VhostUserDevice", "Virtqueue"]
