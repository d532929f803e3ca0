"""The ``msbfs`` command: one sub-command module per area, in ``msbfs/commands/``.

Each module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func=handler`` on them; a handler takes the parsed ``argparse.Namespace`` and returns
the exit status. Every ``MsbfsError`` (and ``OSError``) becomes one line on stderr and
a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from msbfs.errors import MsbfsError

#: Sub-command modules under msbfs.commands, in the order ``--help`` lists them.
COMMAND_MODULES = ("volume", "mount", "serve", "run", "guest")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or with ``only`` just that sub-command (what ``main`` builds when
    argv names one: ``msbfs serve``, which QEMU waits for while it starts, then imports
    no other area's modules, such as the launcher's or the volume store's)."""
    parser = argparse.ArgumentParser(
        prog="msbfs",
        description="Serve sandbox volumes to microVM guests, the host and Python.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES if only is None else (only,):
        try:
            module = importlib.import_module(f"msbfs.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"msbfs.commands.{name}":
                raise
            continue  # that area is not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMAND_MODULES else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except MsbfsError as e:
        print(f"msbfs: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"msbfs: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
