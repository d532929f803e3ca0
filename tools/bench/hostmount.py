"""``msbfs mount`` vs a native directory vs bindfs, side by side in one run.

    python -m tools.bench.hostmount [--quick] [--dir DIR] [--rounds N] [--only K,..]
                                    [--requests]

Workloads, each run in turn on the three targets (same disk, fresh directories):
sequential 1 MiB writes of a 1 GiB file (then fsync), sequential 1 MiB reads of it with
cold caches, 4 KiB random reads (cold), create (+ a 100-byte write and close) of 10,000
small files, create+stat+unlink of them, readdir (names only, as ``ls``) of a
10,000-entry directory (cold), extracting a source tarball (the Python stdlib, made at
start), a walk of the extracted tree with an lstat of every name (cold) and its rmtree
(cold). Caches are dropped (``echo 3 > /proc/sys/vm/drop_caches``) before every cold
phase. Then the msbfs daemon's (and bindfs') resident memory at idle and after walking
100,000 files through the mount.

``--requests`` also counts, through the kernel's fuse_request_send tracepoint (tracefs,
a trace instance of our own), the FUSE requests each workload made the kernel send to
bindfs and to msbfs, per item: the first thing to compare when a ratio is low.

Prints one table: throughput per target and the msbfs/bindfs ratio against the targets
(sequential >= 0.8x bindfs, metadata >= 0.5x bindfs), and beside it one variant
(``--variant``): ``msbfs-wb`` is msbfs mounted with ``-o writeback`` (experimental, the
default), ``msbfs-py`` msbfs with every request through pyfuse3 (``MSBFS_HOST_RELAY=0``:
without the C relay, msbfs/hostmount_relay.py). Every workload runs ``--rounds``
times per target, alternating targets (each round starting with the next one), and the
best round counts (a shared machine: the best round is the least disturbed one). A
previous round's tree is set aside, not removed, before the next is made (``_set_aside``
says why). Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from msbfs import mount_daemon
from msbfs.store import MIB
from tools.bench.proc import fields_kib, status_kib

#: --variant: the fourth target's name, its mount options and its environment.
VARIANTS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "wb": ("msbfs-wb", ["-o", "writeback"], {}),
    "pyfuse3": ("msbfs-py", [], {"MSBFS_HOST_RELAY": "0"}),
}


@dataclass
class Sizes:
    file_mib: int
    random_reads: int
    small_files: int
    dir_entries: int
    walk_files: int
    tar_source: Path


FULL = Sizes(1024, 20_000, 10_000, 10_000, 100_000, Path(sysconfig.get_paths()["stdlib"]))
# The readdir target is for 10,000 entries: quick runs list as many (made in the source
# directories directly, so they cost the run little).
QUICK = Sizes(64, 2_000, 1_000, 10_000, 5_000,
              Path(sysconfig.get_paths()["stdlib"]) / "email")


#: Called where a workload's timed part starts (``--requests`` starts counting there,
#: so untimed set-up such as making the file or tree to read is not counted).
on_start: list[Callable[[], None]] = []


def _start() -> float:
    for fn in on_start:
        fn()
    return time.perf_counter()


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and its parts. A host mount maps no guest memory: its own footprint is
    RssAnon + RssFile, and RssFile is mostly the interpreter's and libraries' pages
    (shared with every other process running them)."""
    return status_kib(pid, ("VmRSS", "RssAnon", "RssFile", "RssShmem"))


