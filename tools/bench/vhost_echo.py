"""Echo-device round trips through the in-tree vhost-user frontend, and the C
pop+push cost per descriptor.

    python -m tools.bench.vhost_echo [--requests N] [--c-rounds N]

Reports, one line each:
- in-process (frontend and backend share one trio loop and one core): batched round
  trips per second on one queue and on four, and unbatched (one request in flight);
- cross-process (``python -m vhost.echo`` in a subprocess, so each side has a core):
  the same three figures;
- csrc/test_virtq.c --bench built with -O2: ns per descriptor for pop+push in a tight
  C loop, batched (16 per call) and one at a time.
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from tests.plugins.vhost import start_vhost_pair
from vhost.driver import FrontendQueue
from vhost.echo import EchoDevice
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = 256


async def _batched(q: FrontendQueue, total: int) -> None:
    data = os.urandom(PAYLOAD)
    batch = q.size // 2
    done = 0
    while done < total:
        n = min(batch, total - done)
        pend = [q.post([data], [PAYLOAD]) for _ in range(n)]
        q.kick()
        for p in pend:
            c = await q.wait(p)
            if c.used_len != PAYLOAD:
                raise RuntimeError("echo mismatch")
        done += n


async def _single(q: FrontendQueue, total: int) -> None:
    data = os.urandom(PAYLOAD)
    for _ in range(total):
        p = q.post([data], [PAYLOAD])
        q.kick()
        await q.wait(p)


async def _measure(fe: Frontend, queues: int, total: int, batched: bool) -> float:
    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for i in range(queues):
            n.start_soon(_batched if batched else _single, fe.queues[i], total // queues)
    return total / (time.perf_counter() - t0)


async def _suite(fe: Frontend, total: int, label: str) -> None:
    rps1 = await _measure(fe, 1, total, True)
    rps4 = await _measure(fe, 4, total, True)
    single = await _measure(fe, 1, total // 10, False)
    print(f"{label}: batched 1 queue {rps1:,.0f} req/s; batched 4 queues {rps4:,.0f} req/s; "
          f"unbatched 1 queue {single:,.0f} req/s  ({PAYLOAD}-byte echo)")


async def in_process(total: int) -> None:
    async with start_vhost_pair(EchoDevice(num_queues=4, pop_batch=128), [256] * 4,
                                ram=GuestRam([(0, 32 << 20)]), slot_size=1024) as (fe, _):
        await _suite(fe, total, "in-process")


async def cross_process(total: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "echo.sock")
        r, w = os.pipe()
        proc = subprocess.Popen([sys.executable, "-m", "vhost.echo", "--socket-path", path,
                                 "--queues", "4", "--ready-fd", str(w)], pass_fds=[w],
                                cwd=ROOT)
        os.close(w)
        try:
            await trio.lowlevel.wait_readable(r)
            os.read(r, 1)
            fe = await Frontend.connect(path, GuestRam([(0, 32 << 20)]))
            await fe.handshake([256] * 4, slot_size=1024)
            await _suite(fe, total, "cross-process")
            await fe.close()
            proc.wait(30)
        finally:
            os.close(r)
            if proc.poll() is None:
                proc.kill()


def eventfd_ping_pong(rounds: int = 2000) -> None:
    """The floor under cross-process figures: two processes bouncing eventfds."""
    import select
    a, b = os.eventfd(0), os.eventfd(0)
    pid = os.fork()
    if pid == 0:
        ep = select.epoll()
        ep.register(a, select.EPOLLIN)
        for _ in range(rounds):
            ep.poll()
            os.eventfd_read(a)
            os.eventfd_write(b, 1)
        os._exit(0)
    ep = select.epoll()
    ep.register(b, select.EPOLLIN)
    t0 = time.perf_counter()
    for _ in range(rounds):
        os.eventfd_write(a, 1)
        ep.poll()
        os.eventfd_read(b)
    dt = time.perf_counter() - t0
    os.waitpid(pid, 0)
    for fd in (a, b):
        os.close(fd)
    print(f"baseline: eventfd ping-pong between two processes {dt / rounds * 1e6:.0f} us "
          f"per round trip; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")


def c_bench(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "bench_virtq")
        subprocess.run(["gcc", "-std=gnu11", "-O2", f"-I{ROOT / 'csrc'}",
                        str(ROOT / "csrc" / "test_virtq.c"), "-o", exe], check=True)
        out = subprocess.run([exe, "--bench", str(rounds)], check=True, capture_output=True,
                             text=True).stdout
    for line in out.splitlines():
        words = line.split()
        print(f"C pop+push: {float(words[3]):.1f} ns/descriptor (batch {words[5]}, "
              f"{int(words[1]):,} descriptors)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=40_000)
    p.add_argument("--c-rounds", type=int, default=500_000)
    a = p.parse_args()
    eventfd_ping_pong()
    trio.run(in_process, a.requests)
    trio.run(cross_process, a.requests)
    c_bench(a.c_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
