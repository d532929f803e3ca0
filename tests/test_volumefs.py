"""VolumeFs on a real directory: every operation, and every way out of the root."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

import msbfs
from msbfs.errors import InvalidArgument, PathEscape
from msbfs.volumefs import VolumeFs


@pytest.fixture
def fs(volume) -> VolumeFs:
    with volume.fs() as f:
        yield f


@pytest.fixture(autouse=True)
def _umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_and_dirs(volume, fs):
    assert fs.root == volume.path
    fs.write("a.bin", b"\x00\xff" * 10)
    assert fs.read("a.bin") == b"\x00\xff" * 10
    fs.write_text("a.bin", "short")  # truncates
    assert fs.read_text("a.bin") == "short"
    fs.write("mv", memoryview(bytearray(b"abcdef"))[1:4])
    assert fs.read("mv") == b"bcd"
    assert stat.S_IMODE(fs.stat("a.bin").st_mode) == 0o644
    assert fs.stat("a.bin").st_size == 5

    fs.mkdir("x/y/z")
    fs.mkdir("x/y/z")  # already there: fine
    fs.mkdir("x/./y/../y/w/")
    assert stat.S_IMODE(fs.stat("x/y").st_mode) == 0o755
    assert fs.listdir("x/y") == ["w", "z"]
    assert fs.listdir() == fs.listdir(".") == fs.listdir("") == ["a.bin", "mv", "x"]
    with pytest.raises(FileExistsError):
        fs.mkdir("a.bin")
    with pytest.raises(FileExistsError):
        fs.mkdir("a.bin/sub")

    assert fs.exists("x/y/z") and fs.exists("a.bin") and fs.exists(".")
    assert not fs.exists("nope") and not fs.exists("a.bin/nope")
    with pytest.raises(FileNotFoundError):
        fs.read("nope")
    with pytest.raises(IsADirectoryError):
        fs.read("x")

    with pytest.raises(OSError) as e:
        fs.remove("x/y")
    assert e.value.errno == errno.ENOTEMPTY
    fs.remove("x/y/z")
    fs.remove("a.bin")
    assert not fs.exists("a.bin") and not fs.exists("x/y/z")
    with pytest.raises(FileNotFoundError):
        fs.remove("a.bin")

    fs.write_text("x/y/w/deep", "d")
    fs.remove_all("x")
    fs.remove_all("x")  # gone already: fine
    assert fs.listdir() == ["mv"]
    with pytest.raises(InvalidArgument):
        fs.remove_all(".")
    with pytest.raises(OSError) as e:
        fs.remove("")  # the root itself, as rmdir(2) of "." would be refused
    assert e.value.errno == errno.EBUSY
    assert os.listdir(volume.path) == ["mv"]


def test_without_with_block(volume):
    fs = volume.fs()
    fs.write_text("one", "1")
    assert volume.fs().read_text("one") == "1"
    assert Path(volume.path, "one").read_text() == "1"


def test_symlinks_inside_work(volume, fs):
    fs.mkdir("real/sub")
    fs.write_text("real/sub/file", "content")
    os.symlink("real/sub", os.path.join(volume.path, "short"))
    os.symlink("../real/sub/file", os.path.join(volume.path, "real", "up"))
    os.symlink("/real", os.path.join(volume.path, "abs"))  # absolute: leaves the root
    assert fs.read_text("short/file") == "content"
    assert fs.read_text("real/up") == "content"
    fs.write_text("real/up", "through a link")
    assert Path(volume.path, "real/sub/file").read_text() == "through a link"
    fs.mkdir("short/made")
    assert os.path.isdir(os.path.join(volume.path, "real/sub/made"))
    assert stat.S_ISLNK(fs.stat("short", follow_symlinks=False).st_mode)
    fs.remove("short")  # the link, not its target
    assert fs.exists("real/sub/file") and not fs.exists("short")
    with pytest.raises(PathEscape):
        fs.read("abs/sub/file")


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory next to MSB_HOME that nothing may touch through the volume."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_text("secret")
    return d


@pytest.fixture
def escapes(volume, outside) -> list[str]:
    """Paths that leave the root, each its own way."""
    root = Path(volume.path)
    os.symlink("/etc", root / "etc")
    os.symlink(outside, root / "abslink")
    # A chain of relative links, each plausible on its own, that walks out.
    (root / "a" / "b").mkdir(parents=True)
    os.symlink("../l2", root / "a" / "b" / "l1")   # -> a/l2
    os.symlink("../l3", root / "a" / "l2")          # -> l3
    rel = os.path.relpath(outside, root)
    os.symlink(rel, root / "l3")                    # -> ../../outside
    return ["/etc/passwd", "/", "..", "../outside/secret", "../../etc/passwd", "a/../../x",
            "a/b/../../..", "etc/passwd", "abslink/secret", "a/b/l1/secret", "l3/secret",
            "a/b/l1/new/deeper"]


OPS = {
    "read": lambda fs, p: fs.read(p),
    "read_text": lambda fs, p: fs.read_text(p),
    "write": lambda fs, p: fs.write(p, b"pwned"),
    "write_text": lambda fs, p: fs.write_text(p, "pwned"),
    "mkdir": lambda fs, p: fs.mkdir(p),
    "remove": lambda fs, p: fs.remove(p),
    "remove_all": lambda fs, p: fs.remove_all(p),
    "exists": lambda fs, p: fs.exists(p),
    "listdir": lambda fs, p: fs.listdir(p),
    "stat": lambda fs, p: fs.stat(p),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_escape_is_refused(fs, escapes, outside, op):
    for path in escapes:
        with pytest.raises(PathEscape):
            OPS[op](fs, path)
    assert sorted(os.listdir(outside)) == ["secret"]
    assert (outside / "secret").read_text() == "secret"
    assert os.path.exists("/etc/passwd")


def test_remove_all_never_follows_links(volume, fs, outside):
    os.symlink(outside, os.path.join(volume.path, "link"))
    fs.mkdir("tree/sub")
    os.symlink(outside, os.path.join(volume.path, "tree/sub/link"))
    os.symlink(outside / "secret", os.path.join(volume.path, "tree/filelink"))
    fs.remove_all("tree")
    fs.remove_all("link")
    assert fs.listdir() == []
    assert sorted(os.listdir(outside)) == ["secret"]


def _swapper(root: Path, target: Path, stop: threading.Event,
             errors: list[BaseException]) -> None:
    """Flip ``root/sub`` between a real directory and a symlink to ``target``, each
    step one atomic rename, as fast as it can. ``sub`` and the parked symlink exist
    before the thread starts (an op that makes parents could make ``sub`` first)."""
    sub, parked_dir, parked_link = root / "sub", root / "sub.dir", root / "sub.link"

    def put(src: Path) -> None:
        while True:
            try:
                os.rename(src, sub)
                return
            except OSError:
                # The op under test made a fresh ``sub`` while it was missing: clear it.
                if sub.is_dir() and not sub.is_symlink():
                    shutil.rmtree(sub, ignore_errors=True)

    try:
        while not stop.is_set():
            os.rename(sub, parked_dir)
            put(parked_link)   # now a symlink leading out
            os.rename(sub, parked_link)
            put(parked_dir)    # a directory again
    except BaseException as e:
        errors.append(e)


@pytest.mark.parametrize("op", ["write", "mkdir", "remove_all"])
def test_racing_symlink_swap_never_escapes(volume, outside, op):
    root = Path(volume.path)
    stop = threading.Event()
    swap_errors: list[BaseException] = []
    t = threading.Thread(target=_swapper, args=(root, outside, stop, swap_errors), daemon=True)
    fs = volume.fs()
    outcomes: dict[str, int] = {}
    (root / "sub").mkdir()
    os.symlink(outside, root / "sub.link")
    with fs:
        t.start()
        try:
            # Until the race has gone both ways (some ops met the symlink, some the
            # directory) and a few hundred ops ran; the bound only ends a failing run.
            for i in range(200_000):
                if i >= 300 and outcomes.get("escape") and len(outcomes) > 1:
                    break
                try:
                    if op == "write":
                        fs.write("sub/f", b"x")
                    elif op == "mkdir":
                        fs.mkdir("sub/d/e")
                    else:
                        fs.remove_all("sub/secret")
                    outcomes["ok"] = outcomes.get("ok", 0) + 1
                except PathEscape:
                    outcomes["escape"] = outcomes.get("escape", 0) + 1
                except OSError as e:  # the path vanished mid-swap: fine
                    outcomes[errno.errorcode[e.errno]] = outcomes.get(
                        errno.errorcode[e.errno], 0) + 1
        finally:
            stop.set()
            t.join()
    assert sorted(os.listdir(outside)) == ["secret"], outcomes
    assert (outside / "secret").read_text() == "secret"
    assert not swap_errors
    # The race really happened both ways: some ops met the symlink, some the directory.
    assert outcomes.get("escape", 0) > 0, outcomes
    assert sum(outcomes.values()) - outcomes.get("escape", 0) > 0, outcomes


def test_quota_stops_growth(msb_home):
    msbfs.create_volume("q", quota_mib=1)
    fs = msbfs.get_volume("q").fs()
    fs.write("half", b"x" * (512 * 1024))
    with pytest.raises(OSError) as e:
        fs.write("more", b"x" * (1024 * 1024))
    assert e.value.errno == errno.ENOSPC
    assert not fs.exists("more")
    fs.write("half", b"y" * (600 * 1024))  # replacing a file charges only the growth
    assert fs.read("half")[:1] == b"y"
