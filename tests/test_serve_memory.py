"""What ``msbfs serve`` keeps resident that it does not use (issue #11: idle <= 40 MiB).

Every module a daemon imports stays in its memory for its whole life (the sandbox
forbids importing later, so nothing is imported on demand after it). A host-path serve
must not load the volume store's sqlite3 (and datetime: ~450 KiB resident) nor
``logging.handlers`` (only ``--syslog`` needs it). Counted as modules loaded by the
real start-up (``_build_tree``, which imports everything serving will need), in a fresh
interpreter: no timing, no RSS threshold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: Never loaded by a serve of a host path without --syslog.
UNUSED = ("sqlite3", "_sqlite3", "logging.handlers")

_PROBE = """
import sys
from msbfs.cli import build_parser  # as msbfs.cli.main builds it for "serve"
from msbfs.serve import _build_tree, setup_logging
from msbfs.serve_options import options_from_args
from msbfs.sources import open_source
a = build_parser("serve").parse_args(["serve", "--socket-path", sys.argv[1], "--shared-dir", sys.argv[2]])
o = options_from_args(a)
setup_logging(o)
src = open_source(volume=o.volume, path=o.shared_dir)
tree, _ = _build_tree(o, src)
print(" ".join(m for m in {unused!r} if m in sys.modules))
"""


def test_serve_of_a_host_path_loads_no_volume_store_nor_syslog(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    out = subprocess.run([sys.executable, "-c", _PROBE.format(unused=UNUSED),
                          str(tmp_path / "sock"), str(shared)],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == []
