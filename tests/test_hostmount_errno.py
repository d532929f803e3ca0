"""Per-operation errnos through a host mount, each checked against the same operation on
a native directory with the same layout (so the expectation is Linux's, not ours):
ENOENT, EEXIST, ENOTEMPTY, ENOTDIR, EISDIR, ELOOP, ENAMETOOLONG, EXDEV, EACCES/EPERM as a
non-root user, EROFS and ENOSPC."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.plugins.hostmount import HostMount, MountFactory, needs_root, py_as
from tests.test_differential import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2

pytestmark = [pytest.mark.fuse, needs_root]


def layout(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "f").write_text("x")
    (root / "empty").mkdir()
    (root / "file").write_text("data")
    os.symlink("file", root / "link")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")


Op = Callable[[Path], object]

CASES: dict[str, tuple[int, Op]] = {
    "stat missing": (errno.ENOENT, lambda r: os.stat(r / "missing")),
    "open missing": (errno.ENOENT, lambda r: open(r / "missing")),
    "unlink missing": (errno.ENOENT, lambda r: os.unlink(r / "missing")),
    "create in missing dir": (errno.ENOENT, lambda r: open(r / "missing" / "f", "w")),
    "mkdir existing": (errno.EEXIST, lambda r: os.mkdir(r / "dir")),
    "O_EXCL existing": (errno.EEXIST,
                        lambda r: os.open(r / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY)),
    "link onto existing": (errno.EEXIST, lambda r: os.link(r / "file", r / "link")),
    "symlink onto existing": (errno.EEXIST, lambda r: os.symlink("x", r / "file")),
    "rename NOREPLACE": (errno.EEXIST,
                         lambda r: renameat2(str(r / "file"), str(r / "link"), RENAME_NOREPLACE)),
    "rename EXCHANGE missing": (errno.ENOENT,
                                lambda r: renameat2(str(r / "file"), str(r / "nope"),
                                                    RENAME_EXCHANGE)),
    "rmdir non-empty": (errno.ENOTEMPTY, lambda r: os.rmdir(r / "dir")),
    "rename onto non-empty dir": (errno.ENOTEMPTY, lambda r: os.rename(r / "empty", r / "dir")),
    "path through a file": (errno.ENOTDIR, lambda r: os.stat(r / "file" / "x")),
    "rmdir a file": (errno.ENOTDIR, lambda r: os.rmdir(r / "file")),
    "rename dir onto file": (errno.ENOTDIR, lambda r: os.rename(r / "empty", r / "file")),
    "O_DIRECTORY on a file": (errno.ENOTDIR,
                              lambda r: os.open(r / "file", os.O_RDONLY | os.O_DIRECTORY)),
    "open dir for write": (errno.EISDIR, lambda r: os.open(r / "dir", os.O_WRONLY)),
    "unlink a dir": (errno.EISDIR, lambda r: os.unlink(r / "dir")),
    "rename file onto dir": (errno.EISDIR, lambda r: os.rename(r / "file", r / "empty")),
    "O_NOFOLLOW on symlink": (errno.ELOOP,
                              lambda r: os.open(r / "link", os.O_RDONLY | os.O_NOFOLLOW)),
    "symlink loop": (errno.ELOOP, lambda r: open(r / "loop1")),
    "name of 256 bytes": (errno.ENAMETOOLONG, lambda r: open(r / ("n" * 256), "w")),
    "lookup of 256 bytes": (errno.ENAMETOOLONG, lambda r: os.stat(r / ("n" * 256))),
    "rename dir into itself": (errno.EINVAL, lambda r: os.rename(r / "dir", r / "dir" / "sub" / "d")),
    "link to a directory": (errno.EPERM, lambda r: os.link(r / "dir", r / "dlink")),
}


@pytest.fixture(scope="module")
def worlds(shared_host_mount: HostMount, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, Path]:
    native = tmp_path_factory.mktemp("errno-native")
    mounted = shared_host_mount.mnt / "errno"
    mounted.mkdir()
    layout(native)
    layout(mounted)
    return native, mounted


def errno_of(op: Op, root: Path) -> int | None:
    try:
        op(root)
    except OSError as e:
        return e.errno
    return None


@pytest.mark.parametrize("case", list(CASES))
def test_errno_matches_linux(case: str, worlds: tuple[Path, Path]) -> None:
    expected, op = CASES[case]
    native, mounted = worlds
    assert errno_of(op, native) == expected, "the native expectation itself is off"
    got = errno_of(op, mounted)
    assert got == expected, f"{case}: {errno.errorcode.get(got or 0, got)}"


def test_exdev_across_mounts_and_submounts(host_mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "xsrc"
    (src / "inner").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(src / "inner")],
                   check=True)
    try:
        m = host_mount(src)
        (m.mnt / "inner" / "f").write_text("on tmpfs")
        (m.mnt / "top").write_text("on the source fs")
        with pytest.raises(OSError) as e:
            os.rename(m.mnt / "inner" / "f", m.mnt / "moved")
        assert e.value.errno == errno.EXDEV
        with pytest.raises(OSError) as e:
            os.link(m.mnt / "top", m.mnt / "inner" / "hard")
        assert e.value.errno == errno.EXDEV
        assert os.stat(m.mnt / "inner").st_ino != os.stat(m.mnt).st_ino
        outside = tmp_path / "outside"
        outside.mkdir()
        with pytest.raises(OSError) as e:
            os.rename(m.mnt / "top", outside / "top")
        assert e.value.errno == errno.EXDEV
    finally:
        host_mount.cleanup()
        subprocess.run(["umount", str(src / "inner")], check=True)


# A non-root caller on an allow_other mount: the tree runs each request with the caller's
# credentials, so the host kernel's permission checks give the caller's errnos.
AS_USER = r"""
import errno, json, os, sys
root = sys.argv[1]
def e(fn):
    try:
        fn()
    except OSError as x:
        return errno.errorcode[x.errno]
    return "ok"
