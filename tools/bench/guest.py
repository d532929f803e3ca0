"""Guest benchmarks: ``msbfs serve`` vs Debian's C virtiofsd behind a real TCG guest, side
by side in one run, ratios printed.

    python -m tools.bench.guest [--quick] [--launch-rounds N] [--rounds R] [--accel tcg]
                                [--dir DIR]

1. Launch: wall time from starting ``msbfs run`` (the CLI, as a user runs it) to the
   guest command printing its first line, with each daemon (``--daemon``), alternating.
2. In one guest per daemon, the same directory tree on the host (each daemon gets its
   own subdirectory): sequential write then read of a 256 MiB file (1 MiB requests, page
   cache dropped before the read), 4 KiB random reads, create+stat+unlink of 5,000 files,
   extracting a source tarball. The loops are ``tools/bench/guest_io.c`` (built static,
   served to the guest read-only) so the timings are file system work, not forks; each
   is timed by the guest's clock around the loop (before session 10 the host timed the
   whole command: agent round trip, exec and the cache drop before the reads included).
   The untar is timed by the host (tar and sync in one command).
   With ``--rounds R`` (default 1) each daemon gets R guests, in ABBA order (virtiofsd,
   msbfs, msbfs, virtiofsd...), so neither always runs second, after the other's
   deletions and with the other's page cache and load behind it; each row prints the
   medians and the median and range of the per-round ratios.
3. Each daemon's CPU per workload (utime+stime of its process tree over the guest
   command) and resident memory (VmRSS and peak VmHWM of its process tree) after the
   workloads, against the other's.

``--parallel4 [--rounds R]`` runs instead the 4-vCPU workload (issue 11): a guest with 4
vCPUs, 4 processes each pinned to its own vCPU and working in its own directory, all
creating N files, then all stat-ing them, then all unlinking them, each phase timed in
the guest (CLOCK_MONOTONIC, from releasing every process into it to the last one done)
and printed as ops/s. The guest's dentries are dropped (untimed) before stat and unlink,
so both ask the daemon: otherwise how many names were still cached from the create phase
(1 s entry timeout) would depend on how fast that phase went. R rounds per daemon, alternating (ABBA), medians and the spread of
the per-round ratios. msbfs offers the guest 4 request queues (one per vCPU, as ``msbfs
run`` does) and serves each on its own thread; Debian's C virtiofsd (QEMU 7.2) gets one:
with num-request-queues=4 it dies as the guest starts the second ("fv_panic:
libvhost-user: Invalid queue index: 2"), so its guest sends every vCPU's requests down
its one queue. Every round checks from the guest that the device has the queues it was
given and that each one delivered replies during the workload (per-queue interrupts),
that the processes ran on 4 distinct vCPUs, and for msbfs that at least 4 of its
queue-serving threads spent CPU meanwhile: a "4-queue" run that silently used one queue
fails instead of printing a figure. It is a flag, not a row of the default run, because
it needs guests of its own (4 vCPUs) and keeps the one-queue rows (issue 11's "TCG
guest, one queue" target) what earlier runs measured.

Where the served trees live (``--dir``; default the system's temporary directory) weighs
on the create row. On an ext4 without a journal (this host's root) every inode
allocation skips the inodes deleted in the last 60 s (360 s while their inode table
block is dirty: ``recently_deleted`` in fs/ext4/ialloc.c), one buffer lookup each:
profiled, 68-74% of both daemons' CPU over create/stat/unlink was that scan, 3% was
msbfs's own code, and nothing reached its Python. Which daemon pays more depends on
what was deleted just before its run (the first daemon's 5,000 unlinked files and its
untar when the second one creates, other processes' deletions): a host file system's
state, not the daemon. ``--dir /dev/shm`` (tmpfs, as the frontend benchmark uses)
takes it out of the comparison.

Ratios are msbfs / virtiofsd as speed: above 1.0 msbfs is faster. For memory the ratio
is msbfs's over virtiofsd's (lower is better); guest RAM a daemon has touched through its
mapping counts as its RssShmem, so the daemons' own footprint is RssAnon + RssFile.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from msbfs.launcher import daemon as daemons
from msbfs.launcher.sandbox import Sandbox
from msbfs.mounts import Mount, MountOptions
from tools.bench.guest_queues import (
    busy_threads,
    irq_delta,
    parse_queue_irqs,
    queue_irqs_script,
    serving_threads_ns,
)
from tools.bench.proc import cpu_seconds, status_kib


def virtiofsd_xattr(tree: daemons.ServedTree, fd: int) -> list[str]:
    """Debian's C virtiofsd serving xattrs, as msbfs serves them by default. Without
    ``-o xattr`` its first GETXATTR is ENOSYS, the guest kernel remembers that and asks
    no more (no security.capability before every write, no ACL lookups), while msbfs
    answered every one: not like with like."""
    return [*daemons.virtiofsd(tree, fd), "-o", "xattr"]


virtiofsd_xattr.max_request_queues = daemons.virtiofsd.max_request_queues  # type: ignore[attr-defined]

KINDS = {"virtiofsd": virtiofsd_xattr, "msbfs": daemons.msbfs_serve}
HERE = Path(__file__).resolve().parent


@dataclass
class Sizes:
    file_mib: int = 256
    random_reads: int = 20000
    files: int = 5000
    tar_source: Path = Path("/usr/include/linux")


QUICK = Sizes(file_mib=32, random_reads=2000, files=500)


@dataclass
class Result:
    """One daemon's guest: its workloads' times, CPU and memory."""

    times: dict[str, float] = field(default_factory=dict)
    #: the daemon's CPU seconds (process tree) per workload
    cpu: dict[str, float] = field(default_factory=dict)
    #: KiB summed over the daemon's process tree: RssAnon, RssFile, RssShmem, VmHWM.
    rss: dict[str, int] = field(default_factory=dict)


def memory_kib(pid: int) -> dict[str, int]:
    """The daemon tree's memory by kind. Guest RAM the daemon has mapped (a vhost-user
    backend maps all of it) shows up as RssShmem: it is the guest's memory, not the
    daemon's, so RssAnon + RssFile is the daemon's own footprint."""
    return status_kib(pid, ("RssAnon", "RssFile", "RssShmem", "VmHWM"))


def build_tools(out: Path, sizes: Sizes, tar: bool = True) -> None:
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out / "guest_io"),
                    str(HERE / "guest_io.c")], check=True)
    if tar:
        subprocess.run(["tar", "czf", str(out / "src.tar.gz"), "-C",
                        str(sizes.tar_source.parent), sizes.tar_source.name], check=True)


def launch_once(kind: str, share: Path, accel: str) -> float:
    """Seconds from exec of ``msbfs run`` to the guest command's first output line."""
    argv = [sys.executable, "-m", "msbfs", "run", "--accel", accel, "--daemon", kind,
            "--mount", f"/w=bind:{share}", "--", "echo", "started"]
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    took = time.monotonic() - began
    _, err = proc.communicate(timeout=120)
    if line != b"started\n" or proc.returncode != 0:
        raise RuntimeError(f"msbfs run --daemon {kind} failed: {err.decode().strip()}")
    return took


