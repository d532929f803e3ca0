"""Disk images on the host: make a sparse raw ext4 image, and mount one with fuse2fs so
host code can reach its contents without root's kernel mount (and without trusting the
image's contents to the host kernel's ext4 driver)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from msbfs.errors import DiskError
from msbfs.store import MIB

#: How long fuse2fs may take to show up as a mount (it checks the whole fs first).
MOUNT_DEADLINE_S = 30.0


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if not found:
        raise DiskError(f"{name} not found: install e2fsprogs/fuse2fs (make deps)")
    return found


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def make_ext4_image(path: Path, size_mib: int) -> None:
    """Create ``path`` (must not exist) as a sparse file of ``size_mib`` MiB formatted
    ext4. On failure nothing is left behind."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            os.ftruncate(fd, size_mib * MIB)  # sparse: no blocks until written
        except OSError as e:
            raise DiskError(f"cannot make a {size_mib} MiB image at {path}: "
                            f"{e.strerror}") from None
        finally:
            os.close(fd)
        r = subprocess.run([_tool("mkfs.ext4"), "-q", "-F", str(path)],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise DiskError(f"mkfs.ext4 failed on {path}: {_last_line(r.stderr + r.stdout)}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def fuse2fs_mounted(image: Path, *, readonly: bool = False) -> Iterator[Path]:
    """Mount ``image``'s ext4 on a private temporary directory with fuse2fs for the
    body; unmount and wait for fuse2fs to exit (so every write is in the image) after.
    The caller makes sure nothing else uses the image meanwhile."""
    mnt = Path(tempfile.mkdtemp(prefix="msbfs-disk-"))
    opts = "ro" if readonly else "rw"
    # -f: stay in the foreground, so we own the process and can wait for it to flush.
    proc = subprocess.Popen([_tool("fuse2fs"), "-f", str(image), str(mnt), "-o", opts],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + MOUNT_DEADLINE_S
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                raise DiskError(f"fuse2fs could not mount {image}: {_last_line(out)}")
            if time.monotonic() > deadline:
                raise DiskError(f"fuse2fs did not mount {image} within {MOUNT_DEADLINE_S}s")
            time.sleep(0.01)
        yield mnt
    finally:
        if os.path.ismount(mnt):
            r = subprocess.run([_tool("fusermount3"), "-u", str(mnt)],
                               capture_output=True, text=True, check=False)
            if r.returncode != 0:  # busy: lazily detach so fuse2fs can still finish
                subprocess.run([_tool("fusermount3"), "-u", "-z", str(mnt)],
                               capture_output=True, check=False)
        try:
            proc.wait(timeout=MOUNT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        with contextlib.suppress(OSError):
            mnt.rmdir()
