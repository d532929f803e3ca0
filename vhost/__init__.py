"""A reusable vhost-user backend (the device side of QEMU's vhost-user protocol).

Layers, each usable alone:

- ``vhost.messages``   wire format, sans-I/O: bytes + fds in, typed messages out.
- ``vhost.connection`` the trio Unix-socket connection with SCM_RIGHTS fd passing.
- ``vhost.memory``     guest memory regions mapped locally and the C memory table.
- ``vhost.virtqueue``  one split virtqueue (C in csrc/virtq.c) with Python helpers.
- ``vhost.device``     what a device implements (``VhostUserDevice``).
- ``vhost.backend``    the protocol state machine: ``serve(device, sock)``.
- ``vhost.frontend``   the role QEMU plays (the vhost-user frontend protocol), for tests
                       and benchmarks without a VM; it drives:
- ``vhost.driver``     the virtio driver's side of split rings (a guest kernel's role).
- ``vhost.guest_ram``  memfd-backed guest memory with guard pages, for the two above.
- ``vhost.echo``       a test device (readable bytes echoed into the writable part).

The C lives in vhost's own extension, ``vhost._native`` (csrc/virtq.c, built by
csrc/build_vhost.py); the package imports nothing from msbfs. Other C units that
compile csrc/virtq.h can work on a queue's ring: ``Virtqueue.ring_address`` is the
address of its ``struct msb_vq`` (see vhost/virtqueue.py for the rules).
"""

from vhost.device import VhostUserDevice
from vhost.virtqueue import Chain, Virtqueue

__all__ = ["Chain", "VhostUserDevice", "Virtqueue"]
