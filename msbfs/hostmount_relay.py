"""The host mount's C fast path: the requests csrc/ can answer never reach pyfuse3.

pyfuse3 costs 25-45 us of daemon CPU per request before our handler runs (its task
hand-off, libfuse's dispatch, Cython's conversions); a virtio-fs request answered in C
costs 1-3 us. The C opcode handlers (csrc/fuse_meta.h: LOOKUP, GETATTR, ...) answer a
FUSE request from a buffer whatever carries it, so the host mount uses them too: the
relay (csrc/devfuse.h) takes the /dev/fuse connection from libfuse after pyfuse3
mounted, answers what C can, and hands libfuse everything else through a socketpair
that behaves like /dev/fuse (one message per read and per write). pyfuse3 keeps the
mount, its loop and every other request, unchanged.

What C answers here is ``OPCODES``; the rest stays with pyfuse3 and ``HostOps``:
ACCESS (the host caller's supplementary groups, which FUSE does not send, come from
/proc) and the rarer opcodes. C lists a small directory (``small_dir``: with attributes,
as ``HostOps`` does) and a larger one plain, through any handle Python has not read; a
listing C hands back through a handle C opened, Python lists plain. Files: C opens, reads, writes and releases them unless libfuse
negotiated HANDLE_KILLPRIV (then ``HostOps`` clears set-id bits on writes, truncates and
chowns, by its opener's rights: SETATTR is Python's then too) or a caller other than root
truncates on open (csrc/devfuse.c ``python_rule``).
A handle ``HostOps`` opened stays its own to release (``msb_handles_mark_python``): it
keeps its opener for the writes. A file C opens or creates on the root's device carries
FOPEN_NOFLUSH when FLUSH does nothing there (``Tree.flush_is_nothing``: the kernel keeps
this mount's record locks, the host filesystem has no flush of its own): its close costs
no round trip, as bindfs's closes do (its kernel sends it no FLUSH).

While the relay runs, each pyfuse3 handler holds the inode table and a grace section
(``section``: csrc/devfuse.h's msb_relay_py_begin/end), as the virtio-fs slow path does:
a FORGET C answers meanwhile on a reader thread never closes an fd the handler uses.

``MSBFS_HOST_RELAY=0`` keeps every request in pyfuse3 (benchmarks, differential tests).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from typing import Any

import pyfuse3

from msbfs._native import ffi, lib
from msbfs.fastmeta import CMetadata
from msbfs.fuse.abi import Opcode, opcode_name
from msbfs.hostmount_entry import APART
from msbfs.tree.api import TreeOps
from msbfs.tree.tree import Tree
from msbfs.tree.types import FOPEN_NOFLUSH

log = logging.getLogger(__name__)

#: What C answers on the host mount (see the module docstring for what it leaves).
OPCODES = (Opcode.LOOKUP, Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.GETATTR,
           Opcode.STATFS, Opcode.FLUSH, Opcode.UNLINK, Opcode.RMDIR, Opcode.MKDIR,
           Opcode.OPEN, Opcode.CREATE, Opcode.READ, Opcode.WRITE, Opcode.RELEASE,
           Opcode.SETATTR, Opcode.GETXATTR, Opcode.LISTXATTR, Opcode.OPENDIR,
           Opcode.READDIRPLUS, Opcode.RELEASEDIR, Opcode.RENAME, Opcode.RENAME2,
           Opcode.READLINK, Opcode.SYMLINK, Opcode.LINK)

#: Operations pyfuse3 has no callback for, by the name it would have: libfuse answers
#: them ENOSYS, and the relay does the same without the trip (the kernel sends an IOCTL
#: for every isatty() of a file: Python's open() asks once per file). Checked against
#: the installed pyfuse3 at start, so a pyfuse3 that gains the callback gets them.
UNOFFERED = {Opcode.IOCTL: "ioctl"}

#: Reader threads on the connection: one reads and answers at a time (a single client's
#: requests stay on one warm thread), the other takes over when it stays on one request
#: (csrc/devfuse.h), so a request blocked on a slow or stopped filesystem holds up no other.
READERS = 2
#: Bytes per read: at least libfuse's buffer (1 MiB of WRITE data and its headers), as
#: the kernel refuses a read too small for max_write.
BUFSIZE = (1 << 20) + (64 << 10)
#: Socket buffers wanted (a message must fit one: a 1 MiB WRITE forwarded whole).
SOCKET_BUFFER = 4 * BUFSIZE


def enabled() -> bool:
    return os.environ.get("MSBFS_HOST_RELAY", "1") != "0"


def fuse_fds() -> set[int]:
    """This process's open /dev/fuse fds."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                out.add(int(name))
    return out