def kernel_fuse_inodes() -> int:
    """In-use ``fuse_inode`` objects (/proc/slabinfo, root only): every FUSE inode the
    kernel caches holds at least one lookup on its daemon, so the growth over a walk
    says how many inodes the walk left the daemon holding. Host-wide: other FUSE
    mounts' activity meanwhile counts too. -1 when unreadable."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("fuse_inode "):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


@dataclass
class Target:
    name: str
    dir: Path
    pid: int | None = None
    #: the directory behind the mount (the mount itself for native)
    src: Path | None = None
    teardown: list[Callable[[], None]] = field(default_factory=list)


def setup_targets(base: Path, variant: str) -> dict[str, Target]:
    targets = {}
    native = base / "native"
    native.mkdir()
    targets["native"] = Target("native", native)

    src, mnt = base / "bindfs-src", base / "bindfs-mnt"
    src.mkdir()
    mnt.mkdir()
    subprocess.run(["bindfs", str(src), str(mnt)], check=True)
    t = Target("bindfs", mnt, src=src, teardown=[lambda m=mnt: subprocess.run(
        ["fusermount3", "-u", str(m)], check=False)])
    out = subprocess.run(["pgrep", "-f", f"^bindfs {src} {mnt}$"], capture_output=True,
                         text=True, check=False).stdout.split()
    t.pid = int(out[0]) if out else None
    targets["bindfs"] = t

    # msbfs as mounted by default, and its variant.
    for name, extra, env in (("msbfs", [], {}), VARIANTS[variant]):
        src, mnt = base / f"{name}-src", base / f"{name}-mnt"
        src.mkdir()
        mnt.mkdir()
        r = subprocess.run([sys.executable, "-m", "msbfs", "mount", str(src), str(mnt), *extra],
                           capture_output=True, text=True, check=False,
                           env={**os.environ, **env})
        if r.returncode != 0:
            raise SystemExit(f"msbfs mount failed: {r.stderr.strip()}")
        targets[name] = Target(name, mnt, pid=mount_daemon.daemon_pid(str(mnt)), src=src,
                               teardown=[lambda m=mnt: mount_daemon.unmount(str(m))])
    return targets


# ---- workloads: each takes a fresh directory and returns (amount, seconds) -----------------

def seq_write(d: Path, s: Sizes) -> tuple[float, float]:
    buf = os.urandom(MIB)
    t0 = _start()
    fd = os.open(d / "big", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for _ in range(s.file_mib):
        os.write(fd, buf)
    os.fsync(fd)
    os.close(fd)
    return s.file_mib, time.perf_counter() - t0


def _ensure_big(d: Path, s: Sizes) -> Path:
    p = d / "big"
    if not p.exists() or p.stat().st_size != s.file_mib * MIB:
        seq_write(d, s)
    return p


def seq_read(d: Path, s: Sizes) -> tuple[float, float]:
    p = _ensure_big(d, s)
    drop_caches()
    t0 = _start()
    fd = os.open(p, os.O_RDONLY)
    while os.read(fd, MIB):
        pass
    os.close(fd)
    return s.file_mib, time.perf_counter() - t0


def random_reads(d: Path, s: Sizes) -> tuple[float, float]:
    p = _ensure_big(d, s)
    rng = random.Random(7)
    blocks = s.file_mib * MIB // 4096
    offsets = [rng.randrange(blocks) * 4096 for _ in range(s.random_reads)]
    drop_caches()
    t0 = _start()
    fd = os.open(p, os.O_RDONLY)
    for off in offsets:
        os.pread(fd, 4096, off)
    os.close(fd)
    return s.random_reads, time.perf_counter() - t0


def _set_aside(w: Path) -> None:
    """Move a previous round's tree out of the way, unremoved until the run ends. On a
    filesystem without a journal (ext4 as on the test machines), an inode freed in the
    last 60 s (360 s while its inode table block is dirty) is skipped by every new file
    of its block group (find_inode_bit's recently_deleted, one buffer lookup each): removing the last round's files before
    timing this one made each target's creations pay for the targets before it (a perf
    profile of a daemon during untar rounds: 55% of its CPU there)."""
    trash = w.parent / ".trash"
    trash.mkdir(exist_ok=True)
    w.rename(trash / f"{w.name}.{time.monotonic_ns()}")


def _make_small(names: list[str]) -> None:
    data = b"x" * 100
    for n in names:
        fd = os.open(n, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)


def create(d: Path, s: Sizes) -> tuple[float, float]:
    w = d / "created"
    if w.exists():
        _set_aside(w)
    w.mkdir()
    names = [str(w / f"f{i}") for i in range(s.small_files)]
    t0 = _start()
    _make_small(names)
    return s.small_files, time.perf_counter() - t0


def create_stat_unlink(d: Path, s: Sizes) -> tuple[float, float]:
    w = d / "small"
    w.mkdir(exist_ok=True)
    names = [str(w / f"f{i}") for i in range(s.small_files)]
    t0 = _start()
    _make_small(names)
    for n in names:
        os.stat(n)
    for n in names:
        os.unlink(n)
    return s.small_files, time.perf_counter() - t0


def readdir(d: Path, s: Sizes, src: Path | None = None) -> tuple[float, float]:
    """Names only (``ls``, ``os.listdir``): what a listing costs when nothing is stat'ed."""
    w = d / "listing"
    if not w.exists():
        made = (src or d) / "listing"  # behind the mount: quick to make, same listing
        made.mkdir()
        for i in range(s.dir_entries):
            os.close(os.open(made / f"entry-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    drop_caches()
    t0 = _start()
    with os.scandir(w) as it:
        n = sum(1 for _ in it)
    assert n == s.dir_entries
    return n, time.perf_counter() - t0


def untar(d: Path, s: Sizes, tarball: Path) -> tuple[float, float]:
    w = d / "untar"
    if w.exists():
        _set_aside(w)
    w.mkdir()
    t0 = _start()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(w)], check=True)
    os.sync()
    return tarball.stat().st_size / MIB, time.perf_counter() - t0


