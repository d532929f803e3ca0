"""``msbfs serve``: the virtio-fs daemon (see ``msbfs.serve``)."""

from __future__ import annotations

import argparse
from typing import Any

from msbfs import serve, serve_options


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a directory or named volume to a QEMU guest over vhost-user-fs",
        description="A drop-in for virtiofsd: takes its options (also the -o form) plus "
                    "msbfs policy (--volume, --noexec, --nosuid, --nodev, --quota).")
    serve_options.add_arguments(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    return serve.handle(args)
