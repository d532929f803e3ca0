"""The host mount's C relay (csrc/devfuse.c, msbfs/hostmount_relay.py; issue 11): what it
answers equals what pyfuse3 answers, C really answers it, and its own mechanics (the end
of the connection, messages larger than the socket carries, the INIT clamp, reader
threads beside pyfuse3) hold.

Every mount here is a real daemon: this file's own script (``_DAEMON``) runs
``msbfs mount --foreground`` and, at exit, writes what it counted to a side file: each
pyfuse3 handler's calls (the requests that reached Python), the relay's statistics
(``forwarded_<OP>``: the requests C left to libfuse) and the C handlers' counters, read
in ``Relay.close`` before the relay is freed. ``MSBFS_HOST_RELAY=0`` gives the same
daemon without the relay, the reference for "what pyfuse3 answers".

1. one scripted sequence as root and as uid 1000, relay on / off / native (plain,
   writeback and nosuid mounts), with the counters proving C answered each family;
2. unmounted from outside (umount, fusermount3 -u): the daemon exits;
3. 1 MiB and larger-than-a-socket-message I/O through C and through Python;
4. small socket buffers: INIT's max_write clamped, nothing lost;
5. workers, a lister and dentry-cache drops at once: no error, nothing left open;
6. FOPEN_NOFLUSH where FLUSH does nothing (a tmpfs root), FLUSH kept on a submount and
   on a root with a flush of its own;
7. a pyfuse3 handler's fetched parent fd stays its parent's while C evicts inode fds and
   answers FORGETs (the handler's grace section, msb_relay_py_begin/end);
8. a READ blocked in C (its submount's daemon stopped): the other reader thread takes
   over and answers the next requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from msbfs import hostmount_relay, mount_daemon, mountinfo
from tests.plugins.hostmount import needs_root, py_as, wait_for

pytestmark = [pytest.mark.fuse, needs_root]

# The daemon under test: `msbfs mount --foreground` counting what reached Python.
# RELAYTEST_SOCKET=N: the relay's socket buffers are N bytes (what an unprivileged daemon
# may get), so that one message cannot carry a full 1 MiB WRITE.
_DAEMON = r"""
import functools, json, os, socket, sys
from msbfs import hostmount_relay
from msbfs._native import ffi, lib
from msbfs.cli import main
from msbfs.hostmount import HostOps

src, mnt, side = sys.argv[1:4]
calls = {}
out = {"calls": calls}

def counted(name, fn):
    @functools.wraps(fn)
    async def wrapped(self, *args):
        calls[name] = calls.get(name, 0) + 1
        return await fn(self, *args)
    return wrapped

for name in ("lookup", "forget", "getattr", "setattr", "mkdir", "unlink", "rmdir", "open",
             "create", "read", "write", "flush", "release", "statfs", "getxattr",
             "listxattr", "opendir", "readdir", "releasedir", "rename", "readlink",
             "symlink", "link", "access", "setxattr", "removexattr", "mknod"):
    setattr(HostOps, name, counted(name, getattr(HostOps, name)))

real_buffers = hostmount_relay._socket_buffers
small = int(os.environ.get("RELAYTEST_SOCKET", "0"))

def buffers(*socks):
    if not small:
        out["msg_max"] = real_buffers(*socks)
        return out["msg_max"]
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, small)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, small)
    out["msg_max"] = min(s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) for s in socks) - 32
    return out["msg_max"]

hostmount_relay._socket_buffers = buffers

# RELAYTEST_FDS=N: the tree keeps at most N inode fds open (C's lookups evict the rest).
# RELAYTEST_SLOW_MKNOD=S: a mknod of a name starting "slow" sleeps S seconds between
# the handler's fetch of its parent's fd and its use, as a slow handler would.
if os.environ.get("RELAYTEST_FDS"):
    from msbfs.commands import mount as mount_command
    from msbfs.tree import tree as tree_module
    real_tree = tree_module.Tree

    def few_fds(*args, **kwargs):
        return real_tree(*args, max_inode_fds=int(os.environ["RELAYTEST_FDS"]), **kwargs)

    mount_command.Tree = few_fds  # build_tree imports it from msbfs.tree
    import msbfs.tree
    msbfs.tree.Tree = few_fds
if os.environ.get("RELAYTEST_SLOW_MKNOD"):
    import time
    real_mknod = os.mknod

    def slow_mknod(path, *args, dir_fd=None, **kwargs):
        if os.fsencode(path).startswith(b"slow"):
            time.sleep(float(os.environ["RELAYTEST_SLOW_MKNOD"]))
        return real_mknod(path, *args, dir_fd=dir_fd, **kwargs)

    os.mknod = slow_mknod
ops = []
real_init = HostOps.__init__

def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    ops.append(self)

HostOps.__init__ = init
real_close = hostmount_relay.Relay.close

def close(self):
    if self.statistics():
        out["relay"] = self.statistics()
        m = self.meta
        out["meta"] = m.statistics()
        out["names"] = m.names_statistics()
        out["open"] = m.open_statistics()
        out["xattr"] = m.xattr_statistics()
        out["setattr"] = m.setattr_statistics()
        out["names2"] = m.names2_statistics()
        s = ffi.new("struct msb_inodes_stats *")
        lib.msb_inodes_stats(self.inodes, s)
        out["inodes"] = int(s.inodes)
        out["evictions"] = int(s.evictions)
    real_close(self)

