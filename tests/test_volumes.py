"""The named volume store on real SQLite and real files, locks held by real processes."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime

import pytest

import msbfs
from msbfs import store
from msbfs.errors import (
    DiskError,
    InvalidArgument,
    InvalidName,
    MsbfsError,
    VolumeExists,
    VolumeInUse,
    VolumeNotFound,
)
from msbfs.store import MIB


def test_round_trip(msb_home):
    before = datetime.now(UTC)
    vol = msbfs.create_volume("data", quota_mib=64, labels={"env": "prod", "team": "a"})
    assert vol.name == "data"
    assert vol.path == str(msb_home / "volumes" / "data")
    assert os.path.isdir(vol.path)

    h = msbfs.get_volume("data")
    assert (h.name, h.path, h.kind, h.quota_mib) == ("data", vol.path, "dir", 64)
    assert (h.capacity_bytes, h.disk_format, h.disk_fstype, h.image_path) == (None,) * 4
    assert h.labels == {"env": "prod", "team": "a"}
    assert h.created_at is not None and h.created_at.tzinfo is not None
    assert before <= h.created_at <= datetime.now(UTC)

    msbfs.create_volume("another")
    assert [v.name for v in msbfs.list_volumes()] == ["another", "data"]

    vol.remove()
    with pytest.raises(VolumeNotFound):
        msbfs.get_volume("data")
    assert not os.path.exists(vol.path)
    assert [v.name for v in msbfs.list_volumes()] == ["another"]
    assert os.listdir(msb_home / "trash") == []
    # Data a crashed removal left in trash/ goes with the next removal.
    (msb_home / "trash" / "old.123" / "sub").mkdir(parents=True)
    (msb_home / "trash" / "old.123" / "sub" / "f").write_text("x")
    msbfs.create_volume("third")
    msbfs.remove_volume("third")
    assert os.listdir(msb_home / "trash") == []
    with pytest.raises(VolumeNotFound):
        msbfs.remove_volume("data")
    # The name is free again.
    msbfs.create_volume("data")


def test_database_is_wal_and_versioned(msb_home):
    msbfs.create_volume("x")
    conn = sqlite3.connect(msb_home / "msbfs.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(MsbfsError, match="newer than this msbfs"):
        msbfs.list_volumes()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 129, "a b", "é", "a:b", "../x",
                                  "a\0b"])
def test_invalid_names(msb_home, name):
    with pytest.raises(InvalidName):
        msbfs.create_volume(name)
    with pytest.raises(InvalidName):
        msbfs.get_volume(name)
    with pytest.raises(InvalidName):
        msbfs.remove_volume(name)
    assert msbfs.list_volumes() == []


@pytest.mark.parametrize("name", ["x" * 128, ".hidden", "a-b_c.d", "...", "0"])
def test_valid_names(msb_home, name):
    msbfs.create_volume(name)
    assert msbfs.get_volume(name).name == name


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "disk"}, "needs a size"),
    ({"kind": "disk", "size_mib": 16, "quota_mib": 4}, "quota applies to dir"),
    ({"size_mib": 16}, "size applies to disk"),
    ({"quota_mib": 0}, "positive"),
    ({"quota_mib": -1}, "positive"),
    ({"kind": "tape"}, "kind"),
    ({"labels": {"": "x"}}, "non-empty"),
    ({"labels": {"a=b": "x"}}, "no '='"),
    ({"labels": {"a": 1}}, "strings"),
])
def test_bad_arguments_make_nothing(msb_home, kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        msbfs.create_volume("v", **kwargs)
    assert msbfs.list_volumes() == []
    assert not (msb_home / "volumes" / "v").exists()


def test_exists_keeps_the_first(volume):
    volume.fs().write_text("keep", "me")
    with pytest.raises(VolumeExists):
        msbfs.create_volume("vol", quota_mib=5)
    assert msbfs.get_volume("vol").quota_mib is None
    assert volume.fs().read_text("keep") == "me"


def test_orphan_directory_is_not_adopted(msb_home):
    orphan = msb_home / "volumes" / "ghost"
    orphan.mkdir(parents=True)
    (orphan / "precious").write_text("x")
    with pytest.raises(VolumeExists, match="no record"):
        msbfs.create_volume("ghost")
    assert (orphan / "precious").read_text() == "x"
    assert msbfs.list_volumes() == []


def test_labels_merge(msb_home):
    msbfs.create_volume("l", labels={"a": "1", "b": "2"})
    h = msbfs.update_labels("l", {"b": "3", "c": "4"})
    assert h.labels == {"a": "1", "b": "3", "c": "4"}
    assert msbfs.get_volume("l").update_labels({"a": "0"}).labels == {"a": "0", "b": "3",
                                                                      "c": "4"}
    with pytest.raises(VolumeNotFound):
        msbfs.update_labels("nope", {"a": "1"})


def test_used_bytes_walks_without_following(volume, tmp_path):
    assert volume.used_bytes < 64 * 1024
    fs = volume.fs()
    fs.write("big", os.urandom(300 * 1024))
    used = volume.used_bytes
    assert used >= 300 * 1024
    os.link(os.path.join(volume.path, "big"), os.path.join(volume.path, "hardlink"))
    big_outside = tmp_path / "outside"
    big_outside.write_bytes(os.urandom(1024 * 1024))
    os.symlink(big_outside, os.path.join(volume.path, "link"))
    os.symlink(tmp_path, os.path.join(volume.path, "dirlink"))
    assert volume.used_bytes < used + 16 * 1024  # one inode once, links not followed


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_used_bytes_stays_on_its_filesystem(volume):
    mnt = os.path.join(volume.path, "mnt")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt], check=True)
    try:
        with open(os.path.join(mnt, "big"), "wb") as f:
            f.write(os.urandom(2 * MIB))
        assert os.stat(os.path.join(mnt, "big")).st_blocks * 512 >= 2 * MIB
        assert volume.used_bytes < MIB
    finally:
        subprocess.run(["umount", mnt], check=True)


_RACER = """
import sys
import msbfs
from msbfs.errors import VolumeExists
sys.stdin.read(1)   # everyone starts together
for name in sys.argv[1:]:
    try:
        msbfs.create_volume(name)
        print("won", name, flush=True)
    except VolumeExists:
        print("lost", name, flush=True)
