"""A real TCG guest lists directories through READDIRPLUS, which msbfs answers in C
(csrc/fuse_readdir.c): a directory larger than many replies lists every name once with
the host's inode numbers, and the attributes the listing carried are the host's.
(The root's '..' rule cannot be seen from here: the guest's ls stats '..', which at a
mount root is the guest's own parent directory.)"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.guest


def test_large_listing_matches_the_host(guest) -> None:
    host = guest.host_dir / "rd"
    host.mkdir()
    for i in range(3000):
        (host / (f"f{i}" + "x" * (i % 50))).write_bytes(b"y" * (i % 7))
    (host / "sub").mkdir()
    os.symlink("f0", host / "link")
    out = guest.check("ls -ai1 /mnt/share/rd")
    listed = [line.split(None, 1) for line in out.splitlines()]
    names = [n for _ino, n in listed]
    assert len(names) == len(set(names))
    want = {(str(os.lstat(host / n).st_ino), n) for n in os.listdir(host)}
    assert {(ino, n) for ino, n in listed if n not in (".", "..")} == want
    # the attributes READDIRPLUS gave: sizes and kinds as the host has them
    six = "f6" + "x" * 6
    sizes = dict(line.split() for line in guest.check(
        f"cd /mnt/share/rd && stat -c '%n %s' {six} link").splitlines())
    assert sizes == {six: "6", "link": "2"}


def test_listed_names_stay_usable_after_renames(guest) -> None:
    """What a listing hands the guest is a named node (csrc/inodes.h: looked up, not
    opened). Renamed by the guest, a file, a directory and the guest's own working
    directory are still opened through the node ids it holds: the rename moves the
    node's name (without it, `ls .` in a directory renamed from under the shell says
    ESTALE: '.' is never looked up again). Renamed on the host, a name is found again
    by its new name."""
    host = guest.host_dir / "rn"
    host.mkdir()
    for i in range(4):
        (host / f"f{i}").write_text(f"data{i}\n")
    (host / "d").mkdir()
    (host / "d" / "inner").write_text("inner\n")
    (host / "sub").mkdir()
    (host / "sub" / "s").write_text("s\n")
    out = guest.check(
        "cd /mnt/share/rn && ls -l > /dev/null && ls -l d > /dev/null"
        " && mv f0 g0 && cat g0"
        " && mv d e && cat e/inner"
        " && ln f1 h1 && rm f1 && cat h1"
        " && cd sub && mv ../sub ../sub2 && ls . && cat s")
    assert out.split() == ["data0", "inner", "data1", "s", "s"]
    os.rename(host / "f2", host / "moved2")
    assert guest.check("cat /mnt/share/rn/moved2").strip() == "data2"
    assert sorted(os.listdir(host)) == ["e", "f3", "g0", "h1", "moved2", "sub2"]