def _check(sb: Sandbox, script: str) -> str:
    """Run one guest command, which must succeed; its stdout."""
    r = sb.run(script)
    if r.exit_code != 0:
        raise RuntimeError(f"guest: {script!r} -> {r.exit_code}: {r.stderr.decode().strip()}")
    return r.stdout.decode()


def _timed(sb: Sandbox, script: str) -> float:
    """Host wall time of one guest command (it must succeed)."""
    began = time.monotonic()
    _check(sb, script)
    return time.monotonic() - began


def _guest_timed(sb: Sandbox, script: str) -> float:
    """The seconds a guest_io loop reports (the last line of ``script``'s output): its own
    CLOCK_MONOTONIC around the loop, without the agent's round trip, the exec or the cache
    drop before it, which the host's clock would add to both daemons alike and so pull
    every ratio towards 1."""
    return float(_check(sb, script).split()[-1])


def workloads(kind: str, share: Path, tools: Path, sizes: Sizes, accel: str) -> Result:
    res = Result()
    mounts = {"/w": Mount.bind(share), "/b": Mount.bind(tools, MountOptions(readonly=True))}
    drop = "sync; echo 3 > /proc/sys/vm/drop_caches; "
    with Sandbox(mounts, accel=accel, daemon=KINDS[kind], memory_mib=768) as sb:
        assert sb.vm is not None
        [proc] = [p for tree, p in sb.vm.daemons if tree.guest_path == "/w"]

        @contextlib.contextmanager
        def charged(key: str) -> Iterator[None]:
            # The daemon's CPU over the whole guest command (a cache drop included).
            c0 = cpu_seconds(proc.pid)
            yield
            res.cpu[key] = cpu_seconds(proc.pid) - c0

        sb.run("cp /b/src.tar.gz /tmp/ && mkdir -p /w/meta /w/untar")
        t = res.times
        with charged("seq write"):
            t["seq write"] = _guest_timed(sb, f"/b/guest_io write /w/big {sizes.file_mib}")
        with charged("seq read"):
            t["seq read"] = _guest_timed(sb, drop + "/b/guest_io read /w/big")
        with charged("4k random read"):
            t["4k random read"] = _guest_timed(sb, drop + f"/b/guest_io randread /w/big "
                                                         f"{sizes.random_reads}")
        with charged("create/stat/unlink"):
            meta = _check(sb, f"/b/guest_io meta /w/meta {sizes.files}").split()
        t["create/stat/unlink"] = float(meta[-1])
        # Its phases too (the guest's dcache left as it is, unlike --parallel4's).
        t.update((f"  {ph}", float(v)) for ph, v in zip(meta[:-1:2], meta[1:-1:2],
                                                         strict=True))
        with charged("untar"):
            t["untar"] = _timed(sb, "tar xzf /tmp/src.tar.gz -C /w/untar && sync")
        res.rss = memory_kib(proc.pid)
    return res


