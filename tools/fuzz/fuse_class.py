"""Class 3: FUSE requests through the request queue of a running daemon, over the
populated tree (see ``fuse_model``). Requests go in batches of ``BATCH`` chains posted
with one kick, as a busy guest's would; each reply is checked (a valid reply header
carrying the request's unique) and counted per opcode and errno. A step of the log is
one batch: the request bytes and reply room of each chain.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import trio

from msbfs.fuse.abi import Opcode
from msbfs.fuse.kernel import parse_reply
from tools.fuzz.findings import Stats
from tools.fuzz.fuse_model import NO_REPLY, Drawn, Generator, Model, errname
from tools.fuzz.session import DEADLINE, REQUESTS, Result, connected, fuse_start

BATCH = 8
#: About one session in this many requests ends the FUSE session mid-way (DESTROY, or a
#: second INIT) and starts it again: the server must let go of everything and serve on.
RESTART_EVERY = 1500


def _opname(op: int) -> str:
    try:
        return Opcode(op).name
    except ValueError:
        return "UNKNOWN"


async def run(sock: Path, rng: random.Random, budget: int, stats: Stats,
              replay: list[Any] | None = None) -> Result:
    res = Result()
    async with connected(sock) as fe:
        r = await fuse_start(fe)
        model = Model()
        model.reset()
        gen = Generator(rng, model)
        gen.r = r  # one unique sequence for the whole session
        steps = iter(replay) if replay is not None else None
        while res.inputs < budget:
            if steps is not None:
                step = next(steps, None)
                if step is None:
                    break
                batch = [Drawn(-1, bytes.fromhex(h), room, {}, "replay") for h, room in step]
            elif rng.randrange(RESTART_EVERY // BATCH) == 0:
                batch = [Drawn(Opcode.DESTROY, r.destroy(), 4096, {}),
                         Drawn(Opcode.INIT, r.init(), 4096, {})]
            else:
                batch = [gen.next() for _ in range(BATCH)]
            res.steps.append([[d.data.hex(), d.room] for d in batch])
            with trio.move_on_after(DEADLINE) as cs:
                done = await fe.submit_many(REQUESTS, [([d.data], [d.room]) for d in batch])
            if cs.cancelled_caught:
                res.hang = (f"batch {len(res.steps) - 1}: "
                            f"{[_opname(d.op) for d in batch]} unanswered")
                return res
            res.inputs += len(batch)
            for d, c in zip(batch, done, strict=True):
                _count(d, c.used_len, c.data, stats, model)
            if batch[0].op == Opcode.DESTROY:
                model.reset()  # the server let go of every node and handle
    return res


def _count(d: Drawn, used: int, data: bytes, stats: Stats, model: Model) -> None:
    op = _opname(d.op)
    if used == 0:
        # Nothing written back: right for the reply-less opcodes and for input too
        # short to carry a unique; anything else deserved an answer.
        ok = d.op in NO_REPLY or d.form != "valid"
        stats.outcomes[f"{d.form}: no reply" + ("" if ok else " (expected one)")] += 1
        if d.form == "valid" and d.op in NO_REPLY:
            stats.replies[(op, "OK")] += 1
            model.absorb(d.op, d.info, None)
        return
    try:
        rep = parse_reply(data)
    except ValueError as e:
        stats.outcomes[f"{d.form}: malformed reply ({e})"] += 1
        return
    if rep.unique != int.from_bytes(d.data[8:16], "little"):
        stats.outcomes[f"{d.form}: reply carries another unique"] += 1
    if d.form == "valid":
        stats.replies[(op, errname(rep.error))] += 1
        try:
            model.absorb(d.op, d.info, rep)
        except (ValueError, IndexError) as e:  # a reply too short for its opcode
            stats.outcomes[f"valid: unparsable {op} reply ({e})"] += 1
    else:
        stats.outcomes[f"{d.form}: {errname(rep.error)}"] += 1
