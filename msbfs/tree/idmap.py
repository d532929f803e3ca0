"""uid/gid mapping between a client (guest, or host-mount caller) and the host: virtiofsd's
``--translate-uid``/``--translate-gid`` and ``--uid-map``/``--gid-map``, sans-I/O.

Where ids are mapped (one ``IdMap`` for uids, one for gids, held by the tree):

* client -> host: a front turns a request's header into a ``Ctx`` and calls
  ``Tree.map_ctx`` once, so every later use of the caller's ids (the owner of a new
  file, ``access`` run as the caller) already sees host ids; SETATTR's chown ids go
  through ``to_host`` in ``Tree.setattr``. A refused id (``forbid-guest``, or outside
  every ``--uid-map`` range) is EPERM for the request that would use it.
* host -> client: every uid/gid the tree reports (``Tree._attr``); an owner squash
  (``uid=``/``gid=``) still wins.

``--translate-uid`` rules (virtiofsd 1.13, ``src/soft_idmap``), ``TYPE:A:B:COUNT``, any
non-alphanumeric separator other than ``-``/``_``, the same one throughout:

* ``guest:FROM:TO:COUNT``: guest ids [FROM, FROM+COUNT) -> host TO.. (one direction);
* ``host:FROM:TO:COUNT``: host ids [FROM, FROM+COUNT) -> guest TO.. (one direction);
* ``squash-guest:FROM:TO:COUNT`` / ``squash-host:FROM:TO:COUNT``: a range onto one id;
* ``forbid-guest:FROM:COUNT``: a guest using these ids gets EPERM;
* ``map:GUEST:HOST:COUNT``: ``guest`` plus ``host`` the other way round.

Rules of one direction may not intersect (virtiofsd refuses them at start); an id no
rule maps passes through unchanged, so the empty map is the identity and costs nothing.

``--uid-map=:NAMESPACE_ID:HOST_ID:COUNT:`` is what libvirt passes an unprivileged
virtiofsd, which makes it a user namespace's map: the first character is the separator
and the string ends with it. The namespace side is the guest's (virtiofsd passes guest
ids through into its namespace). As in a user namespace, such a map is closed: a host id
outside every range shows as the overflow id (65534, ``/proc/sys/kernel/overflowuid``)
and a guest id outside every range cannot be used (EPERM; the kernel says EINVAL or
EOVERFLOW). Ranges may not overlap on either side. With both kinds given, a guest id is
translated first, then mapped through the namespace (virtiofsd's order).
"""

from __future__ import annotations

import bisect
import errno
from collections.abc import Iterable
from dataclasses import dataclass

#: The kernel's default overflow uid/gid: what an unmapped id looks like in a namespace.
OVERFLOW_ID = 65534
#: A caller id the map refuses, in a mapped ``Ctx`` (``Tree.map_ctx``): never a real id,
#: so nothing can act with it; the tree answers EPERM where it would be used.
REFUSED = -1
_U32 = 1 << 32


class IdMapError(ValueError):
    """A bad ``--translate-*`` or ``--*-map`` argument, with virtiofsd's message."""


def _u32(text: str) -> int:
    """Rust's ``u32::from_str``: an optional ``+``, decimal digits, and its messages."""
    digits = text[1:] if text.startswith("+") else text
    if not text:
        raise ValueError("cannot parse integer from empty string")
    if not digits or not all("0" <= c <= "9" for c in digits):
        raise ValueError("invalid digit found in string")
    value = int(digits)
    if value >= _U32:
        raise ValueError("number too large to fit in target type")
    return value


# ---- --translate-uid / --translate-gid ----------------------------------------------------
_ARITY = {"guest": 3, "host": 3, "squash-guest": 3, "squash-host": 3, "forbid-guest": 2,
          "map": 3}