#: processes (and vCPUs, and msbfs request queues) of the --parallel4 workload
PAR_PROCS = 4
PAR_PHASES = ("create", "stat", "unlink")


@dataclass
class ParallelRun:
    """One --parallel4 guest: seconds per phase (guest clock), and the queue evidence."""

    times: dict[str, float]
    #: request queue -> interrupts the guest took for it during the workload
    irqs: dict[int, int]
    #: CPU ms of each msbfs queue-serving thread that ran during the workload
    thread_ms: list[float]
    #: CPU seconds of the daemon's process tree and of QEMU during the workload
    daemon_cpu: float = 0.0
    qemu_cpu: float = 0.0


def parallel4(kind: str, share: Path, tools: Path, files: int, accel: str) -> ParallelRun:
    """The 4-vCPU workload in a fresh guest, ``files`` files per process."""
    mounts = {"/w": Mount.bind(share), "/b": Mount.bind(tools, MountOptions(readonly=True))}
    with Sandbox(mounts, cpus=PAR_PROCS, accel=accel, daemon=KINDS[kind],
                 memory_mib=768) as sb:
        assert sb.vm is not None
        [(tree, proc)] = [(t, p) for t, p in sb.vm.daemons if t.guest_path == "/w"]
        irqs = queue_irqs_script(tree.tag)
        _check(sb, "mkdir -p /w/par && cp /b/guest_io /tmp/")  # no /b traffic while timed
        assert sb.vm.qemu is not None
        qemu = sb.vm.qemu.pid
        irq0, cpu0 = parse_queue_irqs(_check(sb, irqs)), serving_threads_ns(proc.pid)
        d0, q0 = cpu_seconds(proc.pid), cpu_seconds(qemu)
        out = _check(sb, f"/tmp/guest_io par /w/par {files} {PAR_PROCS}")
        d1, q1 = cpu_seconds(proc.pid), cpu_seconds(qemu)
        irq1, cpu1 = parse_queue_irqs(_check(sb, irqs)), serving_threads_ns(proc.pid)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    run = ParallelRun({ph: float(lines[ph]) for ph in PAR_PHASES}, irq_delta(irq0, irq1),
                      [ns / 1e6 for ns in busy_threads(cpu0, cpu1)], d1 - d0, q1 - q0)
    cpus = sorted(int(c) for c in lines["cpus"].split())
    problems = []
    if cpus != list(range(PAR_PROCS)):
        problems.append(f"the processes ran on CPUs {cpus}, not one each")
    if len(run.irqs) != tree.request_queues:
        problems.append(f"the guest has {len(run.irqs)} request queues, the daemon was "
                        f"given {tree.request_queues}")
    if not all(run.irqs.values()):
        problems.append(f"a request queue delivered no reply: {run.irqs}")
    if kind == "msbfs" and (tree.request_queues != PAR_PROCS
                            or len(run.thread_ms) < PAR_PROCS):
        problems.append(f"msbfs: {tree.request_queues} request queues, "
                        f"{len(run.thread_ms)} serving threads ran")
    if problems:
        raise RuntimeError(f"--parallel4 ({kind}) did not run as meant: " + "; ".join(problems))
    return run


