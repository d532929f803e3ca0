"""Where the guest kernel and initramfs live. ``tools/guest`` builds them into
``build/guest`` of the source tree; ``MSBFS_GUEST_DIR`` points elsewhere (an installed
msbfs has no source tree)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from msbfs.errors import LaunchError


def default_image_dir() -> Path:
    env = os.environ.get("MSBFS_GUEST_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "build" / "guest"


@dataclass(frozen=True)
class GuestImage:
    directory: Path

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initramfs.cpio"

    def exists(self) -> bool:
        return self.kernel.is_file() and self.initrd.is_file()


def find_image() -> GuestImage:
    image = GuestImage(default_image_dir())
    if not image.exists():
        raise LaunchError(
            f"no guest image in {image.directory}: run `make guest` "
            "(or `python -m tools.guest build`), or set MSBFS_GUEST_DIR")
    return image