@dataclass(frozen=True, slots=True)
class Translation:
    """One ``--translate-*`` rule. ``to`` is None for ``forbid-guest``."""

    kind: str
    start: int
    to: int | None
    count: int

    @classmethod
    def parse(cls, text: str) -> Translation:
        prefix: list[str] = []
        sep = None
        for i, c in enumerate(text):
            if c.isalnum() or c in "-_":
                prefix.append(c.lower())
            else:
                sep, rest = c, text[i + 1:]
                break
        if sep is None:
            # virtiofsd: "not entirely right, but not entirely wrong either"
            raise IdMapError("Invalid ID map length (expected 1 elements, got 0 elements)")
        fields: list[int] = []
        for v in rest.split(sep):
            try:
                fields.append(_u32(v))
            except ValueError as e:
                raise IdMapError(f"Invalid value {v} in ID map: {e}") from None
        kind = "".join(prefix)
        arity = _ARITY.get(kind)
        if arity is None:
            raise IdMapError(f"Invalid ID map prefix {kind}")
        if len(fields) != arity:
            raise IdMapError(f"Invalid ID map length (expected {arity} elements, "
                             f"got {len(fields)} elements)")
        if kind == "forbid-guest":
            return cls(kind, fields[0], None, fields[1])
        return cls(kind, fields[0], fields[1], fields[2])

    def __str__(self) -> str:
        if self.to is None:
            return f"{self.kind}:{self.start}:{self.count}"
        return f"{self.kind}:{self.start}:{self.to}:{self.count}"


# ---- --uid-map / --gid-map ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NamespaceRange:
    """One ``--uid-map``/``--gid-map`` entry: namespace (guest) ids [inside, inside+count)
    are host ids [outside, outside+count)."""

    inside: int
    outside: int
    count: int

    @classmethod
    def parse(cls, text: str) -> NamespaceRange:
        # virtiofsd's parse_idmap: the LAST character is the delimiter, which must not be
        # alphanumeric and must also start the string.
        if not text:
            raise IdMapError("The map is empty or incorrect number of values are provided")
        sep = text[-1]
        if sep.isalnum() or not text[:-1].startswith(sep):
            raise IdMapError("A delimiter has been found that does not match the delimiter "
                             "the map started with")
        values = text[1:-1].split(sep)
        if len(values) != 3:
            raise IdMapError("The map is empty or incorrect number of values are provided")
        try:
            inside, outside, count = (_u32(v) for v in values)
        except ValueError as e:
            raise IdMapError(str(e)) from None
        return cls(inside, outside, count)

    def __str__(self) -> str:
        return f":{self.inside}:{self.outside}:{self.count}:"


# ---- range tables ---------------------------------------------------------------------------
_RANGE, _SQUASH, _FAIL = 0, 1, 2
_DESCRIBE = {_RANGE: "map", _SQUASH: "squash", _FAIL: "fail"}