def run_parallel4(tools: Path, base: Path, files: int, rounds: int,
                  accel: str) -> dict[str, list[ParallelRun]]:
    """``rounds`` guests per daemon in ABBA order (virtiofsd, msbfs, msbfs, virtiofsd...),
    so a drift in the machine's load weighs on both alike."""
    runs: dict[str, list[ParallelRun]] = {k: [] for k in KINDS}
    order = list(KINDS)
    for i in range(rounds):
        for kind in order if i % 2 == 0 else order[::-1]:
            share = base / f"par-{kind}-{i}"
            share.mkdir()
            r = parallel4(kind, share, tools, files, accel)
            runs[kind].append(r)
            shutil.rmtree(share)
            # As it goes (stderr): a later guest that fails to boot loses no figures.
            print(f"round {i + 1} {kind}: " + " ".join(
                f"{ph} {PAR_PROCS * files / r.times[ph]:.0f}/s" for ph in PAR_PHASES),
                file=sys.stderr, flush=True)
    return runs


def report_parallel4(runs: dict[str, list[ParallelRun]], files: int) -> None:
    v, m = runs["virtiofsd"], runs["msbfs"]
    ops = PAR_PROCS * files
    print(f"{f'guest, {PAR_PROCS} vCPUs x {PAR_PROCS} procs':<34}{'virtiofsd':>12}"
          f"{'msbfs':>12}{'msbfs/vfsd':>12}  per-round ratios")
    print(f"{'  request queues':<34}{len(v[0].irqs):>12}{len(m[0].irqs):>12}")
    for ph in PAR_PHASES:
        rv = [ops / r.times[ph] for r in v]
        rm = [ops / r.times[ph] for r in m]
        ratios = [b / a for a, b in zip(rv, rm, strict=True)]
        print(f"{f'{ph} {PAR_PROCS} x {files} (ops/s, median)':<34}"
              f"{statistics.median(rv):>12.0f}{statistics.median(rm):>12.0f}"
              f"{statistics.median(ratios):>11.2f}x  "
              + " ".join(f"{x:.2f}" for x in ratios))
    per_op = {k: [r.daemon_cpu / (ops * len(PAR_PHASES)) * 1e6 for r in rs]
              for k, rs in runs.items()}
    cv, cm = statistics.median(per_op["virtiofsd"]), statistics.median(per_op["msbfs"])
    print(f"{'daemon CPU per file op (us, med.)':<34}{cv:>12.0f}{cm:>12.0f}"
          f"{cm / max(cv, 1e-9):>11.2f}x  (msbfs/vfsd, lower is better)")
    qv = statistics.median(r.qemu_cpu for r in v)
    qm = statistics.median(r.qemu_cpu for r in m)
    print(f"{'QEMU CPU in the workload (s, med.)':<34}{qv:>12.1f}{qm:>12.1f}")
    print("  (msbfs/vfsd: the median of the per-round ratios, each round's two guests run "
          "back to back;\n   on a noisy host it need not equal the ratio of the medians)")
    for ph in PAR_PHASES:
        print(f"  {ph} per round (ops/s): virtiofsd "
              + " ".join(f"{ops / r.times[ph]:.0f}" for r in v) + "; msbfs "
              + " ".join(f"{ops / r.times[ph]:.0f}" for r in m))
    for kind, rs in runs.items():
        for i, r in enumerate(rs):
            irqs = " ".join(f"q{q}:{n}" for q, n in r.irqs.items())
            threads = (" serving threads CPU ms: " + " ".join(f"{t:.0f}" for t in r.thread_ms)
                       if kind == "msbfs" else "")
            print(f"  {kind} round {i + 1}: replies signalled per queue {irqs};{threads}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.guest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--launch-rounds", type=int, default=3)
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="tcg")
    p.add_argument("--launch-only", action="store_true", help="only the launch timing")
    p.add_argument("--dir", default=None,
                   help="where the served trees are made (default: the temporary directory; "
                        "/dev/shm keeps the host's ext4 inode allocation out of the create row)")
    p.add_argument("--parallel4", action="store_true",
                   help=f"only the {PAR_PROCS}-vCPU, {PAR_PROCS}-process create/stat/unlink")
    p.add_argument("--rounds", type=int, default=None,
                   help="guests per daemon, alternating (default 1; with --parallel4, 3)")
    p.add_argument("--files", type=int, default=None,
                   help=f"--parallel4: files per process (default: the one-queue row's "
                        f"count / {PAR_PROCS})")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.parallel4:
        files = args.files or sizes.files // PAR_PROCS
        with tempfile.TemporaryDirectory(prefix="msbfs-bench-guest.", dir=args.dir) as tmp:
            base = Path(tmp)
            for sub in ("tools", "home"):
                (base / sub).mkdir()
            build_tools(base / "tools", sizes, tar=False)
            os.environ.setdefault("MSB_HOME", str(base / "home"))
            runs = run_parallel4(base / "tools", base, files, args.rounds or 3, args.accel)
        report_parallel4(runs, files)
        return 0
    launch: dict[str, list[float]] = {k: [] for k in KINDS}
    rounds: dict[str, list[Result]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="msbfs-bench-guest.", dir=args.dir) as tmp:
        base = Path(tmp)
        tools = base / "tools"
        tools.mkdir()
        build_tools(tools, sizes)
        home = base / "home"
        home.mkdir()
        os.environ.setdefault("MSB_HOME", str(home))
        for _ in range(args.launch_rounds):
            for kind in KINDS:
                (base / f"launch-{kind}").mkdir(exist_ok=True)
                launch[kind].append(launch_once(kind, base / f"launch-{kind}", args.accel))
        if not args.launch_only:
            rounds = run_rounds(tools, base, sizes, args.rounds or 1, args.accel)
    report(launch, rounds, sizes)
    return 0


