"""Permission and ownership conformance: one C program (``permsuite.c``), the same fixture
recipe, run on several targets; every line that differs from the native directory's is a
failure (issue 10).

The program prints one canonical line per assertion, ``CASE<TAB>IDENTITY<TAB>RESULT<TAB>
STATE`` (see the comment at the top of ``permsuite.c``). A *run* is that output parsed;
``compare`` pairs two runs by (case, identity) and returns every difference, including
an assertion one side did not make. Targets (``targets.py``) say where the program runs
and which native run is their reference:

========================  ================================================  ==============
target                    where                                             reference
========================  ================================================  ==============
``native``                a plain directory on this host                    (itself)
``mount``                 ``msbfs mount -o allow_other``                    native
``mount-squash``          ``msbfs mount -o allow_other,uid=N,gid=M``        native-squash
``guest-msbfs``           a TCG guest, virtiofs from ``msbfs serve``        native
``guest-virtiofsd``       the same guest over Debian's C virtiofsd          native
========================  ================================================  ==============

Owner squash: the squashed mount reports N:M as every file's owner by definition, so
"equal to native" is defined against ``native-squash``, a native run of the program's
``--squash N:M`` profile: every fixture really owned by N:M, and ownership columns
printed as ``*`` on both sides; every result and the rest of every state are compared.

Guests run their own kernel, so the driver sets the guest's ``fs.protected_*`` sysctls
to the host's before running (the program prints them; a run whose header differs from
its reference's is reported as such). Each guest also runs the program once on its own
tmpfs (``guest-tmpfs``), a baseline that tells a guest-kernel difference from a daemon's.
"""

from tools.conformance.perms.suite import (
    Difference,
    Run,
    build,
    compare,
    parse,
)

__all__ = ["Difference", "Run", "build", "compare", "parse"]
