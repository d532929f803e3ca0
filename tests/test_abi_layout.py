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
from vhost import frontend, messages

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

# abi.py's name -> its layout in linux/fuse.h.
FUSE: dict[str, Layout] = {
    "fuse_in_header": Layout(abi.fuse_in_header, "fuse_in_header",
                             _f("len opcode unique nodeid uid gid pid total_extlen padding")),
    "fuse_out_header": Layout(abi.fuse_out_header, "fuse_out_header", _f("len error unique")),
    "fuse_attr": Layout(abi.fuse_attr, "fuse_attr", _ATTR),
    "fuse_kstatfs": Layout(abi.fuse_kstatfs, "fuse_kstatfs", _KSTATFS),
    "fuse_statfs_out": Layout(abi.fuse_statfs_out, "fuse_statfs_out",
                              tuple(f"st.{f}" for f in _KSTATFS)),
    "fuse_file_lock": Layout(abi.fuse_file_lock, "fuse_file_lock", _LOCK),
    "fuse_entry_out_head": Layout(
        abi.fuse_entry_out_head, "fuse_entry_out",
        _f("nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec"),
        "offsetof(struct fuse_entry_out, attr)"),
    "fuse_forget_in": Layout(abi.fuse_forget_in, "fuse_forget_in", _f("nlookup")),
    "fuse_forget_one": Layout(abi.fuse_forget_one, "fuse_forget_one", _f("nodeid nlookup")),
    "fuse_batch_forget_in": Layout(abi.fuse_batch_forget_in, "fuse_batch_forget_in",
                                   _f("count dummy")),
    "fuse_getattr_in": Layout(abi.fuse_getattr_in, "fuse_getattr_in",
                              _f("getattr_flags dummy fh")),
    "fuse_attr_out_head": Layout(abi.fuse_attr_out_head, "fuse_attr_out",
                                 _f("attr_valid attr_valid_nsec dummy"),
                                 "offsetof(struct fuse_attr_out, attr)"),
    "fuse_mknod_in": Layout(abi.fuse_mknod_in, "fuse_mknod_in", _f("mode rdev umask padding")),
    "fuse_mkdir_in": Layout(abi.fuse_mkdir_in, "fuse_mkdir_in", _f("mode umask")),
    "fuse_rename_in": Layout(abi.fuse_rename_in, "fuse_rename_in", _f("newdir")),
    "fuse_rename2_in": Layout(abi.fuse_rename2_in, "fuse_rename2_in",
                              _f("newdir flags padding")),
    "fuse_link_in": Layout(abi.fuse_link_in, "fuse_link_in", _f("oldnodeid")),
    "fuse_setattr_in": Layout(
        abi.fuse_setattr_in, "fuse_setattr_in",
        _f("valid padding fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec "
           "mode unused4 uid gid unused5")),
    "fuse_open_in": Layout(abi.fuse_open_in, "fuse_open_in", _f("flags open_flags")),
    "fuse_create_in": Layout(abi.fuse_create_in, "fuse_create_in",
                             _f("flags mode umask open_flags")),
    "fuse_open_out": Layout(abi.fuse_open_out, "fuse_open_out", _f("fh open_flags padding")),
    "fuse_release_in": Layout(abi.fuse_release_in, "fuse_release_in",
                              _f("fh flags release_flags lock_owner")),
    "fuse_flush_in": Layout(abi.fuse_flush_in, "fuse_flush_in",
                            _f("fh unused padding lock_owner")),
    "fuse_read_in": Layout(abi.fuse_read_in, "fuse_read_in",
                           _f("fh offset size read_flags lock_owner flags padding")),
    "fuse_write_in": Layout(abi.fuse_write_in, "fuse_write_in",
                            _f("fh offset size write_flags lock_owner flags padding")),
    "fuse_write_out": Layout(abi.fuse_write_out, "fuse_write_out", _f("size padding")),
    "fuse_fsync_in": Layout(abi.fuse_fsync_in, "fuse_fsync_in", _f("fh fsync_flags padding")),
    "fuse_setxattr_in": Layout(abi.fuse_setxattr_in, "fuse_setxattr_in",
                               _f("size flags setxattr_flags padding")),
    "fuse_setxattr_in_compat": Layout(abi.fuse_setxattr_in_compat, "fuse_setxattr_in",
                                      _f("size flags"), "FUSE_COMPAT_SETXATTR_IN_SIZE"),
    "fuse_getxattr_in": Layout(abi.fuse_getxattr_in, "fuse_getxattr_in", _f("size padding")),
    "fuse_getxattr_out": Layout(abi.fuse_getxattr_out, "fuse_getxattr_out",
                                _f("size padding")),
    "fuse_lk_in": Layout(abi.fuse_lk_in, "fuse_lk_in",
                         ("fh", "owner", *(f"lk.{f}" for f in _LOCK), "lk_flags", "padding")),
    "fuse_lk_out": Layout(abi.fuse_lk_out, "fuse_lk_out", tuple(f"lk.{f}" for f in _LOCK)),
    "fuse_access_in": Layout(abi.fuse_access_in, "fuse_access_in", _f("mask padding")),
    "fuse_init_in": Layout(abi.fuse_init_in, "fuse_init_in",
                           _f("major minor max_readahead flags flags2 unused")),
    # Before 7.36 the kernel sent the init request without flags2 and what follows.
    "fuse_init_in_compat": Layout(abi.fuse_init_in_compat, "fuse_init_in",
                                  _f("major minor max_readahead flags"),
                                  "offsetof(struct fuse_init_in, flags2)"),
    "fuse_init_out": Layout(
        abi.fuse_init_out, "fuse_init_out",
        _f("major minor max_readahead flags max_background congestion_threshold max_write "
           "time_gran max_pages map_alignment flags2 unused")),
    "fuse_init_out_compat": Layout(abi.fuse_init_out_compat, "fuse_init_out",
                                   _f("major minor"), "FUSE_COMPAT_INIT_OUT_SIZE"),
    "fuse_interrupt_in": Layout(abi.fuse_interrupt_in, "fuse_interrupt_in", _f("unique")),
    "fuse_fallocate_in": Layout(abi.fuse_fallocate_in, "fuse_fallocate_in",
                                _f("fh offset length mode padding")),
    "fuse_dirent_head": Layout(abi.fuse_dirent_head, "fuse_dirent",
                               _f("ino off namelen type"),
                               "offsetof(struct fuse_dirent, name)"),
    "fuse_lseek_in": Layout(abi.fuse_lseek_in, "fuse_lseek_in",
                            _f("fh offset whence padding")),
    "fuse_lseek_out": Layout(abi.fuse_lseek_out, "fuse_lseek_out", _f("offset")),
    "fuse_copy_file_range_in": Layout(
        abi.fuse_copy_file_range_in, "fuse_copy_file_range_in",
        _f("fh_in off_in nodeid_out fh_out off_out len flags")),
    "fuse_syncfs_in": Layout(abi.fuse_syncfs_in, "fuse_syncfs_in", _f("padding")),
}

# The split ring as the frontend (the driver's role) packs it (linux/virtio_ring.h).
RING: dict[str, Layout] = {
    "frontend.DESC": Layout(frontend.DESC, "vring_desc", _f("addr len flags next")),
    "frontend.USED_ELEM": Layout(frontend.USED_ELEM, "vring_used_elem", _f("id len")),
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
    ring_structs = {f"frontend.{n}" for n, v in vars(frontend).items()
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
