"""The one raiser of this process's descriptor limit (``RLIMIT_NOFILE``).

Every inode a client holds a lookup on and has used is an O_PATH fd in the tree (up to
its fd cache; a lookup alone adds a named node, no fd: csrc/inodes.h), so a 1024 soft
limit would make that cache small, and a host mount's kernel keeps lookups for
everything in its inode cache (a walk of 100,000 files that opens them needs 100,000
fds). The tree raises the soft limit to the hard one, as virtiofsd does; the host mount
also asks, as root, for the hard limit to grow to ``WANTED_NOFILE``. Best effort: a
process-wide setting, only ever raised. ``--rlimit-nofile N`` (an exact bound set before
the tree is built) is the confinement layer's, in msbfs/confine.py.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

#: How many descriptors a host mount asks for (virtiofsd's default is the same million).
WANTED_NOFILE = 1_000_000
#: What an unlimited soft limit counts as when something is sized on it.
_UNLIMITED = 1 << 20


def raise_fd_limit(wanted: int | None = None) -> int:
    """Raise the soft limit to the hard one and, given ``wanted`` and running as root
    (CAP_SYS_RESOURCE), the hard one up to ``wanted`` within fs.nr_open. Returns the
    resulting soft limit (an unlimited one as ``1 << 20``)."""
    inf = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if wanted is not None and hard != inf and os.geteuid() == 0:
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = hard
        want = max(hard, min(wanted, nr_open))
    if soft != inf and (want == inf or soft < want):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, inf if want == inf else max(want, hard)))
        except (OSError, ValueError):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (OSError, ValueError):
                pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _UNLIMITED if soft == inf else soft
