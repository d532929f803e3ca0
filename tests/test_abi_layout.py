"""The wire structs the Python side packs and unpacks, against the kernel's own layout.

Every codec test builds its requests with ``msbfs/fuse/kernel.py``, which packs with the
same ``msbfs/fuse/abi.py`` the server decodes with: a wrong field there would agree with
itself everywhere but in a real guest. So the layouts are checked here against the C
compiler's reading of the installed kernel headers: a small C program, built with gcc at
test time, prints ``sizeof`` and, member by member, ``offsetof`` and the member's size;
each Python ``struct`` format is walked item by item and every item is compared with the
C member of the same name. Covered: every struct of ``abi.py`` (``linux/fuse.h``), the
split-ring structs the frontend packs and ``csrc/virtq.h`` declares
(``linux/virtio_ring.h``), and the vhost-user payloads with a kernel equivalent
(``linux/vhost_types.h``). A struct, field or constant missing from the installed header
(a header older than our ABI) is reported by name, never skipped.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from msbfs.fuse import abi
from vhost import driver, messages

CSRC = Path(__file__).resolve().parent.parent / "csrc"
HEADERS = ("linux/fuse.h", "linux/virtio_ring.h", "linux/vhost_types.h")

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@dataclass(frozen=True)
class Layout:
    """A Python struct and the C struct it stands for. ``fields`` names, in format
    order, the C member each format item is (padding items included: they are members
    too). ``size`` is the C expression the Python size must equal (the struct's sizeof
    unless the Python struct is only a head or an older, shorter form)."""

    py: struct.Struct
    c: str
    fields: tuple[str, ...]
    size: str = ""

    def size_expr(self) -> str:
        return self.size or f"sizeof(struct {self.c})"


def _f(s: str) -> tuple[str, ...]:
    return tuple(s.split())


_ATTR = _f("ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid "
           "gid rdev blksize flags")
_KSTATFS = _f("blocks bfree bavail files ffree bsize namelen frsize padding spare")
_LOCK = _f("start end type pid")

def _fuse(name: str, fields: str | tuple[str, ...], c: str = "",
          size: str = "") -> tuple[str, Layout]:
    """abi.py's struct ``name``; its C struct is the one of the same name unless told."""
    return name, Layout(getattr(abi, name), c or name,
                        _f(fields) if isinstance(fields, str) else fields, size)


_LK = ("fh", "owner", *(f"lk.{f}" for f in _LOCK), "lk_flags", "padding")
# abi.py's name -> its layout in linux/fuse.h.
FUSE: dict[str, Layout] = dict((
    _fuse("fuse_in_header", "len opcode unique nodeid uid gid pid total_extlen padding"),
    _fuse("fuse_out_header", "len error unique"),
    _fuse("fuse_attr", _ATTR),
    _fuse("fuse_kstatfs", _KSTATFS),
    _fuse("fuse_statfs_out", tuple(f"st.{f}" for f in _KSTATFS)),
    _fuse("fuse_file_lock", _LOCK),
    _fuse("fuse_entry_out_head",
          "nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec",
          "fuse_entry_out", "offsetof(struct fuse_entry_out, attr)"),
    _fuse("fuse_forget_in", "nlookup"),
    _fuse("fuse_forget_one", "nodeid nlookup"),
    _fuse("fuse_batch_forget_in", "count dummy"),
    _fuse("fuse_getattr_in", "getattr_flags dummy fh"),
    _fuse("fuse_attr_out_head", "attr_valid attr_valid_nsec dummy", "fuse_attr_out",
          "offsetof(struct fuse_attr_out, attr)"),
    _fuse("fuse_mknod_in", "mode rdev umask padding"),
    _fuse("fuse_mkdir_in", "mode umask"),
    _fuse("fuse_rename_in", "newdir"),
    _fuse("fuse_rename2_in", "newdir flags padding"),
    _fuse("fuse_link_in", "oldnodeid"),
    _fuse("fuse_setattr_in", "valid padding fh size lock_owner atime mtime ctime atimensec "
          "mtimensec ctimensec mode unused4 uid gid unused5"),
    _fuse("fuse_open_in", "flags open_flags"),
    _fuse("fuse_create_in", "flags mode umask open_flags"),
    _fuse("fuse_open_out", "fh open_flags padding"),
    _fuse("fuse_release_in", "fh flags release_flags lock_owner"),
    _fuse("fuse_flush_in", "fh unused padding lock_owner"),
    _fuse("fuse_read_in", "fh offset size read_flags lock_owner flags padding"),
    _fuse("fuse_write_in", "fh offset size write_flags lock_owner flags padding"),
    _fuse("fuse_write_out", "size padding"),
    _fuse("fuse_fsync_in", "fh fsync_flags padding"),
    _fuse("fuse_setxattr_in", "size flags setxattr_flags padding"),
    _fuse("fuse_setxattr_in_compat", "size flags", "fuse_setxattr_in",
          "FUSE_COMPAT_SETXATTR_IN_SIZE"),
    _fuse("fuse_getxattr_in", "size padding"),
    _fuse("fuse_getxattr_out", "size padding"),
    _fuse("fuse_lk_in", _LK),
    _fuse("fuse_lk_out", tuple(f"lk.{f}" for f in _LOCK)),
    _fuse("fuse_access_in", "mask padding"),
    _fuse("fuse_init_in", "major minor max_readahead flags flags2 unused"),
    # Before 7.36 the kernel sent the init request without flags2 and what follows.
    _fuse("fuse_init_in_compat", "major minor max_readahead flags", "fuse_init_in",
          "offsetof(struct fuse_init_in, flags2)"),
    _fuse("fuse_init_out", "major minor max_readahead flags max_background "
          "congestion_threshold max_write time_gran max_pages map_alignment flags2 unused"),
    _fuse("fuse_init_out_compat", "major minor", "fuse_init_out", "FUSE_COMPAT_INIT_OUT_SIZE"),
    _fuse("fuse_interrupt_in", "unique"),
    _fuse("fuse_fallocate_in", "fh offset length mode padding"),
    _fuse("fuse_dirent_head", "ino off namelen type", "fuse_dirent",
          "offsetof(struct fuse_dirent, name)"),
    _fuse("fuse_lseek_in", "fh offset whence padding"),
    _fuse("fuse_lseek_out", "offset"),
    _fuse("fuse_copy_file_range_in", "fh_in off_in nodeid_out fh_out off_out len flags"),
    _fuse("fuse_syncfs_in", "padding"),
))

