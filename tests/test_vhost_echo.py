"""Volume through the echo device: 100,000 requests with every byte checked, and four
queues served at once."""

from __future__ import annotations

import os

import trio

from tests.plugins.vhost import VhostPair
from vhost.echo import EchoDevice
from vhost.frontend import Frontend
from vhost.guest_ram import GuestRam


async def run_echo(fe: Frontend, queue: int, total: int, seed: int) -> None:
    """``total`` requests in batches that fill the ring; payloads from a random pool."""
    q = fe.queues[queue]
    pool = os.urandom(1 << 16)
    batch = q.size // 2  # each request: one readable + one writable descriptor
    sent = 0
    while sent < total:
        n = min(batch, total - sent)
        pend = []
        for i in range(n):
            k = sent + i + seed
            size = (k * 37) % 301  # 0..300 bytes, zero-length included
            start = (k * 7919) % (len(pool) - size)
            data = pool[start:start + size]
            pend.append((q.post([data], [size + (k % 3)]), data))
        q.kick()
        for p, data in pend:
            c = await q.wait(p)
            assert c.used_len == len(data)
            assert c.data == data
        sent += n


async def test_100k_requests_data_checked(vhost_pair: VhostPair) -> None:
    dev = EchoDevice(pop_batch=128)
    async with vhost_pair(dev, [256], ram=GuestRam([(0, 16 << 20)]),
                          slot_size=1024) as (fe, be):
        await run_echo(fe, 0, 100_000, seed=1)
        stats = be.queues[0].statistics()
        assert stats["popped"] == stats["pushed"] == dev.served == 100_000
        # EVENT_IDX: one kick per batch at most, far fewer calls than requests
        assert fe.queues[0].kicks <= 100_000 // 128 + 1
        assert stats["calls"] < 100_000 // 10


async def test_four_queues_concurrently(vhost_pair: VhostPair) -> None:
    dev = EchoDevice(num_queues=4)
    async with vhost_pair(dev, [128] * 4, slot_size=1024) as (fe, be):
        async with trio.open_nursery() as n:
            for i in range(4):
                n.start_soon(run_echo, fe, i, 5_000, i)
        assert [vq.statistics()["pushed"] for vq in be.queues] == [5_000] * 4


async def test_many_tasks_share_one_queue(vhost_pair: VhostPair) -> None:
    async with vhost_pair(EchoDevice(), [64]) as (fe, be):
        results: dict[int, bytes] = {}

        async def client(i: int) -> None:
            for k in range(50):
                data = f"{i}:{k}".encode() * (k % 5 + 1)
                c = await fe.submit(0, [data], [len(data)], indirect=bool(k % 2))
                assert c.data == data
            results[i] = b"ok"

        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(client, i)
        assert len(results) == 20
        assert be.queues[0].statistics()["pushed"] == 1000
