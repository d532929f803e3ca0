"""Fixtures for named volumes: a fresh volume, a lock held by another process, the CLI."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import msbfs
from msbfs.volumes import VolumeHandle

#: A child that takes a volume's serving lock, says so on stdout, then waits for stdin
#: to close (the parent's "let go"), like a daemon serving the volume.
_HOLDER = """
import sys
import msbfs
lock = msbfs.hold_volume(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
lock.close()
"""


@pytest.fixture
def volume(msb_home: Path) -> VolumeHandle:
    """A fresh dir volume named ``vol`` in a private MSB_HOME."""
    msbfs.create_volume("vol")
    return msbfs.get_volume("vol")


@pytest.fixture
def hold_in_process(msb_home: Path) -> Callable[[str], contextlib.AbstractContextManager[subprocess.Popen[str]]]:
    """``with hold_in_process(name) as proc:`` — another process holds the volume's
    serving lock for the body (ready when entered; released when the body ends)."""

    @contextlib.contextmanager
    def hold(name: str) -> Iterator[subprocess.Popen[str]]:
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, name], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline()  # blocks until the lock is held (or it died)
            assert line == "held\n", f"lock holder failed: {line!r}, rc={proc.poll()}"
            yield proc
        finally:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=30)
            if proc.stdout:
                proc.stdout.close()

    return hold


@pytest.fixture
def msbfs_cli(msb_home: Path) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Run ``python -m msbfs ARGS...`` as a real process against the test's MSB_HOME;
    returns the CompletedProcess (bytes output; ``input=`` feeds stdin)."""

    def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "msbfs", *args], input=input,
                              capture_output=True, env=os.environ.copy(), timeout=120,
                              check=False)

    return run


@pytest.fixture
def msbfs_main(msb_home: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Like ``msbfs_cli`` but runs ``msbfs.cli.main`` in this process (no interpreter
    start-up), for tables of cases; ``msbfs_cli`` covers the same paths for real."""
    from msbfs import cli

    def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        out, err = io.BytesIO(), io.BytesIO()
        with monkeypatch.context() as m:
            m.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input or b"")))
            stdout = io.TextIOWrapper(out, write_through=True)
            stderr = io.TextIOWrapper(err, write_through=True)
            m.setattr(sys, "stdout", stdout)
            m.setattr(sys, "stderr", stderr)
            try:
                rc = cli.main(list(args))
            except SystemExit as e:  # argparse usage errors
                rc = e.code if isinstance(e.code, int) else 1
            stdout.flush()
            stderr.flush()
        return subprocess.CompletedProcess(["msbfs", *args], rc, out.getvalue(),
                                           err.getvalue())

    return run