hostmount_relay.Relay.close = close
rc = main(["mount", src, mnt, "--foreground", *sys.argv[4:]])
# the openers HostOps keeps for its own handles (each dropped at its RELEASE)
out["files_left"] = len(ops[0]._files) if ops else None
with open(os.path.join(side, "stats.json"), "w") as f:
    json.dump(out, f)
sys.exit(rc)
"""


@dataclass
class Daemon:
    """One ``_DAEMON`` process serving ``source`` at ``mnt``."""
    source: Path
    mnt: Path
    side: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return (self.side / "log").read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        """What the daemon wrote at exit (after ``stop`` or an unmount)."""
        path = self.side / "stats.json"
        assert path.exists(), f"the daemon wrote no statistics: {self.log()}"
        return json.loads(path.read_text())

    def stop(self) -> dict[str, Any]:
        if mountinfo.mount_state(str(self.mnt)) != "none":
            mount_daemon.unmount(str(self.mnt))
        assert self.proc.wait(timeout=60) == 0, self.log()
        return self.stats()

    def fds_beneath(self) -> list[str]:
        """The daemon's open fds on anything beneath its source (its root excluded)."""
        out = []
        fd_dir = f"/proc/{self.proc.pid}/fd"
        for name in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{name}")
                if target.startswith(f"{self.source}/"):
                    out.append(target)
        return out