class _Table:
    """Disjoint half-open ranges [start, end) -> (how, target), looked up by bisection."""

    __slots__ = ("_ends", "_entries", "_starts", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._entries: list[tuple[int, int]] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def add(self, start: int, end: int, how: int, target: int, what: str) -> None:
        if end <= start:
            return  # an empty range maps nothing (and intersects nothing)
        i = bisect.bisect_left(self._starts, start)
        if (i < len(self._starts) and self._starts[i] < end) or (i and self._ends[i - 1] > start):
            if how == _RANGE:
                desc = f"map [{start}, {end}) to [{target}, {target + end - start})"
            elif how == _SQUASH:
                desc = f"squash [{start}, {end}) to {target}"
            else:
                desc = f"fail [{start}, {end})"
            raise IdMapError(f"{what}: {self.name} mapping '{desc}' intersects previously "
                             "added entry")
        self._starts.insert(i, start)
        self._ends.insert(i, end)
        self._entries.insert(i, (how, target))

    def find(self, ident: int) -> tuple[int, int, int] | None:
        """(how, target, offset in the range) of ``ident``, or None if no range holds it."""
        i = bisect.bisect_right(self._starts, ident) - 1
        if i < 0 or ident >= self._ends[i]:
            return None
        how, target = self._entries[i]
        return how, target, ident - self._starts[i]


def _range(start: int, count: int, rule: object) -> int:
    """The end of [start, start+count) in u32 ids, refused as virtiofsd does on overflow.
    (u32::MAX itself is never mappable: the FUSE header and chown read it as "none".)"""
    end = start + count
    if end >= _U32:
        raise IdMapError(f"Parameter {rule}: Range overflow")
    return end


def _target(base: int, count: int, rule: object) -> None:
    if base + max(count - 1, 0) >= _U32 - 1:
        raise IdMapError(f"Parameter {rule}: Range overflow")


class IdMap:
    """The mapping of one kind of id (uids or gids), both directions.

    ``to_host`` raises ``OSError(EPERM)`` for an id the map refuses; ``to_guest`` always
    answers. ``identity`` is True for the empty map: callers skip it on hot paths.
    """

    __slots__ = ("_g2h", "_h2g", "_ns_g2h", "_ns_h2g", "identity", "overflow", "what")

    def __init__(self, translate: Iterable[Translation | str] = (),
                 namespace: Iterable[NamespaceRange | str] = (), *, what: str = "UID",
                 overflow: int = OVERFLOW_ID) -> None:
        self.what = what
        self.overflow = overflow
        self._g2h = _Table("Guest-to-host")
        self._h2g = _Table("Host-to-guest")
        self._ns_g2h = _Table("Namespace-to-host")
        self._ns_h2g = _Table("Host-to-namespace")
        label = f"{what} map"
        for rule in translate:
            r = Translation.parse(rule) if isinstance(rule, str) else rule
            where = f"{label}: {r}"
            end = _range(r.start, r.count, r)
            if r.kind == "forbid-guest":
                self._g2h.add(r.start, end, _FAIL, 0, where)
                continue
            assert r.to is not None
            squash = r.kind.startswith("squash")
            _target(r.to, 1 if squash else r.count, r)
            how = _SQUASH if squash else _RANGE
            if r.kind in ("guest", "squash-guest", "map"):
                self._g2h.add(r.start, end, how, r.to, where)
            if r.kind in ("host", "squash-host"):
                self._h2g.add(r.start, end, how, r.to, where)
            if r.kind == "map":
                self._h2g.add(r.to, _range(r.to, r.count, r), _RANGE, r.start, where)
        for entry in namespace:
            n = NamespaceRange.parse(entry) if isinstance(entry, str) else entry
            where = f"{label}: {n}"
            self._ns_g2h.add(n.inside, _range(n.inside, n.count, n), _RANGE, n.outside, where)
            self._ns_h2g.add(n.outside, _range(n.outside, n.count, n), _RANGE, n.inside, where)
        self.identity = not (self._g2h or self._h2g or self._ns_g2h)

    @staticmethod
    def _apply(table: _Table, ident: int) -> int | None:
        hit = table.find(ident)
        if hit is None:
            return None
        how, target, offset = hit
        if how == _FAIL:
            return -1
        return target + offset if how == _RANGE else target

    def to_host(self, guest_id: int) -> int:
        """The host id that acts for ``guest_id``; EPERM if the map refuses it."""
        if self.identity:
            return guest_id
        ident = guest_id
        if self._g2h:
            mapped = self._apply(self._g2h, ident)
            if mapped == -1:
                raise OSError(errno.EPERM, f"use of {self.what} {guest_id} has been "
                              "configured to fail")
            if mapped is not None:
                ident = mapped
        if self._ns_g2h:
            mapped = self._apply(self._ns_g2h, ident)
            if mapped is None:
                raise OSError(errno.EPERM, f"{self.what} {guest_id} is outside the "
                              f"--{self.what.lower()}-map")
            ident = mapped
        return ident

    def to_guest(self, host_id: int) -> int:
        """The id a client sees for the host's ``host_id``."""
        if self.identity:
            return host_id
        ident = host_id
        if self._ns_h2g:
            mapped = self._apply(self._ns_h2g, ident)
            if mapped is None:
                return self.overflow
            ident = mapped
        if self._h2g:
            mapped = self._apply(self._h2g, ident)
            if mapped is not None:
                ident = mapped
        return ident

    def allows(self, guest_id: int) -> bool:
        try:
            self.to_host(guest_id)
        except OSError:
            return False
        return True


#: The default: every id is itself.
IDENTITY_UIDS = IdMap(what="UID")
IDENTITY_GIDS = IdMap(what="GID")


def from_options(translate: Iterable[str] = (), namespace: Iterable[str] = (), *,
                 what: str = "UID") -> IdMap:
    """An ``IdMap`` from command-line strings (``IdMapError`` says which and why)."""
    translate, namespace = list(translate), list(namespace)
    if not translate and not namespace:
        return IDENTITY_UIDS if what == "UID" else IDENTITY_GIDS
    return IdMap(translate, namespace, what=what)


__all__ = ["IDENTITY_GIDS", "IDENTITY_UIDS", "OVERFLOW_ID", "REFUSED", "IdMap", "IdMapError",
           "NamespaceRange", "Translation", "from_options"]
