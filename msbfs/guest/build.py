"""Builds the guest image (kernel + initramfs) from Debian packages, without installing
them on the host: ``apt-get download`` into ``<image dir>/debs``, ``dpkg-deb -x`` into
``<image dir>/pkgs``, then an initramfs of busybox-static, our static ``msb-agent``, the
``/init`` script and the kernel modules the kernel lacks (decompressed, dependencies
first). Rebuilt only when an input changes: the package versions, ``init.sh``,
``agent.c`` and this file (the builder's version) are hashed into ``<image dir>/stamp``.
Two processes building the same directory take turns on ``<image dir>/.lock``; the
second finds the first one's image and builds nothing.

The image directory is ``msbfs.launcher.image.default_image_dir()`` (a per-user cache)
unless a caller names another. ``init.sh`` and ``agent.c`` are package data: an
installed msbfs builds the same image as a source checkout.
"""

from __future__ import annotations

import fcntl
import hashlib
import lzma
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from msbfs.errors import LaunchError
from msbfs.launcher.image import GuestImage, default_image_dir

#: Receives one line per build step (without a trailing newline).
Progress = Callable[[str], None]

HERE = Path(__file__).resolve().parent
KERNEL_META = "linux-image-6.12-amd64"
BUSYBOX = "busybox-static"
#: Modules the guest needs that Debian's 6.12 kernel ships as .ko.xz (virtio-fs, FUSE,
#: virtio-pci and the virtio console are built in). crc32c_generic is ext4's soft
#: dependency (its checksums), which modinfo's ``depends=`` does not list.
MODULES = ("virtio_blk", "crc32c_generic", "ext4")


class BuildError(LaunchError):
    """The image could not be built (a missing tool, apt, gcc); one line for the CLI."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"{cmd[0]} is not installed (building the guest image needs "
                         "apt-get, dpkg-deb, gcc with a static libc and cpio)") from None
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _apt_fields(package: str) -> dict[str, str]:
    text = _run(["apt-cache", "show", "--no-all-versions", package])
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            fields.setdefault(key, value.strip())
    if "Version" not in fields:
        raise BuildError(f"apt knows no package {package}")
    return fields


def resolve_packages() -> list[Package]:
    """The real kernel package behind the ``linux-image-6.12-amd64`` meta package, and
    busybox-static, at the versions apt would install."""
    meta = _apt_fields(KERNEL_META)
    kernel = next(
        (d.split()[0] for d in meta.get("Depends", "").split(",")
         if d.strip().startswith("linux-image-")),
        None,
    )
    if kernel is None:
        raise BuildError(f"{KERNEL_META} depends on no linux-image package")
    return [
        Package(kernel, _apt_fields(kernel)["Version"]),
        Package(BUSYBOX, _apt_fields(BUSYBOX)["Version"]),
    ]


def inputs_hash(packages: list[Package]) -> str:
    h = hashlib.sha256()
    for p in packages:
        h.update(p.spec.encode() + b"\0")
    for name in ("init.sh", "agent.c", "build.py"):
        h.update((HERE / name).read_bytes())
    h.update(repr(MODULES).encode())
    return h.hexdigest()


def _download(packages: list[Package], debs: Path, say: Progress) -> dict[str, Path]:
    debs.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for p in packages:
        # apt-get names files name_version_arch.deb with ':' in the epoch escaped.
        pattern = f"{p.name}_{p.version.replace(':', '%3a')}_*.deb"
        hits = sorted(debs.glob(pattern))
        if not hits:
            say(f"downloading {p.spec}")
            _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", p.spec],
                 cwd=debs)
            hits = sorted(debs.glob(pattern))
        if not hits:
            raise BuildError(f"apt-get download {p.spec} left no {pattern}")
        found[p.name] = hits[0]
    return found


def _module_index(kroot: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in kroot.rglob("*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        index[name] = path
    return index


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    return data


def _depends(image: bytes) -> list[str]:
    # The .modinfo section holds NUL-separated "key=value" strings, "depends=a,b" among them.
    start = image.find(b"\0depends=")
    if start < 0:
        return []
    end = image.index(b"\0", start + 1)
    value = image[start + len(b"\0depends="):end].decode()
    return [d.replace("-", "_") for d in value.split(",") if d]


def module_closure(kroot: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """The wanted modules and everything they depend on, in load order."""
    index = _module_index(kroot)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            raise BuildError(f"kernel module {name} not found under {kroot}")
        image = _module_bytes(index[name])
        for dep in _depends(image):
            visit(dep)
        order.append((name, image))

    for name in wanted:
        visit(name)
    return order


def _initramfs(root: Path, out: Path) -> None:
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listing = "\n".join([".", *names]) + "\n"
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as f:
        proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                              cwd=root, input=listing.encode(), stdout=f,
                              stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise BuildError(f"cpio failed: {proc.stderr.decode().strip()}")
    tmp.replace(out)


def _read_stamp(stamp: Path) -> tuple[str, list[Package]] | None:
    """(inputs hash, packages) recorded by the last build, or None."""
    try:
        digest, *specs = stamp.read_text().split()
    except (OSError, ValueError):
        return None
    packages = [Package(*spec.split("=", 1)) for spec in specs if "=" in spec]
    return (digest, packages) if len(packages) == 2 else None


def _apt_lists_newer_than(stamp: Path) -> bool:
    lists = Path("/var/lib/apt/lists")
    try:
        newest = max((p.stat().st_mtime for p in lists.iterdir()), default=0.0)
    except OSError:
        return True
    return newest > stamp.stat().st_mtime


@dataclass(frozen=True)
class Plan:
    """What an image directory should hold and, if it does not, why."""

    packages: list[Package]
    digest: str
    reason: str | None  # None: the image is up to date


def plan(image: GuestImage) -> Plan:
    recorded = _read_stamp(image.stamp)
    if image.exists() and recorded and not _apt_lists_newer_than(image.stamp):
        # apt's lists have not changed since the last build, so neither have the
        # versions it would pick: skip asking apt (the slow part of a no-op check).
        packages = recorded[1]
    else:
        packages = resolve_packages()
    digest = inputs_hash(packages)
    return Plan(packages, digest, _stale(image, digest))


def _stale(image: GuestImage, digest: str) -> str | None:
    if not image.exists():
        return "no image yet"
    recorded = _read_stamp(image.stamp)
    if recorded is None:
        return "no finished build's stamp"
    if recorded[0] != digest:
        return "its inputs changed"
    return None


def _confirm(image: GuestImage) -> None:
    """apt was asked (its lists changed) and picks the versions the image holds: bring the
    stamp's mtime past the lists, so the next check skips apt again (seconds per
    ``msbfs run`` otherwise). A stamp we may not touch only costs that time."""
    try:
        if _apt_lists_newer_than(image.stamp):
            os.utime(image.stamp)
    except OSError:
        pass


@contextmanager
def _lock(directory: Path, say: Progress) -> Iterator[None]:
    """Exclusive right to build into ``directory``, waited for (and said so) when another
    process holds it. flock: the kernel drops it if the holder dies mid-build."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another build of {directory}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def stderr_progress(msg: str) -> None:
    print(f"guest: {msg}", file=sys.stderr, flush=True)


