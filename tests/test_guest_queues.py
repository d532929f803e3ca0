"""``msbfs run --cpus 4`` gives the guest's 6.12 kernel 4 virtio-fs request queues and the
daemon answers on every one of them: a process pinned to vCPU i sends its requests down
request queue i (the driver maps CPUs to queues, /sys/fs/virtiofs/*/mqs), so each queue's
interrupt count must grow while it works. The same evidence the guest benchmark's
--parallel4 rounds require (tools/bench/guest_queues.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from msbfs.launcher import daemon as daemons
from tools.bench.guest_queues import irq_delta, parse_queue_irqs, queue_irqs_script

pytestmark = pytest.mark.guest

CPUS = 4
GUEST_IO = Path(__file__).resolve().parents[1] / "tools" / "bench" / "guest_io.c"


def test_each_vcpu_is_served_on_its_own_request_queue(guest_image, guest_daemon, msb_home,
                                                      tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    irqs = queue_irqs_script("msb0")  # the launcher tags its first virtio-fs mount msb0
    work = "; ".join(
        f"taskset -c {i} sh -c 'mkdir /w/d{i} && echo {i} > /w/d{i}/f && cat /w/d{i}/f' "
        f"|| exit 1" for i in range(CPUS))
    script = f"{irqs}; echo ==; {work}; echo ==; {irqs}"
    kind = "virtiofsd" if guest_daemon is daemons.virtiofsd else "msbfs"
    proc = subprocess.run(
        [sys.executable, "-m", "msbfs", "run", "--accel", "tcg", "--cpus", str(CPUS),
         "--daemon", kind, "--mount", f"/w=bind:{share}", "--", "sh", "-c", script],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MSBFS_GUEST_DIR": str(guest_image.directory)})
    assert proc.returncode == 0, proc.stderr
    before, done, after = proc.stdout.split("==\n")
    assert done.split() == [str(i) for i in range(CPUS)]
    # One request queue per vCPU for msbfs; Debian's virtiofsd gets its one (it dies on a
    # second). Linux >= 6.11 opens as many as the device offers, up to one per CPU.
    queues = CPUS if kind == "msbfs" else 1
    assert sorted(parse_queue_irqs(before)) == list(range(queues)), before
    delta = irq_delta(parse_queue_irqs(before), parse_queue_irqs(after))
    assert all(delta.values()), f"a request queue answered nothing: {delta}"
    assert sorted(p.name for p in share.iterdir()) == [f"d{i}" for i in range(CPUS)]


def test_guest_io_par_keeps_its_processes_in_step(guest_image, guest_daemon, msb_home,
                                                  tmp_path: Path) -> None:
    # The benchmark's 4-process loop, in a 4-vCPU guest: a phase line each, one process
    # per CPU, nothing left behind; asked for more processes than CPUs it fails at once
    # (a worker it cannot pin fails its first phase) instead of waiting for ever.
    share, tools = tmp_path / "share", tmp_path / "tools"
    share.mkdir()
    tools.mkdir()
    subprocess.run(["gcc", "-static", "-O2", "-o", str(tools / "guest_io"),
                    str(GUEST_IO)], check=True)
    script = (f"/b/guest_io par /w 20 {CPUS} && echo == && "
              f"mkdir /w/more && ! /b/guest_io par /w/more 20 {CPUS + 1} && ls /w/p0 | wc -l")
    kind = "virtiofsd" if guest_daemon is daemons.virtiofsd else "msbfs"
    proc = subprocess.run(
        [sys.executable, "-m", "msbfs", "run", "--accel", "tcg", "--cpus", str(CPUS),
         "--daemon", kind, "--mount", f"/w=bind:{share}", "--mount", f"/b=bind:{tools}:ro",
         "--", "sh", "-c", script],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MSBFS_GUEST_DIR": str(guest_image.directory)})
    assert proc.returncode == 0, proc.stderr
    ran, after = proc.stdout.split("==\n")
    lines = [line.split() for line in ran.splitlines()]
    assert [ln[0] for ln in lines] == ["create", "stat", "unlink", "cpus"]
    assert all(float(ln[1]) > 0 for ln in lines[:3])
    assert sorted(lines[3][1:]) == [str(i) for i in range(CPUS)]
    assert after.split() == ["0"]
    assert "sched_setaffinity" in proc.stderr


def test_interrupt_lines_are_read_per_queue() -> None:
    # Lines as a 4-vCPU 6.12 guest prints them; the config and hiprio vectors and another
    # device's queues are not request queues of this one (the script greps its device).
    text = (" 26:          1          0          0          0  PCI-MSIX-0000:00:03.0   "
            "2-edge      virtio1-requests.0\n"
            " 29:          0          0          3          2  PCI-MSIX-0000:00:03.0   "
            "5-edge      virtio1-requests.3\n"
            " 25:          0          0          0          1  PCI-MSIX-0000:00:03.0   "
            "1-edge      virtio1-hiprio\n")
    assert parse_queue_irqs(text) == {0: 1, 3: 5}
    assert irq_delta({0: 1, 3: 5}, {0: 4, 3: 5}) == {0: 3, 3: 0}
