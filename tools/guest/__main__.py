"""``python -m tools.guest build [--quiet] [--force] [--out DIR]``: ``msbfs guest build``."""

from __future__ import annotations

import sys

from msbfs.cli import main

if __name__ == "__main__":
    sys.exit(main(["guest", *sys.argv[1:]]))
