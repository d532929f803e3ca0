"""The raw syscalls of csrc/sys.c, on a real kernel."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from msbfs import syscalls
from tests.plugins.credentials import credentials, getgroups


def test_openat2_stays_beneath(tmp_path):
    (tmp_path / "d").mkdir()
    root = os.open(tmp_path / "d", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as e:
            syscalls.openat2(root, "../", os.O_PATH)
        assert e.value.errno == errno.EXDEV
        os.symlink("/etc/passwd", tmp_path / "d" / "out")
        with pytest.raises(OSError) as e:
            syscalls.openat2(root, "out", os.O_RDONLY)
        assert e.value.errno == errno.EXDEV
        fd = syscalls.openat2(root, ".", os.O_PATH | os.O_DIRECTORY)
        os.close(fd)
    finally:
        os.close(root)


@pytest.mark.skipif(os.geteuid() != 0, reason="credential switching needs root")
def test_credentials_are_per_thread(tmp_path):
    os.chmod(tmp_path, 0o777)
    # pytest's base directory is 0700: reach ours through an fd opened as root.
    dfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    seen: dict[str, int] = {}

    go = threading.Event()

    def other_thread() -> None:
        go.wait()
        fd = os.open("other", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd)
        seen["other"] = os.fstat(fd).st_uid
        os.close(fd)

    # Started before the switch: a new thread would inherit the creator's credentials.
    t = threading.Thread(target=other_thread)
    t.start()
    with credentials(1234, 4321, [4321]):
        fd = os.open("mine", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd)
        st = os.fstat(fd)
        os.close(fd)
        go.set()
        t.join()
    os.close(dfd)
    assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert seen["other"] == 0
    assert getgroups() == os.getgroups()