"""


def test_concurrent_create_exactly_one_wins(msb_home):
    names = [f"race{i}" for i in range(8)]
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, *names], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(5)]
    outs = []
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("g")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.split("\n"))
    for name in names:
        results = [line for out in outs for line in out if line.endswith(f" {name}")]
        assert len(results) == len(procs)
        assert results.count(f"won {name}") == 1, results
    assert [v.name for v in msbfs.list_volumes()] == sorted(names)


def test_serving_lock_held_by_another_process(volume, hold_in_process):
    volume.fs().write_text("f", "data")
    assert not msbfs.volume_in_use("vol")
    with hold_in_process("vol"):
        assert msbfs.volume_in_use("vol")
        assert msbfs.get_volume("vol").to_dict()["in_use"] is True
        with pytest.raises(VolumeInUse):
            msbfs.remove_volume("vol")
        with pytest.raises(VolumeInUse):
            volume.remove()
        # Shared: a second server may hold it too.
        with msbfs.hold_volume("vol") as lock:
            assert lock.held
        assert volume.fs().read_text("f") == "data"
    assert not msbfs.volume_in_use("vol")
    msbfs.remove_volume("vol")
    assert msbfs.list_volumes() == []


def test_lock_dies_with_its_holder(volume):
    proc = subprocess.Popen([sys.executable, "-c",
                             "import sys, msbfs; l = msbfs.hold_volume('vol'); "
                             "print('held', flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    assert msbfs.volume_in_use("vol")
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stdin.close()  # type: ignore[union-attr]
    msbfs.remove_volume("vol")


def test_hold_volume_object(volume):
    lock = msbfs.hold_volume("vol")
    assert not lock.exclusive
    assert fcntl.fcntl(lock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    with pytest.raises(VolumeInUse):
        msbfs.remove_volume("vol")
    lock.close()
    lock.close()  # idempotent
    assert not lock.held
    # The lock lives outside the data directory: the volume's contents stay clean.
    assert os.listdir(volume.path) == []
    with pytest.raises(VolumeNotFound):
        msbfs.hold_volume("missing")
    assert not msbfs.volume_in_use("missing")


def test_hold_refused_while_being_removed(volume):
    from msbfs import serving_lock
    with serving_lock.acquire("vol", exclusive=True):
        with pytest.raises(VolumeInUse):
            msbfs.hold_volume("vol")


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def test_disk_volume_is_sparse_ext4(msb_home):
    vol = msbfs.create_volume("disk", kind="disk", size_mib=64, labels={"k": "v"})
    h = msbfs.get_volume("disk")
    assert h.kind == "disk" and h.path == vol.path
    assert h.image_path == os.path.join(vol.path, "disk.img")
    assert (h.capacity_bytes, h.disk_format, h.disk_fstype) == (64 * MIB, "raw", "ext4")
    st = os.stat(h.image_path)
    assert st.st_size == 64 * MIB
    assert 0 < h.used_bytes == st.st_blocks * 512 < 64 * MIB  # sparse
    assert "Filesystem magic number:  0xEF53" in _run("dumpe2fs", "-h", h.image_path)
    assert 'TYPE="ext4"' in _run("blkid", h.image_path)
    h.remove()
    assert not os.path.exists(vol.path)


def test_disk_volume_fs_writes_into_the_image(msb_home, hold_in_process):
    msbfs.create_volume("disk", kind="disk", size_mib=32)
    h = msbfs.get_volume("disk")
    with h.fs() as fs:
        fs.mkdir("etc/app")
        fs.write_text("etc/app/conf", "from the host\n")
        assert fs.listdir("etc") == ["app"]
        assert "lost+found" in fs.listdir()
        # While the host edits the ext4, nothing may serve the disk.
        with pytest.raises(VolumeInUse):
            msbfs.hold_volume("disk")
    out = _run("debugfs", "-R", "cat /etc/app/conf", h.image_path)
    assert out == "from the host\n"
    # Outside a with block every call mounts and unmounts by itself.
    assert h.fs().read_text("etc/app/conf") == "from the host\n"
    # A sandbox serving the disk keeps the host out of its ext4.
    with hold_in_process("disk"):
        with pytest.raises(VolumeInUse):
            h.fs().read("etc/app/conf")
    assert os.listdir(h.path) == ["disk.img"]


def test_bad_disk_size_leaves_nothing(msb_home):
    with pytest.raises(DiskError, match="cannot make"):
        msbfs.create_volume("tiny", kind="disk", size_mib=1 << 40)  # 1 EiB: ftruncate fails
    assert msbfs.list_volumes() == []
    assert not (msb_home / "volumes" / "tiny").exists()
