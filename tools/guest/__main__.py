"""``python -m tools.guest build [--quiet] [--out DIR]``: build (or confirm) the guest image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.guest.build import BuildError, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.guest")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the guest kernel + initramfs if inputs changed")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        image = build(args.out, quiet=args.quiet)
    except BuildError as e:
        print(f"guest: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(image.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
