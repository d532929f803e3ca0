"""``msbfs serve``'s command line: virtiofsd's options, both the Rust daemon's
(``--shared-dir``, ``--cache=``, ``--sandbox=``...) and the C daemon's
``-o source=DIR,cache=none,xattr`` form, plus our own policy options (``--volume``,
``--noexec``, ``--nosuid``, ``--nodev``, ``--quota``), parsed and checked into
``ServeOptions`` before anything starts (``msbfs.serve`` runs them).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from msbfs import confine
from msbfs.confine import SANDBOXES, SECCOMP_ACTIONS
from msbfs.errors import ServeError
from msbfs.mounts import MountOptions

if TYPE_CHECKING:  # the tree is imported only when serving (fast --help)
    from msbfs.tree.idmap import IdMap

CACHE_MODES = ("auto", "always", "metadata", "never")
LOG_LEVELS = {"error": logging.ERROR, "err": logging.ERROR, "warn": logging.WARNING,
              "warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG,
              "trace": logging.DEBUG, "off": logging.CRITICAL + 10}

#: What we print for --print-capabilities: libvirt's vhost-user.json for an fs backend.
#: "separate-options" tells libvirt we take --shared-dir/--cache/... as options of their
#: own (the Rust virtiofsd's interface); we do not offer migration.
CAPABILITIES = {"type": "fs", "features": ["separate-options"]}


@dataclass
class ServeOptions:
    shared_dir: str | None = None
    volume: str | None = None
    socket_path: str | None = None
    fd: int | None = None
    socket_group: str | None = None
    tag: str = "msbfs"
    cache: str = "auto"
    #: the policy flags (--readonly, --noexec, --nosuid, --nodev; -o ro): the one
    #: model every server reads (msbfs.mounts.MountOptions)
    flags: MountOptions = field(default_factory=MountOptions)
    xattr: bool = True
    posix_acl: bool = False
    #: virtiofsd's --xattrmap rules; None: the tree's default map (msbfs.tree.xattrmap)
    xattrmap: str | None = None
    #: virtiofsd's id maps, in order (msbfs.tree.idmap): --uid-map/--gid-map entries and
    #: --translate-uid/--translate-gid rules; none: every id is itself.
    uid_map: list[str] = field(default_factory=list)
    gid_map: list[str] = field(default_factory=list)
    translate_uid: list[str] = field(default_factory=list)
    translate_gid: list[str] = field(default_factory=list)
    posix_lock: bool = True
    flock: bool = True
    writeback: bool = False
    announce_submounts: bool = False
    sandbox: str = "namespace"
    seccomp: str = "kill"
    modcaps: str | None = None
    rlimit_nofile: int | None = None
    #: big-read helper threads shared by all queues (virtiofs.py); 0: reads inline
    thread_pool_size: int = 1
    num_request_queues: int = 1
    quota_mib: int | None = None
    quota_inodes: int | None = None
    keep_serving: bool = False
    log_level: str = "info"
    syslog: bool = False
    ignored: list[str] = field(default_factory=list)


def id_maps(o: ServeOptions) -> tuple[IdMap, IdMap]:
    """The tree's (uid, gid) maps from the options; ServeError names a bad one."""
    from msbfs.tree.idmap import IdMapError, from_options

    try:
        return (from_options(o.translate_uid, o.uid_map, what="UID"),
                from_options(o.translate_gid, o.gid_map, what="GID"))
    except IdMapError as e:
        raise ServeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """virtiofsd's options (Rust and C spellings) and ours, on any parser."""
    p.add_argument("--shared-dir", metavar="DIR", help="directory to serve")
    p.add_argument("--volume", metavar="NAME", help="serve named volume NAME (holds its serving lock)")
    p.add_argument("--socket-path", metavar="PATH", help="vhost-user socket to listen on")
    p.add_argument("--fd", type=int, metavar="FD",
                   help="an inherited vhost-user socket (listening or connected)")
    p.add_argument("--socket-group", metavar="GROUP", help="group owning --socket-path")
    p.add_argument("--tag", default=None, help="virtio-fs tag in config space (default msbfs)")
    p.add_argument("--cache", choices=(*CACHE_MODES, "none"), default=None,
                   help="cache mode: never|auto|metadata|always (default auto)")
    p.add_argument("--readonly", action="store_true", default=None, help="refuse every change")
    p.add_argument("--xattr", dest="xattr", action="store_true", default=None)
    p.add_argument("--no-xattr", dest="xattr", action="store_false")
    p.add_argument("--posix-acl", action="store_true", default=None)
    p.add_argument("--writeback", action="store_true", default=None,
                   help="let the guest cache writes (FUSE_WRITEBACK_CACHE)")
    p.add_argument("--announce-submounts", action="store_true", default=None)
    p.add_argument("--sandbox", choices=SANDBOXES, default=None,
                   help="namespace (default): own pid, net and mount namespaces + "
                        "pivot_root into the share; chroot: private mounts + chroot; none")
    p.add_argument("--seccomp", default=None, metavar="|".join(SECCOMP_ACTIONS),
                   help="what a syscall outside the allowlist gets (default kill)")
    p.add_argument("--modcaps", default=None, metavar="+CAP:-CAP",
                   help="capabilities kept on top of the default set, e.g. +sys_admin:-chown")
    p.add_argument("--rlimit-nofile", default=None, metavar="N",
                   help="fd limit, soft and hard (default: soft raised to hard; 0: unchanged)")
    p.add_argument("--thread-pool-size", type=int, default=None, metavar="N",
                   help="helper threads for big READs (>= 64 KiB), shared by the request "
                        "queues, each of which has its own serving thread; 0: every read "
                        "on its queue's thread (default 1)")
    p.add_argument("--num-request-queues", type=int, default=None, metavar="N",
                   help="request queues offered (default 1)")
    p.add_argument("--log-level", choices=sorted(LOG_LEVELS), default=None)
    p.add_argument("--syslog", action="store_true", default=None)
    p.add_argument("--print-capabilities", action="store_true",
                   help="print libvirt's vhost-user JSON and exit")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT]",
                   help="virtiofsd -o options: source=DIR, cache=, xattr, no_xattr, "
                        "sandbox=, writeback, posix_acl, announce_submounts, log_level=...")
    p.add_argument("-f", "--foreground", action="store_true", help="(always in the foreground)")
    p.add_argument("-d", "--debug", action="store_true", help="debug logging")
    p.add_argument("--noexec", action="store_true", default=None, help="refuse exec opens")
    p.add_argument("--nosuid", action="store_true", default=None, help="never store or show set-id bits")
    p.add_argument("--nodev", action="store_true", default=None, help="no device nodes")
    p.add_argument("--quota", type=int, metavar="MIB", default=None,
                   help="refuse growth past MIB mebibytes (ENOSPC)")
    p.add_argument("--quota-inodes", type=int, metavar="N", default=None,
                   help="refuse new inodes past N (ENOSPC); default: one per 4 KiB of "
                        "--quota, at least 1024")
    # The Rust virtiofsd's tunables with no meaning here: accepted so its command lines
    # (kata, libvirt) work unchanged, and logged at debug level.
    for flag in ("--inode-file-handles", "--migration-mode", "--migration-on-error"):
        p.add_argument(flag, dest="ignored_" + flag[2:].replace("-", "_"), metavar="X",
                       default=None, help=argparse.SUPPRESS)
    for flag in ("--no-readdirplus", "--allow-direct-io", "--killpriv-v2", "--no-killpriv-v2",
                 "--security-label", "--preserve-noatime", "--allow-mmap", "--no-announce-submounts"):
        p.add_argument(flag, dest="ignored_" + flag[2:].replace("-", "_"), action="store_true",
                       help=argparse.SUPPRESS)
    p.add_argument("--xattrmap", default=None, metavar="RULES",
                   help="virtiofsd's xattr name mapping, replacing the default (which "
                        "refuses trusted.* and security.*); e.g. ':map::user.virtiofs.:'")
    # The Rust virtiofsd's id mapping (libvirt passes --uid-map/--gid-map for unprivileged
    # sessions); applied in software by the tree, in both directions.
    p.add_argument("--uid-map", action="append", default=[], metavar=":NS_UID:HOST_UID:COUNT:",
                   help="guest (namespace) uids NS_UID.. are host uids HOST_UID..; others are "
                        "refused (EPERM) and host uids outside show as 65534 (repeatable)")
    p.add_argument("--gid-map", action="append", default=[], metavar=":NS_GID:HOST_GID:COUNT:",
                   help="the same for gids")
    p.add_argument("--translate-uid", action="append", default=[],
                   metavar="TYPE:A:B:COUNT",
                   help="guest:FROM:TO:N, host:FROM:TO:N, squash-guest:FROM:TO:N, "
                        "squash-host:FROM:TO:N, forbid-guest:FROM:N or map:GUEST:HOST:N "
                        "(repeatable; unmapped ids pass through)")
    p.add_argument("--translate-gid", action="append", default=[], metavar="TYPE:A:B:COUNT",
                   help="the same for gids")
    p.add_argument("--keep-serving", action="store_true",
                   help="accept a new frontend after one disconnects (needs a listening socket)")


