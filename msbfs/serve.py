"""``msbfs serve``: the virtio-fs daemon, a drop-in for virtiofsd.

It accepts virtiofsd's command lines, both the Rust daemon's (``--shared-dir``,
``--cache=``, ``--sandbox=``...) and the C daemon's ``-o source=DIR,cache=none,xattr``
form, plus our own policy options (``--volume``, ``--noexec``, ``--nosuid``, ``--nodev``,
``--quota``): ``msbfs.serve_options`` parses them, ``msbfs.serve_socket`` binds or
adopts the socket. Start-up order matters and is fixed here: resolve the source and
take the volume's serving lock, bind or adopt the vhost-user socket, start the handshake
prelude, import everything and build the tree, stop the prelude, then enter the sandbox
(everything needed afterwards is an fd by then), then serve on trio until the frontend
disconnects (exit 0, like virtiofsd) or SIGTERM/SIGINT (exit 0).

The prelude (``vhost.prelude``) is why QEMU does not wait for our start-up: QEMU blocks
in device realize until the backend has answered its first questions (features, queue
count, owner), and the imports and the tree take a few hundred ms. A thread answers those
from values known once the options are parsed, while the main thread starts up; it takes
nothing a guest controls (no memory table, no ring), and the backend replays what it took
and checks each answer (``vhost.replay``). Anything that must fail before QEMU gets going
fails before it starts: options, the source (a missing shared directory, a volume in
use), the socket.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from msbfs import confine
from msbfs.errors import MsbfsError, ServeError
from msbfs.serve_options import (
    LOG_LEVELS,
    ServeOptions,
    add_arguments,
    confinement,
    id_maps,
    options_from_args,
    print_capabilities,
)
from msbfs.serve_socket import is_listening, open_socket
from msbfs.sources import Source, open_source

if TYPE_CHECKING:
    from vhost.prelude import Prelude, Record

log = logging.getLogger("msbfs.serve")


# ---- start-up pieces -------------------------------------------------------------------------

def setup_logging(o: ServeOptions) -> None:
    root = logging.getLogger()
    root.setLevel(LOG_LEVELS[o.log_level])
    if o.syslog:
        # Only here (a daemon QEMU waits for imports nothing it does not use); still
        # before the sandbox, after which nothing can be imported.
        from logging.handlers import SysLogHandler

        try:
            handler: logging.Handler = SysLogHandler(address="/dev/log")
        except OSError:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("msbfs-serve[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("msbfs serve: %(levelname)s %(message)s"))
    root.handlers[:] = [handler]


# ---- running -------------------------------------------------------------------------------

def run(o: ServeOptions) -> int:
    """Serve until the frontend leaves (or SIGTERM). Returns the exit status."""
    setup_logging(o)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a
    # daemon that stopped answering is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    src = open_source(volume=o.volume, path=o.shared_dir, quota_mib=o.quota_mib,
                      quota_inodes=o.quota_inodes)
    try:
        return _run(o, src)
    finally:
        src.close()


def _start_prelude(o: ServeOptions, sock: socket.socket) -> Prelude:
    from vhost._native import lib as vhost_lib

    from vhost.prelude import Prelude, realize_answers

    # VirtioFsDevice's: the hiprio queue and the request queues, no feature bits of its
    # own (the backend's replay checks every answer against the device's).
    answers = realize_answers(num_queues=1 + o.num_request_queues,
                              max_mem_slots=vhost_lib.MSB_MAX_MEMREGS)
    return Prelude(sock, answers).start()


def _run(o: ServeOptions, src: Source) -> int:
    # What can refuse to start does so before QEMU hears from us.
    jail = confinement(o)
    confine.set_fd_limit(jail.rlimit_nofile)  # before the tree sizes its fd cache on it
    sock = open_socket(o)
    prelude = _start_prelude(o, sock)
    try:
        tree, writeback = _build_tree(o, src)
    except BaseException:
        prelude.finish().close()
        raise
    # The prelude's thread ends here, before the sandbox: it forks (a thread would not
    # follow) and capabilities are per thread.
    record = prelude.finish()
    log.debug("prelude: took %d messages, stopped (%s)", len(record.taken),
              prelude.stopped_by)
    try:
        return _serve(o, jail, src, sock, tree, writeback, record)
    finally:
        record.close()


def _build_tree(o: ServeOptions, src: Source) -> tuple[Any, bool]:
    # Everything the daemon will ever import is imported now: after the sandbox the
    # Python installation is out of reach.
    import trio
    import trio.lowlevel
    import trio.to_thread  # noqa: F401

    from msbfs.tree import Tree
    from msbfs.virtiofs import VirtioFsDevice  # noqa: F401
    from vhost import backend, replay  # noqa: F401

    policy = o.flags.policy(quota_bytes=src.quota_bytes, quota_inodes=src.quota_inodes)
    # One answer for the tree and the session: a tree that drops O_APPEND for a kernel
    # that does not append itself (cache=never) would write appends at stale offsets.
    writeback = o.writeback and o.cache != "never"
    uid_map, gid_map = id_maps(o)
    if os.geteuid() == 0:
        # Root's supplementary groups (often [0]) are nobody's: a request never acts
        # with them (creds.py: a caller's unknown groups are none). Without them a
        # switch to a caller changes fsuid/fsgid only, no setgroups credential copy per
        # request, and the C path can answer ACCESS as the caller (fuse_names.c).
        os.setgroups([])
    _wait_for_gate()
    tree = Tree(src.path, policy, cache=o.cache, xattr=o.xattr, posix_acl=o.posix_acl,
                announce_submounts=o.announce_submounts, writeback=writeback,
                xattrmap=o.xattrmap, uid_map=uid_map, gid_map=gid_map, usage=src.usage)
    # Start-up is done: the heap it freed goes back to the system (issue #11). Compiling
    # our modules where no .pyc can be written left ~2 MiB of free but resident heap.
    from msbfs._native import lib

    lib.msb_malloc_trim()
    return tree, writeback


#: Test seam (tests/test_serve_prelude.py): an inherited fd the daemon reads one byte
#: from before it builds the tree, so a test can hold it there and see the handshake
#: answered meanwhile. Unset in every real start.
GATE_ENV = "MSBFS_SERVE_TEST_GATE_FD"


def _wait_for_gate() -> None:
    fd = os.environ.pop(GATE_ENV, None)
    if fd is not None:
        os.read(int(fd), 1)
        os.close(int(fd))


def _serve(o: ServeOptions, jail: confine.Confinement, src: Source, sock: socket.socket,
           tree: Any, writeback: bool, record: Record) -> int:
    import trio

    from msbfs.virtiofs import VirtioFsDevice

    if threading.active_count() != 1:
        raise ServeError(f"{threading.active_count()} threads before the sandbox (one "
                         "expected: it would not confine the others)")
    # With the namespace sandbox only a forked child returns (pid 1 of its namespace);
    # the process outside supervises it and removes the socket file it can no longer see.
    confine.confine(jail, src.path, remove_on_exit=o.socket_path or None,
                    use_syslog=o.syslog)
    for item in o.ignored:
        log.debug("ignoring -o %s", item)
    device = VirtioFsDevice(tree, tag=o.tag, num_request_queues=o.num_request_queues,
                            writeback=writeback, posix_acl=o.posix_acl,
                            posix_lock=o.posix_lock, flock=o.flock,
                            read_helpers=o.thread_pool_size)
    log.info("serving %s (tag %s) on %s", o.volume or src.path, o.tag,
             o.socket_path or f"fd {o.fd}")
    try:
        trio.run(_frontend_sessions, device, sock, o.keep_serving, record)
    finally:
        log.info("statistics: %s", " ".join(f"{k}={v}" for k, v in device.statistics().items()))
        log.debug("slow path by opcode: %s", device.slow_opcodes())
        tree.close()
        sock.close()
        if o.sandbox == "none":
            # Sandboxed, the path is out of reach (or, relative, would name a file in the
            # share): the namespace sandbox's supervisor removes it.
            _remove_socket(o)
    return 0


def _remove_socket(o: ServeOptions) -> None:
    if o.socket_path:
        try:
            os.unlink(o.socket_path)
        except OSError:
            pass


async def _frontend_sessions(device: Any, sock: socket.socket, keep_serving: bool,
                             record: Record | None = None) -> None:
    # One vhost-user session per frontend connection (the accept loop), until a signal.
    # The first is the prelude's, if a frontend connected while we started.
    import trio

    from vhost import backend
    from vhost.replay import ReplayConnection

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                async for sig in signals:
                    log.info("%s: stopping", signal.Signals(sig).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            tsock = trio.socket.from_stdlib_socket(sock)
            while True:
                if record is not None and record.conn is not None:
                    conn = ReplayConnection(trio.socket.from_stdlib_socket(record.conn),
                                            record.taken)
                    record.conn, record.taken = None, []  # the connection's now
                elif is_listening(sock):
                    conn, _ = await tsock.accept()
                else:
                    conn = tsock
                log.info("frontend connected")
                try:
                    await backend.serve(device, conn)
                finally:
                    if conn is not tsock:
                        conn.close()
                    device.end_session()
                log.info("frontend disconnected")
                if not keep_serving or not is_listening(sock):
                    break
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None, prog: str = "msbfs-virtiofsd") -> int:
    """The drop-in entry: virtiofsd's argv exactly (``msbfs-virtiofsd``)."""
    p = argparse.ArgumentParser(prog=prog, description="virtio-fs daemon (msbfs)")
    add_arguments(p)
    p.add_argument("-V", "--version", action="store_true")
    a = p.parse_args(argv)
    if a.version:
        print("msbfs-virtiofsd 0.1.0 (FUSE 7.38)")
        return 0
    return handle(a)


def handle(a: argparse.Namespace) -> int:
    if a.print_capabilities:
        return print_capabilities()
    try:
        return run(options_from_args(a))
    except MsbfsError as e:
        print(f"msbfs serve: {e}", file=sys.stderr)
        return 1
