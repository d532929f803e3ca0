"""Where a suite runs: a directory served by msbfs, and a way to run commands there.

A target is a context manager: entering sets the mount up and returns the working
directory *as the target sees it*; leaving tears it down (and must leave no mount
behind). ``stage`` makes host files (the suite's scripts) reachable from the target;
``run`` executes an argv there. A guest target (QEMU) implements the same four calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol


@dataclass(frozen=True)
class Completed:
    """A finished command: exit status and its merged stdout+stderr."""

    returncode: int
    output: str


class Target(Protocol):
    name: str

    def __enter__(self) -> str:
        """Set up; return the working directory (a path inside the target)."""
        ...

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def stage(self, paths: Sequence[Path]) -> list[str]:
        """Make these host files runnable in the target; their paths there."""
        ...

    def run(self, argv: Sequence[str], *, cwd: str, env: Mapping[str, str] | None = None,
            timeout: float = 600) -> Completed: ...


def _run_local(argv: Sequence[str], cwd: str, env: Mapping[str, str] | None,
               timeout: float) -> Completed:
    full_env = {**os.environ, **(env or {})}
    try:
        r = subprocess.run(list(argv), cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else ""
        return Completed(124, out + f"\n# timed out after {timeout:.0f}s")
    return Completed(r.returncode, r.stdout.decode(errors="replace"))


class _OnThisHost:
    """Targets whose commands run on this host: files need no staging."""

    def stage(self, paths: Sequence[Path]) -> list[str]:
        return [str(p.resolve()) for p in paths]

    def run(self, argv: Sequence[str], *, cwd: str, env: Mapping[str, str] | None = None,
            timeout: float = 600) -> Completed:
        return _run_local(argv, cwd, env, timeout)


class NativeTarget(_OnThisHost):
    """A plain host directory: the baseline a suite must pass before it says anything
    about msbfs."""

    name = "native"

    def __init__(self, directory: str | None = None) -> None:
        self._given = directory
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> str:
        if self._given:
            return os.path.abspath(self._given)
        self._tmp = tempfile.TemporaryDirectory(prefix="msbfs-conf-native.")
        return self._tmp.name

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class HostMountTarget(_OnThisHost):
    """``msbfs mount SOURCE MNT -o OPTIONS`` on this host, through the real CLI (the
    background mode users run). SOURCE is a volume name, a directory, or (default) a
    fresh temporary directory."""

    name = "host"

    def __init__(self, source: str | None = None, options: str = "",
                 extra_args: Sequence[str] = ()) -> None:
        self.source = source
        self.options = options
        self.extra_args = list(extra_args)
        self.mountpoint: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def _msbfs(self, *args: str) -> Completed:
        return _run_local([sys.executable, "-m", "msbfs", *args], os.getcwd(), None, 120)

    def __enter__(self) -> str:
        self._tmp = tempfile.TemporaryDirectory(prefix="msbfs-conf-host.")
        base = Path(self._tmp.name)
        source = self.source
        if source is None:
            (base / "source").mkdir()
            source = str(base / "source")
        mnt = base / "mnt"
        mnt.mkdir()
        args = ["mount", source, str(mnt), *self.extra_args]
        if self.options:
            args += ["-o", self.options]
        r = self._msbfs(*args)
        if r.returncode != 0:
            self._tmp.cleanup()
            self._tmp = None
            raise RuntimeError(f"msbfs mount failed: {r.output.strip()}")
        self.mountpoint = str(mnt)
        return self.mountpoint

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self.mountpoint is not None:
                r = self._msbfs("umount", self.mountpoint)
                if r.returncode != 0:
                    raise RuntimeError(f"msbfs umount failed: {r.output.strip()}")
                if os.path.ismount(self.mountpoint):
                    raise RuntimeError(f"{self.mountpoint} is still mounted after umount")
        finally:
            self.mountpoint = None
            if self._tmp is not None:
                shutil.rmtree(self._tmp.name, ignore_errors=True)
                self._tmp = None
