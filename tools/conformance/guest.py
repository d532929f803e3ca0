"""The guest target: a suite runs inside a TCG (or KVM) guest, in a directory the guest
reaches over virtio-fs from ``msbfs serve`` — the path guests really use.

Two trees are served: the directory under test at ``/conformance`` (a fresh temporary
directory, a host directory, or a named volume, with the given policy; or ``tmpfs``, the
guest's own, as the baseline a suite must pass in a guest at all) and, read-only,
the staged suite files at ``/staged``. Commands run through the guest agent with
busybox's tools, so TAP suites run directly (no ``prove`` in the guest).

    python -m tools.conformance.guest [--tap PATH...] [--source VOL|DIR] [-o ro,noexec,...]
        [--daemon msbfs|virtiofsd]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from msbfs.launcher import daemon as daemons
from msbfs.launcher.sandbox import Sandbox
from msbfs.mounts import Mount, MountOptions
from msbfs.sources import is_path_source
from tools.conformance.runner import run_suite
from tools.conformance.suites import POSIX_SUITE, ShellSuite, Suite, TapSuite
from tools.conformance.targets import Completed

WORKDIR = "/conformance"
STAGED = "/staged"


class GuestTarget:
    name = "guest"

    def __init__(self, source: str | None = None, options: str = "",
                 daemon: daemons.DaemonCommand = daemons.msbfs_serve,
                 accel: str = "auto") -> None:
        self.source = source
        self.options = MountOptions.parse(options)
        self.daemon = daemon
        self.accel = accel
        self.sandbox: Sandbox | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stage: Path | None = None

    def __enter__(self) -> str:
        self._tmp = tempfile.TemporaryDirectory(prefix="msbfs-conf-guest.")
        base = Path(self._tmp.name)
        self._stage = base / "staged"
        self._stage.mkdir()
        if self.source == "tmpfs":
            under_test = Mount.tmpfs(**vars(self.options))
        elif self.source is None:
            (base / "work").mkdir()
            under_test = Mount.bind(base / "work", self.options)
        elif is_path_source(self.source):
            under_test = Mount.bind(self.source, self.options)
        else:
            under_test = Mount.named(self.source, self.options)
        staged = Mount.bind(self._stage, MountOptions(readonly=True))
        self.sandbox = Sandbox({WORKDIR: under_test, STAGED: staged}, accel=self.accel,
                               daemon=self.daemon)
        try:
            self.sandbox.start()
        except BaseException:
            self._cleanup()
            raise
        return WORKDIR

    def _cleanup(self) -> None:
        try:
            if self.sandbox is not None:
                self.sandbox.close()
        finally:
            self.sandbox = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._cleanup()

    def stage(self, paths: Sequence[Path]) -> list[str]:
        """Copy each file with its directory's other files (helpers such as ``tap.sh``
        that suites source from beside themselves) into the staged tree."""
        assert self._stage is not None, "stage() before entering the target"
        out = []
        for i, p in enumerate(paths):
            p = p.resolve()
            dest = self._stage / str(i)
            if p.is_dir():
                shutil.copytree(p, dest / p.name)
            else:
                shutil.copytree(p.parent, dest, ignore=shutil.ignore_patterns("__pycache__"))
            out.append(f"{STAGED}/{i}/{p.name}")
        return out

    def run(self, argv: Sequence[str], *, cwd: str, env: Mapping[str, str] | None = None,
            timeout: float = 600) -> Completed:
        assert self.sandbox is not None, "run() before entering the target"
        r = self.sandbox.run(list(argv), env=dict(env or {}), workdir=cwd, timeout=timeout)
        return Completed(r.exit_code, (r.stdout + r.stderr).decode(errors="replace"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.conformance.guest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--tap", nargs="+", type=Path, metavar="PATH")
    what.add_argument("--shell", metavar="COMMAND")
    p.add_argument("--source")
    p.add_argument("-o", dest="options", default="")
    p.add_argument("--daemon", choices=("msbfs", "virtiofsd"), default="msbfs")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    args = p.parse_args(argv)
    suite: Suite = (ShellSuite(args.shell) if args.shell
                    else TapSuite(args.tap or [POSIX_SUITE], use_prove=False))
    daemon = daemons.virtiofsd if args.daemon == "virtiofsd" else daemons.msbfs_serve
    outcome = run_suite(suite, GuestTarget(args.source, args.options, daemon, args.accel))
    outcome.report(sys.stdout)
    return 0 if outcome.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
