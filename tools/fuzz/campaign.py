"""The campaign loop: sessions of one class against one running daemon, and the checks
after each session that turn what happened into findings.

Per session: the tree is rebuilt (so the session's steps replay on the state they were
made on), the fds the idle daemon holds and the outside of the root are recorded, the
class runs its session on its own connection, and then:
- the daemon must still run (else: crash; it is restarted);
- nothing may have gone unanswered (else: hang; the daemon is restarted);
- a fresh connection must be served: handshake, INIT, GETATTR of the root (liveness);
- once both connections are gone, the daemon must hold no more fds than before (leak);
- nothing outside the root may have changed (escape).
Each session's RNG is seeded from (campaign seed, class, session number), so a campaign
is reproducible from its seed; a finding's reproducer holds the session's exact steps.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from tools.fuzz import chains_class, fuse_class, vhost_class
from tools.fuzz.daemon import Daemon
from tools.fuzz.findings import Finding, Stats
from tools.fuzz.layout import Layout, Outside
from tools.fuzz.session import Hang, Result, probe
from vhost.messages import MessageError

Runner = Callable[[Path, random.Random, int, Stats, "list[Any] | None"], Awaitable[Result]]
CLASSES: dict[str, tuple[Runner, int]] = {
    # class -> (session runner, inputs per session)
    "vhost": (vhost_class.run, 1000),
    "chains": (chains_class.run, 400),
    "fuse": (fuse_class.run, 2000),
}


def session_seed(seed: int, cls: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{cls}/{n}".encode()).digest()[:8], "little")


class Campaign:
    def __init__(self, out: Path, daemon_args: Sequence[str] = (), nice: int = 10,
                 workdir: Path | None = None, log: Callable[[str], None] = print) -> None:
        self.out = out
        self.layout = Layout(Path(tempfile.mkdtemp(prefix="msbfs-fuzz-", dir=workdir)))
        self.layout.create()
        self.outside = Outside(self.layout)
        self.daemon = Daemon(self.layout.root, self.layout.run / "fs.sock", daemon_args, nice)
        self.log = log

    def __enter__(self) -> Campaign:
        self.start_daemon()
        return self

    def start_daemon(self, restart: bool = False) -> None:
        """(Re)start the daemon and serve one probe: the socket exists as soon as the
        supervisor listens, before the serving child has set up its event loop (epoll,
        wakeup sockets), so only after a first session is its fd count a baseline."""
        if restart:
            self.daemon.restart()
        else:
            self.daemon.start()
        err = trio.run(probe, self.daemon.sock)
        if err is not None:
            raise RuntimeError(f"a fresh daemon does not serve: {err}: {self.daemon.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.layout.close()

    def run(self, cls: str, count: int, seed: int, session_size: int | None = None) -> Stats:
        runner, per_session = CLASSES[cls]
        per_session = session_size or per_session
        stats = Stats(cls)
        n = 0
        while stats.inputs < count:
            rng = random.Random(session_seed(seed, cls, n))
            budget = min(per_session, count - stats.inputs)
            self.session(cls, runner, rng, budget, stats, seed, n, None)
            n += 1
        return stats

    def replay(self, f: Finding) -> Stats:
        stats = Stats(f.cls)
        runner, _ = CLASSES[f.cls]
        self.session(f.cls, runner, random.Random(0), 1 << 62, stats, f.seed, f.session,
                     f.steps)
        return stats

    def session(self, cls: str, runner: Runner, rng: random.Random, budget: int,
                stats: Stats, seed: int, n: int, replay: list[Any] | None) -> None:
        d = self.daemon
        self.layout.populate()
        idle_fds = d.fds()
        before = self.outside.snapshot()
        res = Result()
        err: str | None = None

        async def go() -> None:
            nonlocal res, err
            try:
                res = await runner(d.sock, rng, budget, stats, replay)
            except Hang as e:
                err = str(e)
            except (OSError, EOFError) as e:
                # The daemon may hang up on a hostile frontend; whether it is still
                # alive is the checks' business below.
                stats.outcomes[f"session ended: {type(e).__name__}"] += 1
            except (MessageError, trio.TooSlowError, RuntimeError, ValueError) as e:
                # The frontend refused what the daemon did (e.g. a used element for a
                # head it never posted) or a request timed out outside a batch.
                stats.outcomes[f"session error: {type(e).__name__}: {str(e)[:80]}"] += 1
            if res.hang is None and err is None and d.exited() is None:
                err = await probe(d.sock)

        trio.run(go)
        stats.inputs += res.inputs
        stats.sessions += 1

        def find(kind: str, detail: str) -> None:
            f = Finding(kind, cls, detail, seed, n, res.steps if replay is None else replay)
            stats.findings.append(f)
            path = f.save(self.out)
            self.log(f"FINDING {kind} ({cls} session {n}): {detail[:300]} -> {path}")

        status = d.exited()
        if status is None and (res.hang or err):
            # A daemon that is dying resets the probe before its supervisor has exited:
            # give it a moment to say which of crash or hang this is.
            status = d.wait_exit(5.0)
        if status is not None:
            find("crash", f"daemon exited with {status}: {d.log_tail()}")
            self.start_daemon()
            return
        hang = res.hang or err
        if hang is not None:
            find("hang", hang)
            self.start_daemon(restart=True)
            return
        fds = d.wait_fds_at_most(len(idle_fds))
        if len(fds) > len(idle_fds):
            extra = {k: v for k, v in fds.items() if idle_fds.get(k) != v}
            find("leak", f"{len(idle_fds)} fds before, {len(fds)} after: {extra}")
            self.start_daemon(restart=True)  # the next session starts from a clean count
        diff = self.outside.diff(before, self.outside.snapshot())
        if diff:
            find("escape", "; ".join(diff[:20]))
