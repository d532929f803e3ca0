"""A test device: every chain's readable bytes are copied into its writable part.

Used by the vhost tests and ``tools/bench/vhost_echo.py``; also runnable as a daemon
(``python -m vhost.echo --socket-path PATH [--queues N]``) to drive it from another
process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from vhost.backend import serve_path
from vhost.device import ConfigError, VhostUserDevice
from vhost.messages import ProtocolFeature
from vhost.virtqueue import Virtqueue


class EchoDevice(VhostUserDevice):
    """Echo on every queue; a 16-byte config space holding a settable tag."""

    def __init__(self, num_queues: int = 1, pop_batch: int = 64) -> None:
        self.num_queues = num_queues
        self.pop_batch = pop_batch
        self.config = bytearray(16)
        self.started: set[int] = set()
        self.served = 0
        self.resets = 0

    def protocol_features(self) -> int:
        return ProtocolFeature.CONFIG

    def get_config(self, offset: int, size: int) -> bytes:
        if offset + size > len(self.config):
            raise ConfigError(f"config [{offset}, +{size}) past {len(self.config)} bytes")
        return bytes(self.config[offset:offset + size])

    def set_config(self, offset: int, data: bytes) -> None:
        if offset + len(data) > len(self.config):
            raise ConfigError("config write out of range")
        self.config[offset:offset + len(data)] = data

    def queue_started(self, index: int, vq: Virtqueue) -> None:
        self.started.add(index)

    def queue_stopped(self, index: int, vq: Virtqueue) -> None:
        self.started.discard(index)

    def reset(self) -> None:
        self.resets += 1

    async def handle_kick(self, index: int, vq: Virtqueue) -> None:
        while True:
            chains = vq.pop()
            if not chains:
                return
            used = []
            for c in chains:
                used.append((c.head, c.write(c.read())))
            vq.push_many(used)
            vq.notify()
            self.served += len(chains)
            if len(chains) < self.pop_batch:
                return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vhost.echo", description=__doc__)
    p.add_argument("--socket-path", required=True)
    p.add_argument("--queues", type=int, default=1)
    p.add_argument("--ready-fd", type=int, default=-1,
                   help="write one byte here once the socket listens")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    async def run() -> None:
        async with trio.open_nursery() as n:
            await n.start(serve_path, EchoDevice(args.queues), args.socket_path)
            if args.ready_fd >= 0:
                os.write(args.ready_fd, b"1")
                os.close(args.ready_fd)

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
