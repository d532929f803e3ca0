"""A scratch copy of the repository to mutate: never the checkout itself, where other
people work.

The copy is ``git archive`` of one revision (so uncommitted work in the checkout never
leaks into a verdict), plus what the revision does not track: the built extensions
(``msbfs/_native*.so`` and ``vhost/_native*.so``, rebuilt from the copy's csrc/ when a
mutant edits C: both compile csrc/virtq.c) and the
guest image (kernel, initramfs and its stamp, so the guest fixture finds it current and
never rebuilds into the checkout's ``build/``).

The venv has msbfs installed *editable* from the checkout, but its finder comes last on
``sys.meta_path``: a copy that is first on ``sys.path`` wins. So tests run with the copy
as cwd and ``PYTHONPATH``; the daemons the tests start (``sys.executable -m msbfs``)
inherit both. ``check_imports`` verifies it, and the catalogue's sanity mutants prove it
by making the tests fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.mutants.catalogue import Mutant

GUEST_FILES = ("vmlinuz", "initramfs.cpio", "stamp")
#: The cffi extensions: (package, builder script under csrc/).
EXTENSIONS = (("msbfs", "build_native.py"), ("vhost", "build_vhost.py"))


class ScratchError(Exception):
    pass


class Scratch:
    """``root/src``: the copy; ``root/t``: pytest's basetemp (short: socket paths)."""

    def __init__(self, repo: Path, rev: str = "HEAD", python: str = sys.executable) -> None:
        self.repo = repo.resolve()
        self.python = python
        self.root = Path(tempfile.mkdtemp(prefix="mut.", dir="/tmp"))
        self.src = self.root / "src"
        self.src.mkdir()
        archive = subprocess.run(["git", "-C", str(self.repo), "archive", rev],
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            self.close()
            raise ScratchError(f"git archive {rev}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(self.src)], input=archive.stdout, check=True)
        self.rev = subprocess.run(["git", "-C", str(self.repo), "rev-parse", rev],
                                  capture_output=True, text=True, check=True).stdout.strip()
        self._copy_native()
        self._copy_guest_image()

    # ---- set-up --------------------------------------------------------------------------
    def _copy_native(self) -> None:
        built = {pkg: glob.glob(str(self.repo / pkg / "_native*.so")) for pkg, _ in EXTENSIONS}
        if not all(built.values()):
            self.build_native()
            return
        for pkg, sos in built.items():
            for so in sos:
                shutil.copy2(so, self.src / pkg)

    def build_native(self) -> None:
        """Rebuild both extensions from the copy's csrc/ (a few seconds).

        Each builder runs in an empty directory: cffi compiles through setuptools, which
        reads a pyproject.toml in its working directory, and the copy's may need a newer
        setuptools than the venv has. The builders name their sources relative to it."""
        out = self.root / "build-ext"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        for pkg, builder in EXTENSIONS:
            for old in glob.glob(str(self.src / pkg / "_native*")):
                os.unlink(old)
            r = subprocess.run([self.python, str(self.src / "csrc" / builder)], cwd=out,
                               capture_output=True, text=True, check=False)
            sos = glob.glob(str(out / pkg / "_native*.so"))
            if r.returncode != 0 or not sos:
                raise ScratchError(f"building {pkg}._native failed:\n"
                                   f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
            for so in sos:
                shutil.copy2(so, self.src / pkg)

    def _copy_guest_image(self) -> None:
        image = self.repo / "build" / "guest"
        if not all((image / f).exists() for f in GUEST_FILES):
            return  # the guest front will say so (its fixture builds or skips)
        out = self.src / "build" / "guest"
        out.mkdir(parents=True)
        for f in GUEST_FILES:
            shutil.copy2(image / f, out / f)  # copy2: the stamp's mtime is its freshness

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("MSBFS_GUEST_DIR", None)
        env["PYTHONPATH"] = str(self.src)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def check_imports(self) -> None:
        """The packages a test and a daemon import are the copy's."""
        code = ("import msbfs, vhost, msbfs._native as n, vhost._native as v; "
                "print(msbfs.__file__, vhost.__file__, n.__file__, v.__file__)")
        r = subprocess.run([self.python, "-c", code], cwd=self.src, env=self.env,
                           capture_output=True, text=True, check=False)
        paths = r.stdout.split()
        if r.returncode != 0 or len(paths) != 4 or not all(
                p.startswith(str(self.src) + "/") for p in paths):
            raise ScratchError(f"the copy is not what Python imports: {r.stdout}{r.stderr}")

    # ---- mutation ------------------------------------------------------------------------
    def check(self, mutant: Mutant) -> None:
        """Raise CatalogueError unless every edit of ``mutant`` applies to the copy."""
        texts: dict[str, str] = {}
        for e in mutant.edits:
            texts[e.path] = e.apply(texts.get(e.path) or (self.src / e.path).read_text())

    def apply(self, mutant: Mutant) -> dict[str, str]:
        """Apply the mutant; returns the original texts for ``revert``."""
        originals: dict[str, str] = {}
        texts: dict[str, str] = {}
        for e in mutant.edits:
            if e.path not in texts:
                originals[e.path] = texts[e.path] = (self.src / e.path).read_text()
            texts[e.path] = e.apply(texts[e.path])
        for path, text in texts.items():
            (self.src / path).write_text(text)
        if mutant.native:
            self.build_native()
        return originals

    def revert(self, mutant: Mutant, originals: dict[str, str]) -> None:
        for path, text in originals.items():
            (self.src / path).write_text(text)
        if mutant.native:
            self.build_native()

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
