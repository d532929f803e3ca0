"""The mount model: factories, text spec and JSON round trips, errors, and resolving
named mounts against a real store."""

from __future__ import annotations

import os
import string
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

import msbfs
from msbfs.errors import IncompatibleVolume, InvalidMountSpec, VolumeExists, VolumeNotFound
from msbfs.mounts import Mount, MountKind, MountOptions, resolve
from msbfs.store import MIB


@pytest.mark.parametrize("spec, mount", [
    ("named:data", Mount.named("data")),
    ("named:data:ro,noexec", Mount.named("data", MountOptions(readonly=True, noexec=True))),
    ("named:cache:mode=ensure-exists,quota=100",
     Mount.named_with("cache", mode="ensure-exists", quota_mib=100)),
    ("named:docker:nodev,mode=create,kind=disk,size=20480",
     Mount.named_with("docker", MountOptions(nodev=True), mode="create", kind="disk",
                      size_mib=20480)),
    ("bind:/var/data", Mount.bind("/var/data")),
    ("bind:/var/data:ro,nosuid", Mount.bind("/var/data", MountOptions(readonly=True,
                                                                      nosuid=True))),
    ("bind:/odd:path:", Mount.bind("/odd:path")),
    ("bind:relative/dir", Mount.bind("relative/dir")),
    ("tmpfs", Mount.tmpfs()),
    ("tmpfs:size=128,noexec", Mount.tmpfs(size_mib=128, noexec=True)),
    ("disk:./data.qcow2:ro,fstype=ext4", Mount.disk("./data.qcow2", fstype="ext4",
                                                     readonly=True)),
    ("disk:/img/x.raw:format=qcow2", Mount.disk("/img/x.raw", format="qcow2")),
])
def test_spec_examples(spec, mount):
    assert Mount.parse(spec) == mount
    assert Mount.parse(mount.to_spec()) == mount
    assert Mount.from_json(mount.to_json()) == mount


def test_kinds_and_defaults():
    assert Mount.bind("/x").kind is MountKind.BIND
    assert Mount.named("n").kind is MountKind.NAMED
    assert Mount.named("n") == Mount.named_with("n", mode="existing", kind="dir")
    assert Mount.tmpfs().kind is MountKind.TMPFS
    assert Mount.disk("a.img").kind is MountKind.DISK
    assert Mount.disk("a.img").format == "raw"
    assert Mount.disk("a.QCOW2").format == "qcow2"
    assert Mount.disk("a.vmdk").format == "vmdk"
    assert Mount.disk("a.vmdk").to_spec() == "disk:a.vmdk"
    assert Mount.named("n", MountOptions(readonly=True)).to_spec() == "named:n:ro"
    with pytest.raises(AttributeError):
        MountOptions().readonly = True  # type: ignore[misc]


_flags = st.builds(MountOptions, st.booleans(), st.booleans(), st.booleans(), st.booleans())
# Paths may hold anything but NUL, including the spec's own separators ``:`` ``,`` ``=``.
_paths = st.text(st.sampled_from([*string.printable.replace("\0", ""), "é", "中", "\x7f"]),
                 min_size=1, max_size=40)
_names = st.text(st.sampled_from(string.ascii_letters + string.digits + "._-"),
                 min_size=1, max_size=20).filter(lambda n: n not in (".", ".."))
_mib = st.none() | st.integers(1, 1 << 30)


@st.composite
def _named(draw: st.DrawFn) -> Mount:
    kind = draw(st.sampled_from(["dir", "disk"]))
    return Mount.named_with(
        draw(_names), draw(_flags), mode=draw(st.sampled_from(["existing", "create",
                                                                "ensure-exists"])),
        kind=kind, size_mib=draw(_mib) if kind == "disk" else None,
        quota_mib=draw(_mib) if kind == "dir" else None)


