"""cffi builder for vhost._native: the virtqueue and guest-memory C of the vhost/
package (csrc/virtq.c, declared by csrc/virtq.h / virtq.cdef) and the driver side's
request loop (csrc/vdriver.c: vhost/cdriver.py) and nothing else, so vhost/ imports
nothing from msbfs.

csrc/virtq.c is also compiled into msbfs._native (csrc/build_native.py), because the
virtio-fs data path (csrc/fuse_datapath.c) calls msb_vq_pop/msb_vq_push directly on
the ring in its hot loop. The two copies are separate shared objects loaded
RTLD_LOCAL, built with hidden visibility: neither can bind to the other's symbols.
A ring created here reaches msbfs's copy as a ``struct msb_vq *`` by address, and
msbfs/vring.py checks at import that both extensions agree on the layout.
"""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

UNITS = ("virtq", "vdriver")  # virtq first: vdriver's cdef uses its ring structs

ffibuilder = FFI()
for unit in UNITS:
    ffibuilder.cdef((HERE / f"{unit}.cdef").read_text())
ffibuilder.set_source(
    "vhost._native",
    "\n".join(f'#include "{unit}.h"' for unit in UNITS),
    # setuptools wants source paths relative to the project root it builds from.
    sources=[os.path.relpath(HERE / f"{unit}.c") for unit in UNITS],
    extra_compile_args=["-iquote", str(HERE), "-O2", "-std=gnu11", "-Wall", "-Wextra",
                        "-Wno-unused-parameter", "-fno-strict-aliasing",
                        "-fvisibility=hidden"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
