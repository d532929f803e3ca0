"""The daemons serving a real guest are confined (issue 9: "the launcher, make demo and
all guest tests run with these defaults"): while the guest uses its share, the serving
process of each daemon the launcher started has the seccomp filter, no_new_privs, only
the serving capabilities, and pid/net/mount namespaces of its own. Written for
tools/mutants (issue 13), which found no guest test that a daemon left unconfined fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from msbfs.launcher.daemon import ServedTree
from tests.test_confinement import SERVING_CAPS, caps, ns, status

pytestmark = pytest.mark.guest


def serving_child(supervisor: int) -> int:
    """The namespace sandbox's serving process: the supervisor's only child. The guest
    has mounted the share already, so the daemon is past its confinement."""
    kids = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    assert len(kids) == 1, kids
    return int(kids[0])


def test_the_daemons_a_guest_uses_are_confined(boot_guest, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    tree = ServedTree(tag="share", guest_path="/mnt/share", shared_dir=share)
    with boot_guest([tree]) as g:
        g.check("echo hi > /mnt/share/f && cat /mnt/share/f")
        assert (share / "f").read_text() == "hi\n"
        [(_, proc)] = g.vm.daemons
        pid = serving_child(proc.pid)
        st = status(pid)
        assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1", st
        assert caps(pid, "CapEff") == caps(pid, "CapBnd") == SERVING_CAPS
        for kind in ("pid", "net", "mnt"):
            assert ns(pid, kind) != ns("self", kind), kind
        assert st["NSpid"].split()[-1] == "1"  # pid 1 of its own pid namespace
