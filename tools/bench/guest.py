"""Guest benchmarks: ``msbfs serve`` vs Debian's C virtiofsd behind a real TCG guest, side
by side in one run, ratios printed.

    python -m tools.bench.guest [--quick] [--launch-rounds N] [--accel tcg]

1. Launch: wall time from starting ``msbfs run`` (the CLI, as a user runs it) to the
   guest command printing its first line, with each daemon (``--daemon``), alternating.
2. In one guest per daemon, the same directory tree on the host (each daemon gets its
   own subdirectory): sequential write then read of a 256 MiB file (1 MiB requests, page
   cache dropped before the read), 4 KiB random reads, create+stat+unlink of 5,000 files,
   extracting a source tarball. The loops are ``tools/bench/guest_io.c`` (built static,
   served to the guest read-only) so the timings are file system work, not forks.
3. Each daemon's resident memory (VmRSS and peak VmHWM of its process tree) after the
   workloads, against the other's.

Ratios are msbfs / virtiofsd as speed: above 1.0 msbfs is faster. For memory the ratio
is msbfs's over virtiofsd's (lower is better); guest RAM a daemon has touched through its
mapping counts as its RssShmem, so the daemons' own footprint is RssAnon + RssFile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from msbfs.launcher import daemon as daemons
from msbfs.launcher.sandbox import Sandbox
from msbfs.mounts import Mount, MountOptions
from tools.bench.proc import status_kib

KINDS = {"virtiofsd": daemons.virtiofsd, "msbfs": daemons.msbfs_serve}
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
    launch: list[float] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    #: KiB summed over the daemon's process tree: RssAnon, RssFile, RssShmem, VmHWM.
    rss: dict[str, int] = field(default_factory=dict)


def memory_kib(pid: int) -> dict[str, int]:
    """The daemon tree's memory by kind. Guest RAM the daemon has mapped (a vhost-user
    backend maps all of it) shows up as RssShmem: it is the guest's memory, not the
    daemon's, so RssAnon + RssFile is the daemon's own footprint."""
    return status_kib(pid, ("RssAnon", "RssFile", "RssShmem", "VmHWM"))


def build_tools(out: Path, sizes: Sizes) -> None:
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out / "guest_io"),
                    str(HERE / "guest_io.c")], check=True)
    subprocess.run(["tar", "czf", str(out / "src.tar.gz"), "-C", str(sizes.tar_source.parent),
                    sizes.tar_source.name], check=True)


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


def _timed(sb: Sandbox, script: str) -> float:
    """Host wall time of one guest command (it must succeed)."""
    began = time.monotonic()
    r = sb.run(script)
    took = time.monotonic() - began
    if r.exit_code != 0:
        raise RuntimeError(f"guest: {script!r} -> {r.exit_code}: {r.stderr.decode().strip()}")
    return took


def workloads(kind: str, share: Path, tools: Path, sizes: Sizes, accel: str) -> Result:
    res = Result()
    mounts = {"/w": Mount.bind(share), "/b": Mount.bind(tools, MountOptions(readonly=True))}
    drop = "sync; echo 3 > /proc/sys/vm/drop_caches; "
    with Sandbox(mounts, accel=accel, daemon=KINDS[kind], memory_mib=768) as sb:
        sb.run("cp /b/src.tar.gz /tmp/ && mkdir -p /w/meta /w/untar")
        t = res.times
        t["seq write"] = _timed(sb, f"/b/guest_io write /w/big {sizes.file_mib}")
        t["seq read"] = _timed(sb, drop + "/b/guest_io read /w/big")
        t["4k random read"] = _timed(sb, drop + f"/b/guest_io randread /w/big "
                                               f"{sizes.random_reads}")
        t["create/stat/unlink"] = _timed(sb, f"/b/guest_io meta /w/meta {sizes.files}")
        t["untar"] = _timed(sb, "tar xzf /tmp/src.tar.gz -C /w/untar && sync")
        assert sb.vm is not None
        [proc] = [p for tree, p in sb.vm.daemons if tree.guest_path == "/w"]
        res.rss = memory_kib(proc.pid)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.guest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--launch-rounds", type=int, default=3)
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="tcg")
    p.add_argument("--launch-only", action="store_true", help="only the launch timing")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    results = {k: Result() for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="msbfs-bench-guest.") as tmp:
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
                results[kind].launch.append(launch_once(kind, base / f"launch-{kind}",
                                                        args.accel))
        for kind in () if args.launch_only else KINDS:
            share = base / f"share-{kind}"
            share.mkdir()
            r = workloads(kind, share, tools, sizes, args.accel)
            results[kind].times, results[kind].rss = r.times, r.rss
            shutil.rmtree(share)
    report(results, sizes)
    return 0


def _launch_line(v: Result, m: Result) -> None:
    lv, lm = statistics.median(v.launch), statistics.median(m.launch)
    print(f"{'launch to command start (median s)':<34}{lv:>12.2f}{lm:>12.2f}{lv / lm:>11.2f}x")
    print(f"{'  launch rounds (s)':<34}{' '.join(f'{x:.2f}' for x in v.launch):>12}"
          f"  {' '.join(f'{x:.2f}' for x in m.launch)}")


def report(results: dict[str, Result], sizes: Sizes) -> None:
    v, m = results["virtiofsd"], results["msbfs"]
    print(f"{'guest (TCG)':<34}{'virtiofsd':>12}{'msbfs':>12}{'msbfs/vfsd':>12}")
    _launch_line(v, m)
    if not v.times:
        return
    labels = {
        "seq write": f"seq write {sizes.file_mib} MiB (s)",
        "seq read": f"seq read {sizes.file_mib} MiB (s)",
        "4k random read": f"{sizes.random_reads} x 4 KiB random reads (s)",
        "create/stat/unlink": f"create/stat/unlink {sizes.files} (s)",
        "untar": f"untar {sizes.tar_source} (s)",
    }
    for key, label in labels.items():
        tv, tm = v.times[key], m.times[key]
        print(f"{label:<34}{tv:>12.2f}{tm:>12.2f}{tv / tm:>11.2f}x")
    for key in ("seq write", "seq read"):
        print(f"{'  ' + key + ' MiB/s':<34}{sizes.file_mib / v.times[key]:>12.1f}"
              f"{sizes.file_mib / m.times[key]:>12.1f}")
    def mib(r: Result, *keys: str) -> float:
        return sum(r.rss[k] for k in keys) / 1024

    for label, keys in (("daemon own RSS, anon+file (MiB)", ("RssAnon", "RssFile")),
                        ("  of which anon (MiB)", ("RssAnon",)),
                        ("guest RAM mapped, shmem (MiB)", ("RssShmem",)),
                        ("peak VmHWM incl. guest RAM (MiB)", ("VmHWM",))):
        a, b = mib(v, *keys), mib(m, *keys)
        print(f"{label:<34}{a:>12.1f}{b:>12.1f}{b / max(a, 0.001):>11.2f}x")

if __name__ == "__main__":
    sys.exit(main())
