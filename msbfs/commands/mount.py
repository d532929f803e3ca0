"""``msbfs mount`` and ``msbfs umount``: the sandboxed tree of a volume or host directory,
mounted on the host through FUSE (see ``msbfs.hostmount``)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from msbfs import sources
from msbfs.errors import MsbfsError
from msbfs.sources import Source, is_path_source

if TYPE_CHECKING:  # pyfuse3, trio and the tree load only when mounting
    from msbfs.hostmount import HostMountOptions
    from msbfs.tree import Tree



def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mount", help="mount a volume or host directory on the host (FUSE)",
        description="Mount SOURCE (a named volume, or a host directory when it contains "
                    "a '/' or starts with '.') at MOUNTPOINT. Returns once the mount "
                    "answers; the daemon runs in the background until `msbfs umount`.")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-o", dest="options", metavar="OPTS", default="",
                   help="comma-separated: ro, noexec, nosuid, nodev, allow_other, uid=N, "
                        "gid=N (show every file as owned by N), quota=MIB, writeback "
                        "(experimental: the kernel's writeback cache; faster small writes, "
                        "errors such as ENOSPC show at fsync/close), xattrmap=RULES "
                        "(virtiofsd's xattr name mapping, without ','), uid_map=:NS:HOST:N:, "
                        "gid_map=..., translate_uid=TYPE:A:B:N, translate_gid=... (virtiofsd's "
                        "id maps, repeatable; the calling user is the 'guest' side)")
    p.add_argument("--foreground", action="store_true",
                   help="serve in this process until unmounted or SIGINT/SIGTERM")
    p.add_argument("--no-kernel-flags", action="store_true",
                   help="enforce ro/noexec/nosuid/nodev only in the server, not also as "
                        "kernel mount flags (for showing the server enforces them alone)")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_mount)

    u = subparsers.add_parser("umount", help="unmount an msbfs host mount",
                              description="Unmount MOUNTPOINT (clearing it if its daemon "
                                          "died) and wait for the daemon to exit.")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.set_defaults(func=cmd_umount)


def open_source(source: str, options: HostMountOptions) -> Source:
    """``msbfs mount SOURCE``: a volume name, or a directory (it holds a '/')."""
    kind = "path" if is_path_source(source) else "volume"
    return sources.open_source(**{kind: source}, quota_mib=options.quota_mib,
                               quota_inodes=options.quota_inodes)


def build_tree(src: Source, options: HostMountOptions) -> Tree:
    from msbfs.tree import Tree

    policy = options.flags.policy(quota_bytes=src.quota_bytes, quota_inodes=src.quota_inodes,
                                  squash_uid=options.uid, squash_gid=options.gid)
    # posix_acl: the kernel (enable_acl) checks ACLs through system.posix_acl_* xattrs.
    uid_map, gid_map = options.id_maps()
    return Tree(src.path, policy, writeback=options.writeback, xattrmap=options.xattrmap,
                usage=src.usage,
                posix_acl=True, uid_map=uid_map, gid_map=gid_map)


def cmd_mount(args: argparse.Namespace) -> int:
    from msbfs.hostmount import HostMountOptions, run_mount
    from msbfs.mount_daemon import Readiness, start_background
    from msbfs.mountinfo import check_mountpoint

    options = HostMountOptions.parse(args.options)
    if not args.foreground:
        # Check what we cheaply can here, so plain mistakes are reported without a daemon.
        check_mountpoint(args.mountpoint)
        argv = ["mount", args.source, os.path.abspath(args.mountpoint)]
        if args.options:
            argv += ["-o", args.options]
        if args.no_kernel_flags:
            argv.append("--no-kernel-flags")
        start_background(argv, args.mountpoint)
        return 0
    ready = Readiness(args.ready_fd)
    try:
        mountpoint = check_mountpoint(args.mountpoint)
        src = open_source(args.source, options)
        try:
            tree = build_tree(src, options)
            try:
                run_mount(tree, mountpoint, options, fsname=src.label,
                          mirror_policy=not args.no_kernel_flags, on_ready=ready.ready)
            finally:
                tree.close()
        finally:
            src.close()
    except (MsbfsError, OSError) as e:
        ready.failed(str(e) if isinstance(e, MsbfsError) else f"{e.strerror or e}"
                     + (f": {e.filename}" if getattr(e, "filename", None) else ""))
        raise
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from msbfs.mount_daemon import unmount

    unmount(args.mountpoint)
    return 0