def _extracted(d: Path, tarball: Path) -> Path:
    """The tarball extracted in ``d`` (made, untimed, if an earlier phase removed it)."""
    w = d / "untar"
    if not (w / "src").exists():
        untar(d, Sizes(0, 0, 0, 0, 0, Path()), tarball)
    return w


def walk_stat(d: Path, s: Sizes, tarball: Path) -> tuple[float, float]:
    """A cold walk of the extracted tree with an lstat of every name (``find -ls``,
    ``du``, a build's up-to-date check)."""
    w = _extracted(d, tarball)
    drop_caches()
    t0 = _start()
    n = 0
    for dirpath, dirs, files in os.walk(w):
        for f in (*dirs, *files):
            os.lstat(os.path.join(dirpath, f))
            n += 1
    return n, time.perf_counter() - t0


def rmtree(d: Path, s: Sizes, tarball: Path) -> tuple[float, float]:
    """``rm -rf`` of the extracted tree, from cold caches."""
    w = _extracted(d, tarball)
    n = sum(len(dirs) + len(files) for _, dirs, files in os.walk(w))
    drop_caches()
    t0 = _start()
    shutil.rmtree(w)
    return n, time.perf_counter() - t0


def make_tarball(base: Path, s: Sizes) -> Path:
    out = base / "source.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(s.tar_source, arcname="src",
                filter=lambda ti: None if ("__pycache__" in ti.name
                                           or "site-packages" in ti.name) else ti)
    return out


@dataclass
class WalkMemory:
    idle: dict[str, int]        # rss_kib before the walk
    walked: dict[str, int]      # and after it
    files: int                  # lstat'ed
    held: int                   # kernel FUSE inodes the walk added (-1: unknown)
    error: str | None