def run_rounds(tools: Path, base: Path, sizes: Sizes, rounds: int,
               accel: str) -> dict[str, list[Result]]:
    """``rounds`` guests per daemon running every workload, in ABBA order."""
    runs: dict[str, list[Result]] = {k: [] for k in KINDS}
    order = list(KINDS)
    for i in range(rounds):
        for kind in order if i % 2 == 0 else order[::-1]:
            share = base / f"share-{kind}-{i}"
            share.mkdir()
            r = workloads(kind, share, tools, sizes, accel)
            runs[kind].append(r)
            shutil.rmtree(share)
            if rounds > 1:  # as it goes: a later guest that fails loses no figures
                print(f"round {i + 1} {kind}: " + " ".join(
                    f"{k.strip()} {t:.3f}" for k, t in r.times.items()),
                    file=sys.stderr, flush=True)
    return runs


def _launch_line(v: list[float], m: list[float]) -> None:
    lv, lm = statistics.median(v), statistics.median(m)
    print(f"{'launch to command start (median s)':<34}{lv:>12.2f}{lm:>12.2f}{lv / lm:>11.2f}x")
    print(f"{'  launch rounds (s)':<34}{' '.join(f'{x:.2f}' for x in v):>12}"
          f"  {' '.join(f'{x:.2f}' for x in m)}")


