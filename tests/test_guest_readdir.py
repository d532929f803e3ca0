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
