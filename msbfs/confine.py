"""How ``msbfs serve`` confines itself once its tree, socket and lock are made, the way
virtiofsd confines its own daemon. Each layer stops something the others do not:

- namespaces + pivot_root (``--sandbox namespace``, the default): the serving process is
  pid 1 of a new pid namespace, in a new network namespace (only a down loopback) and a
  new mount namespace whose root is a small read-only tmpfs holding the shared
  directory (``/shared``) and a ``/proc`` of its own pid namespace. No host path, host
  process or network is reachable by name any more; what it serves it holds as fds.
- capabilities: only what serving needs (``DEFAULT_CAPS``), in the bounding set too and
  none ambient or inheritable, so a compromised daemon cannot mount, load modules,
  ptrace, or set ``trusted.*`` xattrs (those need CAP_SYS_ADMIN).
- ``no_new_privs``: nothing it could exec gains privileges (and seccomp needs it).
- seccomp: an allowlist of the syscalls the daemon makes (``SYSCALLS``); anything else
  kills the process (``--seccomp=kill``), so a hijacked daemon has a small kernel surface.
- ``RLIMIT_NOFILE`` (``--rlimit-nofile``): a bound on the fds a guest can make it hold.

The order is fixed by what each step needs: the fd limit before the tree; the sandbox
(it mounts, so it needs CAP_SYS_ADMIN) before the capabilities go; dropping the bounding
set needs CAP_SETPCAP, so it comes before capset; ``no_new_privs`` before the filter; the
filter last and before any thread exists (capsets are per thread; the filter is
installed with TSYNC anyway).
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from msbfs._native import ffi, lib
from msbfs.errors import ServeError
from msbfs.supervisor import STOP_SIGNALS

log = logging.getLogger("msbfs.confine")

SANDBOXES = ("namespace", "chroot", "none")
SECCOMP_ACTIONS = ("none", "log", "trap", "kill")

# linux/sched.h, linux/mount.h, linux/prctl.h
CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_READ, PR_CAPBSET_DROP = 1, 23, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4

#: linux/capability.h, by number (capability N is bit N of the masks).
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)
CAP_SETPCAP = CAP_NAMES.index("setpcap")

#: virtiofsd's set (what creating files as the caller, chown/chmod/utimes on the
#: caller's behalf, mknod and file capabilities need), plus DAC_READ_SEARCH: the inode
#: table re-opens evicted inodes with open_by_handle_at (msbfs/tree/inodes.py).
DEFAULT_CAPS = frozenset(CAP_NAMES.index(n) for n in (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "setgid", "setuid",
    "mknod", "setfcap"))

#: The namespace sandbox's supervisor (outside it, see ``_supervise``): removing the
#: socket path it made, in a directory it may not own.
SUPERVISOR_CAPS = frozenset({CAP_NAMES.index("dac_override")})

#: Every syscall the serving process makes once the filter is on, by name so the list
#: holds on every architecture (names an architecture lacks, like ``open`` on aarch64,
#: are skipped). Where it came from: ``strace -f`` of real daemons (the syscalls each
#: made after its filter went on) and ``--seccomp=log`` runs (the kernel logs every
#: syscall outside the list, audit type 1326), driven by tests/test_virtiofs_serve.py,
#: tests/test_confinement.py, the guest tests (tests/test_guest_*.py,
#: tests/test_launcher.py) and the frontend benchmark (1 MiB reads: the C data path's
#: threads); plus what msbfs/tree, vhost/ and csrc/ call on paths those runs did not
#: reach (read from the code). A syscall missing here kills the daemon on guest input.
SYSCALLS = (
    # CPython, glibc, trio: memory, threads (glibc's thread start: clone3, rseq,
    # set_robust_list), signals, time (vDSO fallbacks), the epoll loop
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "futex", "set_robust_list",
    "rseq", "clone", "clone3", "exit", "exit_group", "gettid", "getpid", "getppid", "tgkill",
    "tkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "restart_syscall", "sched_yield", "sched_getaffinity", "getrandom", "clock_gettime",
    "clock_nanosleep", "nanosleep", "gettimeofday", "prlimit64", "getrlimit", "prctl",
    "getuid", "geteuid", "getgid", "getegid", "epoll_create1", "epoll_ctl", "epoll_wait",
    "epoll_pwait", "poll", "ppoll", "eventfd2",
    # fds and sockets: the vhost-user connection (SCM_RIGHTS, eventfd_write on the error
    # fd), trio's wake-up socketpair, syslog's connected socket (socket+connect: Python's
    # SysLogHandler re-connects after a failed send; in the empty network namespace and
    # the new root there is nothing to reach, but the attempt must not kill)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "lseek", "close", "dup", "dup2", "dup3", "fcntl", "ioctl",
    "socket", "socketpair", "connect", "accept", "accept4", "shutdown", "sendto", "sendmsg",
    "recvfrom", "recvmsg", "getsockopt", "setsockopt", "getsockname", "getpeername",
    # the tree: lookups over O_PATH fds, /proc/self/fd re-opens, xattrs by path. The
    # path forms (open, stat, mkdir, chmod...) are what glibc issues for os.* calls on
    # /proc/self/fd paths on x86_64; the *at forms for dir_fd calls. Several (flock,
    # copy_file_range, fallocate, fsync, name_to_handle_at...) only a rarer request reaches.
    "open", "openat", "openat2", "name_to_handle_at", "open_by_handle_at", "stat", "lstat",
    "fstat", "newfstatat", "statx", "statfs", "fstatfs", "getdents64", "readlink",
    "readlinkat", "access", "faccessat", "faccessat2", "getcwd", "chdir", "fchdir", "umask",
    "mkdir", "mkdirat", "mknodat", "unlink", "unlinkat", "rmdir", "rename", "renameat",
    "renameat2", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat",
    "chown", "fchown", "lchown", "fchownat", "utimensat", "truncate", "ftruncate",
    "fallocate", "fsync", "fdatasync", "syncfs", "flock", "copy_file_range",
    "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    # the caller's identity per request (raw per-thread syscalls, csrc/sys.c, tree.c)
    "setfsuid", "setfsgid", "setgroups", "getgroups",
)


@dataclass(frozen=True)
class Confinement:
    """What ``msbfs serve`` was asked for (already checked)."""

    sandbox: str = "namespace"
    seccomp: str = "kill"
    caps: frozenset[int] = DEFAULT_CAPS
    rlimit_nofile: int | None = None  # None: raise the soft limit to the hard one


def _check(r: int, what: str) -> int:
    if r < 0:
        raise ServeError(f"sandbox: {what}: {os.strerror(-r)}")
    return r


# ---- options ------------------------------------------------------------------------------

def cap_number(name: str) -> int:
    """A capability by the name virtiofsd's --modcaps takes (``sys_admin``; case and a
    ``cap_`` prefix do not matter)."""
    n = name.strip().lower()
    n = n.removeprefix("cap_")
    if n not in CAP_NAMES:
        raise ServeError(f"--modcaps: unknown capability {name!r}")
    return CAP_NAMES.index(n)


def parse_modcaps(spec: str | None, base: frozenset[int] = DEFAULT_CAPS) -> frozenset[int]:
    """The Rust virtiofsd's ``--modcaps=+sys_admin:-chown``: colon-separated additions
    (``+cap``) and removals (``-cap``) applied in order to the default set."""
    caps = set(base)
    for item in (spec or "").split(":"):
        if not item:
            continue
        if item[0] not in "+-" or len(item) == 1:
            raise ServeError(f"--modcaps: {item!r} is not +CAP or -CAP")
        n = cap_number(item[1:])
        if item[0] == "+":
            caps.add(n)
        else:
            caps.discard(n)
    return frozenset(caps)


def cap_names(mask: int) -> list[str]:
    """A capability mask (as /proc/<pid>/status prints it, in hex) as names."""
    return [name for i, name in enumerate(CAP_NAMES) if mask >> i & 1] + \
        [f"cap_{i}" for i in range(len(CAP_NAMES), 64) if mask >> i & 1]


def cap_mask(caps: Iterable[int]) -> int:
    return sum(1 << c for c in set(caps))


# ---- the layers ---------------------------------------------------------------------------

def set_fd_limit(n: int | None) -> None:
    """``--rlimit-nofile N``: soft and hard limit both N, as virtiofsd sets them (the
    tree then sees soft == hard and leaves it). None keeps today's default (the tree
    raises the soft limit to the hard one); 0 leaves the limits alone."""
    if not n:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    except (OSError, ValueError) as e:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        raise ServeError(f"--rlimit-nofile {n}: cannot set it (hard limit {hard}, "
                         f"raising it needs CAP_SYS_RESOURCE): {e}") from None


def _mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(lib.msb_mount(src.encode(), target.encode(),
                         fstype.encode() if fstype else ffi.NULL, flags,
                         data.encode() if data else ffi.NULL), f"mount {target}")


def _new_root(shared_dir: str, new_root: str) -> None:
    """A tmpfs at ``new_root`` (inside our private mount namespace, so nothing is left
    on the host) holding the shared directory at ``shared`` and a fresh procfs at
    ``proc`` (of the pid namespace we are in: the tree re-opens inodes through
    /proc/self/fd). The shared directory is bound through an fd, since it may itself
    live under ``new_root``; the fd is opened after unshare (a bind source must be a
    mount of our own namespace)."""
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    src_fd = os.open(shared_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _mount("msbfs-root", new_root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
               "mode=0755,size=64k")
        for d in ("shared", "proc", "old"):
            os.mkdir(os.path.join(new_root, d))
        _mount(f"/proc/self/fd/{src_fd}", os.path.join(new_root, "shared"), None,
               MS_BIND | MS_REC)
    finally:
        os.close(src_fd)
    _mount("proc", os.path.join(new_root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def enter_sandbox(mode: str, shared_dir: str, remove_on_exit: str | None = None,
                  use_syslog: bool = False) -> None:
    """Leave the host behind. Everything the daemon serves is already an fd (the tree's
    root, the socket); only ``/proc/self/fd`` is still needed by path.

    ``namespace``: fork into a new pid namespace (the caller stays outside as a
    supervisor, see ``_supervise``: it never returns), then new mount and network
    namespaces, pivot_root into the new root and the old root detached.
    ``chroot``: a private mount namespace and the same new root entered with chroot(2)
    (for hosts where pivot_root or namespaces beyond mount are not allowed); the host's
    pids and network stay visible.
    """
    if mode == "none":
        return
    if mode == "namespace":
        # Only the child enters the pid namespace, and only the child unshares mount and
        # network: the supervisor keeps the host's mounts (pivot_root moves every process
        # of the namespace whose root is the old one) so it can clean up the socket path.
        _check(lib.msb_unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child:
            _supervise(child, remove_on_exit, use_syslog)
        # pid 1 of its namespace now. If the supervisor is killed outright, follow it.
        _check(lib.msb_prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
        # pid 1 ignores signals it has no handler for: exit on SIGTERM/SIGHUP as an
        # unconfined daemon would die of them (trio takes SIGTERM over while serving).
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)
        _check(lib.msb_unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare(CLONE_NEWNS|CLONE_NEWNET)")
        _new_root(shared_dir, "/tmp")
        os.chdir("/tmp")
        _check(lib.msb_pivot_root(b".", b"old"), "pivot_root")
        os.chroot(".")
        _check(lib.msb_umount2(b"/old", MNT_DETACH), "umount old root")
        os.rmdir("/old")
        # Nothing is ever created in the new root itself: make it read-only.
        _mount("none", "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    else:
        _check(lib.msb_unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _new_root(shared_dir, "/tmp")
        os.chroot("/tmp")
    os.chdir("/shared")


def _exit_on_signal(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def _supervise(child: int, remove_on_exit: str | None, use_syslog: bool) -> NoReturn:
    """Become the supervisor outside the pid namespace (``msbfs/supervisor.py``: forward
    the stop signals to the serving child, wait for it, remove ``remove_on_exit``, exit
    with the child's status). It is exec'd as a bare interpreter so it does not keep a
    copy of the daemon's memory, and every fd but stdio closes (O_CLOEXEC): the listening
    socket, the tree and the serving lock belong to the child alone."""
    # It reads no guest input, but it is a root process outside every namespace for the
    # daemon's whole life: it keeps only what its one remaining duty needs (unlinking the
    # socket wherever it was made: CAP_DAC_OVERRIDE; signalling its child needs none,
    # they share a uid) and can never gain more.
    drop_capabilities(SUPERVISOR_CAPS)
    set_no_new_privs()
    # Blocked across exec, unblocked by the supervisor once it forwards them.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    argv = [sys.executable, "-S", "-I", str(Path(__file__).with_name("supervisor.py")),
            str(child)]
    if remove_on_exit:
        argv += ["--remove", remove_on_exit]
    if use_syslog:
        argv.append("--syslog")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, argv)
    except OSError as e:
        log.error("cannot exec the supervisor (%s): killing the serving process", e)
        os.kill(child, signal.SIGKILL)
        os._exit(1)


def drop_capabilities(keep: frozenset[int]) -> None:
    """Keep only ``keep`` in the effective and permitted sets, drop everything else from
    the bounding set, clear the inheritable and ambient sets. A capability we never had
    (a non-root daemon, a container) is left out of the default set silently; one asked
    for with ``--modcaps=+cap`` that we do not have is an error."""
    eff, prm, inh = ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
    _check(lib.msb_capget(eff, prm, inh), "capget")
    want = cap_mask(keep)
    missing = want & ~prm[0] & ~cap_mask(DEFAULT_CAPS)
    if missing:
        raise ServeError(f"--modcaps: this process does not have {', '.join(cap_names(missing))}")
    want &= prm[0]
    _check(lib.msb_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient caps")
    if eff[0] >> CAP_SETPCAP & 1:
        last = _last_cap()
        for cap in range(last + 1):
            if not want >> cap & 1 and lib.msb_prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
                _check(lib.msb_prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop cap {cap} from bounding set")
    _check(lib.msb_capset(want, want, 0), "capset")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


def set_no_new_privs() -> None:
    _check(lib.msb_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


_ACTIONS = {"log": lib.MSB_SECCOMP_LOG, "trap": lib.MSB_SECCOMP_TRAP, "kill": lib.MSB_SECCOMP_KILL}


def install_seccomp(action: str, syscalls: Iterable[str] = SYSCALLS) -> None:
    """The allowlist on every thread; anything else gets ``action``."""
    if action == "none":
        return
    names = [ffi.new("char[]", n.encode()) for n in syscalls]
    r = lib.msb_seccomp_load(_ACTIONS[action], ffi.new("char *[]", names), len(names))
    _check(r, "seccomp")
    if r:
        log.debug("seccomp: %d syscall names do not exist on this architecture", r)


def confine(c: Confinement, shared_dir: str, remove_on_exit: str | None = None,
            use_syslog: bool = False) -> None:
    """Every layer, in the order each needs (see the module docstring). With
    ``namespace`` only the forked serving child returns from here."""
    enter_sandbox(c.sandbox, shared_dir, remove_on_exit, use_syslog)
    drop_capabilities(c.caps)
    set_no_new_privs()
    install_seccomp(c.seccomp)
