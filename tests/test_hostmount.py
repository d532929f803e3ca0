"""``msbfs mount`` / ``msbfs umount`` on real FUSE mounts: the life cycle (background
readiness, foreground, signals, stale mounts), sources (directories and named volumes with
their serving lock and quota), errors, and ownership as the caller."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from msbfs import hostmount, mount_daemon, mountinfo
from tests.plugins.hostmount import MountFactory, msbfs, needs_root, run_as, wait_for

pytestmark = [pytest.mark.fuse, needs_root]


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bind_mount_shows_the_source_both_ways(host_mount: MountFactory) -> None:
    m = host_mount()
    (m.source / "from-host").write_text("hello")
    assert (m.mnt / "from-host").read_text() == "hello"
    (m.mnt / "sub").mkdir()
    (m.mnt / "sub" / "from-mount").write_bytes(b"x" * 100_000)
    assert (m.source / "sub" / "from-mount").read_bytes() == b"x" * 100_000
    assert mountinfo.mount_fstype(str(m.mnt)) == "fuse.msbfs"
    dev = os.stat(m.mnt).st_dev
    bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    assert int(bdi.read_text()) == hostmount.READAHEAD_KIB  # widened by the daemon
    st = os.stat(m.mnt / "sub" / "from-mount")
    assert st.st_size == 100_000 and st.st_nlink == 1


def test_directory_listing_is_complete(host_mount: MountFactory) -> None:
    m = host_mount()
    (m.source / "big").mkdir()
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(3000)}
    for n in names:
        (m.source / "big" / n).touch()
    assert set(os.listdir(m.mnt / "big")) == names
    # ls -a as on a native filesystem: . and .. are listed.
    out = subprocess.run(["ls", "-a", str(m.mnt / "big")], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[:2] == [".", ".."] and len(out) == 3002


def test_hard_links_share_an_inode_number(host_mount: MountFactory) -> None:
    m = host_mount()
    (m.mnt / "a").write_text("x")
    os.link(m.mnt / "a", m.mnt / "b")
    assert os.stat(m.mnt / "a").st_ino == os.stat(m.mnt / "b").st_ino
    assert os.stat(m.mnt / "b").st_nlink == 2


def test_mount_errors_are_one_line_and_leave_nothing(tmp_path: Path, msb_home: Path,
                                                     host_mount: MountFactory) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    one_line_error(msbfs("mount", "no-such-volume", str(mnt)), "no-such-volume")
    one_line_error(msbfs("mount", str(tmp_path / "nowhere"), str(mnt)), "not a directory")
    one_line_error(msbfs("mount", str(tmp_path), str(mnt), "-o", "ro,bogus"), "bogus")
    one_line_error(msbfs("mount", str(tmp_path), str(mnt), "-o", "uid=abc"), "uid")
    one_line_error(msbfs("mount", str(tmp_path), str(tmp_path / "absent")), "does not exist")
    (tmp_path / "file").touch()
    one_line_error(msbfs("mount", str(tmp_path), str(tmp_path / "file")), "not a directory")
    assert not os.path.ismount(mnt)
    m = host_mount()
    one_line_error(msbfs("mount", str(tmp_path), str(m.mnt)), "busy")
    one_line_error(msbfs("umount", str(mnt)), "not mounted")


def test_named_volume_holds_the_lock_and_its_quota(msb_home: Path,
                                                   host_mount: MountFactory) -> None:
    from msbfs.volumes import create_volume, get_volume, volume_in_use

    create_volume("vol1", quota_mib=4)
    m = host_mount("vol1")
    assert volume_in_use("vol1")
    st = os.statvfs(m.mnt)
    assert st.f_blocks * st.f_frsize == 4 * 1024 * 1024
    (m.mnt / "small").write_bytes(b"a" * 1000)
    assert (Path(get_volume("vol1").path) / "small").read_bytes() == b"a" * 1000
    with pytest.raises(OSError) as e:
        with open(m.mnt / "big", "wb") as f:
            for _ in range(8):
                f.write(b"b" * 1024 * 1024)
                f.flush()
    assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)
    # A second mount of the same volume shares the lock (serving locks are shared).
    m2 = host_mount("vol1")
    assert (m2.mnt / "small").exists()
    for mm in (m2, m):
        r = msbfs("umount", str(mm.mnt))
        assert r.returncode == 0, r.stderr
    # umount waits for the daemons to exit: the lock is free right away.
    assert not volume_in_use("vol1")


def test_quota_option_overrides(host_mount: MountFactory) -> None:
    m = host_mount(options="quota=2")
    st = os.statvfs(m.mnt)
    assert st.f_blocks * st.f_frsize == 2 * 1024 * 1024
    with pytest.raises(OSError) as e:
        (m.mnt / "big").write_bytes(b"z" * 3 * 1024 * 1024)
    assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)


def test_sigterm_unmounts_cleanly(host_mount: MountFactory) -> None:
    m = host_mount()
    pid = m.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    assert mount_daemon.wait_pid_exit(pid, 30)
    assert not os.path.ismount(m.mnt)
    assert mount_daemon.daemon_pid(str(m.mnt)) is None


def test_killed_daemon_is_cleared_by_the_next_mount(host_mount: MountFactory) -> None:
    m = host_mount()
    (m.source / "f").write_text("still")
    pid = m.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert mount_daemon.wait_pid_exit(pid, 30)
    with pytest.raises(OSError) as e:
        os.listdir(m.mnt)
    assert e.value.errno == errno.ENOTCONN
    m2 = host_mount(m.source, mnt=m.mnt)
    assert (m2.mnt / "f").read_text() == "still"


def test_umount_clears_a_stale_mount(host_mount: MountFactory) -> None:
    m = host_mount()
    pid = m.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert mount_daemon.wait_pid_exit(pid, 30)
    assert mountinfo.mount_state(str(m.mnt)) == "stale"
    r = msbfs("umount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    assert mountinfo.mount_state(str(m.mnt)) == "none"


def test_foreground_serves_until_sigint(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_text("fg")
    proc = subprocess.Popen([sys.executable, "-m", "msbfs", "mount", str(src), str(mnt),
                             "--foreground"], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert (mnt / "f").read_text() == "fg"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mountinfo.mount_state(str(mnt)) != "none":
            mount_daemon.unmount(str(mnt))


def test_files_are_owned_by_the_caller(host_mount: MountFactory) -> None:
    m = host_mount(options="allow_other")
    os.chmod(m.source, 0o777)
    r = run_as(1000, 1000, ["sh", "-c", "touch f && mkdir d && ln -s f s && mkfifo p"],
               cwd=str(m.mnt))
    assert r.returncode == 0, r.stderr
    for name in ("f", "d", "s", "p"):
        st = os.lstat(m.source / name)
        assert (st.st_uid, st.st_gid) == (1000, 1000), name
    # The caller's umask, and its permissions: uid 1001 cannot write 1000's file.
    assert os.stat(m.source / "f").st_mode & 0o777 == 0o644
    r = run_as(1001, 1001, ["sh", "-c", "echo x > f"], cwd=str(m.mnt))
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_owner_squash_shows_one_owner(host_mount: MountFactory) -> None:
    m = host_mount(options="uid=1234,gid=4321")
    (m.source / "f").touch()
    os.chown(m.source / "f", 5, 6)
    (m.source / "d").mkdir()
    for p in (m.mnt, m.mnt / "f", m.mnt / "d"):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (1234, 4321), p
    assert os.stat(m.source / "f").st_uid == 5  # only the view changes


def _mount_with_fd_limit(tmp_path: Path, nfiles: int, limit: int) -> tuple[Path, Path]:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    for i in range(nfiles):
        (src / f"f{i:04d}").touch()
    r = subprocess.run(["prlimit", f"--nofile={limit}:{limit}", sys.executable, "-m", "msbfs",
                        "mount", str(src), str(mnt)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    return src, mnt


def test_listing_never_drops_names_when_out_of_descriptors(tmp_path: Path) -> None:
    """Past the daemon's fd limit a listing fails (EMFILE) rather than coming back short."""
    _src, mnt = _mount_with_fd_limit(tmp_path, 600, 128)
    try:
        try:
            names = os.listdir(mnt)
        except OSError as e:
            assert e.errno == errno.EMFILE
        else:
            assert len(names) == 600
    finally:
        mount_daemon.unmount(str(mnt))
    assert not os.path.ismount(mnt)


# The tree's inode fd cache closes least recently used inode fds past half the fd limit
# and re-opens them from file handles, so a walk is not bounded by RLIMIT_NOFILE.
def test_walk_beyond_the_descriptor_limit(tmp_path: Path) -> None:
    src, mnt = _mount_with_fd_limit(tmp_path, 600, 128)
    try:
        names = sorted(os.listdir(mnt))
        # Every name, not merely no error: an empty or short listing must fail here.
        assert names == sorted(os.listdir(src)) and len(names) == 600
        for name in names:
            seen, host = os.lstat(mnt / name), os.lstat(src / name)
            assert (seen.st_mode, seen.st_size, seen.st_mtime_ns) == (
                host.st_mode, host.st_size, host.st_mtime_ns), name
    finally:
        mount_daemon.unmount(str(mnt))
