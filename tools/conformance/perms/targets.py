"""Where the permsuite program runs: each target yields the program's parsed ``Run`` and
names the native run it must equal (see the table in ``__init__``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from msbfs.launcher import daemon as daemons
from msbfs.launcher.daemon import ServedTree
from tools.conformance.perms.suite import Run, parse
from tools.conformance.targets import HostMountTarget, NativeTarget

#: The owner the squash targets map every file to (a user the matrix knows: 1000).
SQUASH = (1000, 1000)
TIMEOUT = 1800.0
SYSCTLS = ("protected_hardlinks", "protected_symlinks", "protected_fifos", "protected_regular")


def squash_args() -> list[str]:
    return ["--squash", f"{SQUASH[0]}:{SQUASH[1]}"]


def run_native(binary: Path, args: Sequence[str] = ()) -> Run:
    target = NativeTarget()
    with target as workdir:
        done = target.run([str(binary), workdir, *args], cwd=workdir, timeout=TIMEOUT)
    return parse(done.output, done.returncode)


def run_mount(binary: Path, options: str, args: Sequence[str] = ()) -> Run:
    target = HostMountTarget(options=options)
    with target as workdir:
        done = target.run([str(binary), workdir, *args], cwd=workdir, timeout=TIMEOUT)
    return parse(done.output, done.returncode)


# Guests get ACLs from both daemons (without them an ACL cannot even be set in a guest,
# and the suite's ACL cases would compare nothing).
def msbfs_serve_acl(tree: ServedTree, fd: int) -> list[str]:
    return [*daemons.msbfs_serve(tree, fd), "--posix-acl"]


def virtiofsd_acl(tree: ServedTree, fd: int) -> list[str]:
    return [*daemons.virtiofsd(tree, fd), "-o", "xattr", "-o", "posix_acl"]


msbfs_serve_acl.max_request_queues = 1  # type: ignore[attr-defined]
virtiofsd_acl.max_request_queues = 1  # type: ignore[attr-defined]


def host_sysctls() -> dict[str, str]:
    return {n: Path(f"/proc/sys/fs/{n}").read_text().strip() for n in SYSCTLS}


@dataclass
class GuestRuns:
    share: Run  # the directory served by the daemon
    tmpfs: Run | None  # the guest's own tmpfs: the guest kernel's baseline


def run_guest(binary: Path, daemon: Callable[[ServedTree, int], list[str]],
              args: Sequence[str] = (), accel: str = "tcg",
              baseline: bool = True) -> GuestRuns:
    """Boot one guest over ``daemon``; run the program as guest root on the share, then
    (``baseline``) on the guest's tmpfs."""
    from tools.conformance.guest import GuestTarget  # QEMU parts only when a guest runs

    target = GuestTarget(daemon=daemon, accel=accel)
    with target as workdir:
        (staged,) = target.stage([binary])
        # The guest kernel's link protections must be the host's, or the comparison
        # would measure sysctls rather than the filesystem.
        setup = " && ".join(f"echo {v} > /proc/sys/fs/{n}" for n, v in host_sysctls().items())
        done = target.run(["/bin/sh", "-c", setup], cwd="/")
        if done.returncode != 0:
            raise RuntimeError(f"guest sysctls: {done.output.strip()}")
        share = target.run([staged, workdir, *args], cwd="/", timeout=TIMEOUT)
        # a tmpfs of its own: the guest's /tmp has too few inodes for the whole matrix
        base = target.run(["/bin/sh", "-c", 'mkdir -p /tmp/ps && mount -t tmpfs -o '
                           'nr_inodes=0,size=50% tmpfs /tmp/ps && exec "$0" /tmp/ps "$@"',
                           staged, *args], cwd="/", timeout=TIMEOUT) if baseline else None
    return GuestRuns(parse(share.output, share.returncode),
                     None if base is None else parse(base.output, base.returncode))