#: -o options that change nothing for us (virtiofsd tunables with no equivalent here).
_IGNORED_O = {"readdirplus",
              "no_readdirplus", "allow_root", "killpriv_v2", "no_killpriv_v2",
              "no_posix_acl", "no_writeback", "no_announce_submounts", "allow_direct_io",
              "no_allow_direct_io", "security_label", "no_security_label", "max_idle_threads",
              "timeout"}


def options_from_args(a: argparse.Namespace) -> ServeOptions:
    o = ServeOptions()
    # -o first, so the separate options override them
    for group in a.options:
        for item in group.split(","):
            if not item:
                continue
            key, _, value = item.partition("=")
            if key == "source":
                o.shared_dir = value
            elif key == "cache":
                o.cache = value
            elif key == "xattr":
                o.xattr = True
            elif key == "no_xattr":
                o.xattr = False
            elif key == "posix_acl":
                o.posix_acl = True
            elif key in ("posix_lock", "no_posix_lock"):
                o.posix_lock = key == "posix_lock"
            elif key in ("flock", "no_flock"):
                o.flock = key == "flock"
            elif key == "writeback":
                o.writeback = True
            elif key == "announce_submounts":
                o.announce_submounts = True
            elif key == "sandbox":
                o.sandbox = value
            elif key == "modcaps":
                o.modcaps = value
            elif key == "rlimit_nofile":
                o.rlimit_nofile = _fd_limit(value)
            elif key == "log_level":
                o.log_level = value
            elif key == "debug":
                o.log_level = "debug"
            elif (flagged := o.flags.with_flag(key)) is not None and not value:
                o.flags = flagged
            elif key == "xattrmap":
                o.xattrmap = value  # a map with a ',' in it needs --xattrmap
            elif key in _IGNORED_O:
                o.ignored.append(item)
            else:
                raise ServeError(f"unknown option -o {item}")
    for name in ("shared_dir", "volume", "socket_path", "fd", "socket_group", "tag", "cache",
                 "xattr", "posix_acl", "writeback", "announce_submounts",
                 "sandbox", "thread_pool_size", "num_request_queues", "log_level", "syslog",
                 "seccomp", "modcaps"):
        v = getattr(a, name, None)
        if v is not None:
            setattr(o, name, v)
    for word in ("readonly", "noexec", "nosuid", "nodev"):
        if getattr(a, word, None):
            o.flags = o.flags.with_flag(word) or o.flags
    if getattr(a, "rlimit_nofile", None) is not None:
        o.rlimit_nofile = _fd_limit(a.rlimit_nofile)
    if getattr(a, "xattrmap", None) is not None:
        o.xattrmap = a.xattrmap
    if o.xattrmap is not None:
        from msbfs.tree.xattrmap import XattrMap, XattrMapError

        try:
            XattrMap.parse(o.xattrmap)  # refused at start-up, as virtiofsd does
        except XattrMapError as e:
            raise ServeError(f"--xattrmap: {e}") from None
    for name in ("uid_map", "gid_map", "translate_uid", "translate_gid"):
        setattr(o, name, list(getattr(a, name, None) or ()))
    if o.uid_map or o.gid_map or o.translate_uid or o.translate_gid:
        # A bad map stops the daemon at start, with virtiofsd's reason. (None is the
        # identity: no check, and no import of the tree package before the prelude.)
        id_maps(o)
    for k, v in vars(a).items():
        if k.startswith("ignored_") and v:
            o.ignored.append(k[len("ignored_"):].replace("_", "-"))
    if a.quota is not None:
        o.quota_mib = a.quota
    if a.quota_inodes is not None:
        if a.quota_inodes <= 0:
            raise ServeError("--quota-inodes must be a positive number of inodes")
        o.quota_inodes = a.quota_inodes
    if a.debug:
        o.log_level = "debug"
    o.keep_serving = bool(a.keep_serving)
    if o.cache == "none":
        o.cache = "never"  # the C virtiofsd's name for it
    if o.cache not in CACHE_MODES:
        raise ServeError(f"unknown cache mode {o.cache!r} (use {'|'.join(CACHE_MODES)})")
    if o.sandbox not in SANDBOXES:
        raise ServeError(f"unknown sandbox {o.sandbox!r} (use {'|'.join(SANDBOXES)})")
    if o.seccomp not in SECCOMP_ACTIONS:
        raise ServeError(f"unknown --seccomp action {o.seccomp!r} (use {'|'.join(SECCOMP_ACTIONS)})")
    confine.parse_modcaps(o.modcaps)  # unknown names fail here, before anything starts
    if o.log_level not in LOG_LEVELS:
        raise ServeError(f"unknown log level {o.log_level!r}")
    if (o.shared_dir is None) == (o.volume is None):
        raise ServeError("give exactly one of --shared-dir (or -o source=DIR) and --volume")
    if (o.socket_path is None) == (o.fd is None):
        raise ServeError("give exactly one of --socket-path and --fd")
    if o.quota_mib is not None and o.quota_mib <= 0:
        raise ServeError("--quota must be a positive number of MiB")
    if not 1 <= o.num_request_queues <= 64:
        raise ServeError("--num-request-queues must be 1..64")
    if not 0 <= o.thread_pool_size <= 64:
        raise ServeError("--thread-pool-size must be 0..64")
    if not o.tag or len(o.tag.encode()) > 36:
        raise ServeError("--tag must be 1..36 bytes")
    return o


def _fd_limit(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise ServeError(f"--rlimit-nofile must be a number of fds, not {value!r}")
    return n


def confinement(o: ServeOptions) -> confine.Confinement:
    return confine.Confinement(sandbox=o.sandbox, seccomp=o.seccomp,
                               caps=confine.parse_modcaps(o.modcaps),
                               rlimit_nofile=o.rlimit_nofile)


def print_capabilities() -> int:
    print(json.dumps(CAPABILITIES, indent=2))
    return 0