_mounts = st.one_of(
    st.builds(Mount.bind, _paths, _flags),
    _named(),
    st.builds(Mount.tmpfs, _mib, st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    st.builds(Mount.disk, _paths, st.none() | st.sampled_from(["raw", "qcow2", "vmdk"]),
              st.none() | st.sampled_from(["ext4", "xfs", "btrfs"]), st.booleans(),
              st.booleans(), st.booleans(), st.booleans()),
)


@given(_mounts)
def test_round_trips(mount):
    spec = mount.to_spec()
    assert Mount.parse(spec) == mount, spec
    assert Mount.from_json(mount.to_json()) == mount


@pytest.mark.parametrize("spec, message", [
    ("", "empty"),
    ("nfs:/x", "unknown mount kind 'nfs'"),
    ("named", "needs a volume name"),
    ("named:", "needs a volume name"),
    ("named:bad name", "invalid volume name"),
    ("named:x:rw", "unknown option 'rw'"),
    ("named:x:ro,ro", "given twice"),
    ("named:x:ro,", "stray ','"),
    ("named:x:ro=1", "takes no value"),
    ("named:x:mode=", "needs a value"),
    ("named:x:mode=sometimes", "mode must be one of"),
    ("named:x:kind=tape", "kind must be dir or disk"),
    ("named:x:size=10", "size applies to kind=disk"),
    ("named:x:kind=disk,quota=5", "quota applies to kind=dir"),
    ("named:x:quota=0", "positive"),
    ("named:x:quota=-3", "not a whole number"),
    ("tmpfs:size=abc", "not a whole number"),
    ("tmpfs:quota=4", "unknown option 'quota' for tmpfs"),
    ("bind:", "needs a host path"),
    ("bind:/a:b", "needs a trailing ':'"),
    ("bind:/a:size=4", "unknown option 'size' for bind"),
    ("disk:/x.img:format=iso", "format must be one of"),
    ("disk:/x.img:fstype=a b", "invalid filesystem type"),
])
def test_spec_errors(spec, message):
    with pytest.raises(InvalidMountSpec, match=message):
        Mount.parse(spec)


@pytest.mark.parametrize("data, message", [
    ("{", "does not parse"),
    ("[]", "must be an object"),
    ('{"kind": "nfs"}', "kind must be"),
    ('{"kind": "bind", "path": "/x", "size_mib": 3}', "unknown field"),
    ('{"kind": "bind", "path": "/x", "readonly": "yes"}', "true or false"),
    ('{"kind": "bind"}', "needs a host path"),
    ('{"kind": "named", "name": "x", "mode": "later"}', "mode must be"),
    ('{"kind": "tmpfs", "size_mib": "big"}', "positive"),
])
def test_json_errors(data, message):
    with pytest.raises(InvalidMountSpec, match=message):
        Mount.from_json(data)


def test_factory_errors():
    with pytest.raises(InvalidMountSpec):
        Mount.named("../x")
    with pytest.raises(InvalidMountSpec):
        Mount.tmpfs(size_mib=0)
    with pytest.raises(InvalidMountSpec):
        Mount.bind("")
    with pytest.raises(InvalidMountSpec):
        Mount.named_with("x", mode="create", kind="disk", quota_mib=4)


# ---- resolving against the store ------------------------------------------------------

def test_resolve_existing(msb_home):
    with pytest.raises(VolumeNotFound):
        resolve(Mount.named("data"))
    msbfs.create_volume("data", quota_mib=8)
    r = Mount.named("data", MountOptions(readonly=True)).resolve()
    assert (r.transport, r.host_path, r.volume, r.quota_mib, r.created) == (
        "virtiofs", str(msb_home / "volumes" / "data"), "data", 8, False)
    assert r.options.readonly


def test_resolve_create(msb_home):
    r = resolve(Mount.named_with("new", mode="create", quota_mib=3))
    assert r.created and r.transport == "virtiofs"
    assert msbfs.get_volume("new").quota_mib == 3
    with pytest.raises(VolumeExists):
        resolve(Mount.named_with("new", mode="create"))


def test_resolve_ensure_exists(msb_home):
    first = resolve(Mount.named_with("cache", mode="ensure-exists", quota_mib=10))
    assert first.created
    again = resolve(Mount.named_with("cache", mode="ensure-exists", quota_mib=10))
    assert not again.created and again.host_path == first.host_path
    # No quota asked: any quota will do.
    assert not resolve(Mount.named_with("cache", mode="ensure-exists")).created

    msbfs.get_volume("cache").fs().write_text("keep", "me")
    for bad, what in [
        (Mount.named_with("cache", mode="ensure-exists", quota_mib=20), "quota is 10 MiB"),
        (Mount.named_with("cache", mode="ensure-exists", kind="disk", size_mib=16),
         "kind is dir"),
    ]:
        with pytest.raises(IncompatibleVolume, match=what):
            resolve(bad)
    h = msbfs.get_volume("cache")
    assert (h.kind, h.quota_mib) == ("dir", 10)  # unchanged
    assert h.fs().read_text("keep") == "me"


def test_resolve_ensure_exists_disk(msb_home):
    with pytest.raises(InvalidMountSpec, match="needs a size"):
        resolve(Mount.named_with("d", mode="ensure-exists", kind="disk"))
    assert msbfs.list_volumes() == []
    r = resolve(Mount.named_with("d", mode="ensure-exists", kind="disk", size_mib=16))
    assert r.created and r.transport == "block"
    assert (r.disk_format, r.fstype, r.volume) == ("raw", "ext4", "d")
    assert r.image_path is not None and os.path.getsize(r.image_path) == 16 * MIB
    blkid = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", r.image_path],
                           capture_output=True, text=True, check=True)
    assert blkid.stdout.strip() == "ext4"
    with pytest.raises(IncompatibleVolume, match="capacity is 16 MiB"):
        resolve(Mount.named_with("d", mode="ensure-exists", kind="disk", size_mib=32))
    assert resolve(Mount.named("d")).image_path == r.image_path  # existing: any kind


def test_resolve_host_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "img.qcow2").write_bytes(b"\0" * 512)
    r = resolve(Mount.bind("dir", MountOptions(nodev=True)))
    assert (r.transport, r.host_path) == ("virtiofs", str(tmp_path / "dir"))
    assert r.options.nodev
    r = resolve(Mount.disk("img.qcow2", readonly=True))
    assert (r.transport, r.image_path, r.disk_format, r.fstype) == (
        "block", str(tmp_path / "img.qcow2"), "qcow2", None)
    with pytest.raises(InvalidMountSpec, match="No such file"):
        resolve(Mount.bind("missing"))
    with pytest.raises(InvalidMountSpec, match="not a directory"):
        resolve(Mount.bind("img.qcow2"))
    with pytest.raises(InvalidMountSpec, match="not a file"):
        resolve(Mount.disk("dir"))
    assert resolve(Mount.tmpfs(64)).size_mib == 64
