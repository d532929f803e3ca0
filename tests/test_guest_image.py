"""The guest image builder: what the initramfs holds and the module order, and when it
builds (only when an input changed, one builder at a time, on the first ``msbfs run``)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import msbfs.guest.build as build_module
from msbfs.guest.build import (
    BuildError,
    Package,
    _depends,
    _read_stamp,
    build,
    ensure_image,
    inputs_hash,
    plan,
)
from msbfs.launcher.image import GuestImage


def test_initramfs_contents(guest_image) -> None:
    listing = subprocess.run(["cpio", "-t", "--quiet", "-F", str(guest_image.initrd)],
                             capture_output=True, text=True, check=True).stdout.split()
    for path in ("init", "bin/busybox", "sbin/msb-agent", "etc/msb-modules",
                 "lib/modules/ext4.ko", "lib/modules/virtio_blk.ko"):
        assert path in listing, path
    order = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "-F",
                            str(guest_image.initrd), "etc/msb-modules"],
                           capture_output=True, text=True, check=True).stdout.split()
    # Dependencies load first: ext4 needs jbd2, mbcache, crc16 and (softly) crc32c.
    for dep in ("jbd2.ko", "mbcache.ko", "crc16.ko", "crc32c_generic.ko"):
        assert order.index(dep) < order.index("ext4.ko")
    assert guest_image.kernel.stat().st_size > 1 << 20


def test_stamp_records_inputs(guest_image) -> None:
    recorded = _read_stamp(guest_image.directory / "stamp")
    assert recorded is not None
    digest, packages = recorded
    assert digest == inputs_hash(packages)  # the image matches today's inputs
    assert [p.name.split("-")[0] for p in packages] == ["linux", "busybox"]


def test_modinfo_depends_parsing() -> None:
    blob = b"\0license=GPL\0depends=jbd2,mbcache,crc-16\0intree=Y\0"
    assert _depends(blob) == ["jbd2", "mbcache", "crc_16"]
    assert _depends(b"\0license=GPL\0depends=\0") == []
    assert _depends(b"no modinfo here") == []


# ---- when the builder builds: stamps, hand-made images, the lock, the first run ----------

IMAGE_FILES = ("vmlinuz", "initramfs.cpio", "stamp")


def _copy_image(src: GuestImage, dst: Path, files: tuple[str, ...] = IMAGE_FILES) -> GuestImage:
    """A private copy of the fixture's image (copy2: the stamp keeps its mtime, which says
    whether apt's lists changed since), sharing its download cache so a build in the
    copy downloads nothing."""
    dst.mkdir()
    for name in files:
        shutil.copy2(src.directory / name, dst / name)
    if (src.directory / "debs").is_dir():
        (dst / "debs").symlink_to(src.directory / "debs")
    return GuestImage(dst)


def _restamp(image: GuestImage, digest: str) -> None:
    _digest, *specs = image.stamp.read_text().splitlines()
    image.stamp.write_text("\n".join([digest, *specs]) + "\n")


def _snapshot(image: GuestImage) -> dict[str, tuple[int, int]]:
    return {name: ((image.directory / name).stat().st_ino,
                   (image.directory / name).stat().st_mtime_ns) for name in IMAGE_FILES}


def test_current_image_is_not_rebuilt(guest_image: GuestImage, tmp_path: Path) -> None:
    image = _copy_image(guest_image, tmp_path / "img")
    before = _snapshot(image)
    lines: list[str] = []
    assert build(image.directory, progress=lines.append) == image
    assert lines == [] and _snapshot(image) == before
    assert plan(image).reason is None


def test_stale_images_say_why(guest_image: GuestImage, tmp_path: Path) -> None:
    # Against today's inputs (the fixture's digest), so apt need not be asked each time.
    image = _copy_image(guest_image, tmp_path / "img")
    recorded = _read_stamp(image.stamp)
    assert recorded is not None
    today = recorded[0]
    assert build_module._stale(image, today) is None
    _restamp(image, "0" * 64)
    assert build_module._stale(image, today) == "its inputs changed"
    image.stamp.write_text("unfinished\n")  # what a build leaves until it is done
    assert build_module._stale(image, today) == "no finished build's stamp"
    image.kernel.unlink()
    assert build_module._stale(image, today) == "no image yet"


def test_every_input_changes_the_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "builder"
    shutil.copytree(build_module.HERE, here, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(build_module, "HERE", here)
    packages = [Package("linux-image-6.12.1-amd64", "6.12.1-1"), Package("busybox-static", "1")]
    base = inputs_hash(packages)
    for name in ("init.sh", "agent.c", "build.py"):
        original = (here / name).read_bytes()
        (here / name).write_bytes(original + b"\n")
        assert inputs_hash(packages) != base, name
        (here / name).write_bytes(original)
    assert inputs_hash(packages) == base
    newer_kernel = [Package("linux-image-6.12.1-amd64", "6.12.1-2"), packages[1]]
    assert inputs_hash(newer_kernel) != base


def test_hand_made_image_is_used_as_is(guest_image: GuestImage, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    image = _copy_image(guest_image, tmp_path / "img", files=("vmlinuz", "initramfs.cpio"))
    monkeypatch.setenv("MSBFS_GUEST_DIR", str(image.directory))
    lines: list[str] = []
    assert ensure_image(progress=lines.append) == image
    assert lines == [] and not image.stamp.exists()


def test_failed_rebuild_keeps_an_existing_image(guest_image: GuestImage, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    image = _copy_image(guest_image, tmp_path / "img")
    _restamp(image, "0" * 64)
    monkeypatch.setenv("MSBFS_GUEST_DIR", str(image.directory))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # dpkg-deb, gcc, apt: none
    lines: list[str] = []
    assert ensure_image(progress=lines.append) == image
    assert "is not installed" in lines[-1] and "using the existing image" in lines[-1]
    assert _read_stamp(image.stamp) is None  # not taken for current: the next run retries
    # Without an image to fall back on, the failure is the answer.
    image.kernel.unlink()
    with pytest.raises(BuildError, match="is not installed"):
        ensure_image(progress=lines.append)


def test_concurrent_builder_waits_then_finds_the_image(guest_image: GuestImage,
                                                       tmp_path: Path) -> None:
    image = _copy_image(guest_image, tmp_path / "img")
    finished = image.stamp.read_text()
    _restamp(image, "0" * 64)  # stale: a builder must take the lock
    lines: list[str] = []
    outcome: dict[str, object] = {}

    def second_builder() -> None:
        try:
            outcome["image"] = build(image.directory, progress=lines.append)
        except Exception as e:
            outcome["error"] = e

    other = os.open(image.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    fcntl.flock(other, fcntl.LOCK_EX)  # "another process" is building
    thread = threading.Thread(target=second_builder)
    thread.start()
    try:
        deadline = time.monotonic() + 120  # a failure bound only
        while not any("waiting for another build" in line for line in lines):
            assert thread.is_alive() and time.monotonic() < deadline, (lines, outcome)
            time.sleep(0.01)
        image.stamp.write_text(finished)  # the other build finished...
    finally:
        os.close(other)  # ...and let go of the lock
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert outcome == {"image": image}
    assert lines == [f"waiting for another build of {image.directory}"]  # built nothing


@pytest.mark.guest
def test_first_run_builds_with_progress(guest_image: GuestImage, tmp_path: Path,
                                        msb_home: Path) -> None:
    image = _copy_image(guest_image, tmp_path / "img", files=())
    env = {**os.environ, "MSBFS_GUEST_DIR": str(image.directory)}
    argv = [sys.executable, "-m", "msbfs", "run", "--accel", "tcg", "--", "echo", "hi"]
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "hi\n"
    progress = [line for line in first.stderr.splitlines() if line.startswith("guest: ")]
    assert progress[0] == f"guest: building the guest image in {image.directory} (no image yet)"
    assert "guest: compiling msb-agent" in progress
    assert progress[-1] == f"guest: built {image.kernel} and {image.initrd}"
    assert plan(image).reason is None
    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0 and second.stdout == "hi\n"
    assert "guest: " not in second.stderr  # up to date: nothing built, nothing said


def test_apt_is_asked_once_after_its_lists_change(guest_image: GuestImage,
                                                  tmp_path: Path) -> None:
    image = _copy_image(guest_image, tmp_path / "img")
    os.utime(image.stamp, (0, 0))  # older than apt's lists: apt must be asked
    assert build_module._apt_lists_newer_than(image.stamp)
    lines: list[str] = []
    assert build(image.directory, progress=lines.append) == image
    assert lines == []  # apt agreed with the stamp: nothing built...
    assert not build_module._apt_lists_newer_than(image.stamp)  # ...and not asked again
