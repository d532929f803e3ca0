"""A real ``msbfs serve`` process under fuzz: started, watched, restarted.

With the namespace sandbox (the default) ``msbfs serve`` is a supervisor and a forked
serving child; the supervisor exits when the child does (so its exit is the crash
signal), and the fds counted are the serving child's (the leaf of the process tree).

The daemon runs with ``--keep-serving`` so that one hostile session ending the
connection (which it may legitimately do) does not end the daemon: it accepts the next
frontend, and only an exit is a crash. It runs at ``nice`` 10 by default: the campaign
shares the machine. Its fd count (``/proc/<pid>/fd``) is what the leak check compares.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

#: Startup of ``python -m msbfs serve`` on a busy 2-core machine: a failure bound only.
START_DEADLINE = 60.0


class Daemon:
    def __init__(self, shared: Path, sock: Path, args: Sequence[str] = (),
                 nice: int = 10) -> None:
        self.shared, self.sock, self.args, self.nice = shared, sock, list(args), nice
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = sock.with_suffix(".log")
        self.restarts = 0

    def start(self) -> None:
        if self.sock.exists():
            self.sock.unlink()
        argv = [sys.executable, "-m", "msbfs", "serve", f"--socket-path={self.sock}",
                f"--shared-dir={self.shared}", "--keep-serving", "--log-level=error",
                *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        end = time.monotonic() + START_DEADLINE
        while True:  # the socket appears (renamed into place) once the daemon listens
            if self.proc.poll() is not None:
                raise RuntimeError(f"msbfs serve exited at start ({self.proc.returncode}): "
                                   + self.log_tail())
            try:
                if stat.S_ISSOCK(os.stat(self.sock).st_mode):
                    return
            except FileNotFoundError:
                pass
            if time.monotonic() > end:
                raise TimeoutError("msbfs serve did not start listening")
            time.sleep(0.01)  # polling the socket's existence, bounded by the deadline

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while running."""
        assert self.proc is not None
        return self.proc.poll()

    def serving_pid(self) -> int:
        """The process that serves: the deepest descendant of the one we started."""
        pid = self.pid
        while True:
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    kids = f.read().split()
            except FileNotFoundError:
                return pid
            if not kids:
                return pid
            pid = int(kids[0])

    def wait_exit(self, deadline: float) -> int | None:
        """The exit status if the daemon exits within ``deadline`` seconds, else None."""
        assert self.proc is not None
        try:
            return self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            return None

    def fds(self) -> dict[int, str]:
        pid = self.serving_pid()
        out = {}
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            return out
        for name in names:
            try:
                out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
            except FileNotFoundError:
                pass
        return out

    def wait_fds_at_most(self, limit: int, deadline: float = 10.0) -> dict[int, str]:
        """Poll until the daemon holds at most ``limit`` fds (it has finished tearing
        the last session down) or ``deadline`` passes; returns the last listing."""
        end = time.monotonic() + deadline
        while True:
            fds = self.fds()
            if len(fds) <= limit or time.monotonic() > end or self.exited() is not None:
                return fds
            time.sleep(0.005)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
