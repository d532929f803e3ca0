"""msbfs: serve sandbox volumes to microVM guests (virtio-fs), the host (FUSE) and Python."""

from __future__ import annotations

__version__ = "0.1.0"
