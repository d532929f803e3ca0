"""Fixtures for real host FUSE mounts made by ``msbfs mount`` (the CLI's background mode,
in a separate daemon process, as users run it).

- ``host_mount(source=None, options="", no_kernel_flags=False)``: a factory fixture; mounts
  SOURCE (default: a fresh directory) and returns a ``HostMount`` (``.source``,
  ``.mnt``, ``.pid``). At teardown every mount it made is unmounted with ``msbfs umount``
  and the test fails if a mount is left behind.
- ``shared_host_mount``: one module-scoped mount of a fresh directory, for tests that only
  need *a* mount (differential exerciser, errno tests); tests work in their own subdirs.
- ``msbfs_cli(*args)``: run ``python -m msbfs ARGS`` and return the CompletedProcess.
- ``run_as(uid, gid, argv, cwd=)`` / ``py_as(uid, gid, code, *args, cwd=)``: run a command
  (a Python snippet) as another user, no supplementary groups. The working directory is
  entered before the switch, so relative paths work beneath root-only (0700) test dirs.
- ``wait_for(predicate, timeout)``: poll a real condition with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from msbfs import mount_daemon, mountinfo

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and /dev/fuse")


def msbfs(*args: str, env: dict[str, str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "msbfs", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False,
                          stdin=subprocess.DEVNULL)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (a deadline on a real
    condition, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def run_as(uid: int, gid: int, argv: Sequence[str], *, cwd: str | None = None,
           check: bool = False, pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), user=uid, group=gid, extra_groups=[], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=check,
                          stdin=subprocess.DEVNULL, pass_fds=pass_fds)


def py_as(uid: int, gid: int, code: str, *args: str, cwd: str | None = None,
          pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
    """Run a stdlib-only Python snippet as ``uid:gid``; it prints its results. The
    system interpreter, because the venv's may live where other users cannot reach.
    ``pass_fds``: fds the snippet inherits (at their numbers)."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    return run_as(uid, gid, [python, "-c", code, *args], cwd=cwd, pass_fds=pass_fds)


@dataclass
class HostMount:
    source: Path
    mnt: Path

    @property
    def pid(self) -> int | None:
        return mount_daemon.daemon_pid(str(self.mnt))

    def kernel_options(self) -> set[str]:
        """The per-mount flags the kernel applies (mountinfo field 6)."""
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if parts[4] == str(self.mnt):
                    return set(parts[5].split(","))
        raise AssertionError(f"{self.mnt} is not in mountinfo")


def _unmount_checked(mnt: Path) -> None:
    if mountinfo.mount_state(str(mnt)) == "none":
        return
    r = msbfs("umount", str(mnt))
    assert r.returncode == 0, f"msbfs umount {mnt}: {r.stderr}"
    assert not os.path.ismount(mnt), f"{mnt} still mounted after msbfs umount"


class MountFactory:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[HostMount] = []

    def __call__(self, source: str | Path | None = None, options: str = "", *,
                 no_kernel_flags: bool = False, mnt: Path | None = None,
                 env: dict[str, str] | None = None) -> HostMount:
        """``env``: the daemon's environment (None: ours)."""
        n = len(self.made)
        if source is None:
            source = self.base / f"src{n}"
            source.mkdir()
        if mnt is None:
            mnt = self.base / f"mnt{n}"
            mnt.mkdir()
        args = ["mount", str(source), str(mnt)]
        if options:
            args += ["-o", options]
        if no_kernel_flags:
            args.append("--no-kernel-flags")
        r = msbfs(*args, env=env)
        assert r.returncode == 0, f"msbfs mount failed: {r.stderr}"
        # Background mode returns only once the mount answers: no waiting here.
        assert os.path.ismount(mnt)
        m = HostMount(Path(source), mnt)
        self.made.append(m)
        return m

    def cleanup(self) -> None:
        errors = []
        for m in reversed(self.made):
            try:
                _unmount_checked(m.mnt)
            except AssertionError as e:
                errors.append(str(e))
        self.made.clear()
        assert not errors, errors


@pytest.fixture
def host_mount(tmp_path: Path) -> Iterator[MountFactory]:
    if os.geteuid() != 0:
        pytest.skip("host mounts need root and /dev/fuse")
    factory = MountFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def shared_host_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostMount]:
    if os.geteuid() != 0:
        pytest.skip("host mounts need root and /dev/fuse")
    factory = MountFactory(tmp_path_factory.mktemp("shared_mount"))
    try:
        yield factory()
    finally:
        factory.cleanup()


@pytest.fixture
def msbfs_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return msbfs
