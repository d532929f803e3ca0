"""``msbfs serve`` confines itself like virtiofsd: real daemons on real sockets, driven by
the in-tree frontend, inspected from the host through /proc/<pid>/ (status, ns, root,
limits). The serving process of the default ``namespace`` sandbox is the supervisor's
child (pid 1 of its own pid namespace)."""

from __future__ import annotations

import errno
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from msbfs._native import lib

from msbfs import confine
from msbfs.fuse import abi
from msbfs.fuse.kernel import parse_entry, parse_open, u32
from tests.plugins.virtiofs import run_serve
from tests.test_virtiofs_serve import ROOT, connect, wait_exit

#: What serving needs (virtiofsd's set + DAC_READ_SEARCH for open_by_handle_at), written
#: out here rather than imported, so the test holds the daemon to the rule.
SERVING_CAPS = {"chown", "dac_override", "dac_read_search", "fowner", "fsetid", "setgid",
                "setuid", "mknod", "setfcap"}
DEADLINE = 30.0


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def caps(pid: int, field: str) -> set[str]:
    return set(confine.cap_names(int(status(pid)[field], 16)))


def confined_pid(proc: subprocess.Popen, sandbox: str = "namespace") -> int:
    """The serving process, once its seccomp filter is on (the last confinement step):
    polled, with a deadline only as a failure bound."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        pid: int | None = proc.pid
        if sandbox == "namespace":
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            pid = int(kids[0]) if kids else None
        try:
            if pid is not None and status(pid)["Seccomp"] == "2":
                return pid
        except (FileNotFoundError, ProcessLookupError):
            pass  # a short-lived child (trio's import runs ldconfig) that just exited
        time.sleep(0.01)  # polling a state, not waiting a fixed time
    raise TimeoutError("the daemon never installed its seccomp filter")


def ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def share(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "in").write_bytes(b"host data")
    return src


async def exercise(sock: str, src: Path) -> None:
    """LOOKUP, READ, CREATE+WRITE, xattrs through /proc/self/fd: serving still works."""
    c = await connect(sock)
    r = c.r
    e = parse_entry(await c.ok(r.lookup(ROOT, b"in")))
    fh, _ = parse_open(await c.ok(r.open(e.nodeid, os.O_RDONLY)))
    assert await c.ok(r.read(e.nodeid, fh, 0, 100)) == b"host data"
    await c.ok(r.release(e.nodeid, fh))
    p = await c.ok(r.create(ROOT, b"new"))
    n = parse_entry(p[:abi.FUSE_ENTRY_OUT_SIZE])
    nfh, _ = parse_open(p[abi.FUSE_ENTRY_OUT_SIZE:])
    assert u32(await c.ok(r.write(n.nodeid, nfh, 0, b"guest data"))) == 10
    await c.ok(r.release(n.nodeid, nfh))
    await c.ok(r.setxattr(e.nodeid, b"user.k", b"v"))
    # Without CAP_SYS_ADMIN the host kernel itself refuses trusted.* xattrs.
    assert (await c.call(r.setxattr(e.nodeid, b"trusted.k", b"v"))).error != 0
    await c.fe.close()
    assert (src / "new").read_bytes() == b"guest data"
    assert os.getxattr(src / "in", "user.k") == b"v"
    assert "trusted.k" not in os.listxattr(src / "in")


async def test_defaults_confine_the_serving_process(tmp_path: Path) -> None:
    src = share(tmp_path)
    sock = str(tmp_path / "s")
    # started with groups of its own, as root on a host usually is
    with run_serve([f"--shared-dir={src}"], sock, extra_groups=[0, 4]) as proc:
        pid = confined_pid(proc)
        st = status(pid)
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
        assert caps(pid, "CapEff") == caps(pid, "CapPrm") == SERVING_CAPS
        assert caps(pid, "CapBnd") == SERVING_CAPS
        assert st["CapInh"] == st["CapAmb"] == "0000000000000000"
        assert st["Groups"].split() == []  # root's own groups dropped (serve.py)
        for kind in ("pid", "net", "mnt"):
            assert ns(pid, kind) != ns("self", kind), kind
        assert st["NSpid"].split()[-1] == "1"  # pid 1 of its own namespace
        # the supervisor stays in the host's mount and network namespaces, with no
        # capability but the one its socket cleanup needs, and no way to regain any
        assert ns(proc.pid, "mnt") == ns("self", "mnt")
        sup = status(proc.pid)
        assert sup["NoNewPrivs"] == "1"
        assert caps(proc.pid, "CapEff") == caps(proc.pid, "CapBnd") == {"dac_override"}
        # ... exec'd as its own small program (msbfs/supervisor.py), holding none of the
        # daemon's descriptors: the listening socket, the tree, the serving lock
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[3].endswith(
            b"msbfs/supervisor.py")
        held = {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")}
        assert not any(h.startswith("socket:") or h.startswith(str(src)) for h in held), held
        await exercise(sock, src)
        assert await wait_exit(proc) == 0
    assert not os.path.exists(sock)  # removed by the supervisor, which can still see it


def test_the_sandbox_shows_nothing_of_the_host(tmp_path: Path) -> None:
    src = share(tmp_path)
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={src}"], sock) as proc:
        pid = confined_pid(proc)
        root = Path(f"/proc/{pid}/root")
        assert sorted(p.name for p in root.iterdir()) == ["proc", "shared"]
        assert (root / "shared" / "in").read_bytes() == b"host data"
        # its /proc is its own pid namespace's: the daemon alone, no host process
        assert [p.name for p in (root / "proc").iterdir() if p.name.isdigit()] == ["1"]
        assert os.getpid() > 1 and str(os.getpid()) not in os.listdir(root / "proc")
        # a network namespace with nothing but a loopback
        devs = [line.split(":")[0].strip()
                for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]]
        assert devs == ["lo"]
        # the new root is read-only: nothing can be planted beside the share
        with pytest.raises(OSError) as e:
            (root / "planted").write_bytes(b"x")
        assert e.value.errno == errno.EROFS


async def test_supervisor_forwards_sigterm_and_its_death_takes_the_child(tmp_path: Path) -> None:
    src = share(tmp_path)
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={src}"], sock) as proc:
        confined_pid(proc)
        c = await connect(sock)  # INIT answered: the child serves, its SIGTERM is trio's
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc) == 0
        await c.fe.close()
    assert not os.path.exists(sock)
    with run_serve([f"--shared-dir={src}"], sock) as proc:
        pid = confined_pid(proc)
        proc.kill()  # no chance to forward anything: PR_SET_PDEATHSIG must do it
        end = time.monotonic() + DEADLINE
        while os.path.exists(f"/proc/{pid}") and status(pid)["State"][0] != "Z":
            assert time.monotonic() < end, "the serving child outlived its supervisor"
            time.sleep(0.01)


async def test_modcaps_and_rlimit_nofile(tmp_path: Path) -> None:
    src = share(tmp_path)
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={src}", "--modcaps=-chown:+sys_ptrace", "--rlimit-nofile=512"],
                   sock) as proc:
        pid = confined_pid(proc)
        assert caps(pid, "CapEff") == SERVING_CAPS - {"chown"} | {"sys_ptrace"}
        assert caps(pid, "CapBnd") == SERVING_CAPS - {"chown"} | {"sys_ptrace"}
        limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
        assert [line.split()[3:5] for line in limits if line.startswith("Max open files")] \
            == [["512", "512"]]
        c = await connect(sock)
        e = parse_entry(await c.ok(c.r.lookup(ROOT, b"in")))
        await c.ok(c.r.getattr(e.nodeid))
        await c.fe.close()
        assert await wait_exit(proc) == 0


@pytest.mark.parametrize("sandbox", ["none", "chroot"])
async def test_other_sandboxes_keep_the_other_layers(tmp_path: Path, sandbox: str) -> None:
    src = share(tmp_path)
    sock = str(tmp_path / "s")
    with run_serve([f"--shared-dir={src}", f"--sandbox={sandbox}"], sock) as proc:
        pid = confined_pid(proc, sandbox)
        assert pid == proc.pid  # no supervisor: it serves itself
        assert status(pid)["NoNewPrivs"] == "1" and caps(pid, "CapEff") == SERVING_CAPS
        assert ns(pid, "pid") == ns("self", "pid")
        assert (ns(pid, "mnt") == ns("self", "mnt")) == (sandbox == "none")
        await exercise(sock, src)
        assert await wait_exit(proc) == 0


def test_seccomp_kills_a_syscall_outside_the_allowlist() -> None:
    """The daemon's filter (same list, same code path) in a forked child: allowed
    syscalls work, one outside the list (unshare, which only the sandbox set-up makes,
    before the filter) kills the process with SIGSYS; ``log`` lets it through."""
    for action, want_signal in (("kill", signal.SIGSYS), ("log", None)):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(rfd)
                confine.set_no_new_privs()
                confine.install_seccomp(action)
                fd = os.open("/proc/self/status", os.O_RDONLY)
                seccomp = [line for line in os.read(fd, 8192).split(b"\n")
                           if line.startswith(b"Seccomp:")]
                os.write(wfd, seccomp[0])
                lib.msb_unshare(0)
                os._exit(0)
            finally:
                os._exit(99)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            said = r.read()
        _, st = os.waitpid(pid, 0)
        assert said.split() == [b"Seccomp:", b"2"], (action, said)
        if want_signal is None:
            assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, (action, st)
        else:
            assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == want_signal, (action, st)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="names checked on x86_64")
def test_every_allowlisted_name_is_a_syscall() -> None:
    """A misspelt name would be skipped silently (as names another architecture lacks
    are) and that syscall would then kill the daemon."""
    assert [n for n in confine.SYSCALLS if lib.msb_seccomp_resolve(n.encode()) < 0] == []
    assert len(set(confine.SYSCALLS)) == len(confine.SYSCALLS)


@pytest.mark.parametrize("bad, msg", [
    (["--modcaps=+sys_nosuch"], "unknown capability 'sys_nosuch'"),
    (["--modcaps=chown"], "not +CAP or -CAP"),
    (["-o", "modcaps=-bogus"], "unknown capability 'bogus'"),
    (["--seccomp=maybe"], "unknown --seccomp action 'maybe'"),
    (["--rlimit-nofile=lots"], "--rlimit-nofile must be a number"),
])
def test_bad_confinement_options_fail_with_one_line(tmp_path: Path, bad: list[str], msg: str) -> None:
    r = subprocess.run([sys.executable, "-m", "msbfs", "serve", f"--shared-dir={tmp_path}",
                        f"--socket-path={tmp_path}/s", *bad],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and msg in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(tmp_path / "s")
