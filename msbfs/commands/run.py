"""``msbfs run``: boot a sandbox with mounts, run one command in it, exit with its status.

    msbfs run [--mount GUEST=SPEC]... [--tmpfs GUEST[:size=MIB,OPTS]]...
              [--disk GUEST=PATH[:format=..,fstype=..,ro]]... [--cpus N] [--memory MIB]
              [--accel auto|kvm|tcg] [--env K=V]... [--workdir DIR] [--dry-run] -- CMD...

SPEC is the mount model's text form (``named:NAME[:OPTS]``, ``bind:PATH[:OPTS]``, ...).
stdout and stderr stream as the guest produces them. Ctrl-C tears everything down.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from typing import Any

from msbfs.errors import InvalidMountSpec, LaunchError
from msbfs.guest.build import ensure_image
from msbfs.launcher import daemon as daemons
from msbfs.mounts import Mount

DAEMONS = {"msbfs": daemons.msbfs_serve, "virtiofsd": daemons.virtiofsd}


def _split_guest(value: str, flag: str) -> tuple[str, str]:
    guest, eq, spec = value.partition("=")
    if not eq or not guest.startswith("/"):
        raise InvalidMountSpec(f"{flag} {value!r}: expected /GUEST/PATH=SPEC")
    return guest, spec


def parse_mounts(args: argparse.Namespace) -> dict[str, Mount]:
    mounts: dict[str, Mount] = {}

    def add(guest: str, mount: Mount) -> None:
        key = guest.rstrip("/") or "/"
        if key in mounts:
            raise InvalidMountSpec(f"two mounts at {key}")
        mounts[key] = mount

    for value in args.mount:
        guest, spec = _split_guest(value, "--mount")
        add(guest, Mount.parse(spec))
    for value in args.tmpfs:
        guest, _, opts = value.partition(":")
        if not guest.startswith("/"):
            raise InvalidMountSpec(f"--tmpfs {value!r}: expected /GUEST/PATH[:OPTS]")
        add(guest, Mount.parse(f"tmpfs:{opts}" if opts else "tmpfs"))
    for value in args.disk:
        guest, spec = _split_guest(value, "--disk")
        add(guest, Mount.parse(f"disk:{spec}"))
    return mounts


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise LaunchError(f"--env {pair!r}: expected K=V")
        env[key] = value
    return env


def _write(stream: Any):
    def sink(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return sink


def handle(args: argparse.Namespace) -> int:
    from msbfs.launcher.sandbox import Sandbox

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise LaunchError("no command given (msbfs run [OPTIONS] -- CMD [ARG]...)")
    mounts, env = parse_mounts(args), _env(args.env)
    # The first run builds the guest image (progress on stderr); a dry run only prints.
    image = None if args.dry_run else ensure_image()
    sandbox = Sandbox(mounts, cpus=args.cpus, memory_mib=args.memory,
                      accel=args.accel, daemon=DAEMONS[args.daemon], image=image)
    if args.dry_run:
        for argv in sandbox.dry_run():
            if argv[0] == "guest:":
                print("# in the guest:\n" + argv[1], end="")
            else:
                print(shlex.join(argv))
        print("# then: " + shlex.join(cmd))
        return 0
    # SIGTERM tears down like Ctrl-C does (the helpers would die with us anyway, through
    # their parent-death signal, but the temporary directory would stay).
    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    with sandbox:
        result = sandbox.run(cmd, env=env, workdir=args.workdir,
                             on_stdout=_write(sys.stdout.buffer),
                             on_stderr=_write(sys.stderr.buffer))
    return result.exit_code


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run a command in a microVM sandbox",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mount", action="append", default=[], metavar="GUEST=SPEC")
    p.add_argument("--tmpfs", action="append", default=[], metavar="GUEST[:OPTS]")
    p.add_argument("--disk", action="append", default=[], metavar="GUEST=PATH[:OPTS]")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--memory", type=int, default=512, metavar="MIB")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("--workdir", default="/", metavar="DIR")
    p.add_argument("--dry-run", action="store_true",
                   help="print the daemon and QEMU command lines and exit")
    p.add_argument("--daemon", choices=sorted(DAEMONS), default="msbfs",
                   help="virtio-fs daemon: msbfs serve, or the C virtiofsd (reference, "
                        "no policy)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG]...")
    p.set_defaults(func=handle)