# The split ring as the frontend (the driver's role) packs it (linux/virtio_ring.h).
RING: dict[str, Layout] = {
    "driver.DESC": Layout(driver.DESC, "vring_desc", _f("addr len flags next")),
    "driver.USED_ELEM": Layout(driver.USED_ELEM, "vring_used_elem", _f("id len")),
}

# vhost-user payloads that are the kernel vhost ioctls' structs (linux/vhost_types.h).
# vhost-user's region carries the mmap offset where the kernel has flags_padding.
VHOST: dict[str, Layout] = {
    "messages.VRING_STATE": Layout(messages.VRING_STATE, "vhost_vring_state", _f("index num")),
    "messages.VRING_ADDR": Layout(
        messages.VRING_ADDR, "vhost_vring_addr",
        _f("index flags desc_user_addr used_user_addr avail_user_addr log_guest_addr")),
    "messages.MEM_REGION": Layout(
        messages.MEM_REGION, "vhost_memory_region",
        _f("guest_phys_addr memory_size userspace_addr flags_padding")),
    "messages.MEM_TABLE_HEAD": Layout(messages.MEM_TABLE_HEAD, "vhost_memory",
                                      _f("nregions padding"),
                                      "offsetof(struct vhost_memory, regions)"),
}
# vhost-user's own framing, with no kernel struct to compare with.
VHOST_USER_ONLY = {"HEADER", "U64", "CONFIG_HEAD"}

# csrc/virtq.h's ring structs and the kernel struct each must equal member by member.
CSRC_RING = {
    "msb_vring_desc": ("vring_desc", _f("addr len flags next")),
    "msb_vring_avail": ("vring_avail", _f("flags idx ring[]")),
    "msb_vring_used_elem": ("vring_used_elem", _f("id len")),
    "msb_vring_used": ("vring_used", _f("flags idx ring[]")),
}

# abi.py constants that are ours, not the header's (FMODE_EXEC is the kernel's
# internal fmode_t bit, which reaches us through fuse_open_in.flags).
ABI_OWN_CONSTANTS = {"FUSE_MIN_KERNEL_MINOR", "FMODE_EXEC"}
# abi.py's size constants, as the header states them.
ABI_SIZES = {
    "FUSE_ENTRY_OUT_SIZE": "sizeof(struct fuse_entry_out)",
    "FUSE_ATTR_OUT_SIZE": "sizeof(struct fuse_attr_out)",
    "FUSE_COMPAT_SETXATTR_IN_SIZE": "FUSE_COMPAT_SETXATTR_IN_SIZE",
    "FUSE_INIT_IN_COMPAT_SIZE": "offsetof(struct fuse_init_in, flags2)",
}