def walk_rss(targets: dict[str, Target], s: Sizes, base: Path) -> dict[str, WalkMemory]:
    """RSS at idle, then after walking ``walk_files`` files (lstat each) through the mount.
    The files are made in each source directly (not through the mounts: fast, and the
    point is what the daemon holds after a walk). The kernel keeps what it walked in its
    inode cache, so the daemon holds a lookup on each (``held`` says how many the
    kernel's cache grew by: issue #11's target is 100,000 cached inodes)."""
    out = {}
    for name in ("bindfs", "msbfs"):
        t = targets[name]
        if t.pid is None:
            continue
        src = base / f"{name}-src" / "walk"
        per_dir = 1000
        for i in range(0, s.walk_files, per_dir):
            dd = src / f"d{i // per_dir:04d}"
            dd.mkdir(parents=True, exist_ok=True)
            for j in range(min(per_dir, s.walk_files - i)):
                os.close(os.open(dd / f"f{j}", os.O_CREAT | os.O_WRONLY, 0o644))
        drop_caches()
        idle = rss_kib(t.pid)
        before = kernel_fuse_inodes()
        n = 0
        error = None

        def failed(e: OSError) -> None:
            raise e
        try:
            for dirpath, _dirs, files in os.walk(t.dir / "walk", onerror=failed):
                for f in files:
                    os.lstat(os.path.join(dirpath, f))
                    n += 1
        except OSError as e:
            error = f"{e.strerror} after {n} files"
        after = kernel_fuse_inodes()
        out[name] = WalkMemory(idle, rss_kib(t.pid), n,
                               after - before if before >= 0 and after >= 0 else -1, error)
    return out


WORKLOADS: list[tuple[str, str, str, float]] = [
    # key, label, unit, target ratio vs bindfs
    ("seq_write", "seq write 1 MiB (+fsync)", "MiB/s", 0.8),
    ("seq_read", "seq read 1 MiB (cold)", "MiB/s", 0.8),
    ("random_reads", "random read 4 KiB (cold)", "ops/s", 0.5),
    ("create", "create+write+close", "files/s", 1.0),
    ("create_stat_unlink", "create+stat+unlink", "files/s", 0.5),
    ("readdir", "readdir names (cold)", "entries/s", 0.5),
    ("untar", "untar stdlib", "MiB/s", 1.0),
    ("walk_stat", "walk + lstat (cold)", "names/s", 1.0),
    ("rmtree", "rmtree (cold)", "names/s", 1.0),
]


class FuseRequests:
    """Counts of the FUSE requests the kernel sends, per connection and opcode, from
    the fuse_request_send tracepoint in a tracefs instance of our own (nothing global
    is touched; removed at close). None of this changes what is measured: the event
    is recorded in the kernel's ring buffer, read between phases."""

    ROOT = Path("/sys/kernel/tracing")

    def __init__(self) -> None:
        self.dir = self.ROOT / "instances" / f"msbfs-bench-{os.getpid()}"
        self.dir.mkdir()
        (self.dir / "buffer_size_kb").write_text("32768\n")
        (self.dir / "events/fuse/fuse_request_send/enable").write_text("1\n")

    def start(self) -> None:
        (self.dir / "trace").write_text("")

    def take(self) -> tuple[dict[tuple[int, str], int], bool]:
        """Counts since ``start`` and whether the buffer overflowed (then they are low)."""
        counts: dict[tuple[int, str], int] = {}
        for line in (self.dir / "trace").read_text().splitlines():
            if "fuse_request_send:" not in line:
                continue
            words = line.split()
            conn = int(words[words.index("connection") + 1])
            op = words[words.index("opcode") + 2].strip("()")
            counts[conn, op] = counts.get((conn, op), 0) + 1
        lost = any(ln.startswith("overrun:") and int(ln.split()[1]) != 0
                   for stats in (self.dir / "per_cpu").glob("cpu*/stats")
                   for ln in stats.read_text().splitlines())
        return counts, lost

    def close(self) -> None:
        (self.dir / "events/fuse/fuse_request_send/enable").write_text("0\n")
        self.dir.rmdir()

    @staticmethod
    def connection(mountpoint: Path) -> int:
        """The kernel's dev_t of a FUSE mount, as the tracepoint prints it."""
        dev = os.stat(mountpoint).st_dev
        return (os.major(dev) << 20) | os.minor(dev)


