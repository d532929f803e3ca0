"""pyfuse3's ``EntryAttributes`` with the FUSE node id apart from ``st_ino``.

pyfuse3 keeps one Python attribute for two C fields: its ``st_ino`` setter writes both
``fuse_entry_param.ino`` (the node id the kernel keys its inode by and FORGETs) and
``attr.st_ino`` (what stat(2) shows, and a READDIRPLUS record's ``d_ino``). The host
mount wants them apart:

* ``st_ino`` is the tree's ``Attr.ino`` (the host's inode number, tagged on other
  filesystems: ``Tree._attr``'s rule, as a virtio-fs guest sees it), so a directory
  entry can carry its real ``d_ino`` before anything looked it up;
* a READDIRPLUS record whose node id is 0 is then a plain dirent to the kernel
  (fs/fuse/readdir.c ``fuse_direntplus_link``: a zero node id "only means the userspace
  filesystem did not want to return attributes/handle for this entry"): a listing that
  nobody stats costs no lookup, no fd and no kernel inode per name, as bindfs's READDIR.

The fields are pyfuse3's C struct (Cython: ``PyObject_HEAD``, ``fuse_entry_param
fuse_param``, ``struct stat *attr`` pointing into it), found once at import from
sentinels written through pyfuse3's own setters. If they are not where that layout puts
them (another pyfuse3 build), ``APART`` is False and nothing here writes anything: the
host mount keeps pyfuse3's coupling (``st_ino`` is the node id, every listed name is
looked up).
"""

from __future__ import annotations

import pyfuse3

from msbfs._native import ffi

_INO = 0x5EED_0123_4567_89AB
_GEN = 0x0BAD_F00D_1234_5678


def _find_layout(cls: type = pyfuse3.EntryAttributes) -> tuple[int, int] | None:
    """Byte offsets of ``fuse_param.ino`` and ``attr.st_ino`` in a ``cls`` (pyfuse3's
    EntryAttributes), or None where they are not where its C layout puts them."""
    e = cls()
    e.st_ino = _INO
    e.generation = _GEN
    size = type(e).__basicsize__
    if size < 64 or size > 4096:
        return None
    words = ffi.cast("uint64_t *", id(e))
    seen = [i * 8 for i in range(size // 8) if words[i] == _INO]
    if len(seen) != 2:
        return None
    ino, st_ino = seen
    base = id(e) + ino + 16  # fuse_entry_param: ino, generation, then struct stat attr
    if words[ino // 8 + 1] != _GEN or not ino < st_ino < ino + 16 + 64:
        return None
    if not any(words[i] == base for i in range(size // 8)):  # the attr pointer
        return None
    # And the setter still writes both, the getter reads the node id.
    words[ino // 8] = 7
    if e.st_ino != 7 or words[st_ino // 8] != _INO:
        return None
    return ino, st_ino


_LAYOUT = _find_layout()
#: True: node ids can be set apart from st_ino (see the module doc).
APART = _LAYOUT is not None
_NODEID_WORD = _LAYOUT[0] // 8 if _LAYOUT else 0
_ST_INO_WORD = _LAYOUT[1] // 8 if _LAYOUT else 0


def set_nodeid(e: pyfuse3.EntryAttributes, nodeid: int) -> None:
    """The node id the kernel gets for ``e`` (``e.st_ino`` set first: it writes both)."""
    if not APART:
        raise RuntimeError("pyfuse3's EntryAttributes layout is not the one known here")
    ffi.cast("uint64_t *", id(e))[_NODEID_WORD] = nodeid


class PlainDirent:
    """One reusable READDIRPLUS record with node id 0: only the name's ``d_ino`` and
    type (pyfuse3's ``readdir_reply`` copies the record into its buffer at once, so one
    object serves a whole listing)."""

    __slots__ = ("_words", "attr")

    def __init__(self) -> None:
        self.attr = pyfuse3.EntryAttributes()
        self.attr.st_ino = 0  # node id 0: the kernel links nothing
        self._words = ffi.cast("uint64_t *", id(self.attr))

    def set(self, d_ino: int, d_type: int) -> pyfuse3.EntryAttributes:
        self._words[_ST_INO_WORD] = d_ino
        self.attr.st_mode = d_type << 12  # fuse_add_direntry_plus: d_type = mode >> 12
        return self.attr
