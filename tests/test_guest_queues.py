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
