"""``msbfs serve``: the virtio-fs daemon, a drop-in for virtiofsd.

It accepts virtiofsd's command lines, both the Rust daemon's (``--shared-dir``,
``--cache=``, ``--sandbox=``...) and the C daemon's ``-o source=DIR,cache=none,xattr``
form, plus our own policy options (``--volume``, ``--noexec``, ``--nosuid``, ``--nodev``,
``--quota``): ``msbfs.serve_options`` parses them, ``msbfs.serve_socket`` binds or
adopts the socket. Start-up order matters and is fixed here: resolve the source and
take the volume's serving lock, bind or adopt the vhost-user socket, build the tree, then
enter the sandbox (everything needed afterwards is an fd by then), then serve on trio
until the frontend disconnects (exit 0, like virtiofsd) or SIGTERM/SIGINT (exit 0).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from msbfs import confine
from msbfs.errors import MsbfsError
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

log = logging.getLogger("msbfs.serve")


# ---- start-up pieces -------------------------------------------------------------------------

def setup_logging(o: ServeOptions) -> None:
    root = logging.getLogger()
    root.setLevel(LOG_LEVELS[o.log_level])
    if o.syslog:
        try:
            handler: logging.Handler = logging.handlers.SysLogHandler(address="/dev/log")
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


def _run(o: ServeOptions, src: Source) -> int:
    # Everything the daemon will ever import is imported now: after the sandbox the
    # Python installation is out of reach.
    import trio
    import trio.lowlevel
    import trio.to_thread

    from msbfs.tree import Tree
    from msbfs.virtiofs import VirtioFsDevice
    from vhost import backend  # noqa: F401

    shared_dir = src.path
    sock = open_socket(o)
    jail = confinement(o)
    confine.set_fd_limit(jail.rlimit_nofile)  # before the tree sizes its fd cache on it
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
    tree = Tree(shared_dir, policy, cache=o.cache, xattr=o.xattr, posix_acl=o.posix_acl,
                announce_submounts=o.announce_submounts, writeback=writeback,
                xattrmap=o.xattrmap, uid_map=uid_map, gid_map=gid_map, usage=src.usage)
    # With the namespace sandbox only a forked child returns (pid 1 of its namespace);
    # the process outside supervises it and removes the socket file it can no longer see.
    confine.confine(jail, shared_dir, remove_on_exit=o.socket_path or None,
                    use_syslog=o.syslog)
    for item in o.ignored:
        log.debug("ignoring -o %s", item)
    device = VirtioFsDevice(tree, tag=o.tag, num_request_queues=o.num_request_queues,
                            writeback=writeback, posix_acl=o.posix_acl,
                            posix_lock=o.posix_lock, flock=o.flock,
                            read_helpers=o.thread_pool_size)
    log.info("serving %s (tag %s) on %s", o.volume or shared_dir, o.tag,
             o.socket_path or f"fd {o.fd}")
    try:
        trio.run(_frontend_sessions, device, sock, o.keep_serving)
    finally:
        log.info("statistics: %s", " ".join(f"{k}={v}" for k, v in device.statistics().items()))
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


async def _frontend_sessions(device: Any, sock: socket.socket, keep_serving: bool) -> None:
    # One vhost-user session per frontend connection (the accept loop), until a signal.
    import trio

    from vhost import backend

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
                if is_listening(sock):
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
