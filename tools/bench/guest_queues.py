"""Evidence that a multi-queue guest workload really ran on every request queue, from both
ends: the guest's per-queue interrupt counts (each reply the daemon signals on request
queue N raises ``virtioM-requests.N``) and, for ``msbfs serve``, the CPU time of each of
its queue-serving threads. A "4-queue" benchmark that silently ran on one queue measures
nothing, so the guest benchmark and tests/test_guest_queues.py check both.

The guest side is a shell snippet (the guest has busybox, no Python): it finds the
virtio-fs device by its tag in ``/sys/fs/virtiofs/*/tag`` (Linux >= 6.9) and prints that
device's request-queue lines of ``/proc/interrupts``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tools.bench.proc import process_tree

#: How the name trio gives a ``trio.to_thread`` worker running
#: VirtioFsDevice._serve_ring starts ("_serve_ring from ...", cut to 15 bytes by Linux).
SERVING_THREAD = "_serve_ring"


def queue_irqs_script(tag: str) -> str:
    """Guest shell: the ``/proc/interrupts`` lines of the request queues of the virtio-fs
    device tagged ``tag`` (exit 1 if there is no such device)."""
    return (f"for d in /sys/fs/virtiofs/*; do "
            f"[ \"$(cat $d/tag)\" = {shlex.quote(tag)} ] && dev=$(basename $(readlink $d/device)); "
            f"done; [ -n \"$dev\" ] && grep \" $dev-requests\\.\" /proc/interrupts")


_LINE = re.compile(r"^\s*\d+:((?:\s+\d+)+)\s.*-requests\.(\d+)\s*$")


def parse_queue_irqs(text: str) -> dict[int, int]:
    """Request queue index -> interrupts delivered for it, summed over the guest's CPUs."""
    counts = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            counts[int(m.group(2))] = sum(int(n) for n in m.group(1).split())
    return counts


def irq_delta(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {q: after[q] - before.get(q, 0) for q in sorted(after)}


def serving_threads_ns(pid: int) -> dict[int, int]:
    """CPU nanoseconds of every queue-serving thread in ``pid``'s process tree, by thread
    id (``msbfs serve`` runs its queues in a sandboxed child). Threads that are gone
    between listing and reading are skipped."""
    found = {}
    for p in process_tree(pid):
        for task in Path(f"/proc/{p}/task").iterdir():
            try:
                if (task / "comm").read_text().startswith(SERVING_THREAD):
                    found[int(task.name)] = int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError):
                continue
    return found


def busy_threads(before: dict[int, int], after: dict[int, int]) -> list[int]:
    """CPU nanoseconds each serving thread spent between the two samples, largest first
    (threads idle meanwhile left out)."""
    spent = [ns - before.get(tid, 0) for tid, ns in after.items()]
    return sorted((s for s in spent if s > 0), reverse=True)