def _ratios(pairs: list[tuple[float, float]]) -> str:
    """The median of per-round ratios a/b (pairs without a b > 0 left out), and their
    range when there are several: ``"  0.97x  0.91-1.05"``; a dash without any."""
    rs = sorted(a / b for a, b in pairs if b > 0)
    if not rs:
        return f"{'-':>12s}"
    spread = f"  {rs[0]:.2f}-{rs[-1]:.2f}" if len(rs) > 1 else ""
    return f"{statistics.median(rs):>11.2f}x{spread}"


def report(launch: dict[str, list[float]], rounds: dict[str, list[Result]],
           sizes: Sizes) -> None:
    """Medians over the rounds; the ratio column is the median (and range) of the
    per-round ratios, each round's two guests having run back to back."""
    v, m = rounds["virtiofsd"], rounds["msbfs"]
    print(f"{'guest (TCG)':<34}{'virtiofsd':>12}{'msbfs':>12}{'msbfs/vfsd':>12}")
    _launch_line(launch["virtiofsd"], launch["msbfs"])
    if not v:
        return
    if len(v) > 1:
        print(f"({len(v)} guests per daemon, ABBA: medians; ratio: median and range of the "
              f"per-round ratios)")

    def med(rs: list[Result], what: str, key: str) -> float:
        return statistics.median(getattr(r, what)[key] for r in rs)

    def pairs(what: str, key: str, speed: bool) -> list[tuple[float, float]]:
        got = [(getattr(a, what)[key], getattr(b, what)[key]) for a, b in zip(v, m, strict=True)]
        return got if speed else [(b, a) for a, b in got]

    labels = {
        "seq write": f"seq write {sizes.file_mib} MiB (s)",
        "seq read": f"seq read {sizes.file_mib} MiB (s)",
        "4k random read": f"{sizes.random_reads} x 4 KiB random reads (s)",
        "create/stat/unlink": f"create/stat/unlink {sizes.files} (s)",
        **{f"  {ph}": f"  of which {ph} (s)" for ph in PAR_PHASES},
        "untar": f"untar {sizes.tar_source} (s)",
    }
    for key, label in labels.items():
        print(f"{label:<34}{med(v, 'times', key):>12.3f}{med(m, 'times', key):>12.3f}"
              f"{_ratios(pairs('times', key, True))}")
    for key in ("seq write", "seq read"):
        print(f"{'  ' + key + ' MiB/s':<34}{sizes.file_mib / med(v, 'times', key):>12.1f}"
              f"{sizes.file_mib / med(m, 'times', key):>12.1f}")
    print("daemon CPU per workload (s, in 10 ms ticks; msbfs/vfsd: lower is better)")
    for key in (k for k in labels if k in v[0].cpu):
        # Whole 10 ms ticks: a round where virtiofsd used none has no ratio to give.
        print(f"{'  ' + key:<34}{med(v, 'cpu', key):>12.2f}{med(m, 'cpu', key):>12.2f}"
              f"{_ratios(pairs('cpu', key, False))}")

    def mib(rs: list[Result], *keys: str) -> float:
        return statistics.median(sum(r.rss[k] for k in keys) for r in rs) / 1024

    for label, keys in (("daemon own RSS, anon+file (MiB)", ("RssAnon", "RssFile")),
                        ("  of which anon (MiB)", ("RssAnon",)),
                        ("guest RAM mapped, shmem (MiB)", ("RssShmem",)),
                        ("peak VmHWM incl. guest RAM (MiB)", ("VmHWM",))):
        a, b = mib(v, *keys), mib(m, *keys)
        print(f"{label:<34}{a:>12.1f}{b:>12.1f}{b / max(a, 0.001):>11.2f}x")

if __name__ == "__main__":
    sys.exit(main())
