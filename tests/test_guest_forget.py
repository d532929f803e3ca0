"""A real guest deletes files and the daemon lets go of them (issue 9, point 8).

The Linux guest sends FORGET on the hiprio queue with no reply buffer; if the daemon
does not act on it, every deleted file stays open in the daemon and its blocks stay
allocated on the host until the guest unmounts."""

from __future__ import annotations

import os
import time
from pathlib import Path

from msbfs.launcher import daemon as daemons


def _tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (a confined daemon serves from a child)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _deleted_fds(pid: int, marker: str) -> list[str]:
    found = []
    for p in _tree_pids(pid):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if marker in target and target.endswith("(deleted)"):
                found.append(target)
    return found


def test_guest_rm_closes_the_daemons_fds(boot_guest, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    tree = daemons.ServedTree(tag="share", guest_path="/mnt/share", shared_dir=share)
    with boot_guest([tree]) as g:
        (_, proc), = g.vm.daemons
        g.check("cd /mnt/share && for i in $(seq 1 50); do "
                "dd if=/dev/zero of=victim-$i bs=64k count=1 2>/dev/null || exit 1; done")
        assert len(list(share.glob("victim-*"))) == 50
        g.check("rm /mnt/share/victim-*")
        assert list(share.glob("victim-*")) == []
        # The guest's FORGETs arrive asynchronously: poll for them (the deadline is only
        # a failure bound; on a working daemon this ends within a few ms).
        end = time.monotonic() + 30
        left = _deleted_fds(proc.pid, "victim-")
        while left and time.monotonic() < end:
            time.sleep(0.05)
            left = _deleted_fds(proc.pid, "victim-")
        assert left == [], f"{len(left)} deleted files still open in the daemon"
