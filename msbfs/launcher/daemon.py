"""The virtio-fs daemons a guest needs: one per served tree, each handed a vhost-user
listening socket we bound ourselves (``--fd``), so QEMU can connect the moment it starts
and no one waits for a socket file to appear.

Which daemon runs is a ``DaemonCommand``: ``msbfs_serve`` (ours, policy server-side) or
``virtiofsd`` (Debian's C reference, for side-by-side tests and timing).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from msbfs._native import lib
from msbfs.confine import PR_SET_PDEATHSIG
from msbfs.mounts import MountOptions

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
#: Every helper process carries this mark (our pid) in its environment, so a leak check
#: can find one even after it has been orphaned.
OWNER_ENV = "MSBFS_SANDBOX_OWNER"


@dataclass(frozen=True)
class ServedTree:
    """One tree served to the guest and the policy its daemon enforces."""

    tag: str
    guest_path: str
    shared_dir: Path | None = None
    volume: str | None = None
    #: the policy flags its daemon enforces (the guest's mount carries them too)
    options: MountOptions = field(default_factory=MountOptions)
    quota_mib: int | None = None
    #: virtio-fs request queues (Linux >= 6.11 spreads requests over them per CPU).
    request_queues: int = 1
    #: virtiofsd's --xattrmap rules; None: the daemon's default (no trusted.*/security.*).
    xattrmap: str | None = None
    #: virtiofsd's id maps (msbfs.tree.idmap), passed as repeated --uid-map/--gid-map
    #: (``:NS:HOST:COUNT:``) and --translate-uid/--translate-gid (``TYPE:A:B:COUNT``).
    uid_map: tuple[str, ...] = ()
    gid_map: tuple[str, ...] = ()
    translate_uid: tuple[str, ...] = ()
    translate_gid: tuple[str, ...] = ()

    def describe(self) -> str:
        src = f"volume {self.volume}" if self.volume else str(self.shared_dir)
        return f"{self.guest_path} ({src})"


DaemonCommand = Callable[[ServedTree, int], list[str]]
#: msbfs serve's option for a flag whose spec name differs (virtiofsd's --readonly)
_SERVE_FLAG = {"ro": "readonly"}


def msbfs_serve(tree: ServedTree, fd: int) -> list[str]:
    argv = [sys.executable, "-m", "msbfs", "serve", f"--fd={fd}", f"--tag={tree.tag}"]
    if tree.volume:
        argv.append(f"--volume={tree.volume}")
    else:
        argv.append(f"--shared-dir={tree.shared_dir}")
    argv += [f"--{_SERVE_FLAG.get(flag, flag)}" for flag in tree.options.flags()]
    if tree.quota_mib is not None:
        argv.append(f"--quota={tree.quota_mib}")
    if tree.request_queues != 1:
        argv.append(f"--num-request-queues={tree.request_queues}")
    if tree.xattrmap is not None:
        argv.append(f"--xattrmap={tree.xattrmap}")
    for flag in ("uid_map", "gid_map", "translate_uid", "translate_gid"):
        argv += [f"--{flag.replace('_', '-')}={item}" for item in getattr(tree, flag)]
    return argv


msbfs_serve.max_request_queues = 64  # type: ignore[attr-defined]


def virtiofsd(tree: ServedTree, fd: int) -> list[str]:
    """Debian's C virtiofsd. It knows no policy and no volumes: a named volume's directory
    must be given as ``shared_dir``."""
    if tree.shared_dir is None:
        raise ValueError("virtiofsd serves directories only")
    return [VIRTIOFSD, f"--fd={fd}", "-o", f"source={tree.shared_dir}", "-o", "cache=auto",
            "-o", "sandbox=chroot"]


# Debian's (QEMU 7.2) C virtiofsd panics on a second request queue.
virtiofsd.max_request_queues = 1  # type: ignore[attr-defined]


def request_queues(daemon: DaemonCommand, cpus: int) -> int:
    """One request queue per vCPU, as far as the daemon supports."""
    return max(1, min(cpus, getattr(daemon, "max_request_queues", 1)))


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if the launcher is killed outright, its children follow it.
    lib.msb_prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv: list[str], log: Path, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start a helper in its own session (a terminal's Ctrl-C reaches only us, and we stop
    the helpers in order) that dies with us."""
    env = {**os.environ, OWNER_ENV: str(os.getpid())}
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                pass_fds=pass_fds, start_new_session=True, env=env,
                                preexec_fn=_die_with_parent)


def listen_unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    os.set_inheritable(sock.fileno(), True)
    return sock


def stop(proc: subprocess.Popen, grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
