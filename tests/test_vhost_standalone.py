"""vhost/ is a package of its own: with msbfs made unimportable, vhost (its own C
extension included) still imports and the echo device serves requests through the
in-tree frontend over a real vhost-user socket."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cffi import FFI

from msbfs import vring

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter: a meta-path finder refuses msbfs before vhost is imported,
# so any `import msbfs...` anywhere under vhost/ fails the run.
SCRIPT = textwrap.dedent('''
    import socket
    import sys

    class BlockMsbfs:
        def find_spec(self, name, path=None, target=None):
            if name == "msbfs" or name.startswith("msbfs."):
                raise ImportError(f"msbfs is blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, BlockMsbfs())

    import trio

    import vhost
    import vhost._native
    from vhost.backend import Backend
    from vhost.connection import Connection
    from vhost.echo import EchoDevice
    from vhost.frontend import Frontend

    async def main():
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a.setblocking(False)
        b.setblocking(False)
        dev = EchoDevice()
        backend = Backend(dev, Connection(trio.socket.from_stdlib_socket(a)))
        fe = Frontend(Connection(trio.socket.from_stdlib_socket(b)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend.run)
            await fe.handshake([64])
            for k in range(200):
                data = bytes([k % 256]) * (k % 97)
                c = await fe.submit(0, [data], [len(data)], indirect=bool(k % 2))
                assert c.data == data, (k, c.data, data)
            await fe.close()
        assert backend.queues[0].statistics()["pushed"] == 200
        assert dev.served == 200

    trio.run(main)
    loaded = sorted(m for m in sys.modules if m == "msbfs" or m.startswith("msbfs."))
    assert not loaded, loaded
    print("native", vhost._native.__file__)
''')


def test_vhost_runs_echo_without_msbfs() -> None:
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # vhost's C is its own extension inside the vhost package.
    native = Path(r.stdout.split("native ", 1)[1].strip())
    assert native.parent == ROOT / "vhost", native


def test_ring_layout_check_refuses_a_different_struct() -> None:
    """msbfs casts vhost's ring pointer into its own FFI: a struct msb_vq laid out
    differently in one of the two extensions must stop msbfs.vring from loading."""
    vring.check_layout()  # the built extensions agree
    cdef = (ROOT / "csrc" / "virtq.cdef").read_text().replace("...;", "")
    assert "    uint16_t num;\n" in cdef
    other = FFI()
    other.cdef(cdef.replace("    uint16_t num;\n", "    uint32_t num;\n"))
    with pytest.raises(vring.RingLayoutMismatch, match="struct msb_vq"):
        vring.check_layout(theirs=other)