def _socket_buffers(*socks: socket.socket) -> int:
    """Raise both ends' buffers as far as allowed; the largest message they carry."""
    for s in socks:
        for force, plain in ((getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
                             (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF)):
            try:
                s.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except OSError:  # not root: what net.core.wmem_max allows
                s.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    # A datagram larger than the sender's buffer less 32 bytes is EMSGSIZE (af_unix).
    return min(s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) for s in socks) - 32


class Relay:
    """The relay of one mount: ``install`` after ``pyfuse3.init``, ``close`` before
    ``pyfuse3.close``."""

    def __init__(self, tree: Tree, fuse_fd: int, *, small_dir: int = 0,
                 readers: int = READERS) -> None:
        self.meta = CMetadata(tree.c_handles(), tree, lambda flags: flags, attach=False)
        if not self.meta.available:
            raise ValueError("this tree has no C path")
        if tree.flush_is_nothing():
            # The kernel keeps this mount's record locks (pyfuse3 has no lock callbacks):
            # a file C opens on such a root is closed without a FLUSH round trip.
            lib.msb_meta_open(self.meta.c).root_file_flags = FOPEN_NOFLUSH
        self._fuse_fd = fuse_fd
        #: written once when the connection ends (unmounted from outside)
        self.ended_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        dev = os.dup(fuse_fd)
        ours, libs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        msg_max = _socket_buffers(ours, libs)
        r = lib.msb_relay_new(dev, ours.fileno(), self.meta.c, BUFSIZE, msg_max, self.ended_fd)
        if r == ffi.NULL:
            os.close(dev)
            ours.close()
            libs.close()
            os.close(self.ended_fd)
            raise MemoryError("relay")
        ours.detach()  # the relay owns it (and dev) now
        self._r = r
        for op in OPCODES:
            lib.msb_relay_allow(r, op, 1)
        lib.msb_relay_set_small_dir(r, small_dir)
        for op, callback in UNOFFERED.items():
            if not hasattr(pyfuse3.Operations, callback):
                lib.msb_relay_enosys(r, op)
        # libfuse's fd number now reads and writes the socket; the connection is ours.
        os.dup2(libs.fileno(), fuse_fd, inheritable=False)
        libs.close()
        err = lib.msb_relay_start(r, readers)
        if err < 0:
            self.close()
            raise OSError(-err, f"relay threads: {os.strerror(-err)}")
        #: the inode table a pyfuse3 handler holds while it runs (``section``)
        self.inodes = self.meta.inodes

    def close(self) -> None:
        """Stop the threads and give the connection back to libfuse's fd number, so that
        pyfuse3's unmount and close find /dev/fuse there as they always did."""
        r, self._r = self._r, ffi.NULL
        if r == ffi.NULL:
            return
        lib.msb_relay_stop(r)
        m = self.meta
        log.debug("host mount relay: %s, C: %s %s %s %s %s", self._stats(r), m.statistics(),
                  m.names_statistics(), m.open_statistics(), m.setattr_statistics(),
                  m.xattr_statistics())
        dev = lib.msb_relay_take_dev(r)
        if dev >= 0:
            os.dup2(dev, self._fuse_fd, inheritable=False)
            os.close(dev)
        lib.msb_relay_free(r)
        os.close(self.ended_fd)

    def statistics(self) -> dict[str, int]:
        """What the relay did so far (empty once closed)."""
        return {} if self._r == ffi.NULL else self._stats(self._r)

    @staticmethod
    def _stats(r: Any) -> dict[str, int]:
        s = ffi.new("struct msb_relay_stats *")
        lib.msb_relay_stats(r, s)
        out = {k: int(getattr(s, k)) for k in ("answered", "forwarded", "replies",
                                                "send_errors", "write_errors", "clamped", "reads",
                                                "writes", "takeovers")}
        for op, n in enumerate(s.forwarded_op):
            if n:
                out[f"forwarded_{opcode_name(op)}"] = int(n)
        out["max_write"] = int(lib.msb_relay_max_write(r))
        out["minor"] = int(lib.msb_relay_minor(r))
        out["init_flags"] = int(lib.msb_relay_init_flags(r))
        return out


def install(tree: TreeOps, before: set[int], *, small_dir: int = 0) -> Relay | None:
    """The relay for the mount pyfuse3.init just made (its /dev/fuse fd is the one that
    was not open ``before``), or None where it does not apply: turned off, a tree with no
    C path (an id map, a wrapper), a pyfuse3 whose entries cannot carry the tree's node
    ids apart from st_ino (C's replies would then differ from pyfuse3's)."""
    if not enabled() or type(tree) is not Tree or not APART:
        return None
    new = fuse_fds() - before
    if len(new) != 1:
        log.warning("host mount: cannot tell libfuse's /dev/fuse fd (%s); no C path", new)
        return None
    try:
        return Relay(tree, new.pop(), small_dir=small_dir)
    except ValueError:
        return None
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EINVAL, errno.EAGAIN):
            log.warning("host mount: no C path: %s", e)
            return None
        raise