# A member the kernel calls padding is skipped ("x") by the Python format, and every
# other member is read as a value of its signedness. The exceptions are listed: vhost-user
# gives the kernel's flags_padding a meaning of its own (the mmap offset), an opcode's only
# member is padding, and a few formats unpack the padding with the rest and ignore it.
_PAD = re.compile(r"(padding|dummy|unused\d*|spare)$")
PADDING_READ_AS_VALUE = {
    "fuse_syncfs_in.padding", "fuse_in_header.padding", "fuse_mknod_in.padding",
    "fuse_setxattr_in.padding", "messages.MEM_REGION.flags_padding",
    "messages.MEM_TABLE_HEAD.padding",
}


def is_padding(layout: str, field: str) -> bool:
    return bool(_PAD.search(field)) and f"{layout}.{field}" not in PADDING_READ_AS_VALUE


@dataclass(frozen=True)
class Item:
    offset: int
    size: int
    kind: str  # "pad", "signed" or "unsigned"


def items(s: struct.Struct) -> list[Item]:
    """Each item of a little-endian, unaligned format; a padding run ``Nx`` is one item,
    as the C member it stands for (``uint32_t spare[6]``) is one."""
    fmt = s.format
    assert fmt[0] == "<", f"{fmt}: not little-endian and unaligned"
    out, off = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt[1:]):
        n = int(count or 1)
        if code == "x":
            out.append(Item(off, n, "pad"))
            off += n
            continue
        size = struct.calcsize("<" + code)
        for _ in range(n):
            out.append(Item(off, size, "signed" if code.islower() else "unsigned"))
            off += size
    assert off == s.size
    return out


# ---- the C side --------------------------------------------------------------------
def _preprocessed(tmp: Path) -> tuple[str, set[str]]:
    """The headers as the compiler sees them (text, and the names of defined macros)."""
    src = tmp / "h.c"
    src.write_text("".join(f"#include <{h}>\n" for h in HEADERS))
    text = subprocess.run(["gcc", "-E", "-P", str(src)], capture_output=True, text=True,
                          check=True).stdout
    macros = subprocess.run(["gcc", "-E", "-dM", str(src)], capture_output=True, text=True,
                            check=True).stdout
    return text, {line.split()[1].split("(")[0] for line in macros.splitlines()
                  if line.startswith("#define ")}


def _has_struct(text: str, name: str) -> bool:
    return re.search(rf"\bstruct\s+{name}\s*\{{", text) is not None


def _c_program(exprs: dict[str, str]) -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "virtq.h"',
             *(f"#include <{h}>" for h in HEADERS), "int main(void) {"]
    lines += [f'    printf("%s %llu\\n", "{k}", (unsigned long long)({v}));'
              for k, v in exprs.items()]
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


def _member(c: str, field: str) -> tuple[str, str]:
    """offsetof and size of a member; a flexible array (``ring[]``) by its element."""
    name = field.removesuffix("[]")
    elem = "[0]" if field.endswith("[]") else ""
    return (f"offsetof(struct {c}, {name})", f"sizeof(((struct {c} *)0)->{name}{elem})")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, int], list[str]]:
    """What the compiler says, keyed by name, and what the headers lack."""
    tmp = tmp_path_factory.mktemp("abi")
    text, macros = _preprocessed(tmp)
    exprs: dict[str, str] = {}
    missing: list[str] = []
    for name, lay in {**FUSE, **RING, **VHOST}.items():
        if not _has_struct(text, lay.c):
            missing.append(f"{name}: struct {lay.c}")
            continue
        exprs[f"{name}.size"] = lay.size_expr()
        for field in lay.fields:
            exprs[f"{name}.{field}.off"], exprs[f"{name}.{field}.size"] = _member(lay.c, field)
            if not is_padding(name, field):
                exprs[f"{name}.{field}.signed"] = f"(__typeof__(((struct {lay.c} *)0)->{field}))-1 < 0"
    for mine, (theirs, fields) in CSRC_RING.items():
        exprs[f"{mine}.size"] = f"sizeof(struct {mine})"
        exprs[f"{theirs}.size"] = f"sizeof(struct {theirs})"
        for field in fields:
            exprs[f"{mine}.{field}.off"], exprs[f"{mine}.{field}.size"] = _member(mine, field)
            exprs[f"{theirs}.{field}.off"], exprs[f"{theirs}.{field}.size"] = _member(
                theirs, field)
    for name, expr in ABI_SIZES.items():
        exprs[f"size:{name}"] = expr
    for name in _abi_constants():
        if name in macros:
            # The header writes bit 31 as (1 << 31), an int: read 32-bit values unsigned.
            exprs[f"const:{name}"] = f"sizeof({name}) == 4 ? (uint32_t)({name}) : ({name})"
        else:
            missing.append(f"constant {name}")
    for op in abi.Opcode:
        if re.search(rf"\bFUSE_{op.name}\s*=", text):
            exprs[f"opcode:{op.name}"] = f"FUSE_{op.name}"
        else:
            missing.append(f"opcode FUSE_{op.name}")
    src = tmp / "layout.c"
    src.write_text(_c_program(exprs))
    exe = tmp / "layout"
    cc = subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", f"-I{CSRC}", "-o", str(exe),
                         str(src)], capture_output=True, text=True, check=False)
    assert cc.returncode == 0, cc.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    values = {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}
    assert set(values) == set(exprs)
    return values, missing


