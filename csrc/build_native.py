"""cffi builder for msbfs._native, the one extension that holds all of csrc/.

Each C unit in csrc/ comes as a pair: ``<unit>.c`` (the code) and ``<unit>.cdef``
(the declarations Python may call, in cffi's cdef dialect). Adding a unit needs no
change here, so the owners of the virtqueue, the data path and the credential
syscalls never edit a shared file.

virtq.c is compiled here too (the data path calls into it without crossing Python),
and again, alone, into vhost._native by csrc/build_vhost.py: the vhost package owns its
C and imports nothing from msbfs. Hidden visibility keeps each copy bound to itself.
"""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()

units = sorted(p.stem for p in HERE.glob("*.c") if not p.stem.startswith("test_"))
for unit in units:
    cdef = HERE / f"{unit}.cdef"
    if cdef.exists():
        ffibuilder.cdef(cdef.read_text())

ffibuilder.set_source(
    "msbfs._native",
    "\n".join(f'#include "{unit}.h"' for unit in units if (HERE / f"{unit}.h").exists()),
    # setuptools wants source paths relative to the project root it builds from.
    sources=[os.path.relpath(HERE / f"{unit}.c") for unit in units],
    # Our headers are found for "unit.h" only (-iquote), so csrc/seccomp.h does not
    # shadow the system's <seccomp.h>.
    # seccomp.c builds the daemon's syscall allowlist with libseccomp (libseccomp-dev).
    libraries=["seccomp"],
    extra_compile_args=["-iquote", str(HERE), "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fno-strict-aliasing", "-fvisibility=hidden"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