def print_requests(per: dict[str, dict[str, dict[str, float]]], variant: str) -> None:
    """FUSE requests per item (file, entry, MiB...) of each workload, bindfs vs msbfs."""
    print("\nFUSE requests per item (kernel tracepoint; best round's counts)")
    for key, label, unit, _ in WORKLOADS:
        if key not in per:
            continue
        item = unit.split("/")[0]
        print(f"  {label} (per {item}):")
        for name in ("bindfs", "msbfs", variant):
            ops = per[key].get(name)
            if ops is None:
                continue
            total = sum(ops.values())
            detail = ", ".join(f"{op.removeprefix('FUSE_')} {n:.2f}" for op, n in
                               sorted(ops.items(), key=lambda kv: -kv[1]) if n >= 0.005)
            print(f"    {name:8s} {total:7.2f}  {detail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.hostmount", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--dir", default="/var/tmp", help="where to make the bench directories "
                                                      "(a real disk, not tmpfs)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per workload (best "
                                                             "counts; default 3, quick 1)")
    ap.add_argument("--only", default="", help="comma list of workload keys to run ("
                    + ", ".join(k for k, *_ in WORKLOADS) + ", and memory: the walk of "
                    "the memory line)")
    ap.add_argument("--requests", action="store_true",
                    help="count the FUSE requests per item (tracefs)")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="wb",
                    help="the msbfs variant beside the default mount: wb (-o writeback) or "
                         "pyfuse3 (no C relay)")
    args = ap.parse_args(argv)
    variant = VARIANTS[args.variant][0]
    targets_order = ("native", "bindfs", "msbfs", variant)
    only = {k for k in args.only.split(",") if k}
    unknown = only - {k for k, *_ in WORKLOADS} - {"memory"}
    if unknown:
        raise SystemExit(f"unknown workloads: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        raise SystemExit("needs root (drop_caches, FUSE mounts)")
    s = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    base = Path(args.dir) / f"msbfs-bench-{os.getpid()}"
    base.mkdir(parents=True)
    targets: dict[str, Target] = {}
    try:
        tarball = make_tarball(base, s) if only - {"memory"} or not only else base / "none"
        targets = setup_targets(base, args.variant)
        rss_idle = {n: fields_kib(t.pid, "status", ("VmRSS",))["VmRSS"] for n, t in targets.items() if t.pid}
        results: dict[str, dict[str, float]] = {k: {} for k, *_ in WORKLOADS}
        fns: dict[str, Callable[[Target], tuple[float, float]]] = {
            "seq_write": lambda t: seq_write(t.dir, s),
            "seq_read": lambda t: seq_read(t.dir, s),
            "random_reads": lambda t: random_reads(t.dir, s),
            "create": lambda t: create(t.dir, s),
            "create_stat_unlink": lambda t: create_stat_unlink(t.dir, s),
            "readdir": lambda t: readdir(t.dir, s, t.src),
            "untar": lambda t: untar(t.dir, s, tarball),
            "walk_stat": lambda t: walk_stat(t.dir, s, tarball),
            "rmtree": lambda t: rmtree(t.dir, s, tarball)}
        failures: dict[tuple[str, str], str] = {}
        trace = FuseRequests() if args.requests else None
        if trace is not None:
            on_start.append(trace.start)
        requests: dict[str, dict[str, dict[str, float]]] = {}
        for key, label, unit, _ in WORKLOADS:
            if only and key not in only:
                continue
            for r in range(rounds):
                # Each round starts with the next target: none always runs after the same
                # one (whatever a target leaves the disk to do falls on the next).
                k = r % len(targets_order)
                for name in targets_order[k:] + targets_order[:k]:
                    if (key, name) in failures:
                        continue
                    try:
                        amount, secs = fns[key](targets[name])
                    except (OSError, subprocess.CalledProcessError) as e:
                        failures[key, name] = str(e)[:200]
                        print(f"  {label:28s} round {r + 1} {name:7s} FAILED: {e}",
                              file=sys.stderr, flush=True)
                        continue
                    rate = amount / secs
                    if trace is not None and name != "native" and \
                            rate > results[key].get(name, 0.0):
                        counts, lost = trace.take()
                        conn = FuseRequests.connection(targets[name].dir)
                        requests.setdefault(key, {})[name] = {
                            op + (" (LOST EVENTS)" if lost else ""): n / amount
                            for (c, op), n in counts.items() if c == conn}
                    results[key][name] = max(results[key].get(name, 0.0), rate)
                    print(f"  {label:28s} round {r + 1} {name:7s} {rate:12.1f} {unit}",
                          file=sys.stderr, flush=True)
        if trace is not None:
            trace.close()
        for t in targets.values():  # the big file is no longer needed; the walk is next
            with_big = t.dir / "big"
            if with_big.exists():
                with_big.unlink()
        rss_walk = walk_rss(targets, s, base) if not only or "memory" in only else {}
    finally:
        for t in targets.values():
            for fn in t.teardown:
                fn()
        shutil.rmtree(base, ignore_errors=True)

    print(f"\nmsbfs host mount benchmark ({'quick' if args.quick else 'full'}: "
          f"{s.file_mib} MiB file, {s.random_reads} random reads, {s.small_files} small "
          f"files, {s.dir_entries}-entry dir, tarball of {s.tar_source}; best of {rounds})")
    short = variant.removeprefix("msbfs-")
    hdr = f"{'workload':30s} {'unit':>9s} {'native':>11s} {'bindfs':>11s} {'msbfs':>11s} " \
          f"{variant:>11s} {'msbfs/bindfs':>13s} {'target':>7s}   {short + '/bindfs':>9s}"
    print(hdr)
    print("-" * len(hdr))
    for key, label, unit, goal in WORKLOADS:
        row = results[key]
        if not row:
            continue
        cells = " ".join(f"{row[n]:11.1f}" if n in row else f"{'FAILED':>11s}"
                         for n in targets_order)
        if "msbfs" in row and "bindfs" in row:
            ratio = row["msbfs"] / row["bindfs"]
            verdict = f"{ratio:12.2f}x {goal:5.1f}x {'ok   ' if ratio >= goal else 'BELOW'}"
        else:
            verdict = f"{'-':>13s} {goal:5.1f}x FAILED"
        if variant in row and "bindfs" in row:
            verdict += f" {row[variant] / row['bindfs']:8.2f}x"
        print(f"{label:30s} {unit:>9s} {cells} {verdict}")
    for (key, name), why in failures.items():
        print(f"  {key} on {name} failed: {why}")
    print()
    def mib(kib: dict[str, int]) -> str:
        return (f"{kib['VmRSS'] / 1024:.1f} MiB (anon {kib['RssAnon'] / 1024:.1f}"
                f" + file {kib['RssFile'] / 1024:.1f})")

    for name in ("bindfs", "msbfs"):
        if name in rss_walk:
            w = rss_walk[name]
            what = f"after walking {w.files} files" + (f" (walk FAILED: {w.error})" if w.error else "")
            # Host-wide: other FUSE mounts' inodes coming and going meanwhile count too.
            held = f", kernel FUSE inodes +{w.held} (all mounts)" if w.held >= 0 else ""
            per = (w.walked["VmRSS"] - w.idle["VmRSS"]) * 1024 / w.files if w.files else 0.0
            print(f"{name:7s} VmRSS: at start {rss_idle.get(name, 0) / 1024:.1f} MiB, "
                  f"before the walk {mib(w.idle)}, {what} {mib(w.walked)}{held}"
                  + (f"; {per:.0f} B per file walked" if per else ""))
    if requests:
        print_requests(requests, variant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
