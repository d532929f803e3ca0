"""A real TCG guest over virtio-fs: basic I/O, an operation mix compared with the guest's
own tmpfs (errors included), and ownership as a non-root guest user. One guest per module
(the ``guest`` fixture), each test in its own directory."""

from __future__ import annotations

import os
import random
import stat

import pytest

from msbfs.launcher.agent import AgentError

pytestmark = pytest.mark.guest

# Each op prints "ARGS -> STATUS MESSAGE OUTPUT" (first lines) with the command's name and
# the path stripped from its message, so the same errno reads the same on both
# filesystems. Shell builtins only around the op: every fork costs under TCG.
OP_MIX = r"""
set +e
cd "$1" || exit 99
op() {
    "$@" >/tmp/op.out 2>/tmp/op.err
    s=$?
    e=; o=
    read -r e </tmp/op.err
    read -r o </tmp/op.out
    echo "$* -> $s ${e##*: } $o"
}
op mkdir d
op mkdir d
op sh -c 'echo hello > d/f'
op cat d/f
op sh -c 'echo more >> d/f'
op cat d/f
op ln d/f d/hard
op ln d/f d/hard
op ln -s f d/sym
op readlink d/sym
op cat d/sym
op ln -s /nonexistent d/dangling
op cat d/dangling
op mv d/f d/g
op cat d/f
op cat d/hard
op chmod 640 d/g
op chmod 4755 d/hard
op rmdir d
op rm d/nonexistent
op mkdir d/sub
op sh -c 'echo x > d/sub/inner'
op rmdir d/sub
op mv d/sub d/g
op mv d/g d/sub/
op ln d/sub d/hl
op truncate -s 100000 d/hard
op dd if=/dev/zero of=d/big bs=4096 count=64
op dd if=d/big of=/dev/null bs=4096 skip=10 count=5
op rm d/sub/inner
op rm d/sub/g
op rmdir d/sub
op mkdir d/sub
op mv d/sub d/moved
op mkdir -p d/a/b/c
op rmdir d/a/b
op mkfifo d/fifo
op sh -c 'cd d && ls -1'
op touch -d '2001-02-03 04:05:06' d/big
op stat -c %Y d/big
op sh -c 'exec 3>d/excl && echo ok >&3'
op sh -c 'set -o noclobber; echo no > d/excl'
op rm -r d/a
echo "== listing"
find . | sort | while read -r p; do
    if [ -d "$p" ] && [ ! -L "$p" ]; then
        stat -c '%n %F %a %h' "$p"
    else
        stat -c '%n %F %a %h %s' "$p"
    fi
done
"""


def test_mount_and_basic_io(guest) -> None:
    host = guest.host_dir
    (host / "from-host.txt").write_text("written on the host\n")
    out = guest.check("cat /mnt/share/from-host.txt && grep -c virtiofs /proc/mounts")
    assert out.splitlines() == ["written on the host", "1"]

    guest.check("echo 'written in the guest' > /mnt/share/from-guest.txt && sync")
    assert (host / "from-guest.txt").read_text() == "written in the guest\n"

    # A file larger than one request (1 MiB writes), checked byte for byte on the host.
    guest.check("dd if=/dev/urandom of=/tmp/blob bs=65536 count=40 2>/dev/null && "
                "cp /tmp/blob /mnt/share/blob && sync")
    digest = guest.check("md5sum < /tmp/blob").split()[0]
    import hashlib

    assert hashlib.md5((host / "blob").read_bytes()).hexdigest() == digest
    assert (host / "blob").stat().st_size == 40 * 65536

    r = guest.run("cat /mnt/share/missing")
    assert r.status == 1 and "No such file or directory" in r.stderr


def test_operation_mix_matches_tmpfs(guest) -> None:
    guest.check("mkdir -p /mnt/share/mix /tmp/mix")
    script = OP_MIX.replace("'", "'\"'\"'")
    on_share = guest.check(f"sh -c '{script}' mix /mnt/share/mix")
    on_tmpfs = guest.check(f"sh -c '{script}' mix /tmp/mix")
    assert "== listing" in on_share
    assert on_share.splitlines() == on_tmpfs.splitlines()
    # And the host sees what the guest did.
    host = guest.host_dir / "mix" / "d"
    assert (host / "hard").stat().st_size == 100000
    assert os.readlink(host / "sym") == "f"
    assert stat.S_ISFIFO((host / "fifo").lstat().st_mode)
    assert (host / "moved").is_dir()


_NAMES = ["a", "b", "c", "a", "b", "c", "x/a", "x/b", "x/y/a", "y/c", "a/x"]


