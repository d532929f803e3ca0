"""``python -m msbfs.virtiofsd`` / ``msbfs-virtiofsd``: virtiofsd's argv exactly, for
libvirt's ``<binary path=...>`` and scripts that run virtiofsd."""

from __future__ import annotations

import sys

from msbfs.serve import main

if __name__ == "__main__":
    sys.exit(main())
