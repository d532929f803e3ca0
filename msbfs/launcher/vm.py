"""One running guest: its daemons, its QEMU process, its agent channel and its temporary
directory, started together and torn down together.

Teardown order matters: ask the guest to power off (it syncs), reap QEMU (killing it if it
does not stop), then stop the daemons (virtiofsd exits on its own once QEMU is gone), and
remove the sockets and logs. ``close`` is idempotent and runs on every failure path of
``start``, so nothing outlives the ``Vm`` object.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from msbfs.errors import LaunchError
from msbfs.launcher import daemon as daemons
from msbfs.launcher.agent import AgentChannel, AgentError, RunResult, Sink
from msbfs.launcher.image import GuestImage, find_image
from msbfs.launcher.qemu import BlockDevice, FsDevice, VmConfig, qemu_argv

#: How long a TCG boot may take before we call it failed (a 2-core machine under load).
BOOT_TIMEOUT = 120.0
#: How long a KVM boot may take before ``accel=auto`` falls back to TCG.
KVM_PROBE_TIMEOUT = 5.0


@dataclass
class DiskSpec:
    path: Path
    format: str = "raw"
    readonly: bool = False


@dataclass
class VmSpec:
    trees: list[daemons.ServedTree] = field(default_factory=list)
    disks: list[DiskSpec] = field(default_factory=list)
    cpus: int = 1
    memory_mib: int = 512
    accel: str = "tcg"
    daemon: daemons.DaemonCommand = daemons.msbfs_serve


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode(errors="replace").strip()


class Vm:
    def __init__(self, spec: VmSpec, image: GuestImage | None = None) -> None:
        self.spec = spec
        self.image = image or find_image()
        self.dir = Path(tempfile.mkdtemp(prefix=f"msbfs-vm-{os.getpid()}-"))
        self.qemu: subprocess.Popen | None = None
        self.daemons: list[tuple[daemons.ServedTree, subprocess.Popen]] = []
        self.channel: AgentChannel | None = None
        self.accel = spec.accel
        #: Seconds from ``start`` to the agent's hello (kernel boot + init).
        self.boot_seconds = 0.0
        self._sockets: list[socket.socket] = []
        self._ready = False  # the agent said hello: it will obey a quit
        self._closed = False

    # -- life cycle ---------------------------------------------------------------

    def dry_run(self) -> list[list[str]]:
        """The daemon and QEMU command lines ``start`` would run (fd numbers illustrative)."""
        lines = [self.spec.daemon(t, 3 + i) for i, t in enumerate(self.spec.trees)]
        return [*lines, qemu_argv(self._config())]

    def _config(self) -> VmConfig:
        return VmConfig(
            image=self.image,
            agent_socket=self.dir / "agent.sock",
            console_log=self.dir / "console.log",
            cpus=self.spec.cpus,
            memory_mib=self.spec.memory_mib,
            accel=self.accel,
            fs=[FsDevice(t.tag, self.dir / f"fs{i}.sock", t.request_queues)
                for i, t in enumerate(self.spec.trees)],
            disks=[BlockDevice(d.path, d.format, d.readonly, f"msbd{i}")
                   for i, d in enumerate(self.spec.disks)],
        )

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        try:
            if self.spec.accel == "auto":
                self._start_auto(timeout)
            else:
                self._boot(timeout)
        except BaseException:
            self.close()
            raise

    def _start_auto(self, timeout: float) -> None:
        cached = _kvm_verdict()
        if cached != "tcg" and _kvm_usable():
            self.accel = "kvm"
            try:
                self._boot(KVM_PROBE_TIMEOUT)
                _remember_kvm("kvm")
                print("msbfs: accel kvm", file=sys.stderr)
                return
            except LaunchError:
                self._teardown()
                _remember_kvm("tcg")
                why = f"a KVM guest did not start within {KVM_PROBE_TIMEOUT:.0f} s"
        else:
            why = "KVM unusable here" if cached != "tcg" else "KVM guests hang on this host"
        self.accel = "tcg"
        print(f"msbfs: accel tcg ({why})", file=sys.stderr)
        self._boot(timeout)

    def _boot(self, timeout: float) -> None:
        began = time.monotonic()
        cfg = self._config()
        for i, tree in enumerate(self.spec.trees):
            listener = daemons.listen_unix(cfg.fs[i].socket)
            self._sockets.append(listener)
            argv = self.spec.daemon(tree, listener.fileno())
            proc = daemons.spawn(argv, self.dir / f"daemon{i}.log",
                                 pass_fds=(listener.fileno(),))
            self.daemons.append((tree, proc))
            listener.close()  # the daemon holds its own copy; QEMU connects by path
        agent_listener = daemons.listen_unix(cfg.agent_socket)
        self._sockets.append(agent_listener)
        self.qemu = daemons.spawn(qemu_argv(cfg), self.dir / "qemu.log")
        conn = self._accept(agent_listener, began + timeout)
        agent_listener.close()
        self.channel = AgentChannel(conn, self.failure, self._failure_after_hangup)
        try:
            self.channel.wait_hello(max(0.1, began + timeout - time.monotonic()))
        except AgentError as e:
            raise LaunchError(f"guest did not boot: {e}{self._console_note()}") from e
        self.boot_seconds = time.monotonic() - began
        self._ready = True

    def _accept(self, listener: socket.socket, deadline: float) -> socket.socket:
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            while True:
                why = self.failure()
                if why:
                    raise LaunchError(why)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LaunchError("QEMU did not connect to the agent channel")
                if sel.select(min(left, 0.5)):
                    conn, _ = listener.accept()
                    return conn

    def _console_note(self) -> str:
        """The console's last lines, led by the panic line when there is one (the lines
        after it are a stack trace)."""
        try:
            lines = (self.dir / "console.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        panic = [ln for ln in lines if "Kernel panic" in ln][:1]
        picked = [*panic, *lines[-6:]]
        return "\nguest console:\n" + "\n".join(ln.strip() for ln in picked) if picked else ""

    def failure(self) -> str | None:
        """Why this guest can no longer work, or None: QEMU exited, or a daemon died (the
        message names the mount it served)."""
        for i, (tree, proc) in enumerate(self.daemons):
            code = proc.poll()
            if code is not None:
                log = _tail(self.dir / f"daemon{i}.log", 600)
                return (f"the daemon serving {tree.describe()} exited with status {code}"
                        + (f": {log}" if log else ""))
        if self.qemu is not None:
            code = self.qemu.poll()
            if code is not None:
                log = _tail(self.dir / "qemu.log", 600)
                return (f"QEMU exited with status {code}" + (f": {log}" if log else "")
                        + self._console_note())
        return None

    def _failure_after_hangup(self) -> str | None:
        # The channel closes a moment before QEMU exits (guest panic, power-off): give
        # QEMU a few seconds to finish so the error says what happened.
        if self.qemu is not None:
            try:
                self.qemu.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return self.failure()

    def _teardown(self) -> None:
        ready, self._ready = self._ready, False
        if self.channel is not None and ready and not self.channel.busy:
            self.channel.quit()
        elif self.qemu is not None and self.qemu.poll() is None:
            # Not booted yet, or interrupted mid-command (Ctrl-C, timeout, a dead daemon):
            # the agent is not listening for a quit, and nothing in the guest is worth
            # waiting for.
            self.qemu.kill()
        if self.qemu is not None:
            try:
                self.qemu.wait(10)
            except subprocess.TimeoutExpired:
                self.qemu.kill()
                self.qemu.wait()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.qemu = None
        for _, proc in self.daemons:
            daemons.stop(proc)
        self.daemons = []
        for s in self._sockets:
            s.close()
        self._sockets = []
        for name in os.listdir(self.dir):
            if name.endswith(".sock"):
                os.unlink(self.dir / name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._teardown()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Vm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -----------------------------------------------------------------

    def run(self, argv: Sequence[str | bytes], env: Mapping[str, str] | None = None,
            cwd: str = "", uid: int = 0, gid: int = 0, timeout: float | None = None,
            on_stdout: Sink | None = None, on_stderr: Sink | None = None) -> RunResult:
        if self.channel is None:
            raise LaunchError("the guest is not running")
        why = self.failure()  # a daemon that died between commands fails the next one
        if why:
            raise LaunchError(why)
        return self.channel.run(argv, env, cwd, uid, gid, timeout, on_stdout, on_stderr)

    def sh(self, script: str, **kw) -> RunResult:
        return self.run(["/bin/sh", "-c", script], **kw)


# -- accel=auto: does a KVM guest actually run here? Remembered per boot of the host. ---

def _verdict_file() -> Path:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    return Path(tempfile.gettempdir()) / f"msbfs-kvm-{boot}"


def _kvm_verdict() -> str | None:
    try:
        return _verdict_file().read_text().strip()
    except OSError:
        return None


def _remember_kvm(verdict: str) -> None:
    try:
        _verdict_file().write_text(verdict + "\n")
    except OSError:
        pass


def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)
