"""The guest image: Debian's kernel and an initramfs of busybox, ``/init`` (``init.sh``)
and the ``msb-agent`` (``agent.c``, the guest side of ``msbfs/launcher/agent.py``).
``msbfs.guest.build.build`` makes it into the per-user cache (``msbfs guest build``);
``ensure_image`` there is what ``msbfs run`` calls: built on first use, rebuilt only
when an input changed. Nothing is re-exported here, so ``msbfs.guest.build`` stays the
module (a re-exported ``build`` function would shadow it)."""
