"""The guest image: Debian's kernel and an initramfs of busybox, ``/init`` (``init.sh``)
and the ``msb-agent`` (``agent.c``, the guest side of ``msbfs/launcher/agent.py``).
``build`` makes it into the per-user cache (``msbfs guest build``), ``ensure_image``
is what ``msbfs run`` calls: built on first use, rebuilt only when an input changed."""

from msbfs.guest.build import BuildError, build, ensure_image

__all__ = ["BuildError", "build", "ensure_image"]
