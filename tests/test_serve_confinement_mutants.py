"""``no_new_privs`` is msbfs serve's own layer, not a side effect of the seccomp filter
(libseccomp sets it too when it loads one): with ``--seccomp=none`` the serving process
still has it. Written for tools/mutants (issue 13): the mutant that drops
``set_no_new_privs`` survived every test, which all ran with the filter on."""

from __future__ import annotations

from pathlib import Path

from tests.plugins.virtiofs import run_serve
from tests.test_confinement import SERVING_CAPS, caps, status
from tests.test_virtiofs_serve import ROOT, connect, wait_exit


async def test_no_new_privs_without_seccomp(tmp_path: Path) -> None:
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={tmp_path}", "--seccomp=none", "--sandbox=none"],
                   sock) as proc:
        c = await connect(sock)
        await c.ok(c.r.getattr(ROOT))  # it serves: confine() is behind it
        st = status(proc.pid)
        assert st["Seccomp"] == "0"  # no filter, so nothing else set the flag
        assert st["NoNewPrivs"] == "1"
        assert caps(proc.pid, "CapEff") == SERVING_CAPS
        await c.fe.close()
        assert await wait_exit(proc) == 0
