"""What a real guest's file work costs the daemon's Python: nothing (issue 11).

The C paths answer every opcode of a guest's ordinary file work (create, write, read,
stat, chmod, utimens, symlink, rename, listing, unlink, rmdir); the daemon's slow path
(the FUSE codec and the tree, ~10 us a request) sees only the session's own INIT and
DESTROY, and SYNCFS. Checked by the slow path's per-opcode count, which ``msbfs serve``
logs at exit at DEBUG. A guest kernel sending a body C does not parse (an extension it
negotiated, a flag the C paths hand back), or a C path that stopped answering, shows up
as an opcode in that count."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from msbfs.launcher import daemon as daemons
from msbfs.launcher.vm import Vm, VmSpec
from tests.plugins.guest import Guest, mount_script

#: The slow path's own: the session's start and end, and syncfs (no C path: rare).
PYTHONS = {"INIT", "DESTROY", "SYNCFS"}

WORK = (
    "cd /mnt/share && mkdir d && cd d"
    " && for i in $(seq 1 40); do echo data-$i > f$i || exit 1; done"
    " && cat f* > /dev/null && stat f1 > /dev/null && ls -l > /dev/null"
    " && chmod 600 f1 && touch -d @1000000000 f2 && ln -s f1 link && readlink link"
    " && mv f3 g3 && ln f4 hard && dd if=f5 of=copy bs=4k 2>/dev/null"
    " && echo more >> f6 && rm f* g3 link hard copy && cd .. && rmdir d && sync"
)


def _slow_ops(log: str) -> dict[str, int]:
    found = re.findall(r"slow path by opcode: ?(.*)", log)
    assert found, f"no slow path count in the daemon's log:\n{log[-2000:]}"
    return {k: int(v) for k, v in (item.split("=") for item in found[-1].split())}


def test_guest_file_work_reaches_no_python(guest_image, guest_daemon, tmp_path: Path) -> None:
    if guest_daemon is not daemons.msbfs_serve:
        pytest.skip("the slow path's count is msbfs serve's")
    log = tmp_path / "daemon.log"

    def serve(tree: daemons.ServedTree, fd: int) -> list[str]:
        argv = [*daemons.msbfs_serve(tree, fd), "--log-level=debug"]
        return ["sh", "-c", f'exec "$@" 2>>{shlex.quote(str(log))}', "sh", *argv]

    share = tmp_path / "share"
    share.mkdir()
    tree = daemons.ServedTree(tag="share", guest_path="/mnt/share", shared_dir=share)
    with Vm(VmSpec(trees=[tree], accel="tcg", daemon=serve), guest_image) as vm:
        g = Guest(vm, {"/mnt/share": share})
        g.check(mount_script([tree]))
        assert g.check(WORK).strip() == "f1"
    assert list(share.iterdir()) == []
    ops = _slow_ops(log.read_text(errors="replace"))
    assert set(ops) - PYTHONS == set(), f"reached Python: {ops}"
    assert ops.get("INIT") == 1