def _abi_constants() -> list[str]:
    return [n for n, v in vars(abi).items()
            if re.fullmatch(r"(FUSE|FOPEN)_[A-Z0-9_]+", n) and isinstance(v, int)
            and n not in ABI_OWN_CONSTANTS and n not in ABI_SIZES]


def _mismatches(kernel: dict[str, int], layouts: dict[str, Layout]) -> list[str]:
    bad = []
    for name, lay in layouts.items():
        if f"{name}.size" not in kernel:
            continue  # reported by test_nothing_is_missing_from_the_headers
        if lay.py.size != kernel[f"{name}.size"]:
            bad.append(f"{name}: {lay.py.size} bytes, {lay.size_expr()} = "
                       f"{kernel[f'{name}.size']}")
        its = items(lay.py)
        if len(its) != len(lay.fields):
            bad.append(f"{name}: {len(its)} format items for {len(lay.fields)} members")
            continue
        for field, it in zip(lay.fields, its, strict=True):
            kind = ("pad" if is_padding(name, field) else
                    "signed" if kernel[f"{name}.{field}.signed"] else "unsigned")
            want = Item(kernel[f"{name}.{field}.off"], kernel[f"{name}.{field}.size"], kind)
            if it != want:
                bad.append(f"{name}.{field}: {it}, struct {lay.c} says {want}")
    return bad


def test_every_abi_struct_has_a_layout_to_check() -> None:
    """A struct added to abi.py (or vhost's messages) without a layout here fails, so
    nothing escapes the comparison by being new."""
    fuse_structs = {n for n, v in vars(abi).items() if isinstance(v, struct.Struct)}
    assert fuse_structs == set(FUSE)
    vhost_structs = {n for n, v in vars(messages).items() if isinstance(v, struct.Struct)}
    assert vhost_structs == {n.split(".", 1)[1] for n in VHOST} | VHOST_USER_ONLY
    ring_structs = {f"driver.{n}" for n, v in vars(driver).items()
                    if isinstance(v, struct.Struct)}
    assert ring_structs == set(RING)


def test_nothing_is_missing_from_the_headers(kernel: tuple[dict[str, int], list[str]]) -> None:
    """Every struct, opcode and constant we speak is in the installed headers; a header
    older than our ABI is named here, item by item."""
    _values, missing = kernel
    assert missing == [], f"not in the installed headers: {missing}"


def test_fuse_structs_match_linux_fuse_h(kernel: tuple[dict[str, int], list[str]]) -> None:
    values, _missing = kernel
    bad = _mismatches(values, FUSE)
    assert not bad, "\n".join(bad)


def test_fuse_constants_match_linux_fuse_h(kernel: tuple[dict[str, int], list[str]]) -> None:
    values, _missing = kernel
    consts = {n: getattr(abi, n) for n in _abi_constants() if f"const:{n}" in values}
    assert {n: values[f"const:{n}"] for n in consts} == consts
    assert {n: values[f"size:{n}"] for n in ABI_SIZES} == {n: getattr(abi, n) for n in ABI_SIZES}
    ops = {op.name: int(op) for op in abi.Opcode if f"opcode:{op.name}" in values}
    assert {n: values[f"opcode:{n}"] for n in ops} == ops
    assert len(consts) > 50 and len(ops) == len(abi.Opcode)


def test_ring_structs_match_linux_virtio_ring_h(
        kernel: tuple[dict[str, int], list[str]]) -> None:
    values, _missing = kernel
    bad = _mismatches(values, RING)
    assert not bad, "\n".join(bad)
    # csrc/virtq.h declares its own copies of the ring structs: member by member equal.
    for mine, (theirs, fields) in CSRC_RING.items():
        for key in ("size", *(f"{f}.{k}" for f in fields for k in ("off", "size"))):
            assert values[f"{mine}.{key}"] == values[f"{theirs}.{key}"], (mine, key)


def test_vhost_payloads_match_linux_vhost_types_h(
        kernel: tuple[dict[str, int], list[str]]) -> None:
    values, _missing = kernel
    bad = _mismatches(values, VHOST)
    assert not bad, "\n".join(bad)
