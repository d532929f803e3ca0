"""Guest tests written for tools/mutants (issue 13): rules a real Linux guest can reach
whose mutants no guest test caught. One guest, one daemon per rule's share:

- ``nodev``: an existing device node names no device (rdev 0:0 in the guest);
- ``qbytes`` (``--quota 1``): a write past the quota fails whether it would go through
  the C data path or the tree, and fallocate past it is ENOSPC; the host holds no more
  than the quota;
- ``qinodes`` (``--quota 1``: 1024 inodes, nearly all used by the host before boot):
  mkdir, mknod and create stop at the inode limit;
- ``plain``: an unprivileged guest writer's WRITE (the guest kernel flags it
  KILL_SUIDGID) clears the file's set-id bits on the host.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

from msbfs.launcher.daemon import ServedTree
from msbfs.mounts import MountOptions
from msbfs.tree.policy import MIN_DEFAULT_INODES, walk_counts

pytestmark = pytest.mark.guest

QUOTA = 1 << 20
ROOM = 8  # inodes left in the qinodes share at boot


@pytest.fixture(scope="module")
def mutant_guest(boot_guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    root = tmp_path_factory.mktemp("mutants")
    dirs = {name: root / name for name in ("nodev", "qbytes", "qinodes", "plain")}
    for d in dirs.values():
        d.mkdir()
    os.mknod(dirs["nodev"] / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    fill = dirs["qinodes"] / "fill"
    fill.mkdir()
    for i in range(MIN_DEFAULT_INODES - ROOM - 2):  # the share's root and fill/ count too
        (fill / str(i)).touch()
    w = dirs["plain"] / "w"
    w.write_text("x\n")
    os.chown(w, 1000, 1000)
    os.chmod(w, 0o6775)
    trees = [
        ServedTree(tag="nodev", guest_path="/mnt/nodev", shared_dir=dirs["nodev"],
                   options=MountOptions(nodev=True)),
        ServedTree(tag="qbytes", guest_path="/mnt/qb", shared_dir=dirs["qbytes"], quota_mib=1),
        ServedTree(tag="qinodes", guest_path="/mnt/qi", shared_dir=dirs["qinodes"],
                   quota_mib=1),
        ServedTree(tag="plain", guest_path="/mnt/plain", shared_dir=dirs["plain"]),
    ]
    with boot_guest(trees) as g:
        yield g, dirs


def test_nodev_device_names_no_device(mutant_guest) -> None:
    g, _ = mutant_guest
    assert g.check("stat -c '%F %t:%T' /mnt/nodev/zero").strip() == "character special file 0:0"


def test_quota_bytes_hold_for_writes_and_fallocate(mutant_guest) -> None:
    g, dirs = mutant_guest
    # 2 MiB into a 1 MiB quota: 64 KiB writes, the C data path's usual size
    r = g.run("dd if=/dev/zero of=/mnt/qb/big bs=64k count=32 && sync")
    assert r.status != 0 and "No space left on device" in r.stderr, r
    r = g.run("fallocate -l 2097152 /mnt/qb/pre")
    assert r.status != 0, r
    fd = os.open(dirs["qbytes"], os.O_PATH | os.O_DIRECTORY)
    try:
        used, _ = walk_counts(fd)
    finally:
        os.close(fd)
    assert used <= QUOTA, used
    pre = dirs["qbytes"] / "pre"
    assert not pre.exists() or pre.stat().st_blocks == 0


def test_quota_inodes_hold_for_mkdir_mknod_and_create(mutant_guest) -> None:
    g, dirs = mutant_guest
    script = ("for i in $(seq 20); do {op} /mnt/qi/{p}$i 2>/dev/null || break; done; "
              "echo $i")
    made = {}
    for op, p in (("mkdir", "d"), ("mkfifo", "p"), ("touch", "f")):
        made[op] = int(g.check(script.format(op=op, p=p)).strip())
    names = os.listdir(dirs["qinodes"])
    assert len(names) - 1 <= ROOM, sorted(names)  # fill/ aside, at most the room left
    assert made["mkdir"] <= ROOM + 1 and made["mkfifo"] == made["touch"] == 1, made


def test_unprivileged_write_clears_setid_bits(mutant_guest) -> None:
    g, dirs = mutant_guest
    w = dirs["plain"] / "w"
    assert stat.S_IMODE(w.stat().st_mode) == 0o6775
    g.check("echo more >> /mnt/plain/w", uid=1000, gid=1000)
    assert w.read_text() == "x\nmore\n"
    assert stat.S_IMODE(w.stat().st_mode) == 0o775
