"""``make demo``: the main job end to end, on the machine's MSB_HOME.

Step 1: create (or reuse) the named volume ``demo``, write files into it with
``VolumeFs``, and list what is there. Step 2: boot a sandbox (a QEMU guest, KVM if it
works here, else TCG) with the volume at ``/data`` served by ``msbfs serve``; the guest
reads the host's file and writes its own. Step 3: the guest's files through ``msbfs
mount`` on the host and through ``VolumeFs``. Each step is a function.
"""

from __future__ import annotations

import stat
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

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


GUEST_SCRIPT = """
echo "guest: $(uname -sr), /data is $(grep ' /data ' /proc/mounts | cut -d' ' -f3)"
echo "guest: hello.txt says: $(cat /data/hello.txt)"
mkdir -p /data/from-guest
echo "hello from the guest ($(uname -r))" > /data/from-guest/greeting.txt
seq 1 1000 > /data/from-guest/numbers.txt
echo "guest: wrote from-guest/greeting.txt and from-guest/numbers.txt"
"""


def run_sandbox() -> None:
    from msbfs.launcher.sandbox import Sandbox
    from msbfs.mounts import Mount

    def show(data: bytes) -> None:
        sys.stdout.write(data.decode(errors="replace"))
        sys.stdout.flush()

    print("booting a sandbox with volume 'demo' at /data ...", flush=True)
    with Sandbox({"/data": Mount.named(DEMO_VOLUME)}, accel="auto") as sb:
        assert sb.vm is not None
        print(f"guest up in {sb.vm.boot_seconds:.1f} s (accel {sb.accel_used})")
        r = sb.run(GUEST_SCRIPT, on_stdout=show)
        if r.exit_code != 0:
            raise MsbfsError(f"guest script failed ({r.exit_code}): {r.stderr.decode()}")
    print("sandbox stopped")


def show_on_host(vol: msbfs.VolumeHandle) -> None:
    from msbfs.cli import main as msbfs_main

    with tempfile.TemporaryDirectory(prefix="msbfs-demo.") as tmp:
        mnt = Path(tmp)
        if msbfs_main(["mount", DEMO_VOLUME, str(mnt)]) != 0:
            raise MsbfsError("msbfs mount failed")
        try:
            greeting = (mnt / "from-guest" / "greeting.txt").read_text().strip()
            numbers = (mnt / "from-guest" / "numbers.txt").read_text().split()
            print(f"msbfs mount {DEMO_VOLUME} {mnt}: greeting.txt says {greeting!r}, "
                  f"numbers.txt has {len(numbers)} lines")
        finally:
            msbfs_main(["umount", str(mnt)])
    with vol.fs() as fs:
        print(f"VolumeFs: greeting.txt says "
              f"{fs.read_text('from-guest/greeting.txt').strip()!r}")


def main() -> int:
    try:
        vol = ensure_demo_volume()
        write_with_volumefs(vol)
        run_sandbox()
        show_on_host(vol)
        list_volume(vol)
    except MsbfsError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
