"""The host-mount daemon's life outside the mount: records of which process serves
which mountpoint (pid and log files in a per-user runtime directory), the readiness pipe
between ``msbfs mount`` and the daemon it starts in the background, and ``unmount``,
which waits for the daemon to exit so the volume's serving lock is free on return.
(Serving the mount itself is ``msbfs.hostmount``.)"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from msbfs.errors import MountError
from msbfs.mountinfo import _umount, mount_fstype, mount_state


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0 else "/tmp")
    d = Path(base) / f"msbfs-hostmount-{os.geteuid()}"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def _record_path(mountpoint: str, suffix: str) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:24]
    return runtime_dir() / f"{key}.{suffix}"


def daemon_pid(mountpoint: str) -> int | None:
    try:
        return int(_record_path(mountpoint, "pid").read_text().strip())
    except (OSError, ValueError):
        return None


def log_path(mountpoint: str) -> Path:
    """Where a background daemon's stderr goes (its stdout/stderr must not hold the
    caller's pipes open)."""
    return _record_path(mountpoint, "log")


def wait_pid_exit(pid: int, timeout: float) -> bool:
    """Wait for ``pid`` to exit (pidfd: no polling loop). True if it has."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def unmount(mountpoint: str, *, timeout: float = 30.0) -> None:
    """``msbfs umount``: unmount an msbfs host mount (or clear a stale one) and wait for
    its daemon to exit, so the volume's serving lock is free when this returns."""
    path = os.path.abspath(mountpoint)
    state = mount_state(path)
    if state == "none":
        raise MountError(f"{path} is not mounted")
    fstype = mount_fstype(path)
    if fstype is not None and not fstype.startswith("fuse"):
        raise MountError(f"{path} is a {fstype} mount, not an msbfs one")
    pid = daemon_pid(path)
    try:
        _umount(path, lazy=state == "stale")
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise MountError(f"{path} is busy (files open or a process inside)") from None
        raise
    if pid is not None and not wait_pid_exit(pid, timeout):
        raise MountError(f"{path} unmounted, but its daemon (pid {pid}) has not exited")


# ---- readiness: the daemon tells the `msbfs mount` that started it ------------------------

class Readiness:
    """The child's side of the readiness pipe: one line, ``ready`` or ``error: why``."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def _send(self, line: str) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, line.encode() + b"\n")
            os.close(self.fd)
        self.fd = None

    def ready(self) -> None:
        self._send("ready")

    def failed(self, why: str) -> None:
        self._send("error: " + " ".join(why.split()))



def start_background(argv: list[str], mountpoint: str, *, timeout: float = 60.0) -> None:
    """Run ``msbfs mount ... --foreground`` as a detached daemon and return once it
    reports the mount answering; MountError with its reason otherwise."""
    r, w = os.pipe()
    logf = open(log_path(mountpoint), "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "msbfs", *argv, "--foreground", "--ready-fd", str(w)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, pass_fds=(w,),
            start_new_session=True)
    finally:
        os.close(w)
        logf.close()
    try:
        line = _read_line(r, timeout)
    finally:
        os.close(r)
    if line == "ready":
        return
    if line.startswith("error: "):
        proc.wait()
        raise MountError(line[len("error: "):])
    # No answer: the child died before it could say why, or hangs.
    try:
        code = proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise MountError(f"mount daemon did not report ready within {timeout:.0f}s "
                         f"(log: {log_path(mountpoint)})") from None
    raise MountError(f"mount daemon exited with status {code} before the mount answered "
                     f"(log: {log_path(mountpoint)})")


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()
