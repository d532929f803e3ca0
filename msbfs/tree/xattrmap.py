"""Which xattr names a client may use, and under which name the host stores them:
virtiofsd's ``--xattrmap`` rules, parsed and applied. Sans-I/O: names in, names out.

Syntax (virtiofsd's, both the C and the Rust daemon): a map is a list of rules, each
``<s>type<s>scope<s>key<s>prepend<s>`` where ``<s>`` is the rule's first non-blank
character (any character; a rule uses one throughout) and blanks may separate rules.

* ``type``: ``prefix`` (a client name matching ``key`` is stored as ``prepend + name``;
  a host name matching ``prepend`` is listed with ``prepend`` stripped), ``ok`` (passed
  through unchanged), ``bad`` (refused: EPERM for set/remove, ENODATA for get; hidden
  from listxattr), ``unsupported`` (refused with EOPNOTSUPP; hidden from listxattr).
* ``scope``: ``client`` (the rule matches names from get/set/removexattr by ``key``),
  ``server`` (it matches names listxattr read from the host by ``prepend``), ``all``.
* ``key`` and ``prepend`` are prefixes; empty matches every name.
* ``<s>map<s>key<s>prepend<s>`` is shorthand for the rules virtiofsd expands it to (see
  ``_expand_map``); at most one, and it must be the last rule.
* The first matching rule wins. A name no rule matches is treated as ``bad`` (the C
  virtiofsd's implicit final rule): a map that forgets a catch-all fails closed.

The default when no map is given is itself a map, ``DEFAULT_XATTRMAP``: ``trusted.*``
and ``security.*`` are ``bad`` (in both directions), everything else passes. Why a map
and not a separate rule set: there is then ONE mechanism, the default is written in the
syntax operators already know, and an operator who wants something else (for instance
to keep a guest's overlayfs or SELinux xattrs, remapped into ``user.virtiofs.``) gives
a whole map that replaces it, exactly as with virtiofsd. Why these two namespaces:
``trusted.*`` and ``security.*`` need CAP_SYS_ADMIN on the host, which the daemon has and
the guest must not borrow (overlayfs opaque/redirect marks, IMA/EVM labels, SELinux
contexts and file capabilities all live there, and the host acts on them). What stays
outside any map, in the tree: ``system.posix_acl_*`` needs ``--posix-acl``; under
``nosuid`` ``security.capability`` is never stored or shown (a file capability is a
set-uid bit by another name), whatever the map says; callers other than root never
reach the host's ``trusted.*``/``security.*`` through the daemon's privileges.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from msbfs.errors import os_error

__all__ = ["DEFAULT_MAP", "DEFAULT_XATTRMAP", "Rule", "XattrMap", "XattrMapError"]

#: The policy when the operator gives no map (see the module docstring for why).
DEFAULT_XATTRMAP = ":bad:all:trusted.:trusted.: :bad:all:security.:security.: :ok:all:::"

TYPES = ("prefix", "ok", "bad", "unsupported")
_SCOPES = {"client": (True, False), "server": (False, True), "all": (True, True)}


class XattrMapError(ValueError):
    """A map virtiofsd would refuse at start-up; the message says which rule and why."""


@dataclass(frozen=True)
class Rule:
    type: str  # one of TYPES
    client: bool  # matches client names (get/set/removexattr) by ``key``
    server: bool  # matches host names (listxattr) by ``prepend``
    key: bytes
    prepend: bytes


#: Where no rule matched: refused, like the C virtiofsd (fail closed).
IMPLICIT_FINAL = Rule("bad", True, True, b"", b"")


def _expand_map(key: bytes, prepend: bytes) -> list[Rule]:
    """``:map:key:prepend:`` as virtiofsd expands it: prefix the matching names, hide the
    host's unprefixed names of that kind, stop clients from writing the prefixed names
    directly (a guest user could otherwise reach ``trusted.`` through ``user.``), and
    let everything else through; with an empty key, everything is prefixed and anything
    unprefixed on the host is hidden."""
    rules = [Rule("prefix", True, True, key, prepend)]
    if not key:
        return [*rules, Rule("bad", True, True, b"", b"")]
    return [*rules, Rule("bad", False, True, b"", key), Rule("bad", True, False, prepend, b""),
            Rule("ok", True, True, b"", b"")]


class _Reader:
    """One rule's fields, each ended by the rule's separator."""

    def __init__(self, text: str, pos: int, number: int) -> None:
        self.text, self.pos, self.number = text, pos + 1, number
        self.sep = text[pos]

    def field(self, what: str) -> str:
        end = self.text.find(self.sep, self.pos)
        if end < 0:
            raise XattrMapError(f"missing '{self.sep}' at end of {what} field of rule "
                                f"{self.number}")
        value, self.pos = self.text[self.pos:end], end + 1
        return value


@dataclass(frozen=True)
class XattrMap:
    rules: tuple[Rule, ...]

    @classmethod
    def parse(cls, text: str) -> XattrMap:
        """Rules in virtiofsd's syntax, or XattrMapError saying what is wrong where."""
        rules: list[Rule] = []
        pos, number = 0, 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos == len(text):
                break
            number += 1
            r = _Reader(text, pos, number)
            kind = r.field("type")
            if kind == "map":
                key, prepend = r.field("key"), r.field("prepend")
                if text[r.pos:].strip():
                    raise XattrMapError(f"expecting the end of the map after the 'map' rule "
                                        f"(rule {number}): it must be the last one")
                rules += _expand_map(os.fsencode(key), os.fsencode(prepend))
                break
            if kind not in TYPES:
                raise XattrMapError(f"unexpected type {kind!r}; expecting 'prefix', 'ok', "
                                    f"'bad', 'unsupported' or 'map' in rule {number}")
            scope = r.field("scope")
            if scope not in _SCOPES:
                raise XattrMapError(f"unexpected scope {scope!r}; expecting 'client', "
                                    f"'server' or 'all' in rule {number}")
            key, prepend = r.field("key"), r.field("prepend")
            rules.append(Rule(kind, *_SCOPES[scope], os.fsencode(key), os.fsencode(prepend)))
            pos = r.pos
        if not rules:
            raise XattrMapError("empty xattr map")
        return cls(tuple(rules))

    def client_rule(self, name: bytes) -> Rule:
        return next((r for r in self.rules if r.client and name.startswith(r.key)),
                    IMPLICIT_FINAL)

    def server_rule(self, name: bytes) -> Rule:
        return next((r for r in self.rules if r.server and name.startswith(r.prepend)),
                    IMPLICIT_FINAL)

    def to_server(self, name: bytes, *, get: bool = False) -> bytes:
        """The host name for a client's get/set/removexattr of ``name``, or OSError with
        virtiofsd's errno: ``bad`` is EPERM (ENODATA for a get, as for a name that is not
        there), ``unsupported`` is EOPNOTSUPP."""
        rule = self.client_rule(name)
        if rule.type == "bad":
            raise os_error(errno.ENODATA if get else errno.EPERM)
        if rule.type == "unsupported":
            raise os_error(errno.EOPNOTSUPP)
        return rule.prepend + name if rule.type == "prefix" else name

    def to_client(self, name: bytes) -> bytes | None:
        """The name listxattr shows for the host's ``name``, or None when it is hidden."""
        rule = self.server_rule(name)
        if rule.type in ("bad", "unsupported"):
            return None
        shown = name[len(rule.prepend):] if rule.type == "prefix" else name
        return shown or None  # the bare prefix itself names nothing a client could use


DEFAULT_MAP = XattrMap.parse(DEFAULT_XATTRMAP)
