"""What /proc says about a daemon's process tree (the C virtiofsd serves from a forked
child; the parent only waits), for the benchmarks' memory and CPU lines."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, through every thread's ``children`` list."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def fields_kib(pid: int, name: str, keys: Iterable[str]) -> dict[str, int]:
    """The ``Key: N kB`` fields ``keys`` of ``/proc/PID/<name>`` of the one process."""
    out = dict.fromkeys(keys, 0)
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in out:
            out[k] = int(v.split()[0])
    return out


def _summed_kib(pid: int, name: str, keys: Iterable[str]) -> dict[str, int]:
    """The ``Key: N kB`` fields ``keys`` of ``/proc/PID/<name>``, summed over the tree."""
    total = dict.fromkeys(keys, 0)
    for p in process_tree(pid):
        for k, v in fields_kib(p, name, total).items():
            total[k] += v
    return total


def status_kib(pid: int, keys: Iterable[str]) -> dict[str, int]:
    """The ``/proc/PID/status`` fields ``keys`` (all in KiB), summed over the tree."""
    return _summed_kib(pid, "status", keys)


def pss_kib(pid: int) -> dict[str, int]:
    """Proportional set size of the tree (``/proc/PID/smaps_rollup``, KiB): each page
    shared by N processes counts 1/N. RSS sums count a page each process maps in full,
    so a tree of two Python processes counts their interpreter's pages twice; PSS does
    not (and charges a library's pages to every process on the host that maps them)."""
    return _summed_kib(pid, "smaps_rollup", ("Pss_Anon", "Pss_File", "Pss_Shmem"))


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process tree (threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick
