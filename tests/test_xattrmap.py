"""virtiofsd's --xattrmap rules (msbfs.tree.xattrmap): the parser, the errors virtiofsd
gives for bad maps, the map shorthand's expansion, and both directions of the mapping,
checked against the examples of virtiofsd's doc/xattr-mapping.md and their documented
results."""

from __future__ import annotations

import errno

import pytest

from msbfs.tree.xattrmap import DEFAULT_MAP, Rule, XattrMap, XattrMapError


def refusal(m: XattrMap, name: bytes, *, get: bool = False) -> int | None:
    try:
        m.to_server(name, get=get)
    except OSError as e:
        return e.errno
    return None


def listed(m: XattrMap, *names: bytes) -> list[bytes]:
    return [n for n in map(m.to_client, names) if n is not None]


# ---- parsing ---------------------------------------------------------------------------
def test_one_rule_any_separator_and_blanks_between_rules() -> None:
    a = XattrMap.parse(":prefix:client:trusted.:user.virtiofs.:")
    assert a.rules == (Rule("prefix", True, False, b"trusted.", b"user.virtiofs."),)
    b = XattrMap.parse("  /prefix/client/trusted./user.virtiofs./\n\t")
    assert a == b
    two = XattrMap.parse(":prefix:all:trusted.:user.virtiofs.: #prefix#all#trusted.#user.virtiofs.#")
    assert two.rules == (Rule("prefix", True, True, b"trusted.", b"user.virtiofs."),) * 2
    scopes = XattrMap.parse(":ok:server::a.: :bad:all::: :unsupported:client:b.::")
    assert [(r.type, r.client, r.server) for r in scopes.rules] == [
        ("ok", False, True), ("bad", True, True), ("unsupported", True, False)]


def test_map_shorthand_expands_as_the_documentation_says() -> None:
    # Example 1: ":map::user.virtiofs.:" is ":prefix:all::user.virtiofs.::bad:all:::".
    assert XattrMap.parse(":map::user.virtiofs.:") == \
        XattrMap.parse(":prefix:all::user.virtiofs.::bad:all:::")
    # Example 2: "/map/trusted./user.virtiofs./" is the four rules spelled out.
    assert XattrMap.parse("/map/trusted./user.virtiofs./") == XattrMap.parse(
        """/prefix/all/trusted./user.virtiofs./
           /bad/server//trusted./
           /bad/client/user.virtiofs.//
           /ok/all///""")
    # Rules may come before the map rule.
    m = XattrMap.parse(":bad:all:x.:x.: :map::u.:  ")
    assert m.rules[0] == Rule("bad", True, True, b"x.", b"x.") and len(m.rules) == 3


@pytest.mark.parametrize("text, says", [
    ("", "empty xattr map"),
    ("  \n ", "empty xattr map"),
    (":prefix:client:hi", "missing ':' at end of key field of rule 1"),
    (":prefix:client:trusted.:user.vm.", "missing ':' at end of prepend field of rule 1"),
    (":ok:all::: :bad", "missing ':' at end of type field of rule 2"),
    (":TOMATOPIRATE:trusted.:virtiofs.user.:", "unexpected type 'TOMATOPIRATE'"),
    ("/prefix/helloworld///", "unexpected scope 'helloworld'"),
    (":ok:all:::x", "missing 'x' at end of type field of rule 2"),
    (":map:trusted.:virtiofs.user.::map:trusted.:virtiofs.user.:", "must be the last"),
    (":map::u.: :ok:all:::", "must be the last"),
    (":map::", "missing ':' at end of prepend field of rule 1"),
])
def test_bad_maps_are_refused_with_the_rule_and_the_reason(text: str, says: str) -> None:
    with pytest.raises(XattrMapError) as e:
        XattrMap.parse(text)
    assert says in str(e.value)


# ---- mapping ---------------------------------------------------------------------------
def test_first_matching_rule_wins_and_no_match_fails_closed() -> None:
    m = XattrMap.parse(":ok:client:user.a:: :bad:client:user.::")
    assert m.to_server(b"user.abc") == b"user.abc"
    assert refusal(m, b"user.b") == errno.EPERM
    # No rule matches: the implicit final rule is 'bad' in both directions.
    assert refusal(m, b"other.x") == errno.EPERM
    assert refusal(m, b"other.x", get=True) == errno.ENODATA
    assert listed(m, b"user.abc", b"other.x") == []  # client-only rules list nothing


