"""Fixtures for real QEMU guests (TCG).

- ``guest_image``: the kernel + initramfs, built by ``msbfs.guest`` into its per-user
  cache (or ``MSBFS_GUEST_DIR``) unless up to date, so quick.
- ``guest_daemon``: which virtio-fs daemon serves guests. ``msbfs serve`` unless
  ``MSBFS_GUEST_DAEMON=virtiofsd`` picks Debian's C virtiofsd (to check the fixture and
  the tests themselves against the reference).
- ``boot_guest(trees)``: a context manager booting a guest that serves each
  ``ServedTree`` and mounts it (``mount -t virtiofs TAG GUEST_PATH``) before returning.
- ``guest``: a module-scoped guest with one read-write shared directory at ``/mnt/share``
  (``guest.host_dir`` on the host). ``guest.run("cmd") -> (status, stdout, stderr)``.
- ``no_leftovers``: asserts that no QEMU, daemon, temporary VM directory or mount made by
  this test process outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from msbfs.launcher import daemon as daemons
from msbfs.launcher.image import GuestImage
from msbfs.launcher.vm import Vm, VmSpec

OWNER_ENV = daemons.OWNER_ENV


@dataclass(frozen=True)
class GuestResult:
    status: int
    stdout: str
    stderr: str

    def __iter__(self):
        return iter((self.status, self.stdout, self.stderr))


class Guest:
    """A booted guest as tests see it: shell commands in, decoded results out."""

    def __init__(self, vm: Vm, host_dirs: dict[str, Path]) -> None:
        self.vm = vm
        self.host_dirs = host_dirs

    @property
    def host_dir(self) -> Path:
        return next(iter(self.host_dirs.values()))

    def run(self, script: str, uid: int = 0, gid: int = 0, cwd: str = "",
            timeout: float = 300) -> GuestResult:
        r = self.vm.run(["/bin/sh", "-c", script], uid=uid, gid=gid, cwd=cwd,
                        timeout=timeout)
        return GuestResult(r.exit_code, r.stdout.decode(errors="replace"),
                           r.stderr.decode(errors="replace"))

    def check(self, script: str, **kw) -> str:
        """Run and require exit status 0; returns stdout."""
        r = self.run(script, **kw)
        assert r.status == 0, f"guest: {script!r} -> {r.status}\n{r.stdout}{r.stderr}"
        return r.stdout


def _serve_available() -> bool:
    try:
        import msbfs.commands.serve  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    from msbfs.guest.build import build

    return build()


@pytest.fixture(scope="session")
def guest_daemon() -> daemons.DaemonCommand:
    choice = os.environ.get("MSBFS_GUEST_DAEMON", "msbfs")
    if choice == "virtiofsd":
        return daemons.virtiofsd
    if not _serve_available():
        pytest.skip("msbfs serve is not built yet (MSBFS_GUEST_DAEMON=virtiofsd runs these "
                    "tests against the C virtiofsd)")
    return daemons.msbfs_serve


def mount_script(trees: list[daemons.ServedTree]) -> str:
    lines = []
    for t in trees:
        flags = t.options.flags()
        opt = f" -o {','.join(flags)}" if flags else ""
        path = shlex.quote(t.guest_path)
        lines.append(f"mkdir -p {path} && mount -t virtiofs {t.tag} {path}{opt}")
    return " && ".join(lines) or "true"


# The flags a guest root lifts before a "the server enforces it" test: while any is
# still set, the guest kernel would refuse on its own and the test would prove nothing.
KERNEL_POLICY_FLAGS = frozenset({"ro", "noexec", "nosuid", "nodev"})
REMOUNT_ALL = "mount -o remount,rw,exec,suid,dev"


def mount_flags(proc_mounts: str, path: str) -> set[str]:
    """The options of the last mount at ``path`` in a /proc/mounts text (the one that
    covers it); an absent mount fails."""
    found = [line.split()[3] for line in proc_mounts.splitlines()
             if len(line.split()) >= 4 and line.split()[1] == path]
    assert found, f"{path} is not mounted:\n{proc_mounts}"
    return set(found[-1].split(","))


BootGuest = Callable[..., contextlib.AbstractContextManager[Guest]]


@pytest.fixture(scope="session")
def boot_guest(guest_image: GuestImage, guest_daemon: daemons.DaemonCommand) -> BootGuest:
    @contextlib.contextmanager
    def boot(trees: list[daemons.ServedTree], cpus: int = 1,
             memory_mib: int = 512) -> Iterator[Guest]:
        spec = VmSpec(trees=trees, cpus=cpus, memory_mib=memory_mib, accel="tcg",
                      daemon=guest_daemon)
        with Vm(spec, guest_image) as vm:
            g = Guest(vm, {t.guest_path: t.shared_dir for t in trees if t.shared_dir})
            g.check(mount_script(trees))
            yield g

    return boot


@pytest.fixture(scope="module")
def guest(boot_guest: BootGuest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    share = tmp_path_factory.mktemp("guest-share")
    tree = daemons.ServedTree(tag="share", guest_path="/mnt/share", shared_dir=share)
    with boot_guest([tree]) as g:
        yield g


def owned_processes(owner: int) -> list[str]:
    """Live processes started by launchers in process ``owner`` (found by the owner mark
    in their environment, so orphans count too)."""
    mark = f"{OWNER_ENV}={owner}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            if mark in env.split(b"\0"):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                found.append(f"{pid}: {cmd.decode(errors='replace')[:200]}")
        except OSError:
            continue
    return found


def _vm_dirs() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob(f"msbfs-vm-{os.getpid()}-*")}


def _mounts_under(base: Path) -> set[str]:
    """Mount points below ``base`` (other engineers' tests mount elsewhere at the same
    time, in the same namespace)."""
    points = set()
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(str(base)):
            points.add(point)
    return points


@pytest.fixture
def no_leftovers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.getbasetemp()
    before_dirs, before_mounts = _vm_dirs(), _mounts_under(base)
    yield
    assert owned_processes(os.getpid()) == []
    assert _vm_dirs() - before_dirs == set()
    assert _mounts_under(base) - before_mounts == set()