@contextlib.contextmanager
def daemon(base: Path, name: str, source: Path, *, relay: bool = True, options: str = "",
           socket_buffer: int = 0, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """A mount of ``source`` by ``_DAEMON``; at the end it is unmounted if still mounted
    and the process killed if it has not exited (a test failed midway)."""
    mnt, side = base / f"{name}.mnt", base / f"{name}.side"
    mnt.mkdir()
    side.mkdir()
    env = dict(os.environ, **(env or {}), MSBFS_HOST_RELAY="1" if relay else "0")
    if socket_buffer:
        env["RELAYTEST_SOCKET"] = str(socket_buffer)
    # Ready when the daemon says so (--ready-fd, as `msbfs mount` waits for it), not when
    # the mount shows: the daemon is still starting then.
    ready_r, ready_w = os.pipe()
    args = [sys.executable, "-c", _DAEMON, str(source), str(mnt), str(side),
            "--ready-fd", str(ready_w)]
    if options:
        args += ["-o", options]
    try:
        with open(side / "log", "wb") as log:
            proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, pass_fds=(ready_w,))
        os.close(ready_w)
        readable, _, _ = select.select([ready_r], [], [], 60)
        said = os.read(ready_r, 4096) if readable else b""
    finally:
        os.close(ready_r)
    d = Daemon(source, mnt, side, proc)
    try:
        assert said.startswith(b"ready"), f"{said!r}: {d.log()}"
        assert proc.poll() is None, d.log()
        yield d
    finally:
        try:
            if mountinfo.mount_state(str(mnt)) != "none":
                with contextlib.suppress(Exception):
                    mount_daemon.unmount(str(mnt), timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
            if mountinfo.mount_state(str(mnt)) != "none":
                subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- 1. the same answers with the relay on, off, and natively --------------------------

USER = 1000

# One scripted sequence, run in its working directory as root ("root") or as USER
# ("user"); stdlib only (it runs under the system interpreter as another user). argv[2]:
# an fd on the same directory of the source tree (or of the native tree itself), so that
# every st_ino is checked against the source file's own. Prints a JSON list of
# [label, result]: a result is the errno's name or the normalised outcome.
_SEQUENCE = r"""
import ctypes, errno, hashlib, json, os, stat, sys
who, src = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
out = []
PAST, FUTURE = (1_000_000_000, 123_456_789), (1 << 33, 5)
NOW, OMIT = (1 << 30) - 1, (1 << 30) - 2

class TS(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

def check(r):
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r

def utimens(path, a, m):
    check(libc.utimensat(-100, path.encode(), (TS * 2)(TS(*a), TS(*m)), 0))

def getx(path, name, size):
    buf = ctypes.create_string_buffer(max(size, 1))
    n = check(libc.getxattr(path.encode(), name.encode(), buf if size else None, size))
    return [n, buf.raw[:n].hex() if size else None]

def do(label, fn):
    try:
        v = fn()
    except OSError as e:
        v = errno.errorcode[e.errno]
    out.append([label, v])

def st(path, follow=False, times=False):
    s = os.stat(path) if follow else os.lstat(path)
    mine = os.stat(path, dir_fd=src) if follow else os.lstat(path, dir_fd=src)
    kind = stat.S_IFMT(s.st_mode)
    r = [stat.filemode(s.st_mode), oct(s.st_mode), s.st_nlink, s.st_uid, s.st_gid,
         None if kind == stat.S_IFDIR else s.st_size, s.st_ino == mine.st_ino]
    if times:
        r += [s.st_atime_ns, s.st_mtime_ns]
    return r

def now_times(path):
    # UTIME_NOW sets both times at one instant, later than any explicit past time
    s = os.stat(path)
    return [s.st_atime_ns == s.st_mtime_ns, s.st_mtime_ns > PAST[0] * 10**9]

def content(path):
    with open(path, "rb") as f:
        data = f.read()
    return [len(data), hashlib.sha256(data).hexdigest()[:16]]

def write(path, flags, data, off=None):
    fd = os.open(path, flags, 0o644)
    try:
        return os.write(fd, data) if off is None else os.pwrite(fd, data, off)
    finally:
        os.close(fd)

def pread(path, size, off):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, off).hex()
    finally:
        os.close(fd)

W = os.O_WRONLY
do("mkdir d", lambda: os.mkdir("d", 0o755))
do("mkdir d again", lambda: os.mkdir("d", 0o755))
do("mkdir d/e", lambda: os.mkdir("d/e", 0o700))
do("stat d", lambda: st("d"))
do("stat d/e", lambda: st("d/e"))
do("create f excl", lambda: write("f", W | os.O_CREAT | os.O_EXCL, b"hello"))
do("create f excl again", lambda: write("f", W | os.O_CREAT | os.O_EXCL, b"x"))
do("stat f", lambda: st("f"))
do("append", lambda: [write("f", W | os.O_APPEND, b" world") for _ in range(2)])
do("pwrite append", lambda: write("f", W | os.O_APPEND, b"!", 0))
do("content append", lambda: content("f"))
do("pwrite past eof", lambda: write("f", W, b"X", 100_000))
do("stat grown", lambda: st("f"))
do("read hole", lambda: pread("f", 10, 99_995))
do("read past eof", lambda: pread("f", 10, 200_000))
do("open trunc", lambda: write("f", W | os.O_TRUNC, b"abc"))
do("content trunc", lambda: content("f"))
do("truncate grow", lambda: os.truncate("f", 10_000))
do("stat truncated", lambda: st("f"))
do("truncate shrink", lambda: os.truncate("f", 2))
do("content shrunk", lambda: content("f"))
for mode in (0o4755, 0o2755, 0o6755, 0o1755, 0o2745, 0o0):
    do(f"chmod {mode:o}", lambda: os.chmod("f", mode))
    do(f"stat {mode:o}", lambda: st("f"))
# set-id bits of a file its owner writes, truncates, opens O_TRUNC: the kernel's rules
for how, fn in (("write", lambda: write("f", W, b"w", 1)),
                ("truncate", lambda: os.truncate("f", 1)),
                ("open trunc", lambda: os.close(os.open("f", W | os.O_TRUNC))),
                ("write gid only", lambda: write("f", W, b"g", 1))):
    do(f"setid before {how}", lambda: os.chmod("f", 0o2745 if "gid" in how else 0o6755))
    do(f"setid {how}", fn)
    do(f"setid after {how}", lambda: st("f"))
do("chmod back", lambda: os.chmod("f", 0o644))
me, grp = os.getuid(), os.getgid()
do("chown self", lambda: os.chown("f", me, grp))
do("chown to root", lambda: os.chown("f", 0, -1))
do("chgrp to root", lambda: os.chown("f", -1, 0))
do(f"chown to {1000}", lambda: os.chown("f", 1000, 1000))
do("stat chowned", lambda: st("f"))
do("chmod setid again", lambda: os.chmod("f", 0o6755))
do("chown setid", lambda: os.chown("f", -1, os.stat("f").st_gid))
do("stat chown setid", lambda: st("f"))
do("chown back", lambda: os.chown("f", me, grp))
do("utime past", lambda: utimens("f", PAST, PAST))
do("stat past", lambda: st("f", times=True))
do("utime future", lambda: utimens("f", FUTURE, PAST))
do("stat future", lambda: st("f", times=True))
do("utime omit atime", lambda: utimens("f", (0, OMIT), FUTURE))
do("stat omit", lambda: st("f", times=True))
do("utime now", lambda: utimens("f", (0, NOW), (0, NOW)))
do("stat now", lambda: now_times("f"))
do("utime now via None", lambda: os.utime("f"))
do("stat now again", lambda: now_times("f"))
do("stat missing", lambda: st("missing"))
do("stat follow missing", lambda: st("missing", follow=True))
do("stat beneath a file", lambda: st("f/x"))
do("create 255", lambda: write("n" * 255, W | os.O_CREAT, b"long"))
do("stat 255", lambda: st("n" * 255))
do("unlink 255", lambda: os.unlink("n" * 255))
do("create 256", lambda: write("n" * 256, W | os.O_CREAT, b"x"))
do("stat 256", lambda: st("n" * 256))
do("mkdir 256", lambda: os.mkdir("n" * 256))
do("unlink missing", lambda: os.unlink("missing"))
do("unlink a directory", lambda: os.unlink("d"))
do("rmdir a file", lambda: os.rmdir("f"))
do("rmdir non-empty", lambda: os.rmdir("d"))
do("rmdir missing", lambda: os.rmdir("missing"))
do("link", lambda: os.link("f", "g"))
do("link again", lambda: os.link("f", "g"))
do("link a directory", lambda: os.link("d", "dl"))
do("stat linked", lambda: [st("f"), st("g"), os.lstat("f").st_ino == os.lstat("g").st_ino])
do("unlink link", lambda: os.unlink("g"))
do("stat unlinked", lambda: st("f"))
do("symlink", lambda: os.symlink("f", "s"))
do("symlink again", lambda: os.symlink("f", "s"))
do("dangling symlink", lambda: os.symlink("missing", "t"))
do("lstat symlink", lambda: st("s"))
do("stat symlink", lambda: st("s", follow=True))
do("readlink", lambda: os.readlink("s"))
do("stat dangling", lambda: st("t", follow=True))
do("rmdir a symlink", lambda: os.rmdir("s"))
do("unlink symlinks", lambda: [os.unlink("s"), os.unlink("t")])
def open_unlinked():
    fd = os.open("u1", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        os.unlink("u1")
        os.pwrite(fd, b"still here", 3)
        s = os.fstat(fd)
        return [s.st_nlink, s.st_size, oct(s.st_mode), os.pread(fd, 20, 0).hex()]
    finally:
        os.close(fd)

do("open unlinked", open_unlinked)
do("rename", lambda: os.rename("f", "h"))
do("stat renamed", lambda: [st("h"), os.path.lexists("f")])
do("rename missing", lambda: os.rename("missing", "h2"))
do("rename into itself", lambda: os.rename("d", "d/e/d"))
do("rename over a directory", lambda: os.rename("h", "d"))
do("rename back", lambda: os.rename("h", "f"))
do("statfs", lambda: [getattr(os.statvfs("."), k) for k in
                      ("f_bsize", "f_frsize", "f_blocks", "f_files", "f_namemax")])
do("setxattr", lambda: os.setxattr("f", "user.k", b"v1"))
do("getxattr", lambda: os.getxattr("f", "user.k").hex())
do("getxattr size 0", lambda: getx("f", "user.k", 0))
do("getxattr size 1", lambda: getx("f", "user.k", 1))
do("getxattr exact", lambda: getx("f", "user.k", 2))
do("getxattr missing", lambda: os.getxattr("f", "user.none"))
do("getxattr capability", lambda: getx("f", "security.capability", 0))
do("getxattr capability sized", lambda: getx("f", "security.capability", 20))
do("listxattr", lambda: sorted(os.listxattr("f")))
do("listxattr dir", lambda: sorted(os.listxattr("d")))
do("listxattr size 1", lambda: check(libc.listxattr(b"f", ctypes.create_string_buffer(1), 1)))
do("removexattr", lambda: os.removexattr("f", "user.k"))
do("listxattr removed", lambda: os.listxattr("f"))
do("open missing", lambda: os.open("missing", os.O_RDONLY))
do("open dir for writing", lambda: os.open("d", os.O_WRONLY))
do("open file as dir", lambda: os.open("f", os.O_RDONLY | os.O_DIRECTORY))
do("write read-only handle", lambda: write("f", os.O_RDONLY, b"x"))
do("listing", lambda: sorted(os.listdir(".")))
do("rmdir d/e", lambda: os.rmdir("d/e"))
do("rmdir d", lambda: os.rmdir("d"))
if who == "user":
    do("open root's private", lambda: os.open("private", os.O_RDONLY))
    do("stat root's private", lambda: st("private"))
    do("chmod root's", lambda: os.chmod("private", 0o666))
    do("utime past root's", lambda: utimens("shared", PAST, PAST))
    do("utime now root's", lambda: utimens("shared", (0, NOW), (0, NOW)))
    do("stat now root's", lambda: now_times("shared"))
    do("write root's", lambda: write("shared", W, b"u"))
    do("write root's set-id", lambda: write("setid-w", W, b"u"))
    do("stat written set-id", lambda: st("setid-w"))
    do("open trunc root's set-id", lambda: os.close(os.open("setid", W | os.O_TRUNC)))
    do("stat root's set-id", lambda: st("setid"))
    do("chmod setgid of another group", lambda: os.chmod("gf", 0o2755))
    do("stat gf", lambda: st("gf"))
    do("chgrp gf to own group", lambda: os.chown("gf", -1, grp))
    do("stat gf again", lambda: st("gf"))
    do("unlink root's", lambda: os.unlink("private"))
do("create in setgid dir", lambda: write("sg/x", W | os.O_CREAT, b"x"))
do("stat inherited", lambda: st("sg/x"))
do("mkdir in setgid dir", lambda: os.mkdir("sg/y", 0o755))
do("stat inherited dir", lambda: st("sg/y"))
do("final f", lambda: [st("f"), content("f")])
print(json.dumps(out))
"""


def _layout(root: Path) -> None:
    """The twins' common start: r/ for root's run, u/ (USER's own) for USER's."""
    os.chmod(root, 0o755)
    (root / "r").mkdir(mode=0o755)
    (root / "r" / "sg").mkdir()
    os.chown(root / "r" / "sg", 0, USER)
    os.chmod(root / "r" / "sg", 0o2775)
    u = root / "u"
    u.mkdir()
    os.chown(u, USER, USER)
    for name, owner, group, mode in (("private", 0, 0, 0o600), ("shared", 0, 0, 0o666),
                                     ("gf", USER, 0, 0o644)):
        (u / name).write_bytes(b"data")
        os.chown(u / name, owner, group)
        os.chmod(u / name, mode)
    for name in ("setid", "setid-w"):
        (u / name).write_bytes(b"data")
        os.chmod(u / name, 0o6777)
    (u / "sg").mkdir()
    os.chown(u / "sg", USER, 0)
    os.chmod(u / "sg", 0o2775)


def _run_sequence(where: Path, source: Path) -> dict[str, list[Any]]:
    """The sequence as root in where/r and as USER in where/u; ``source``: the tree whose
    files' st_ino the results are checked against."""
    out = {}
    for who, uid, sub in (("root", 0, "r"), ("user", USER, "u")):
        src = os.open(source / sub, os.O_RDONLY | os.O_DIRECTORY)
        try:
            r = py_as(uid, uid, _SEQUENCE, who, str(src), cwd=str(where / sub),
                      pass_fds=(src,))
        finally:
            os.close(src)
        assert r.returncode == 0, r.stderr
        out[who] = json.loads(r.stdout)
    return out


def _tree(root: Path) -> dict[str, Any]:
    """A tree as the comparison sees it: per path, its normalised lstat, bytes, xattrs."""
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            s = p.lstat()
            rel = str(p.relative_to(root))
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            xattrs = {} if p.is_symlink() else {
                k: os.getxattr(p, k) for k in os.listxattr(p) if k.startswith("user.")}
            out[rel] = (oct(s.st_mode), s.st_uid, s.st_gid, s.st_nlink,
                        None if p.is_dir() else s.st_size, data, xattrs)
    return out


#: Each opcode family the relay may claim (``hostmount_relay.OPCODES``): its opcodes, the
#: pyfuse3 handler that answers them without the relay, and the C counter ((statistics
#: group, key): see ``_DAEMON``) of C's answers, or None: none of them may reach Python.
FAMILIES = ((("LOOKUP",), "lookup", ("meta", "lookups")),
            (("GETATTR",), "getattr", ("meta", "getattrs")),
            (("FORGET", "BATCH_FORGET"), "forget", None),
            (("STATFS",), "statfs", ("meta", "statfs")),
            (("FLUSH",), "flush", ("meta", "flushes")),
            (("UNLINK",), "unlink", ("names", "unlinks")),
            (("RMDIR",), "rmdir", ("names", "rmdirs")),
            (("MKDIR",), "mkdir", ("names", "mkdirs")),
            (("OPEN",), "open", ("open", "opens")),
            (("CREATE",), "create", ("open", "creates")),
            (("RELEASE",), "release", ("open", "releases")),
            (("SETATTR",), "setattr", ("setattr", "setattrs")),
            (("GETXATTR",), "getxattr", ("xattr", "getxattrs")),
            (("LISTXATTR",), "listxattr", ("xattr", "listxattrs")),
            (("OPENDIR",), "opendir", ("open", "opendirs")),
            (("READDIRPLUS",), "readdir", ("meta", "readdirs")),
            (("RELEASEDIR",), "releasedir", ("open", "releasedirs")),
            (("RENAME", "RENAME2"), "rename", ("names2", "renames")),
            (("READLINK",), "readlink", ("names2", "readlinks")),
            (("SYMLINK",), "symlink", ("names2", "symlinks")),
            (("LINK",), "link", ("names2", "links")),
            (("READ",), "read", None),
            (("WRITE",), "write", None))


def assert_c_answered(on: dict[str, Any], off: dict[str, Any], *,
                      python_writes: bool = False) -> None:
    """Every family the relay claims was sent by the sequence (pyfuse3 answered it
    without the relay) and answered in C with it: fewer of its requests reached libfuse
    than the kernel sent, C's counter moved, and READ, WRITE and FORGET never reached
    Python at all."""
    claimed = {op.name for op in hostmount_relay.OPCODES}
    known = {name for ops, _, _ in FAMILIES for name in ops}
    assert claimed <= known, f"FAMILIES lacks {sorted(claimed - known)}: add their checks"
    for ops, handler, counter in FAMILIES:
        if not claimed & set(ops) or (python_writes and ops == ("WRITE",)):
            continue
        sent = off["calls"].get(handler, 0)
        assert sent > 0, f"the kernel sent no {ops}"
        forwarded = sum(on["relay"].get(f"forwarded_{op}", 0) for op in ops)
        if counter is None:
            assert forwarded == 0 and on["calls"].get(handler, 0) == 0, ops
        else:
            assert forwarded < sent, f"C answered no {ops}"
            group, key = counter
            assert on[group][key] > 0, f"C answered no {ops}: {on[group]}"


def _differences(a: list[Any], b: list[Any]) -> list[tuple[str, Any, Any]]:
    assert [label for label, _ in a] == [label for label, _ in b]
    return [(label, x, y) for (label, x), (_, y) in zip(a, b, strict=True) if x != y]


#: What the kernel's writeback cache decides itself, whoever answers: a UTIME_NOW's
#: times come from its own clock reads, not one instant of the host's.
WRITEBACK_OWN = {"stat now", "stat now again"}


@pytest.mark.parametrize("options", ["allow_other", "allow_other,writeback",
                                     "allow_other,nosuid"],
                         ids=["plain", "writeback", "nosuid"])
def test_same_answers_with_the_relay_on_off_and_natively(tmp_path: Path, options: str) -> None:
    """Under nosuid the mount hides set-id bits, so only relay on and off are compared
    (the host's bits must still go where a caller without CAP_FSETID writes: the final
    trees)."""
    twins = {name: tmp_path / name for name in ("on", "off", "native")}
    for root in twins.values():
        root.mkdir()
        _layout(root)
    with daemon(tmp_path, "relay-on", twins["on"], options=options) as on, \
            daemon(tmp_path, "relay-off", twins["off"], relay=False, options=options) as off:
        results = {"on": _run_sequence(on.mnt, on.source),
                   "off": _run_sequence(off.mnt, off.source),
                   "native": _run_sequence(twins["native"], twins["native"])}
        on_stats, off_stats = on.stop(), off.stop()
    for who in ("root", "user"):
        assert not _differences(results["on"][who], results["off"][who]), who
        if "nosuid" in options:
            continue
        unlike_native = _differences(results["on"][who], results["native"][who])
        if "writeback" in options:
            unlike_native = [d for d in unlike_native if d[0] not in WRITEBACK_OWN]
        assert not unlike_native, who
    trees = {name: _tree(root) for name, root in twins.items()}
    assert trees["on"] == trees["off"]
    if "nosuid" not in options:
        assert trees["on"] == trees["native"]
    # nosuid: writes are Python's (csrc/devfuse.c python_rule: the kernel sees no set-id
    # bits to clear)
    assert_c_answered(on_stats, off_stats, python_writes="nosuid" in options)
    # Every handle HostOps opened (an O_TRUNC open by USER) is HostOps's to release:
    # none is released behind its back, none leaks its opener.
    assert on_stats["calls"].get("open", 0) > 0
    for stats in (on_stats, off_stats):
        calls = stats["calls"]
        assert calls.get("open", 0) + calls.get("create", 0) == calls.get("release"), calls
        assert stats["files_left"] == 0

# ---- 2. unmounted from outside ------------------------------------------------------------

UNMOUNTERS = [["umount"]] + ([["fusermount3", "-u"]] if shutil.which("fusermount3") else [])


@pytest.mark.parametrize("unmount", UNMOUNTERS, ids=lambda a: a[0])
def test_unmounted_from_outside_the_daemon_exits(tmp_path: Path, unmount: list[str]) -> None:
    """pyfuse3 reads the relay's socket, which never says the mount is gone: the relay's
    readers see the connection end (ENODEV) and tell the daemon (``watch_relay``)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    with daemon(tmp_path, "m", source) as d:
        assert (d.mnt / "f").read_text() == "x"
        r = subprocess.run([*unmount, str(d.mnt)], capture_output=True, text=True,
                           check=False)
        assert r.returncode == 0, r.stderr
        # generous; a hung daemon is killed on the way out (``daemon``)
        assert wait_for(lambda: d.proc.poll() is not None, 30), \
            "the daemon did not exit when its mount was unmounted from outside"
        assert d.proc.returncode == 0, d.log()
        assert mountinfo.mount_state(str(d.mnt)) == "none"
        assert mount_daemon.daemon_pid(str(d.mnt)) is None  # its record went with it
        stats = d.stats()
    assert stats["relay"]["answered"] > 0  # the relay served the mount


# ---- 3. big I/O through C and through Python -------------------------------------------

MIB = 1 << 20
#: Larger than any message the relay's socket carries (``hostmount_relay.SOCKET_BUFFER``,
#: which the kernel doubles): one write() the kernel must split, each piece whole.
HUGE = 3 * hostmount_relay.SOCKET_BUFFER


def _write_and_read_back(mnt: Path, source: Path, data: bytes) -> None:
    """``big``: written 1 MiB per write(); ``huge``: one write() of HUGE bytes. Both read
    back 1 MiB per read() once the page cache let go of them, and from the source."""
    fd = os.open(mnt / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, 8 * MIB, MIB):
            assert os.write(fd, data[off:off + MIB]) == MIB
    finally:
        os.close(fd)
    fd = os.open(mnt / "huge", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.write(fd, data[:HUGE]) == HUGE
    finally:
        os.close(fd)
    for name, size in (("big", 8 * MIB), ("huge", HUGE)):
        fd = os.open(mnt / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # READs, not the cache
            got = _read_all(fd)
        finally:
            os.close(fd)
        _same_bytes(got, data[:size], f"{name} read back")
        _same_bytes((source / name).read_bytes(), data[:size], f"{name} in the source")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, MIB):
        chunks.append(chunk)
    return b"".join(chunks)


def _same_bytes(got: bytes, want: bytes, what: str) -> None:
    """Equal, or where they part (never a diff of megabytes)."""
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                  min(len(got), len(want)))
        raise AssertionError(f"{what}: {len(got)} bytes, {len(want)} wanted, first "
                             f"difference at {at}")


def test_big_writes_and_reads_through_c_and_python(tmp_path: Path) -> None:
    data = os.urandom(max(HUGE, 8 * MIB))
    stats = {}
    for name, relay, options in (("c", True, ""), ("quota", True, "quota=64"),
                                 ("off", False, "")):
        source = tmp_path / f"{name}.src"
        source.mkdir()
        with daemon(tmp_path, name, source, relay=relay, options=options) as d:
            _write_and_read_back(d.mnt, source, data)
            stats[name] = d.stop()
    c, quota, off = stats["c"], stats["quota"], stats["off"]
    # without the relay both went through pyfuse3: the kernel sent READs and WRITEs
    assert off["calls"]["read"] > 0 and off["calls"]["write"] >= 8 + HUGE // MIB
    # with it, C answered all of them ...
    assert "read" not in c["calls"] and "write" not in c["calls"], c["calls"]
    assert c["msg_max"] < HUGE
    # ... except a quota's writes (Tree.data_fd), passed to libfuse whole
    assert quota["calls"]["write"] >= 8 + HUGE // MIB and "read" not in quota["calls"]
    assert quota["relay"]["forwarded_WRITE"] == quota["calls"]["write"]
    for s in (c, quota):
        assert s["relay"]["send_errors"] == 0 and s["relay"]["write_errors"] == 0, s["relay"]


# ---- 4. the INIT clamp ----------------------------------------------------------------------

#: Socket buffers an unprivileged daemon might get: a message carries far less than a
#: 1 MiB WRITE.
SMALL_SOCKET = 256 << 10
PAGE = 4096
WRITE_HEADERS = PAGE  # csrc/devfuse.c: room for a WRITE's headers beside its data


@pytest.mark.parametrize("options", ["", "quota=64"], ids=["c-writes", "python-writes"])
def test_small_socket_buffers_clamp_max_write(tmp_path: Path, options: str) -> None:
    """The relay lowers the max_write of libfuse's INIT reply to what one socket message
    carries, so that any WRITE the kernel sends can be handed to libfuse whole (a quota
    mount's all are)."""
    source = tmp_path / "src"
    source.mkdir()
    data = os.urandom(max(HUGE, 8 * MIB))
    with daemon(tmp_path, "m", source, options=options, socket_buffer=SMALL_SOCKET) as d:
        _write_and_read_back(d.mnt, source, data)
        stats = d.stop()
    relay = stats["relay"]
    limit = (stats["msg_max"] - WRITE_HEADERS) & ~(PAGE - 1)
    assert stats["msg_max"] < MIB  # the buffers were small indeed
    assert relay["clamped"] == 1
    assert 0 < relay["max_write"] <= limit
    assert relay["send_errors"] == 0 and relay["write_errors"] == 0, relay
    if options:
        # each forwarded WRITE was at most max_write: more of them than 1 MiB ones
        assert relay["forwarded_WRITE"] >= (8 * MIB + HUGE) // relay["max_write"]


# ---- 5. reader threads beside pyfuse3 --------------------------------------------------------

ROUNDS = 300


def _drop_dentries() -> None:
    """The kernel lets go of unused dentries and inodes: a FORGET for each."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def _worker(d: Path, errors: list[str]) -> None:
    """C's opcodes (create, write, stat, read, unlink, mkdir, rmdir, rename, symlink)
    mixed with Python's (mknod, setxattr, removexattr) in a directory of its own."""
    try:
        d.mkdir()
        for i in range(ROUNDS):
            f = d / f"f{i % 8}"
            f.write_bytes(b"%d" % i * 100)
            assert f.stat().st_size == len(b"%d" % i) * 100
            assert f.read_bytes() == b"%d" % i * 100
            if i % 3 == 0:
                f.rename(d / "moved")
                (d / "moved").unlink()
            elif i % 3 == 1:
                (d / "sub").mkdir()
                (d / "sub" / "link").symlink_to(f.name)
                (d / "sub" / "link").unlink()
                os.mkfifo(d / "sub" / "fifo")
                (d / "sub" / "fifo").unlink()
                (d / "sub").rmdir()
            else:
                os.setxattr(f, "user.round", b"%d" % i)
                os.removexattr(f, "user.round")
                f.unlink()
    except Exception as e:  # reported by the test
        errors.append(f"{d.name}: {e!r}")


def _lister(root: Path, stop: threading.Event, errors: list[str], count: list[int]) -> None:
    """Lists every directory (READDIRPLUS) and stats what it lists, as ``ls -l``."""
    while not stop.is_set():
        for d in [root, *(root / f"w{i}" for i in range(4))]:
            try:
                for e in os.scandir(d):
                    with contextlib.suppress(FileNotFoundError):  # a worker removed it
                        e.stat(follow_symlinks=False)
            except FileNotFoundError:
                pass  # not made yet, or being removed
            except OSError as e:
                errors.append(f"listing {d.name}: {e!r}")
        count[0] += 1


def _dropper(stop: threading.Event, count: list[int]) -> None:
    while not stop.is_set() and count[0] < 200:
        _drop_dentries()
        count[0] += 1


def test_concurrent_requests_beside_forgets(tmp_path: Path) -> None:
    """Four workers, a lister and dentry cache drops at once: FORGETs answered in C on
    the reader threads while pyfuse3's handlers run. No error; afterwards the kernel's
    forgets leave the daemon nothing open beneath its source but the root."""
    source = tmp_path / "src"
    source.mkdir()
    errors: list[str] = []
    with daemon(tmp_path, "m", source) as d:
        stop = threading.Event()
        listed, dropped = [0], [0]
        workers = [threading.Thread(target=_worker, args=(d.mnt / f"w{i}", errors))
                   for i in range(4)]
        helpers = [threading.Thread(target=_lister, args=(d.mnt, stop, errors, listed)),
                   threading.Thread(target=_dropper, args=(stop, dropped))]
        for t in workers + helpers:
            t.start()
        for t in workers:
            t.join(120)
        stop.set()
        for t in helpers:
            t.join(120)
        assert not any(t.is_alive() for t in workers + helpers), "a thread hung"
        assert not errors, errors
        assert listed[0] > 0 and dropped[0] > 0
        assert d.proc.poll() is None, d.log()
        for i in range(4):
            shutil.rmtree(d.mnt / f"w{i}")

        def released() -> bool:
            _drop_dentries()
            return not d.fds_beneath()

        assert wait_for(released, 30), d.fds_beneath()
        stats = d.stop()
    # pyfuse3's handlers ran beside C's answers
    assert all(stats["calls"].get(h, 0) >= ROUNDS // 3 for h in ("mknod", "setxattr")), \
        stats["calls"]
    assert stats["meta"]["forgets"] > 0
    for op in ("FORGET", "BATCH_FORGET"):
        assert f"forwarded_{op}" not in stats["relay"], stats["relay"]
    assert "forget" not in stats["calls"]
    assert stats["inodes"] == 1, stats  # the root alone: every other inode forgotten
    assert stats["files_left"] == 0


# ---- 6. no FLUSH where it does nothing -----------------------------------------------------

@contextlib.contextmanager
def _tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "msbfs-test", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _create_then_open(d: Path) -> None:
    """Two closes of a file: after its CREATE and WRITE, after its OPEN and READ."""
    with open(d / "f", "wb") as f:
        f.write(b"data")
    with open(d / "f", "rb") as f:
        assert f.read() == b"data"


def _flushes(stats: dict[str, Any]) -> int:
    """The FLUSH requests that reached the daemon: C's answers and pyfuse3's."""
    return stats["meta"]["flushes"] + stats["calls"].get("flush", 0)


def test_no_flush_round_trip_where_flush_does_nothing(tmp_path: Path) -> None:
    """On a root whose filesystem has no flush of its own (``Tree.flush_is_nothing``:
    tmpfs here), the files C creates and opens carry FOPEN_NOFLUSH, so their closes send
    no FLUSH (one round trip less per close; the kernel keeps this mount's record locks).
    A file on a submount (another device, which may be NFS) keeps its FLUSH, and so does
    every file of a root on a filesystem with a flush of its own (another FUSE mount)."""
    with _tmpfs(tmp_path / "src") as src, _tmpfs(src / "sub"):
        with daemon(tmp_path, "root", src) as d:
            _create_then_open(d.mnt)
            stats = d.stop()
        assert stats["open"]["creates"] > 0 and stats["open"]["opens"] > 0, stats["open"]
        assert _flushes(stats) == 0, stats
        with daemon(tmp_path, "submount", src) as d:
            _create_then_open(d.mnt / "sub")
            stats = d.stop()
        assert _flushes(stats) == 2, stats
        with daemon(tmp_path, "lower", src) as lower, \
                daemon(tmp_path, "upper", lower.mnt) as upper:
            _create_then_open(upper.mnt)
            stats = upper.stop()
        assert stats["open"]["opens"] > 0, stats["open"]
        assert _flushes(stats) == 2, stats


# ---- 7. a pyfuse3 handler's fds beside C's evictions and FORGETs --------------------------

def _looker(root: Path, stop: threading.Event, errors: list[str], count: list[int]) -> None:
    """Cold lookups of many files through C, each opened (a lookup adds a named node;
    its first use opens its fd, evicting another's beyond the cap: csrc/inodes.h), and
    dentry drops (FORGETs, each dropping one and closing its fd)."""
    while not stop.is_set():
        _drop_dentries()
        try:
            for d in sorted(root.glob("d*")):
                for e in os.scandir(d):
                    # (non-blocking: a FIFO the handler made in the wrong directory,
                    # the bug this test is red for, must not hang the looker)
                    os.close(os.open(e.path, os.O_RDONLY | os.O_NONBLOCK))
        except OSError as e:
            errors.append(f"looking up: {e!r}")
        count[0] += 1


def test_python_handler_fds_outlive_c_evictions_and_forgets(tmp_path: Path) -> None:
    """A pyfuse3 handler (MKNOD) uses its parent's O_PATH fd while C, on the reader
    threads, evicts inode fds (a cap of 16) and answers FORGETs: each closes an fd, and
    the next open takes its number. The handler holds the inode table and a grace section
    (msb_relay_py_begin/end, hostmount.py ``_op``), so the fd it fetched stays the
    parent's until it returns: every node lands in its own directory, no error. Without
    them its number is a looked-up file's by the time mknod runs (the handler here sleeps
    between fetch and use, as a slow one would)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "target").mkdir()
    for i in range(4):
        (src / f"d{i}").mkdir()
        for j in range(100):
            (src / f"d{i}" / f"f{j}").touch()
    with daemon(tmp_path, "evict", src, env={"RELAYTEST_FDS": "16",
                                             "RELAYTEST_SLOW_MKNOD": "0.05"}) as d:
        stop = threading.Event()
        errors: list[str] = []
        looked = [0]
        looker = threading.Thread(target=_looker, args=(d.mnt, stop, errors, looked))
        looker.start()
        made = []
        try:
            for k in range(30):
                name = f"slow{k}"
                try:
                    os.mknod(d.mnt / "target" / name, 0o600 | stat.S_IFIFO)
                    made.append(name)
                except OSError as e:
                    errors.append(f"mknod {name}: {e!r}")
        finally:
            stop.set()
            looker.join(60)
        stats = d.stop()
    assert looked[0] > 1 and stats["calls"].get("mknod") == 30, (looked, stats["calls"])
    assert stats["meta"]["forgets"] > 0 and stats["evictions"] > 0
    assert not errors, errors
    landed = sorted(str(p.relative_to(src)) for p in src.rglob("slow*"))
    assert landed == sorted(f"target/{n}" for n in made), landed


# ---- 8. one reader at a time, and a takeover from a blocked one ---------------------------

def test_a_request_blocked_in_c_holds_up_no_other(tmp_path: Path) -> None:
    """The relay reads with one thread at a time (csrc/devfuse.h): when it is blocked in
    a request, here C's READ of a file on a submount whose daemon is stopped (SIGSTOP),
    the other thread takes over within milliseconds and answers the next requests (a
    create and a stat in the mount's own directory). Red when nobody takes over."""
    low, src = tmp_path / "low", tmp_path / "src"
    low.mkdir()
    src.mkdir()
    (low / "f").write_bytes(b"x" * 8192)
    with daemon(src, "lower", low) as lower, daemon(tmp_path, "upper", src) as upper:
        fd = os.open(upper.mnt / "lower.mnt" / "f", os.O_RDONLY)
        done: dict[str, Any] = {}

        def blocked_read() -> None:
            done["read"] = len(os.pread(fd, 4096, 0))

        def other_requests() -> None:
            (upper.mnt / "own").write_bytes(b"y")
            done["own"] = (upper.mnt / "own").stat().st_size

        os.kill(lower.proc.pid, signal.SIGSTOP)
        try:
            reader = threading.Thread(target=blocked_read, daemon=True)
            reader.start()
            reader.join(0.5)
            assert reader.is_alive() and "read" not in done  # blocked in the stopped daemon
            other = threading.Thread(target=other_requests, daemon=True)
            other.start()
            other.join(20)
            assert done.get("own") == 1, "the mount answered nothing while one READ blocked"
            assert reader.is_alive()
        finally:
            os.kill(lower.proc.pid, signal.SIGCONT)
        reader.join(20)
        assert done.get("read") == 4096
        os.close(fd)
        stats = upper.stop()
    assert stats["relay"]["takeovers"] >= 1, stats["relay"]
    assert stats["relay"]["reads"] >= 1 and "read" not in stats["calls"]
