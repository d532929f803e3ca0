"""The served tree the FUSE class fuzzes, and what lies around it.

``populate`` (re)builds the same tree before every session, so a session's steps replay
against the state they were generated on: regular files of several owners and modes,
nested and private and sticky directories, symlinks that stay inside and ones that point
out (relative ``..``, absolute into the sibling, ``/etc/passwd``), a FIFO, a hard link
and user xattrs. ``Outside`` snapshots everything a hostile request could name beyond
the root: the sibling directory (a file the symlinks target, a directory), the base
directory's own entries, and host files named by absolute symlinks. Any difference
after a session is an escape.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

#: Host paths an absolute symlink in the tree names, and their parents.
HOST_PATHS = ("/etc/passwd", "/etc/hostname", "/etc")
USERS = (0, 1000, 1001)

#: name -> kind of every entry populate() makes (the fuzzer's starting vocabulary).
ENTRIES = {
    "f1": "file", "f2": "file", "big": "file", "exe": "file", "hard": "file",
    "d1": "dir", "priv": "dir", "sticky": "dir", "empty": "dir",
    "ln_rel": "symlink", "ln_dir": "symlink", "ln_up": "symlink", "ln_abs": "symlink",
    "ln_etc": "symlink", "fifo": "fifo",
}
SUBDIR_ENTRIES = {"d1": ("f3", "sub"), "priv": ("secret",), "sticky": ("other",)}


@dataclass
class Layout:
    base: Path

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def sibling(self) -> Path:
        return self.base / "sibling"

    @property
    def run(self) -> Path:
        """Sockets and logs: outside the root, left out of the snapshot."""
        return self.base / "run"

    def create(self) -> None:
        for d in (self.root, self.sibling, self.run):
            d.mkdir(parents=True, exist_ok=True)
        (self.sibling / "secret").write_bytes(b"outside the root\n")
        (self.sibling / "dir").mkdir(exist_ok=True)
        (self.sibling / "dir" / "x").write_bytes(b"x")
        self.populate()

    def populate(self) -> None:
        """Empty the root (not the root itself: the daemon holds it) and rebuild it."""
        r = self.root
        for e in os.scandir(r):
            if e.is_dir(follow_symlinks=False):
                for dirpath, dirnames, _ in os.walk(e.path):  # make removable whatever a
                    os.chmod(dirpath, 0o755)                   # fuzzed chmod left
                    for dn in dirnames:
                        p = os.path.join(dirpath, dn)
                        if not os.path.islink(p):
                            os.chmod(p, 0o755)
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        os.chmod(r, 0o755)
        os.chown(r, 0, 0)
        _file(r / "f1", b"hello world\n" * 10, 0o644)
        os.setxattr(r / "f1", "user.a", b"alpha")
        _file(r / "f2", b"owned by 1000\n", 0o600, 1000, 1000)
        _file(r / "big", bytes(range(256)) * 256, 0o666)
        _file(r / "exe", b"#!/bin/sh\nexit 0\n", 0o755)
        os.link(r / "f1", r / "hard")
        (r / "d1").mkdir(0o755)
        _file(r / "d1" / "f3", b"three", 0o644, 1001, 1001)
        (r / "d1" / "sub").mkdir(0o755)
        _file(r / "d1" / "sub" / "f4", b"four", 0o644)
        (r / "priv").mkdir(0o700)
        _file(r / "priv" / "secret", b"private", 0o600, 1000, 1000)
        os.chown(r / "priv", 1000, 1000)
        (r / "sticky").mkdir()
        os.chmod(r / "sticky", 0o1777)
        _file(r / "sticky" / "other", b"other", 0o644, 1001, 1001)
        (r / "empty").mkdir(0o755)
        os.symlink("f1", r / "ln_rel")
        os.symlink("d1", r / "ln_dir")
        os.symlink("../sibling/secret", r / "ln_up")
        os.symlink(str(self.sibling / "secret"), r / "ln_abs")
        os.symlink("/etc/passwd", r / "ln_etc")
        os.mkfifo(r / "fifo", 0o644)

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _file(p: Path, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    p.write_bytes(data)
    os.chmod(p, mode)
    os.chown(p, uid, gid)


Snapshot = dict[str, tuple[object, ...]]


def _entry(path: str) -> tuple[object, ...]:
    st = os.lstat(path)
    digest = ""
    if os.path.isfile(path) and not os.path.islink(path) and st.st_size <= 1 << 20:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
    try:
        xattrs = tuple(sorted(os.listxattr(path, follow_symlinks=False)))
    except OSError:
        xattrs = ()
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_mtime_ns,
            st.st_ctime_ns, digest, xattrs)


class Outside:
    """Everything beyond the served root that a hostile request could reach."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def snapshot(self) -> Snapshot:
        snap: Snapshot = {}
        base = self.layout.base
        # The root itself is the guest's (it may chmod it); the run dir holds sockets.
        skip = {self.layout.root, self.layout.run}
        snap[str(base)] = _entry(str(base))[:5]  # its times move with the root's entries
        for e in os.scandir(base):
            if Path(e.path) in skip:
                continue
            snap[e.path] = _entry(e.path)
            if e.is_dir(follow_symlinks=False):
                for dirpath, dirnames, filenames in os.walk(e.path):
                    for n in dirnames + filenames:
                        p = os.path.join(dirpath, n)
                        snap[p] = _entry(p)
        for p in HOST_PATHS:
            snap[p] = _entry(p)
        return snap

    @staticmethod
    def diff(before: Snapshot, after: Snapshot) -> list[str]:
        out = []
        for k in sorted(before.keys() | after.keys()):
            if before.get(k) != after.get(k):
                out.append(f"{k}: {before.get(k)} -> {after.get(k)}")
        return out
