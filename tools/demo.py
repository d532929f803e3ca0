"""``make demo``: the main job end to end, on the machine's MSB_HOME.

Step 1 (this issue): create (or reuse) the named volume ``demo``, write files into it
with ``VolumeFs``, and list what is there. Later steps boot a sandbox on it and mount it
on the host; each step is a function so they can be added one by one.
"""

from __future__ import annotations

import stat
import sys
from datetime import UTC, datetime

import msbfs
from msbfs.commands.volume import human_bytes
from msbfs.errors import MsbfsError, VolumeNotFound

DEMO_VOLUME = "demo"


def ensure_demo_volume() -> msbfs.VolumeHandle:
    try:
        vol = msbfs.get_volume(DEMO_VOLUME)
        print(f"reusing volume {vol.name!r} at {vol.path}")
    except VolumeNotFound:
        msbfs.create_volume(DEMO_VOLUME, labels={"made-by": "make demo"})
        vol = msbfs.get_volume(DEMO_VOLUME)
        print(f"created volume {vol.name!r} at {vol.path}")
    return vol


def write_with_volumefs(vol: msbfs.VolumeHandle) -> None:
    with vol.fs() as fs:
        fs.mkdir("docs/notes")
        fs.write_text("hello.txt", "hello from the host, through VolumeFs\n")
        fs.write_text("docs/notes/when.txt", f"written {datetime.now(UTC).isoformat()}\n")
        fs.write("docs/bytes.bin", bytes(range(256)))
        print(f"wrote hello.txt, docs/notes/when.txt, docs/bytes.bin "
              f"(hello.txt says: {fs.read_text('hello.txt').strip()!r})")


def list_volume(vol: msbfs.VolumeHandle) -> None:
    def walk(fs: msbfs.VolumeFs, path: str, depth: int) -> None:
        for name in fs.listdir(path):
            child = f"{path}/{name}" if path != "." else name
            st = fs.stat(child, follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            print(f"  {'  ' * depth}{name}{'/' if is_dir else ''}"
                  f"{'' if is_dir else f'  ({st.st_size} bytes)'}")
            if is_dir:
                walk(fs, child, depth + 1)

    print(f"volume {vol.name!r}: {human_bytes(vol.used_bytes)} used, labels {vol.labels}")
    with vol.fs() as fs:
        walk(fs, ".", 0)
    print("volumes in this MSB_HOME:", ", ".join(v.name for v in msbfs.list_volumes()))


def main() -> int:
    try:
        vol = ensure_demo_volume()
        write_with_volumefs(vol)
        list_volume(vol)
    except MsbfsError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
