"""msbfs as users get it: a wheel built from this checkout, installed into a fresh
virtualenv outside it, launches a guest with its own ``msbfs`` command.

The wheel is built from a copy of the packaged sources (no compiled extension, caches or
egg-info from the checkout can slip in), in pip's isolated build environment; the venv
gets its dependencies from the package index. Commands run from a directory outside the
checkout, with no PYTHONPATH, so only the installed package can answer.
``MSBFS_GUEST_DIR`` names the image the ``guest_image`` fixture built: the installed
builder must find it up to date (same init, agent and builder as the checkout) and boot
it, not build another kernel image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

CHECKOUT = Path(__file__).resolve().parents[1]
#: What the wheel is built from (pyproject.toml's packages, setup.py's cffi module).
PACKAGED = ("pyproject.toml", "setup.py", "README.md", "csrc", "msbfs", "vhost")
#: The builder's data files, which must ship inside the package.
GUEST_DATA = ("init.sh", "agent.c")


@dataclass(frozen=True)
class Installed:
    venv: Path
    outside: Path  # a directory outside the checkout to run commands from

    @property
    def msbfs(self) -> str:
        return str(self.venv / "bin" / "msbfs")

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def run(self, *argv: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), cwd=self.outside, env=env or clean_env(),
                              capture_output=True, text=True, timeout=timeout)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MSBFS_GUEST_DIR", "XDG_CACHE_HOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(CHECKOUT)))
    return {**env, **extra}


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    src, dist, venv = base / "src", base / "dist", base / "venv"
    junk = shutil.ignore_patterns("__pycache__", "*.so", "_native.c", "_native.o",
                                  "*.egg-info")
    src.mkdir()
    for name in PACKAGED:
        path = CHECKOUT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=junk)
        else:
            shutil.copy2(path, src / name)
    _check(subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "-w", str(dist), str(src)], cwd=base, capture_output=True,
                          text=True, env=clean_env(), timeout=600), "pip wheel")
    [wheel] = dist.glob("msbfs-*.whl")
    _check(subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                          text=True, env=clean_env(), timeout=120), "venv")
    _check(subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                           str(wheel)], cwd=base, capture_output=True, text=True,
                          env=clean_env(), timeout=600), "pip install")
    outside = base / "elsewhere"
    outside.mkdir()
    return Installed(venv, outside)


def test_installed_package_holds_the_guest_builder(installed: Installed) -> None:
    r = installed.run(installed.python, "-c",
                      "import msbfs, msbfs.guest.build as b; print(msbfs.__file__); print(b.HERE)")
    _check(r, "import")
    package, here = (Path(line) for line in r.stdout.split())
    assert package.is_relative_to(installed.venv), package  # not the checkout's msbfs
    assert here.is_relative_to(installed.venv), here
    for name in GUEST_DATA:
        assert (here / name).read_bytes() == (CHECKOUT / "msbfs/guest" / name).read_bytes()


def test_guest_path_is_a_per_user_cache(installed: Installed, tmp_path: Path) -> None:
    r = installed.run(installed.msbfs, "guest", "path",
                      env=clean_env(XDG_CACHE_HOME=str(tmp_path / "xdg")))
    _check(r, "msbfs guest path")
    assert r.stdout == f"{tmp_path / 'xdg' / 'msbfs' / 'guest'}\n"
    r = installed.run(installed.msbfs, "guest", "path",
                      env=clean_env(HOME=str(tmp_path / "home")))
    assert r.stdout == f"{tmp_path / 'home' / '.cache' / 'msbfs' / 'guest'}\n"
    r = installed.run(installed.msbfs, "guest", "path",
                      env=clean_env(MSBFS_GUEST_DIR=str(tmp_path / "mine")))
    assert r.stdout == f"{tmp_path / 'mine'}\n"


def test_installed_msbfs_runs_a_sandbox(installed: Installed, guest_image,
                                        tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "f").write_text("from the host\n")
    env = clean_env(MSBFS_GUEST_DIR=str(guest_image.directory),
                    MSB_HOME=str(tmp_path / "msb_home"))
    r = installed.run(installed.msbfs, "guest", "path", env=env)
    assert r.stdout == f"{guest_image.directory}\n"
    # The bind mount is served by the installed package's own `msbfs serve` daemon.
    r = installed.run(installed.msbfs, "run", "--accel", "tcg", "--mount", f"/m=bind:{share}",
                      "--", "sh", "-c", "echo hi; cat /m/f", env=env)
    _check(r, "msbfs run")
    assert r.stdout == "hi\nfrom the host\n"
    assert "building" not in r.stderr  # the installed builder agrees the image is current
