"""``msbfs volume`` as a real process: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess

import pytest


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return result.stdout.decode()


def fails(result: subprocess.CompletedProcess[bytes], needle: str, rc: int = 1) -> str:
    """The failure contract: non-zero exit, exactly one line on stderr naming the
    problem, no traceback, nothing on stdout."""
    err = result.stderr.decode()
    assert result.returncode == rc, (result.returncode, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert needle in err, err
    assert result.stdout == b""
    return err


def test_create_ls_inspect_rm(msbfs_cli, msbfs_main, msb_home):
    # Real processes for the main path; in-process runs for the rest (same code).
    assert ok(msbfs_cli("volume", "create", "data", "--quota", "64", "--label", "env=dev",
                        "--label", "env=prod", "--label", "team=x")) == "data\n"
    assert ok(msbfs_main("volume", "create", "disk1", "--kind", "disk", "--size", "16")) == \
        "disk1\n"

    listing = ok(msbfs_cli("volume", "ls")).splitlines()
    assert listing[0].split() == ["NAME", "KIND", "USED", "LIMIT", "CREATED", "LABELS"]
    assert listing[1].split()[:2] == ["data", "dir"] and "quota 64 MiB" in listing[1]
    assert listing[1].endswith("env=prod,team=x")
    assert listing[2].split()[:2] == ["disk1", "disk"] and "size 16.0 MiB" in listing[2]

    rows = json.loads(ok(msbfs_main("volume", "ls", "--json")))
    assert [r["name"] for r in rows] == ["data", "disk1"]
    data = json.loads(ok(msbfs_cli("volume", "inspect", "data", "--json")))
    assert data["path"] == str(msb_home / "volumes" / "data")
    assert (data["kind"], data["quota_mib"], data["labels"], data["in_use"]) == (
        "dir", 64, {"env": "prod", "team": "x"}, False)
    disk = json.loads(ok(msbfs_main("volume", "inspect", "disk1", "--json")))
    assert (disk["capacity_bytes"], disk["disk_format"], disk["disk_fstype"]) == (
        16 << 20, "raw", "ext4")
    assert disk["image_path"] == str(msb_home / "volumes" / "disk1" / "disk.img")

    human = ok(msbfs_main("volume", "inspect", "data"))
    assert "name:           data\n" in human and "labels:         env=prod,team=x\n" in human

    assert ok(msbfs_main("volume", "label", "data", "team=y", "new=1")) == \
        "env=prod,new=1,team=y\n"

    assert ok(msbfs_cli("volume", "rm", "data")) == ""
    assert [r["name"] for r in json.loads(ok(msbfs_main("volume", "ls", "--json")))] == [
        "disk1"]
    assert not (msb_home / "volumes" / "data").exists()


def test_read_write_list_dir(msbfs_cli, msbfs_main, msb_home):
    ok(msbfs_main("volume", "create", "v"))
    blob = bytes(range(256)) * 3 + b"\xff\xfe not utf-8"
    # Writing into a missing directory is an error (write does not make parents).
    fails(msbfs_main("volume", "write", "v", "bin/blob", input=blob), "No such file")
    os.mkdir(msb_home / "volumes" / "v" / "bin")
    ok(msbfs_cli("volume", "write", "v", "bin/blob", input=blob))
    ok(msbfs_main("volume", "write", "v", "hello.txt", input=b"hello\n"))
    out = msbfs_cli("volume", "read", "v", "bin/blob")
    assert out.returncode == 0 and out.stdout == blob

    j = json.loads(ok(msbfs_main("volume", "read", "v", "hello.txt", "--json")))
    assert (j["text"], j["base64"], j["size"]) == ("hello\n", "aGVsbG8K", 6)
    assert json.loads(ok(msbfs_main("volume", "read", "v", "bin/blob", "--json")))["text"] is None

    assert ok(msbfs_main("volume", "list-dir", "v")) == "bin/\nhello.txt\n"
    assert ok(msbfs_main("volume", "list-dir", "v", "bin")) == "blob\n"
    entries = json.loads(ok(msbfs_main("volume", "list-dir", "v", "--json")))
    # A directory's size is the filesystem's own figure: compare it with lstat of the host
    # directory rather than with itself.
    bin_size = os.lstat(msb_home / "volumes" / "v" / "bin").st_size
    assert entries == [
        {"name": "bin", "type": "dir", "size": bin_size, "mode": "0o755"},
        {"name": "hello.txt", "type": "file", "size": 6, "mode": "0o644"},
    ]


def test_disk_volume_through_the_cli(msbfs_cli, msbfs_main, msb_home):
    ok(msbfs_cli("volume", "create", "d", "--kind", "disk", "--size", "16"))
    ok(msbfs_cli("volume", "write", "d", "note", input=b"in ext4\n"))
    assert msbfs_cli("volume", "read", "d", "note").stdout == b"in ext4\n"
    img = msb_home / "volumes" / "d" / "disk.img"
    cat = subprocess.run(["debugfs", "-R", "cat /note", str(img)], capture_output=True,
                         check=True)
    assert cat.stdout == b"in ext4\n"
    assert ok(msbfs_main("volume", "list-dir", "d")) == "lost+found/\nnote\n"


@pytest.mark.parametrize("args, needle", [
    (("volume", "inspect", "nope"), "no volume named 'nope'"),
    (("volume", "rm", "nope"), "no volume named 'nope'"),
    (("volume", "read", "nope", "x"), "no volume named 'nope'"),
    (("volume", "list-dir", "nope"), "no volume named 'nope'"),
    (("volume", "label", "nope", "a=b"), "no volume named 'nope'"),
    (("volume", "create", "a/b"), "invalid volume name 'a/b'"),
    (("volume", "create", ".."), "invalid volume name '..'"),
    (("volume", "create", "d", "--kind", "disk"), "needs a size"),
    (("volume", "create", "d", "--size", "5"), "size applies to disk"),
])
def test_failures(msbfs_main, args, needle):
    fails(msbfs_main(*args), needle)


def test_failures_on_an_existing_volume(msbfs_cli, msbfs_main, msb_home, hold_in_process):
    ok(msbfs_main("volume", "create", "v"))
    fails(msbfs_main("volume", "create", "v"), "volume 'v' already exists")
    fails(msbfs_main("volume", "read", "v", "../../msbfs.db"), "escapes the volume root")
    fails(msbfs_main("volume", "read", "v", "/etc/passwd"), "absolute paths")
    fails(msbfs_main("volume", "write", "v", "../x", input=b"x"), "escapes the volume root")
    fails(msbfs_main("volume", "list-dir", "v", "missing"), "No such file")
    fails(msbfs_cli("volume", "read", "v", "missing"), "No such file or directory: missing")
    with hold_in_process("v"):
        fails(msbfs_cli("volume", "rm", "v"), "volume 'v' is in use")
        assert json.loads(ok(msbfs_main("volume", "inspect", "v", "--json")))["in_use"]
    ok(msbfs_main("volume", "rm", "v"))


@pytest.mark.parametrize("args, needle", [
    (("volume",), "required: SUBCOMMAND"),
    (("volume", "create"), "required: name"),
    (("volume", "create", "x", "--size", "abc"), "not a positive whole number"),
    (("volume", "create", "x", "--kind", "tape"), "invalid choice"),
    (("volume", "create", "x", "--label", "novalue"), "must be KEY=VALUE"),
    (("volume", "frobnicate"), "invalid choice"),
])
def test_usage_errors(msbfs_main, args, needle):
    fails(msbfs_main(*args), needle, rc=2)


def test_failures_for_real(msbfs_cli):
    """The in-process tables above, checked end to end in a real process."""
    fails(msbfs_cli("volume", "inspect", "nope"), "no volume named 'nope'")
    fails(msbfs_cli("volume", "create", "x", "--size", "abc"), "not a positive", rc=2)
