"""FUSE requests, decoded: a bounds-checked cursor over one request's argument bytes,
and the field conversions the kernel's in structs need. Sans-I/O and tree-free; the
session (``msbfs.fuse.server``) reads every request through it, so a short or
unterminated argument is ``BadRequest`` (answered ``EINVAL``), never an exception of
its own.
"""

from __future__ import annotations

from typing import Any

from msbfs.fuse import abi

IN_HEADER = abi.fuse_in_header.size
_unpack_in = abi.fuse_in_header.unpack_from


class BadRequest(Exception):
    """A request that does not parse: answered with EINVAL."""


def _ns(sec: int, nsec: int) -> int:
    """Nanoseconds of a fuse_setattr_in time: the kernel's signed time64_t tv_sec in a
    u64 field (a time before 1970 has the top bit set)."""
    if sec >= 1 << 63:
        sec -= 1 << 64
    return sec * 1_000_000_000 + nsec


class _Body:
    """A cursor over a request's argument bytes ``buf[pos:end]``; every take is
    bounds-checked. Names are found in one private copy of the arguments, made at the
    first name (a hostile driver may rewrite its buffer while we parse: what we check
    is what we use)."""

    __slots__ = ("_base", "_raw", "buf", "end", "pos")

    def __init__(self, buf: memoryview, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end
        self._raw: bytes | None = None
        self._base = pos

    def struct(self, s: Any) -> tuple[Any, ...]:
        end = self.pos + s.size
        if end > self.end:
            raise BadRequest(f"short {s.size}-byte argument")
        v = s.unpack_from(self.buf, self.pos)
        self.pos = end
        return v

    def name(self) -> bytes:
        """A NUL-terminated string."""
        raw = self._raw
        if raw is None:
            raw = self._raw = bytes(self.buf[self._base:self.end])
        start = self.pos - self._base
        i = raw.find(b"\0", start)
        if i < 0:
            raise BadRequest("unterminated name")
        self.pos = self._base + i + 1
        return raw[start:i]

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise BadRequest("short payload")
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def remaining(self) -> int:
        return self.end - self.pos