p = lambda *a: os.path.join(root, *a)
print(json.dumps({
    "create in root's 755 dir": e(lambda: open(p("rootdir", "f"), "w")),
    "read root's 600 file": e(lambda: open(p("secret")).read()),
    "chmod root's file": e(lambda: os.chmod(p("public"), 0o777)),
    "chown own file": e(lambda: os.chown(p("shared", "mine"), 0, 0)),
    "unlink other's file in sticky dir": e(lambda: os.unlink(p("shared", "roots"))),
    "explicit utime on writable other's file": e(lambda: os.utime(p("shared", "writable"), (1, 1))),
    "touch (now) on writable other's file": e(lambda: os.utime(p("shared", "writable"))),
    "write own file": e(lambda: open(p("shared", "mine"), "a").write("x")),
    "setxattr trusted": e(lambda: os.setxattr(p("shared", "mine"), "trusted.x", b"1")),
}))
"""


def user_layout(root: Path) -> None:
    (root / "rootdir").mkdir(mode=0o755)
    (root / "secret").write_text("s")
    os.chmod(root / "secret", 0o600)
    (root / "public").write_text("p")
    (root / "shared").mkdir()
    os.chmod(root / "shared", 0o1777)
    (root / "shared" / "roots").write_text("r")
    (root / "shared" / "writable").write_text("w")
    os.chmod(root / "shared" / "writable", 0o666)
    (root / "shared" / "mine").write_text("m")
    os.chown(root / "shared" / "mine", 1000, 1000)
    os.chmod(root, 0o755)


def test_eacces_eperm_as_a_non_root_user(host_mount: MountFactory, tmp_path: Path) -> None:
    native = tmp_path / "native-user"
    native.mkdir()
    user_layout(native)
    m = host_mount(options="allow_other")
    user_layout(m.mnt)
    results = []
    for root in (native, m.mnt):
        r = py_as(1000, 1000, AS_USER, ".", cwd=str(root))
        assert r.returncode == 0, r.stderr
        results.append(json.loads(r.stdout))
    expected = {
        "create in root's 755 dir": "EACCES", "read root's 600 file": "EACCES",
        "chmod root's file": "EPERM", "chown own file": "EPERM",
        "unlink other's file in sticky dir": "EPERM",
        "explicit utime on writable other's file": "EPERM",
        "touch (now) on writable other's file": "ok", "write own file": "ok",
        "setxattr trusted": "EPERM",
    }
    assert results[0] == expected, "the native expectation itself is off"
    assert results[1] == expected


def test_erofs_and_enospc(host_mount: MountFactory) -> None:
    ro = host_mount(options="ro", no_kernel_flags=True)
    for op in (lambda: open(ro.mnt / "f", "w"), lambda: os.mkdir(ro.mnt / "d"),
               lambda: os.symlink("x", ro.mnt / "s")):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EROFS
    q = host_mount(options="quota=1")
    fd = os.open(q.mnt / "fill", os.O_CREAT | os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            for _ in range(64):
                os.write(fd, b"q" * 65536)
        assert e.value.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        os.close(fd)
    # Freeing space makes room again.
    os.unlink(q.mnt / "fill")
    (q.mnt / "small").write_bytes(b"s" * 4096)


def test_utime_far_past_and_future_as_natively(host_mount: MountFactory, tmp_path: Path) -> None:
    """Any 64-bit second reaches the host filesystem, which clamps it as it would
    natively (ext4: 1901..2446); nothing is refused with EINVAL."""
    m = host_mount()
    native = tmp_path / "native-times"
    native.write_bytes(b"")
    (m.mnt / "times").write_bytes(b"")
    for ns in (-5 * 10**9 + 7, (1 << 62) + 1, (1 << 63) - 1, 15032385536 * 10**9):
        os.utime(native, ns=(ns, ns))
        os.utime(m.mnt / "times", ns=(ns, ns))
        want = os.stat(native).st_mtime_ns
        assert os.stat(m.mnt / "times").st_mtime_ns == want, ns
        assert os.stat(m.source / "times").st_mtime_ns == want, ns
