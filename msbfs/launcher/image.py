"""Where the guest kernel and initramfs live: a per-user cache,
``$XDG_CACHE_HOME/msbfs/guest`` (``~/.cache/msbfs/guest`` by default), so an installed
msbfs, a source checkout, its tests and CI all find the one image ``msbfs guest build``
(``msbfs/guest``) made. ``MSBFS_GUEST_DIR`` points elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from msbfs.errors import LaunchError


def cache_dir() -> Path:
    """msbfs's per-user cache directory. A relative ``XDG_CACHE_HOME`` is ignored, as the
    XDG base directory specification asks."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "msbfs"


def default_image_dir() -> Path:
    env = os.environ.get("MSBFS_GUEST_DIR")
    if env:
        return Path(env)
    return cache_dir() / "guest"


@dataclass(frozen=True)
class GuestImage:
    directory: Path

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initramfs.cpio"

    @property
    def stamp(self) -> Path:
        """What the builder made the image from; a hand-made image has none."""
        return self.directory / "stamp"

    def exists(self) -> bool:
        return self.kernel.is_file() and self.initrd.is_file()


def find_image() -> GuestImage:
    image = GuestImage(default_image_dir())
    if not image.exists():
        raise LaunchError(
            f"no guest image in {image.directory}: run `msbfs guest build`, "
            "or set MSBFS_GUEST_DIR")
    return image
