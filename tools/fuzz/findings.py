"""What a campaign found and how to replay it.

A *finding* is a crash (the daemon exited or was killed), a hang (a request, or the
liveness probe on a fresh connection, unanswered within its deadline), an fd leak
(``/proc/<pid>/fd`` after a session ended holds more than before it began), an escape
(something outside the served root changed), or a sanitizer report from the native
harness. Each is written as a reproducer: a JSON file holding the class, the seed and
the exact steps of the session that led to it (the bytes sent, not the generator's
state), so ``python -m tools.fuzz replay FILE`` re-runs it against a fresh daemon over a
fresh tree without depending on how the generator evolves.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("crash", "hang", "leak", "escape", "sanitizer")


@dataclass
class Finding:
    kind: str           # one of KINDS
    cls: str            # vhost | chains | fuse | native
    detail: str
    seed: int
    session: int
    steps: list[Any] = field(default_factory=list)

    def save(self, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.cls}-{self.kind}-s{self.seed}-{self.session}.json"
        path.write_text(json.dumps({"kind": self.kind, "class": self.cls,
                                    "detail": self.detail, "seed": self.seed,
                                    "session": self.session, "steps": self.steps},
                                   indent=1))
        return path


def load(path: Path) -> Finding:
    d = json.loads(Path(path).read_text())
    return Finding(d["kind"], d["class"], d["detail"], d["seed"], d["session"], d["steps"])


@dataclass
class Stats:
    """Counts of one class's run. ``replies`` is keyed (opcode name, errno name or OK)."""

    cls: str
    inputs: int = 0
    sessions: int = 0
    findings: list[Finding] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    replies: Counter[tuple[str, str]] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    def success_by_opcode(self) -> dict[str, tuple[int, int]]:
        """opcode -> (successes, replies)."""
        out: dict[str, list[int]] = {}
        for (op, err), n in self.replies.items():
            s = out.setdefault(op, [0, 0])
            s[1] += n
            if err == "OK":
                s[0] += n
        return {op: (a, b) for op, (a, b) in sorted(out.items())}

    def summary(self) -> dict[str, Any]:
        return {"class": self.cls, "inputs": self.inputs, "sessions": self.sessions,
                "seconds": round(time.monotonic() - self.started, 1),
                **{k + "es" if k.endswith("sh") else k + "s": self.count(k) for k in KINDS},
                "outcomes": dict(self.outcomes.most_common()),
                "success_by_opcode": {op: f"{a}/{b}" for op, (a, b)
                                      in self.success_by_opcode().items()}}