def random_ops(seed: int, steps: int) -> str:
    """A seeded random sequence of busybox file operations (the shell cousin of
    tests/test_differential.py, which needs Python the guest does not have)."""
    rnd = random.Random(seed)
    ops = ["mkdir x", "mkdir x/y", "mkdir y"]
    for _ in range(steps):
        a, b = rnd.choice(_NAMES), rnd.choice(_NAMES)
        ops.append(rnd.choice([
            f"mkdir {a}", f"rmdir {a}", f"rm {a}", f"mv {a} {b}", f"mv -n {a} {b}",
            f"ln {a} {b}", f"ln -s {rnd.choice(_NAMES)} {b}", f"readlink {a}",
            f"sh -c 'echo {rnd.randrange(1000)} > {a}'", f"sh -c 'echo more >> {a}'",
            f"cat {a}", f"chmod {rnd.choice(['600', '755', '444', '1777'])} {a}",
            f"truncate -s {rnd.randrange(0, 70000)} {a}", f"touch {a}", f"ls -1 {a}",
            f"stat -c '%F %a %h' {a}", f"rm -r {a}",
        ]))
    return "".join(f"op {o}\n" for o in ops)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_ops_match_tmpfs(guest, seed: int) -> None:
    body = OP_MIX.split("op mkdir d\n", 1)[0] + random_ops(seed, 150) + \
        OP_MIX[OP_MIX.index('echo "== listing"'):]
    script = body.replace("'", "'\"'\"'")
    guest.check(f"mkdir -p /mnt/share/rnd{seed} /tmp/rnd{seed}")
    on_share = guest.check(f"sh -c '{script}' rnd /mnt/share/rnd{seed}")
    on_tmpfs = guest.check(f"sh -c '{script}' rnd /tmp/rnd{seed}")
    assert on_share.splitlines() == on_tmpfs.splitlines(), f"seed {seed}"


def test_ownership_as_non_root_guest_user(guest) -> None:
    host = guest.host_dir
    guest.check("mkdir /mnt/share/own && chmod 1777 /mnt/share/own && "
                "echo root > /mnt/share/own/rootfile && chmod 644 /mnt/share/own/rootfile")
    out = guest.check("id -u && touch u.txt && mkdir udir && ln -s u.txt ulink && "
                      "echo data > u.txt && stat -c '%u %g' u.txt udir",
                      uid=1000, gid=1000, cwd="/mnt/share/own")
    assert out.split() == ["1000"] * 5
    for name in ("u.txt", "udir", "ulink"):
        st = (host / "own" / name).lstat()
        assert (st.st_uid, st.st_gid) == (1000, 1000), name

    # The server checks permissions as the caller: a root-owned 0644 file is not writable,
    # and a user cannot give a file away or delete another user's file in a sticky dir.
    r = guest.run("echo x > rootfile", uid=1000, gid=1000, cwd="/mnt/share/own")
    assert r.status != 0 and "Permission denied" in r.stderr
    r = guest.run("chown 0 u.txt", uid=1000, gid=1000, cwd="/mnt/share/own")
    assert r.status != 0 and "Operation not permitted" in r.stderr
    r = guest.run("rm -f rootfile", uid=1000, gid=1000, cwd="/mnt/share/own")
    assert r.status != 0
    assert (host / "own" / "rootfile").read_text() == "root\n"
    # Root in the guest may chown (the server runs as root on the host).
    guest.check("chown 2000:3000 /mnt/share/own/u.txt")
    st = (host / "own" / "u.txt").stat()
    assert (st.st_uid, st.st_gid) == (2000, 3000)


def test_timeout_retires_the_channel(boot_guest) -> None:
    with boot_guest([]) as g:
        with pytest.raises(AgentError, match="timed out"):
            g.vm.run(["sleep", "600"], timeout=1)
        with pytest.raises(AgentError, match="did not finish"):
            g.vm.run(["true"])


def test_exit_status_and_streams(guest) -> None:
    r = guest.run("echo out; echo err >&2; exit 7")
    assert tuple(r) == (7, "out\n", "err\n")
    r = guest.run("kill -9 $$")
    assert r.status == 128 + 9


def test_large_binary_output_is_intact(guest) -> None:
    # Several MiB through the agent channel, split across many frames, byte for byte.
    (guest.host_dir / "payload.bin").write_bytes(os.urandom(3 << 20))
    r = guest.vm.run(["cat", "/mnt/share/payload.bin"])
    assert r.exit_code == 0
    assert r.stdout == (guest.host_dir / "payload.bin").read_bytes()