def _silent(msg: str) -> None:
    pass


def build(out_dir: Path | None = None, *, progress: Progress | None = None,
          force: bool = False) -> GuestImage:
    """Build the image into ``out_dir`` (default: the per-user cache) unless it is up to
    date (``force``: build anyway). ``progress`` gets one line per step."""
    say = progress or _silent
    image = GuestImage(out_dir or default_image_dir())
    wanted = plan(image)
    if wanted.reason is None and not force:
        _confirm(image)
        return image
    with _lock(image.directory, say):
        # Another process may have built it while we waited for the lock.
        reason = _stale(image, wanted.digest)
        if reason is None and not force:
            return image
        say(f"building the guest image in {image.directory} ({reason or 'forced'})")
        _build(image, wanted, say)
    return image


def ensure_image(progress: Progress | None = stderr_progress) -> GuestImage:
    """The image ``msbfs run`` boots, built on first use and rebuilt when its inputs
    changed. An image without a stamp was made by hand (``MSBFS_GUEST_DIR``): used as
    it is. A stale image that cannot be rebuilt (no network for apt) still boots."""
    image = GuestImage(default_image_dir())
    if image.exists() and not image.stamp.exists():
        return image
    try:
        return build(image.directory, progress=progress)
    except BuildError as e:
        if not image.exists():
            raise
        (progress or _silent)(f"cannot rebuild ({e}); using the existing image")
        return image


def _build(image: GuestImage, wanted: Plan, say: Progress) -> None:
    out, packages = image.directory, wanted.packages
    # From here until the new stamp, the directory holds no finished image: a stamp that
    # names no inputs says so (an interrupted build is then rebuilt, never taken for a
    # hand-made image, which has no stamp at all).
    image.stamp.write_text("unfinished\n")
    debs = _download(packages, out / "debs", say)
    pkgs = out / "pkgs"
    if pkgs.exists():
        shutil.rmtree(pkgs)
    for name, deb in debs.items():
        say(f"extracting {deb.name}")
        (pkgs / name).mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(pkgs / name)])
    kernel_pkg = packages[0].name
    kroot = next((pkgs / kernel_pkg / "lib/modules").iterdir())
    vmlinuz = next((pkgs / kernel_pkg / "boot").glob("vmlinuz-*"))

    root = out / "root"
    if root.exists():
        shutil.rmtree(root)
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "mnt", "root",
              "lib/modules"):
        (root / d).mkdir(parents=True)
    shutil.copy2(pkgs / BUSYBOX / "bin/busybox", root / "bin/busybox")
    say("compiling msb-agent")
    _run(["gcc", "-static", "-O2", "-Wall", "-o", str(root / "sbin/msb-agent"),
          str(HERE / "agent.c")])
    shutil.copy2(HERE / "init.sh", root / "init")
    os.chmod(root / "init", 0o755)
    modules = module_closure(kroot, MODULES)
    for name, data in modules:
        (root / "lib/modules" / f"{name}.ko").write_bytes(data)
    (root / "etc/msb-modules").write_text("".join(f"{n}.ko\n" for n, _ in modules))
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    say(f"modules: {', '.join(n for n, _ in modules)}")

    _initramfs(root, image.initrd)
    # Replace, never overwrite in place: a guest may be booting from the old files.
    shutil.copy2(vmlinuz, image.kernel.with_suffix(".tmp"))
    image.kernel.with_suffix(".tmp").replace(image.kernel)
    # The stamp goes last: an interrupted build leaves an image that is stale, not one
    # that claims inputs it was not made from.
    stamp_tmp = image.stamp.with_suffix(".tmp")
    stamp_tmp.write_text(wanted.digest + "\n" + "".join(p.spec + "\n" for p in packages))
    stamp_tmp.replace(image.stamp)
    shutil.rmtree(pkgs)  # the debs stay as the download cache
    say(f"built {image.kernel} and {image.initrd}")
