"""The mount model: what a sandbox attaches at a guest path, and how to say it.

Four kinds, made with the factories (never by hand): ``Mount.bind(host_path)``,
``Mount.named(name)`` / ``Mount.named_with(name, mode=..., kind=...)``,
``Mount.tmpfs(size_mib=...)`` and ``Mount.disk(host_path, format=..., fstype=...)``.

Text spec (the CLI's ``--mount GUEST=SPEC`` takes SPEC; the launcher splits off GUEST at
the first ``=``)::

    named:NAME[:OPTS]      OPTS from ro,noexec,nosuid,nodev,mode=M,kind=K,size=MIB,quota=MIB
    bind:HOSTPATH[:OPTS]   OPTS from ro,noexec,nosuid,nodev
    tmpfs[:OPTS]           OPTS from size=MIB,ro,noexec,nosuid,nodev
    disk:PATH[:OPTS]       OPTS from format=raw|qcow2|vmdk,fstype=T,ro,noexec,nosuid,nodev

OPTS is everything after the LAST ``:``; a host path that contains ``:`` is written with
a trailing ``:`` (empty OPTS), which ``to_spec`` does for you. ``parse(m.to_spec()) == m``
and ``from_json(m.to_json()) == m`` for every mount.

``resolve(mount)`` checks a mount against the host and the volume store (creating a
named volume when its mode says so) and returns what a launcher needs to attach it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from msbfs.errors import (
    IncompatibleVolume,
    InvalidArgument,
    InvalidMountSpec,
    InvalidName,
    VolumeExists,
    VolumeNotFound,
)

if TYPE_CHECKING:
    from msbfs import volumes
    from msbfs.tree.policy import Policy


class MountKind(enum.Enum):
    BIND = "bind"
    NAMED = "named"
    TMPFS = "tmpfs"
    DISK = "disk"


NAMED_MODES = ("existing", "create", "ensure-exists")
VOLUME_KINDS = ("dir", "disk")
DISK_FORMATS = ("raw", "qcow2", "vmdk")
_FSTYPE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_FLAG_NAMES = ("ro", "noexec", "nosuid", "nodev")
#: Every spelling of a policy flag and the field it sets: the one reader of
#: ``ro,noexec,nosuid,nodev`` for mount specs, ``msbfs mount -o``, ``msbfs serve -o``
#: and the launcher (``MountOptions.with_flag``).
FLAG_WORDS: dict[str, tuple[str, bool]] = {
    "ro": ("readonly", True), "readonly": ("readonly", True), "rw": ("readonly", False),
    "noexec": ("noexec", True), "exec": ("noexec", False),
    "nosuid": ("nosuid", True), "suid": ("nosuid", False),
    "nodev": ("nodev", True), "dev": ("nodev", False),
}


@dataclass(frozen=True)
class MountOptions:
    """The policy flags of a mount, whoever serves it (the server enforces them: a guest
    or host kernel's own mount flags are never trusted). One model for the Python API,
    mount specs, ``msbfs mount -o`` and ``msbfs serve``; ``policy()`` is the tree's
    ``Policy`` of them."""

    readonly: bool = False
    noexec: bool = False
    nosuid: bool = False
    nodev: bool = False

    def flags(self) -> list[str]:
        """The set flags by their spec names, in canonical order."""
        on = (self.readonly, self.noexec, self.nosuid, self.nodev)
        return [n for n, v in zip(_FLAG_NAMES, on, strict=True) if v]

    def with_flag(self, word: str) -> MountOptions | None:
        """These options with one flag word applied (``ro``, ``exec``, ...), or None
        when ``word`` is not a policy flag."""
        hit = FLAG_WORDS.get(word)
        if hit is None:
            return None
        return dataclasses.replace(self, **{hit[0]: hit[1]})

    @classmethod
    def parse(cls, text: str) -> MountOptions:
        """A comma list of flag words only."""
        opts = cls()
        for word in filter(None, (w.strip() for w in text.split(","))):
            nxt = opts.with_flag(word)
            if nxt is None:
                raise InvalidMountSpec(f"unknown flag {word!r} (use {', '.join(_FLAG_NAMES)})")
            opts = nxt
        return opts

    def policy(self, **limits: Any) -> Policy:
        """The tree's Policy of these flags, with ``limits`` (quota_bytes,
        quota_inodes, squash_uid, squash_gid) as given."""
        from msbfs.tree.policy import Policy

        return Policy(readonly=self.readonly, noexec=self.noexec, nosuid=self.nosuid,
                      nodev=self.nodev, **limits)


def default_disk_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".qcow2": "qcow2", ".vmdk": "vmdk"}.get(ext, "raw")


def _mib(what: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidMountSpec(f"{what} must be a positive whole number of MiB, not {value!r}")
    return value


def _fspath(path: object) -> object:
    return os.fspath(path) if isinstance(path, os.PathLike) else path


def _host_path(what: str, path: object) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidMountSpec(f"{what} needs a host path, got {path!r}")
    if "\0" in path:
        raise InvalidMountSpec(f"{what} path contains a NUL byte")
    return path


@dataclass(frozen=True)
class Mount:
    """One mount. ``source`` is the host path (bind, disk) or volume name (named)."""

    kind: MountKind
    source: str | None = None
    options: MountOptions = field(default_factory=MountOptions)
    #: named only: "existing" | "create" | "ensure-exists"
    mode: str = "existing"
    #: named only: the kind of volume to create / expect
    volume_kind: str = "dir"
    #: tmpfs: size limit; named disk: capacity when creating
    size_mib: int | None = None
    #: named dir: quota when creating
    quota_mib: int | None = None
    #: disk only
    format: str | None = None
    fstype: str | None = None

    # ---- factories ------------------------------------------------------------------
    @classmethod
    def bind(cls, host_path: str | os.PathLike[str],
             options: MountOptions | None = None) -> Mount:
        return cls(MountKind.BIND, _host_path("bind", _fspath(host_path)),
                   options or MountOptions())

    @classmethod
    def named(cls, name: str, options: MountOptions | None = None) -> Mount:
        return cls.named_with(name, options)

    @classmethod
    def named_with(cls, name: str, options: MountOptions | None = None, *,
                   mode: str = "existing", kind: str = "dir", size_mib: int | None = None,
                   quota_mib: int | None = None) -> Mount:
        from msbfs import volumes  # the volume store (sqlite3...): only when named

        try:
            volumes.validate_name(name)
        except InvalidName as e:
            raise InvalidMountSpec(str(e)) from None
        if mode not in NAMED_MODES:
            raise InvalidMountSpec(f"mode must be one of {', '.join(NAMED_MODES)}, not {mode!r}")
        if kind not in VOLUME_KINDS:
            raise InvalidMountSpec(f"kind must be dir or disk, not {kind!r}")
        size_mib = _mib("size", size_mib)
        quota_mib = _mib("quota", quota_mib)
        if kind == "dir" and size_mib is not None:
            raise InvalidMountSpec("size applies to kind=disk; use quota for a dir volume")
        if kind == "disk" and quota_mib is not None:
            raise InvalidMountSpec("quota applies to kind=dir; a disk volume's limit is its size")
        return cls(MountKind.NAMED, name, options or MountOptions(), mode=mode,
                   volume_kind=kind, size_mib=size_mib, quota_mib=quota_mib)

    @classmethod
    def tmpfs(cls, size_mib: int | None = None, readonly: bool = False, noexec: bool = False,
              nosuid: bool = False, nodev: bool = False) -> Mount:
        return cls(MountKind.TMPFS, None, MountOptions(readonly, noexec, nosuid, nodev),
                   size_mib=_mib("tmpfs size", size_mib))

    @classmethod
    def disk(cls, host_path: str | os.PathLike[str], format: str | None = None,
             fstype: str | None = None, readonly: bool = False, noexec: bool = False,
             nosuid: bool = False, nodev: bool = False) -> Mount:
        path = _host_path("disk", _fspath(host_path))
        fmt = format or default_disk_format(path)
        if fmt not in DISK_FORMATS:
            raise InvalidMountSpec(f"disk format must be one of {', '.join(DISK_FORMATS)}, "
                                   f"not {fmt!r}")
        if fstype is not None and not (isinstance(fstype, str) and _FSTYPE.fullmatch(fstype)):
            raise InvalidMountSpec(f"invalid filesystem type {fstype!r}")
        return cls(MountKind.DISK, path, MountOptions(readonly, noexec, nosuid, nodev),
                   format=fmt, fstype=fstype)

    # ---- text spec ------------------------------------------------------------------
    def to_spec(self) -> str:
        opts = self.options.flags()
        if self.kind is MountKind.NAMED:
            if self.mode != "existing":
                opts.append(f"mode={self.mode}")
            if self.volume_kind != "dir":
                opts.append(f"kind={self.volume_kind}")
        if self.size_mib is not None:
            opts.append(f"size={self.size_mib}")
        if self.quota_mib is not None:
            opts.append(f"quota={self.quota_mib}")
        if self.kind is MountKind.DISK:
            assert self.source is not None
            if self.format != default_disk_format(self.source):
                opts.append(f"format={self.format}")
            if self.fstype is not None:
                opts.append(f"fstype={self.fstype}")
        tail = ",".join(opts)
        if self.kind is MountKind.TMPFS:
            return f"tmpfs:{tail}" if tail else "tmpfs"
        assert self.source is not None
        head = f"{self.kind.value}:{self.source}"
        return f"{head}:{tail}" if tail or ":" in self.source else head

    @classmethod
    def parse(cls, spec: str) -> Mount:
        """Parse a text spec; ``InvalidMountSpec`` says what is wrong."""
        if not isinstance(spec, str) or not spec:
            raise InvalidMountSpec("empty mount spec")
        kind, sep, rest = spec.partition(":")
        if kind == "tmpfs":
            source, opts_text = None, rest
        elif kind in ("named", "bind", "disk"):
            if not sep or not rest:
                what = "volume name" if kind == "named" else "host path"
                raise InvalidMountSpec(f"{spec!r}: {kind} needs a {what}: {kind}:"
                                       f"{'NAME' if kind == 'named' else 'PATH'}[:OPTIONS]")
            source, _, opts_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
            if not source:
                raise InvalidMountSpec(f"{spec!r}: empty {kind} source")
        else:
            raise InvalidMountSpec(f"{spec!r}: unknown mount kind {kind!r} "
                                   f"(use named:, bind:, tmpfs or disk:)")
        try:
            return cls._from_options(kind, source, _split_opts(spec, opts_text))
        except InvalidMountSpec as e:
            raise InvalidMountSpec(f"{spec!r}: {e}") from None

    @classmethod
    def _from_options(cls, kind: str, source: str | None, opts: dict[str, str | None]) -> Mount:
        allowed = {
            "named": ("mode", "kind", "size", "quota"),
            "bind": (),
            "tmpfs": ("size",),
            "disk": ("format", "fstype"),
        }[kind]
        for key, value in opts.items():
            if key in _FLAG_NAMES:  # specs name set flags only (no ro/rw pairs)
                if value is not None:
                    raise InvalidMountSpec(f"option {key} takes no value")
            elif key not in allowed:
                valid = ", ".join((*_FLAG_NAMES, *(f"{a}=" for a in allowed)))
                hint = " (a path containing ':' needs a trailing ':')" if kind in (
                    "bind", "disk") else ""
                raise InvalidMountSpec(f"unknown option {key!r} for {kind}; valid: "
                                       f"{valid}{hint}")
            elif value is None or value == "":
                raise InvalidMountSpec(f"option {key} needs a value: {key}=...")
        flags = MountOptions()
        for key in opts:
            flags = flags.with_flag(key) or flags

        def number(key: str) -> int | None:
            v = opts.get(key)
            if v is None:
                return None
            if not v.isdigit():
                raise InvalidMountSpec(f"{key}={v}: not a whole number of MiB")
            return int(v)

        assert kind == "tmpfs" or source is not None
        if kind == "bind":
            return cls.bind(str(source), flags)
        if kind == "named":
            return cls.named_with(str(source), flags, mode=opts.get("mode") or "existing",
                                  kind=opts.get("kind") or "dir", size_mib=number("size"),
                                  quota_mib=number("quota"))
        if kind == "tmpfs":
            return cls.tmpfs(number("size"), flags.readonly, flags.noexec, flags.nosuid,
                             flags.nodev)
        return cls.disk(str(source), opts.get("format"), opts.get("fstype"), flags.readonly,
                        flags.noexec, flags.nosuid, flags.nodev)

    # ---- JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind.value}
        if self.kind is MountKind.NAMED:
            d.update(name=self.source, mode=self.mode, volume_kind=self.volume_kind)
        elif self.source is not None:
            d["path"] = self.source
        d.update(readonly=self.options.readonly, noexec=self.options.noexec,
                 nosuid=self.options.nosuid, nodev=self.options.nodev)
        for key in ("size_mib", "quota_mib", "format", "fstype"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, data: str | bytes | dict[str, Any]) -> Mount:
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as e:
                raise InvalidMountSpec(f"mount JSON does not parse: {e}") from None
        if not isinstance(data, dict):
            raise InvalidMountSpec("mount JSON must be an object")
        d = dict(data)
        kind = d.pop("kind", None)
        fields = {
            "bind": {"path"},
            "named": {"name", "mode", "volume_kind", "size_mib", "quota_mib"},
            "tmpfs": {"size_mib"},
            "disk": {"path", "format", "fstype"},
        }
        if kind not in fields:
            raise InvalidMountSpec(f"mount JSON: kind must be bind, named, tmpfs or disk, "
                                   f"not {kind!r}")
        flags = {k: d.pop(k, False) for k in ("readonly", "noexec", "nosuid", "nodev")}
        for k, v in flags.items():
            if not isinstance(v, bool):
                raise InvalidMountSpec(f"mount JSON: {k} must be true or false, not {v!r}")
        unknown = set(d) - fields[kind]
        if unknown:
            raise InvalidMountSpec(f"mount JSON: unknown field(s) for {kind}: "
                                   f"{', '.join(sorted(unknown))}")
        opts = MountOptions(**flags)
        if kind == "bind":
            return cls.bind(d.get("path"), opts)  # type: ignore[arg-type]
        if kind == "named":
            return cls.named_with(d.get("name"), opts,  # type: ignore[arg-type]
                                  mode=d.get("mode", "existing"),
                                  kind=d.get("volume_kind", "dir"),
                                  size_mib=d.get("size_mib"), quota_mib=d.get("quota_mib"))
        if kind == "tmpfs":
            return cls.tmpfs(d.get("size_mib"), **flags)
        return cls.disk(d.get("path"), d.get("format"), d.get("fstype"),  # type: ignore[arg-type]
                        **flags)

    def resolve(self) -> ResolvedMount:
        return resolve(self)


def _split_opts(spec: str, text: str) -> dict[str, str | None]:
    opts: dict[str, str | None] = {}
    if not text:
        return opts
    for item in text.split(","):
        if not item:
            raise InvalidMountSpec(f"{spec!r}: empty option (stray ',')")
        key, eq, value = item.partition("=")
        if key in opts:
            raise InvalidMountSpec(f"{spec!r}: option {key!r} given twice")
        opts[key] = value if eq else None
    return opts


@dataclass(frozen=True)
class ResolvedMount:
    """What a launcher needs to attach a mount.

    ``transport`` is ``"virtiofs"`` (serve ``host_path``, a directory, with ``options``
    and ``quota_mib``), ``"block"`` (attach ``image_path`` as virtio-blk in
    ``disk_format``; the guest mounts it as ``fstype``, None = detect) or ``"tmpfs"``
    (the guest mounts a tmpfs of ``size_mib``). ``volume`` is the named volume's name:
    whoever serves or attaches it takes ``msbfs.volumes.hold_volume(volume)`` first.
    """

    mount: Mount
    transport: str
    options: MountOptions
    host_path: str | None = None
    image_path: str | None = None
    disk_format: str | None = None
    fstype: str | None = None
    size_mib: int | None = None
    quota_mib: int | None = None
    volume: str | None = None
    created: bool = False


def _named_volume(m: Mount) -> tuple[volumes.VolumeHandle, bool]:
    from msbfs import volumes  # the volume store (sqlite3...): only when named

    assert m.source is not None
    name = m.source

    def create() -> volumes.VolumeHandle:
        volumes.create_volume(name, kind=m.volume_kind,  # type: ignore[arg-type]
                              size_mib=m.size_mib, quota_mib=m.quota_mib)
        return volumes.get_volume(name)

    if m.mode == "existing":
        return volumes.get_volume(name), False
    if m.mode == "create":
        return create(), True
    try:
        vol = volumes.get_volume(name)
    except VolumeNotFound:
        try:
            return create(), True
        except VolumeExists:  # another process won the race: check theirs like any other
            vol = volumes.get_volume(name)
    # ensure-exists never changes an existing volume; it only says how it differs. Only
    # what the mount asks for is compared (no quota asked means any quota will do).
    diffs = []
    if vol.kind != m.volume_kind:
        diffs.append(f"kind is {vol.kind}, mount wants {m.volume_kind}")
    if m.quota_mib is not None and vol.quota_mib != m.quota_mib:
        diffs.append(f"quota is {vol.quota_mib} MiB, mount wants {m.quota_mib} MiB")
    if m.size_mib is not None and vol.capacity_bytes != m.size_mib * volumes.MIB:
        have = None if vol.capacity_bytes is None else vol.capacity_bytes // volumes.MIB
        diffs.append(f"capacity is {have} MiB, mount wants {m.size_mib} MiB")
    if diffs:
        raise IncompatibleVolume(f"volume {name!r} exists but differs: {'; '.join(diffs)}")
    return vol, False


def resolve(mount: Mount) -> ResolvedMount:
    """Check ``mount`` against the host and the store; create its named volume when the
    mode says so. Errors: ``VolumeNotFound``/``VolumeExists``/``IncompatibleVolume`` for
    named mounts, ``InvalidMountSpec`` for missing or wrong host paths."""
    o = mount.options
    if mount.kind is MountKind.TMPFS:
        return ResolvedMount(mount, "tmpfs", o, size_mib=mount.size_mib)
    if mount.kind is MountKind.NAMED:
        try:
            vol, created = _named_volume(mount)
        except InvalidArgument as e:
            raise InvalidMountSpec(f"{mount.to_spec()}: {e}") from None
        if vol.kind == "disk":
            return ResolvedMount(mount, "block", o, image_path=vol.image_path,
                                 disk_format=vol.disk_format, fstype=vol.disk_fstype,
                                 volume=vol.name, created=created)
        return ResolvedMount(mount, "virtiofs", o, host_path=vol.path,
                             quota_mib=vol.quota_mib, volume=vol.name, created=created)
    assert mount.source is not None
    path = os.path.abspath(mount.source)
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidMountSpec(f"{mount.kind.value} source {path}: {e.strerror}") from None
    if mount.kind is MountKind.BIND:
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidMountSpec(f"bind source {path} is not a directory")
        return ResolvedMount(mount, "virtiofs", o, host_path=path)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidMountSpec(f"disk source {path} is not a file or block device")
    return ResolvedMount(mount, "block", o, image_path=path, disk_format=mount.format,
                         fstype=mount.fstype)
