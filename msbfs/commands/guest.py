"""``msbfs guest``: the guest image (kernel + initramfs) that ``msbfs run`` boots.

    msbfs guest build [--quiet] [--force] [--out DIR]   build it unless up to date
    msbfs guest path                                   print its directory

The image lives in ``$XDG_CACHE_HOME/msbfs/guest`` (``~/.cache/msbfs/guest``), or in
``MSBFS_GUEST_DIR``. Building needs apt (Debian's kernel and busybox-static packages are
downloaded, not installed), dpkg-deb, gcc with a static libc, and cpio.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from msbfs.launcher.image import default_image_dir


def _build(args: argparse.Namespace) -> int:
    from msbfs.guest.build import build, stderr_progress

    image = build(args.out, progress=None if args.quiet else stderr_progress,
                  force=args.force)
    if not args.quiet:
        print(image.directory)
    return 0


def _path(args: argparse.Namespace) -> int:
    print(default_image_dir())
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("guest", help="build or locate the guest image",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="guest_command", metavar="COMMAND", required=True)
    b = sub.add_parser("build", help="build the guest kernel + initramfs if an input changed")
    b.add_argument("--quiet", action="store_true", help="no progress, no path")
    b.add_argument("--force", action="store_true", help="build even if up to date")
    b.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="image directory (default: msbfs guest path)")
    b.set_defaults(func=_build)
    sub.add_parser("path", help="print the image directory").set_defaults(func=_path)