def test_bad_and_unsupported_errnos() -> None:
    m = XattrMap.parse("/unsupported/all/security.selinux/security.selinux/ /ok/all///")
    assert refusal(m, b"security.selinux") == errno.EOPNOTSUPP
    assert refusal(m, b"security.selinux", get=True) == errno.EOPNOTSUPP
    assert listed(m, b"security.selinux", b"user.x") == [b"user.x"]
    b = XattrMap.parse(":bad:all:security.:security.: :ok:all:::")
    assert refusal(b, b"security.x") == errno.EPERM  # set and remove
    assert refusal(b, b"security.x", get=True) == errno.ENODATA


def test_doc_table_rules() -> None:
    assert XattrMap.parse(":prefix:client:trusted.:user.virtiofs.:").to_server(
        b"trusted.a") == b"user.virtiofs.trusted.a"
    assert listed(XattrMap.parse(":prefix:server::user.virtiofs.:"),
                  b"user.virtiofs.trusted.a", b"user.b") == [b"trusted.a"]
    both = XattrMap.parse(":prefix:all:trusted.:user.virtiofs.:")
    assert both.to_server(b"trusted.a") == b"user.virtiofs.trusted.a"
    assert listed(both, b"user.virtiofs.trusted.a") == [b"trusted.a"]
    assert XattrMap.parse(":ok:client:user.::").to_server(b"user.x") == b"user.x"
    assert listed(XattrMap.parse(":ok:server::security.:"), b"security.a") == [b"security.a"]
    ok = XattrMap.parse(":ok:all:::")
    assert ok.to_server(b"trusted.z") == b"trusted.z" and listed(ok, b"z.y") == [b"z.y"]
    assert listed(XattrMap.parse(":bad:server::security.: :ok:all:::"),
                  b"security.a", b"user.b") == [b"user.b"]


def test_example_1_prefix_everything() -> None:
    m = XattrMap.parse(":map::user.virtiofs.:")
    assert m.to_server(b"trusted.overlay.opaque") == b"user.virtiofs.trusted.overlay.opaque"
    assert m.to_server(b"user.x") == b"user.virtiofs.user.x"
    # Anything the host set without the prefix is hidden.
    assert listed(m, b"user.virtiofs.security.selinux", b"security.selinux", b"user.x") == [
        b"security.selinux"]


def test_example_2_prefix_trusted_allow_others() -> None:
    m = XattrMap.parse("/map/trusted./user.virtiofs./")
    assert m.to_server(b"trusted.a") == b"user.virtiofs.trusted.a"
    assert m.to_server(b"user.x") == b"user.x" and m.to_server(b"security.x") == b"security.x"
    # The guest cannot reach the prefix's target directly (a guest user could otherwise
    # write the guest's trusted.* through user.*).
    assert refusal(m, b"user.virtiofs.trusted.a") == errno.EPERM
    assert listed(m, b"user.virtiofs.trusted.a", b"trusted.host", b"user.x") == [
        b"trusted.a", b"user.x"]


def test_example_3_hide_security() -> None:
    m = XattrMap.parse("/bad/all/security./security./\n            /ok/all///")
    assert refusal(m, b"security.capability") == errno.EPERM
    assert listed(m, b"security.capability", b"user.a") == [b"user.a"]


def test_default_map() -> None:
    for name in (b"trusted.overlay.opaque", b"security.capability", b"security.ima"):
        assert refusal(DEFAULT_MAP, name) == errno.EPERM
        assert refusal(DEFAULT_MAP, name, get=True) == errno.ENODATA
    assert DEFAULT_MAP.to_server(b"user.x") == b"user.x"
    assert DEFAULT_MAP.to_server(b"system.posix_acl_access") == b"system.posix_acl_access"
    assert listed(DEFAULT_MAP, b"trusted.a", b"security.selinux", b"user.b") == [b"user.b"]


def test_a_bare_prefix_lists_nothing() -> None:
    assert listed(XattrMap.parse(":map::user.virtiofs.:"), b"user.virtiofs.") == []
