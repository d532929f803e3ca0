"""The QEMU command line for an msbfs guest, as a pure function of a ``VmConfig``.

Choices (measured under TCG on the project's machines): ``-M pc`` with qboot as firmware
and ``-nodefaults`` boots fastest while keeping PCI, which ``vhost-user-fs-pci`` needs;
guest RAM is a shared memfd so vhost-user daemons can map it. The virtio-serial device
comes first on the PCI bus so the agent's port is always ``/dev/vport0p1`` in the guest
(``msbfs/guest/init.sh``). Disks carry a serial (``msbdN``) so the guest finds each
one by serial, not by probe order.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from msbfs.launcher.image import GuestImage

QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")


@dataclass(frozen=True)
class FsDevice:
    tag: str
    socket: Path
    request_queues: int = 1


@dataclass(frozen=True)
class BlockDevice:
    path: Path
    format: str
    readonly: bool
    serial: str


@dataclass
class VmConfig:
    image: GuestImage
    agent_socket: Path
    console_log: Path
    cpus: int = 1
    memory_mib: int = 512
    accel: str = "tcg"
    fs: list[FsDevice] = field(default_factory=list)
    disks: list[BlockDevice] = field(default_factory=list)
    #: Extra kernel command line words.
    append: list[str] = field(default_factory=list)


def qemu_binary() -> str:
    return os.environ.get("MSBFS_QEMU") or shutil.which(QEMU) or QEMU


def kernel_cmdline(cfg: VmConfig) -> str:
    # panic=-1 turns a guest panic into a reboot, which -no-reboot turns into QEMU exiting.
    words = ["console=ttyS0", "quiet", "panic=-1", "rdinit=/init", "8250.nr_uarts=1",
             "tsc=reliable", "no_timer_check", "noreplace-smp", "cryptomgr.notests",
             *cfg.append]
    return " ".join(words)


def accel_option(accel: str) -> str:
    """The ``-accel`` value. TCG runs every vCPU in one thread: with multi-threaded TCG a
    6.12 guest with two vCPUs now and then oopses on an int3 in code the other vCPU is
    live-patching (static keys flip during boot; seen as ``Oops: int3`` in
    ``sched_clock_idle_wakeup_event`` about once in 40 boots). Single-threaded TCG
    switches vCPUs only between translation blocks, so cross-modified code is coherent;
    on a 2-core host the daemons want the other core anyway."""
    return "tcg,thread=single" if accel == "tcg" else accel


def qemu_argv(cfg: VmConfig) -> list[str]:
    argv = [
        qemu_binary(),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-machine", "pc",
        "-accel", accel_option(cfg.accel),
        "-cpu", "host" if cfg.accel == "kvm" else "max",
        "-smp", str(cfg.cpus),
        "-m", f"{cfg.memory_mib}M",
        "-object", f"memory-backend-memfd,id=mem,size={cfg.memory_mib}M,share=on",
        "-numa", "node,memdev=mem",
        "-kernel", str(cfg.image.kernel),
        "-initrd", str(cfg.image.initrd),
        "-append", kernel_cmdline(cfg),
        "-chardev", f"file,id=console,path={cfg.console_log}",
        "-serial", "chardev:console",
        "-device", "virtio-serial-pci,id=agentbus",
        "-chardev", f"socket,id=agent,path={cfg.agent_socket}",
        "-device", "virtserialport,bus=agentbus.0,chardev=agent,name=msb.agent",
    ]
    if QBOOT.exists():
        argv[1:1] = ["-bios", str(QBOOT)]
    for i, fs in enumerate(cfg.fs):
        argv += [
            "-chardev", f"socket,id=fs{i},path={fs.socket}",
            "-device", f"vhost-user-fs-pci,chardev=fs{i},tag={fs.tag},queue-size=1024"
                       f",num-request-queues={fs.request_queues}",
        ]
    for i, disk in enumerate(cfg.disks):
        ro = ",read-only=on" if disk.readonly else ""
        argv += [
            "-blockdev",
            f"driver=file,filename={disk.path},node-name=f{i}{ro}",
            "-blockdev", f"driver={disk.format},file=f{i},node-name=d{i}{ro}",
            "-device", f"virtio-blk-pci,drive=d{i},serial={disk.serial}",
        ]
    return argv
