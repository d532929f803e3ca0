"""Builds the guest image (kernel + initramfs) from Debian packages, without installing
them on the host: ``apt-get download`` into ``build/guest/debs``, ``dpkg-deb -x`` into
``build/guest/pkgs``, then an initramfs of busybox-static, our static ``msb-agent``, the
``/init`` script and the kernel modules the kernel lacks (decompressed, dependencies
first). Rebuilt only when an input changes: the package versions, ``init.sh``,
``agent.c`` and this file are hashed into ``build/guest/stamp``.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from msbfs.launcher.image import GuestImage, default_image_dir

HERE = Path(__file__).resolve().parent
KERNEL_META = "linux-image-6.12-amd64"
BUSYBOX = "busybox-static"
#: Modules the guest needs that Debian's 6.12 kernel ships as .ko.xz (virtio-fs, FUSE,
#: virtio-pci and the virtio console are built in). crc32c_generic is ext4's soft
#: dependency (its checksums), which modinfo's ``depends=`` does not list.
MODULES = ("virtio_blk", "crc32c_generic", "ext4")


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def spec(self) -> str:
        return f"{self.name}={self.version}"


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
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


def _download(packages: list[Package], debs: Path) -> dict[str, Path]:
    debs.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for p in packages:
        # apt-get names files name_version_arch.deb with ':' in the epoch escaped.
        pattern = f"{p.name}_{p.version.replace(':', '%3a')}_*.deb"
        hits = sorted(debs.glob(pattern))
        if not hits:
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


def build(out_dir: Path | None = None, quiet: bool = False) -> GuestImage:
    out = out_dir or default_image_dir()
    image = GuestImage(out)
    stamp = out / "stamp"
    recorded = _read_stamp(stamp)
    if image.exists() and recorded and not _apt_lists_newer_than(stamp):
        # apt's lists have not changed since the last build, so neither have the
        # versions it would pick: skip asking apt (the slow part of a no-op check).
        packages = recorded[1]
    else:
        packages = resolve_packages()
    digest = inputs_hash(packages)
    if image.exists() and recorded and recorded[0] == digest:
        return image

    def say(msg: str) -> None:
        if not quiet:
            print(f"guest: {msg}", flush=True)

    say("downloading " + ", ".join(p.spec for p in packages))
    debs = _download(packages, out / "debs")
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
    stamp.write_text(digest + "\n" + "".join(p.spec + "\n" for p in packages))
    shutil.rmtree(pkgs)  # the debs stay as the download cache
    say(f"built {image.kernel} and {image.initrd}")
    return image
