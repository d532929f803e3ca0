"""``python -m tools.conformance``: run a suite inside a msbfs mount.

Examples::

    python -m tools.conformance --tap tools/conformance/suites/posix
    python -m tools.conformance --pytest path/to/tests -o nosuid
    python -m tools.conformance --shell 'fsx -N 1000 testfile' --source myvolume
    python -m tools.conformance --target native --tap tools/conformance/suites/posix
    python -m tools.conformance perms --targets native,mount,guest-msbfs   # see perms/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.conformance.runner import run_suite
from tools.conformance.suites import POSIX_SUITE, PytestSuite, ShellSuite, Suite, TapSuite
from tools.conformance.targets import HostMountTarget, NativeTarget, Target


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["perms"]:
        # the permission/ownership suite compares targets; its own command line
        from tools.conformance.perms.__main__ import main as perms_main

        return perms_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m tools.conformance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--tap", nargs="+", type=Path, metavar="PATH",
                      help="TAP test files or directories of *.t (default: the in-tree "
                           "POSIX suite)")
    what.add_argument("--pytest", metavar="PATH", help="a pytest file or directory")
    what.add_argument("--shell", metavar="COMMAND", help="a shell command (pass = exit 0)")
    p.add_argument("--target", choices=("host", "native"), default="host",
                   help="host: a msbfs host mount (default); native: a plain directory")
    p.add_argument("--source", help="volume name or directory to mount (default: a fresh "
                                    "temporary directory)")
    p.add_argument("-o", dest="options", default="", help="msbfs mount options")
    p.add_argument("--no-prove", action="store_true", help="run TAP files directly")
    args = p.parse_args(argv)

    suite: Suite
    if args.pytest:
        suite = PytestSuite(args.pytest, python=sys.executable)
    elif args.shell:
        suite = ShellSuite(args.shell)
    else:
        suite = TapSuite(args.tap or [POSIX_SUITE], use_prove=False if args.no_prove else None)
    target: Target = (NativeTarget(args.source) if args.target == "native"
                      else HostMountTarget(args.source, args.options))
    outcome = run_suite(suite, target)
    outcome.report(sys.stdout)
    return 0 if outcome.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
