"""``Sandbox``: mounts from the mount model wired to one guest, commands run in it.

Each mount is resolved (``msbfs.mounts.resolve``; a named mount's mode may create its
volume) and attached by its transport: ``virtiofs`` trees get one daemon each with the
mount's policy on the daemon's command line; ``block`` images become virtio-blk disks in
their checked format; ``tmpfs`` is made by the guest. The guest then mounts everything,
parents before children, with the mount's flags too (the server's enforcement does not
depend on them). Named volumes are held (shared serving lock) for the sandbox's lifetime,
so ``msbfs volume rm`` is refused while it runs.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from msbfs import volumes
from msbfs.errors import LaunchError, VolumeNotFound
from msbfs.launcher import daemon as daemons
from msbfs.launcher.agent import DEFAULT_ENV, RunResult, Sink
from msbfs.launcher.image import GuestImage
from msbfs.launcher.vm import DiskSpec, Vm, VmSpec
from msbfs.mounts import Mount, MountKind, MountOptions, ResolvedMount, resolve
from msbfs.serving_lock import VolumeLock

__all__ = ["RunResult", "Sandbox"]


def check_disk_format(path: str, declared: str | None) -> str:
    """The image's format as qemu-img sees it; a declared format must agree (attaching a
    qcow2 as raw would hand the guest the container, not the disk)."""
    proc = subprocess.run(["qemu-img", "info", "--output=json", "-U", path],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise LaunchError(f"disk {path}: qemu-img cannot read it: {proc.stderr.strip()}")
    actual = json.loads(proc.stdout).get("format", "raw")
    if declared and declared != actual:
        raise LaunchError(f"disk {path} is {actual}, not {declared}")
    return actual


@dataclass(frozen=True)
class _Attached:
    guest_path: str
    resolved: ResolvedMount
    tag: str | None = None  # virtiofs
    serial: str | None = None  # block


def _mount_flags(o: MountOptions) -> list[str]:
    # The spec's flag names are mount(8)'s; "rw" is said outright when "ro" is not set.
    return o.flags() if o.readonly else ["rw", *o.flags()]


# Finds a virtio-blk disk by the serial the launcher gave it (probe order is not fixed).
_FIND_DISK = r"""
msb_disk() {
    for b in /sys/block/vd*; do
        if [ "$(cat "$b/serial" 2>/dev/null)" = "$1" ]; then echo "/dev/${b##*/}"; return 0; fi
    done
    echo "msbfs: no disk with serial $1" >&2; return 1
}
"""


def guest_mount_script(attached: Sequence[_Attached]) -> str:
    lines = ["set -e", _FIND_DISK]
    for a in sorted(attached, key=lambda a: a.guest_path.rstrip("/").count("/")):
        r = a.resolved
        path = shlex.quote(a.guest_path)
        flags = _mount_flags(r.options)
        lines.append(f"mkdir -p {path}")
        if r.transport == "virtiofs":
            lines.append(f"mount -t virtiofs -o {','.join(flags)} {a.tag} {path}")
        elif r.transport == "block":
            fstype = f"-t {shlex.quote(r.fstype)} " if r.fstype else ""
            lines.append(f"mount {fstype}-o {','.join(flags)} \"$(msb_disk {a.serial})\" "
                         f"{path}")
        else:
            size = f",size={r.size_mib}m" if r.size_mib else ""
            lines.append(f"mount -t tmpfs -o {','.join(flags)}{size} tmpfs {path}")
    return "\n".join(lines) + "\n"


class Sandbox:
    """A guest with mounts. ``with Sandbox(mounts={"/data": Mount.named("v")}) as sb:
    sb.run(["ls", "/data"])`` -> ``RunResult(exit_code, stdout, stderr)``; ``run`` may be
    called any number of times in one boot."""

    def __init__(self, mounts: Mapping[str, Mount] | None = None, cpus: int = 1,
                 memory_mib: int = 512, accel: str = "auto",
                 daemon: daemons.DaemonCommand = daemons.msbfs_serve,
                 image: GuestImage | None = None) -> None:
        if accel not in ("auto", "kvm", "tcg"):
            raise LaunchError(f"accel must be auto, kvm or tcg, not {accel!r}")
        for path in mounts or {}:
            if not path.startswith("/") or path.rstrip("/") == "":
                raise LaunchError(f"guest path {path!r} must be absolute and not /")
        self.mounts = dict(mounts or {})
        self.cpus = cpus
        self.memory_mib = memory_mib
        self.accel = accel
        self.daemon = daemon
        self.image = image
        self.vm: Vm | None = None
        self._holds: list[VolumeLock] = []

    # -- set-up -------------------------------------------------------------------

    def _plan(self, resolved: Mapping[str, ResolvedMount]) -> tuple[VmSpec, list[_Attached]]:
        spec = VmSpec(cpus=self.cpus, memory_mib=self.memory_mib, accel=self.accel,
                      daemon=self.daemon)
        attached: list[_Attached] = []
        for guest_path, r in resolved.items():
            if r.transport == "virtiofs":
                tag = f"msb{len(spec.trees)}"
                o = r.options
                spec.trees.append(daemons.ServedTree(
                    tag=tag, guest_path=guest_path,
                    shared_dir=None if r.host_path is None else Path(r.host_path),
                    volume=r.volume, options=o, quota_mib=r.quota_mib,
                    request_queues=daemons.request_queues(self.daemon, self.cpus)))
                attached.append(_Attached(guest_path, r, tag=tag))
            elif r.transport == "block":
                assert r.image_path is not None
                serial = f"msbd{len(spec.disks)}"
                spec.disks.append(DiskSpec(Path(r.image_path), r.disk_format or "raw",
                                           r.options.readonly))
                attached.append(_Attached(guest_path, r, serial=serial))
            else:
                attached.append(_Attached(guest_path, r))
        return spec, attached

    def dry_run(self) -> list[list[str]]:
        """The daemon and QEMU command lines, without starting anything or creating
        volumes (a named volume that does not exist yet is shown by name)."""
        resolved = {}
        for guest_path, m in self.mounts.items():
            if m.kind is MountKind.NAMED:
                vol: volumes.VolumeHandle | None
                try:
                    vol = volumes.get_volume(m.source or "")
                    kind = vol.kind
                except VolumeNotFound:
                    vol, kind = None, m.volume_kind
                if kind == "disk":
                    resolved[guest_path] = ResolvedMount(
                        m, "block", m.options, image_path=vol.image_path if vol else
                        f"<volume {m.source}>", disk_format="raw", volume=m.source)
                else:
                    resolved[guest_path] = ResolvedMount(
                        m, "virtiofs", m.options, host_path=vol.path if vol else None,
                        quota_mib=vol.quota_mib if vol else m.quota_mib, volume=m.source)
            else:
                resolved[guest_path] = resolve(m)
        spec, attached = self._plan(resolved)
        vm = Vm(spec, self.image)
        try:
            lines = vm.dry_run()
        finally:
            vm.close()
        lines.append(["guest:", guest_mount_script(attached)])
        return lines

    def start(self) -> Sandbox:
        try:
            resolved: dict[str, ResolvedMount] = {}
            for guest_path, m in self.mounts.items():
                r = resolve(m)
                if r.volume:
                    self._holds.append(volumes.hold_volume(r.volume))
                if r.transport == "block":
                    assert r.image_path is not None
                    fmt = check_disk_format(r.image_path, r.disk_format)
                    r = replace(r, disk_format=fmt)
                resolved[guest_path] = r
            spec, attached = self._plan(resolved)
            self.vm = Vm(spec, self.image)
            self.vm.start()
            setup = self.vm.run(["/bin/sh", "-c", guest_mount_script(attached)])
            if setup.exit_code != 0:
                raise LaunchError("the guest could not mount its volumes: "
                                  + setup.stderr.decode(errors="replace").strip())
        except BaseException:
            self.close()
            raise
        return self

    # -- use ----------------------------------------------------------------------

    def run(self, cmd: Sequence[str] | str, env: Mapping[str, str] | None = None,
            workdir: str = "/", on_stdout: Sink | None = None,
            on_stderr: Sink | None = None, timeout: float | None = None,
            uid: int = 0, gid: int = 0) -> RunResult:
        """Run ``cmd`` (argv, or a string for ``/bin/sh -c``) in the guest, as root unless
        ``uid``/``gid`` say otherwise. stdin is ``/dev/null``."""
        if self.vm is None:
            raise LaunchError("the sandbox is not running (use it as a context manager)")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full_env = {**DEFAULT_ENV, **(env or {})}
        return self.vm.run(argv, env=full_env, cwd=workdir, uid=uid, gid=gid,
                           timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr)

    @property
    def accel_used(self) -> str | None:
        return None if self.vm is None else self.vm.accel

    def close(self) -> None:
        try:
            if self.vm is not None:
                self.vm.close()
        finally:
            self.vm = None
            for lock in self._holds:
                lock.close()
            self._holds = []

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

