"""virtiofsd's uid/gid mapping (msbfs.tree.idmap): the ``--translate-uid`` rules and the
``--uid-map`` entries with virtiofsd's messages, both directions, squash, forbid,
intersections refused; and the tree under a map (msbfs/tree/tree.py): reported ids mapped,
chown mapped back, new files owned by the mapped host id, a refused caller EPERM only
where its id would be used."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from msbfs.tree import FATTR_GID, FATTR_UID, ROOT_ID, Ctx, SetAttr, Tree
from msbfs.tree.idmap import (
    OVERFLOW_ID,
    IdMap,
    IdMapError,
    NamespaceRange,
    Translation,
    from_options,
)
from tests.plugins.tree import err

MakeTree = Callable[..., Tree]
U32_MAX = (1 << 32) - 1


def refused(m: IdMap, guest_id: int) -> int | None:
    return err(lambda: m.to_host(guest_id))


# ---- parsing ---------------------------------------------------------------------------
def test_translate_rules_parse_as_virtiofsd_reads_them() -> None:
    assert Translation.parse("guest:0:1000:1") == Translation("guest", 0, 1000, 1)
    assert Translation.parse("host:1000:0:1") == Translation("host", 1000, 0, 1)
    assert Translation.parse("squash-guest:0:501:4294967295") == \
        Translation("squash-guest", 0, 501, 4294967295)
    assert Translation.parse("squash-host:0:65534:1000") == Translation("squash-host", 0, 65534, 1000)
    assert Translation.parse("forbid-guest:0:1000") == Translation("forbid-guest", 0, None, 1000)
    # Any separator that is not alphanumeric, '-' or '_'; the prefix is case-insensitive;
    # numbers are Rust's u32 (a leading '+' is allowed).
    assert Translation.parse("MAP/5/+6/7") == Translation("map", 5, 6, 7)
    assert str(Translation.parse("map;5;6;7")) == "map:5:6:7"


@pytest.mark.parametrize("text, says", [
    ("", "Invalid ID map length (expected 1 elements, got 0 elements)"),
    ("guest", "Invalid ID map length (expected 1 elements, got 0 elements)"),
    ("tomato:1:2:3", "Invalid ID map prefix tomato"),
    ("guest:1:2", "Invalid ID map length (expected 3 elements, got 2 elements)"),
    ("forbid-guest:1:2:3", "Invalid ID map length (expected 2 elements, got 3 elements)"),
    ("guest:1:x:3", "Invalid value x in ID map: invalid digit found in string"),
    ("guest:1:-2:3", "Invalid value -2 in ID map: invalid digit found in string"),
    ("map:1:2:3:", "Invalid value  in ID map: cannot parse integer from empty string"),
    ("guest:1:2:4294967296", "Invalid value 4294967296 in ID map: number too large to fit"),
    ("guest:1/2/3", "Invalid value 1/2/3 in ID map: invalid digit found in string"),
])
def test_bad_translate_rules_get_virtiofsds_messages(text: str, says: str) -> None:
    with pytest.raises(IdMapError) as e:
        Translation.parse(text)
    assert says in str(e.value)


def test_namespace_maps_parse_with_any_delimiter() -> None:
    assert NamespaceRange.parse(":0:1000:1:") == NamespaceRange(0, 1000, 1)
    assert NamespaceRange.parse("/0/100000/65536/") == NamespaceRange(0, 100000, 65536)
    assert NamespaceRange.parse("-5-6-7-") == NamespaceRange(5, 6, 7)
    assert str(NamespaceRange(0, 1000, 1)) == ":0:1000:1:"


@pytest.mark.parametrize("text, says", [
    ("", "The map is empty or incorrect number of values are provided"),
    (":0:1000:1", "A delimiter has been found that does not match the delimiter the map started with"),
    ("0:1000:1:", "does not match the delimiter the map started with"),
    (":0/1000/1/", "does not match the delimiter the map started with"),
    (":0:1000:", "The map is empty or incorrect number of values are provided"),
    (":0:1000:1:2:", "The map is empty or incorrect number of values are provided"),
    (":0:x:1:", "invalid digit found in string"),
    (":0:4294967296:1:", "number too large to fit in target type"),
])
def test_bad_namespace_maps_get_virtiofsds_messages(text: str, says: str) -> None:
    with pytest.raises(IdMapError) as e:
        NamespaceRange.parse(text)
    assert says in str(e.value)


def test_intersecting_rules_are_refused_naming_the_rule() -> None:
    # The example of virtiofsd issue 198: a count is a length, not an end, so
    # forbid-guest:1001:1999 covers [1001, 3000) and the later map of 2000 intersects it.
    with pytest.raises(IdMapError) as e:
        IdMap(["forbid-guest:0:999", "map:1000:1000:1", "forbid-guest:1001:1999",
               "map:2000:2000:1"])
    assert str(e.value) == ("UID map: map:2000:2000:1: Guest-to-host mapping "
                            "'map [2000, 2001) to [2000, 2001)' intersects previously added entry")
    # ... and the corrected lengths are accepted.
    m = IdMap(["forbid-guest:0:1000", "map:1000:1000:1", "forbid-guest:1001:999",
               "map:2000:2000:1", "forbid-guest:2001:4294965294"])
    assert [refused(m, i) for i in (0, 999, 1000, 1001, 1999, 2000, 2001, U32_MAX - 1)] == [
        errno.EPERM, errno.EPERM, None, errno.EPERM, errno.EPERM, None, errno.EPERM, errno.EPERM]
    # Host-to-guest rules intersect separately from guest-to-host ones; touching is fine.
    IdMap(["guest:0:5:10", "host:0:5:10", "guest:10:0:1"])
    with pytest.raises(IdMapError, match=r"Host-to-guest mapping 'squash \[5, 6\) to 0'"):
        IdMap(["map:0:1:10", "squash-host:5:0:1"], what="UID")
    with pytest.raises(IdMapError, match=r"^GID map: :0:1000:1:: Namespace-to-host"):
        IdMap(namespace=[":0:1000:2:", ":0:1000:1:"], what="GID")
    with pytest.raises(IdMapError, match="Host-to-namespace"):
        IdMap(namespace=[":0:1000:2:", ":5:1001:1:"])
    with pytest.raises(IdMapError, match="Range overflow"):
        IdMap(["guest:4294967290:0:10"])
    with pytest.raises(IdMapError, match="Range overflow"):
        IdMap(["guest:0:4294967290:10"])  # the target range too: no id wraps round


# ---- mapping ---------------------------------------------------------------------------
def test_empty_map_is_the_identity() -> None:
    m = from_options()
    assert m.identity and m.to_host(1234) == 1234 and m.to_guest(0) == 0
    assert not IdMap(["forbid-guest:5:1"]).identity


def test_one_way_rules_map_one_direction_and_unmapped_ids_pass_through() -> None:
    m = IdMap(["guest:0:1000:10", "host:2000:0:1"])
    assert [m.to_host(i) for i in (0, 9, 10, 2000)] == [1000, 1009, 10, 2000]
    assert [m.to_guest(i) for i in (1000, 2000, 2001, 0)] == [1000, 0, 2001, 0]


def test_map_is_both_directions() -> None:
    m = IdMap(["map:0:100000:65536"])
    assert m.to_host(0) == 100000 and m.to_host(65535) == 165535 and m.to_host(65536) == 65536
    assert m.to_guest(100000) == 0 and m.to_guest(165535) == 65535 and m.to_guest(5) == 5


def test_squash_rules_send_a_range_to_one_id() -> None:
    # libkrun's "everyone in the guest is me, I am root in the guest" map.
    m = IdMap(["squash-guest:0:501:4294967295", "host:501:0:1"])
    assert {m.to_host(i) for i in (0, 1, 1000, U32_MAX - 1)} == {501}
    assert m.to_guest(501) == 0 and m.to_guest(7) == 7
    s = IdMap(["squash-host:0:65534:1000"])
    assert s.to_guest(0) == s.to_guest(999) == 65534 and s.to_guest(1000) == 1000


def test_forbidden_guest_ids_are_eperm() -> None:
    m = IdMap(["forbid-guest:0:1", "map:1:1001:5"])
    assert refused(m, 0) == errno.EPERM and not m.allows(0)
    assert m.to_host(1) == 1001 and m.allows(1) and m.to_host(6) == 6
    assert m.to_guest(0) == 0  # forbidding is guest-to-host only


def test_namespace_map_is_closed_like_a_user_namespace() -> None:
    m = IdMap(namespace=[":0:1000:1:"])
    assert m.to_host(0) == 1000 and m.to_guest(1000) == 0
    assert refused(m, 1) == errno.EPERM and refused(m, 1000) == errno.EPERM
    assert m.to_guest(0) == m.to_guest(1001) == OVERFLOW_ID
    two = IdMap(namespace=["/0/1000/1/", ":1:100000:65536:"])
    assert two.to_host(1) == 100000 and two.to_guest(165535) == 65536


def test_translation_applies_before_the_namespace() -> None:
    # virtiofsd passes a translated id into its user namespace.
    m = IdMap(["squash-guest:0:0:65536"], [":0:1000:1:"])
    assert m.to_host(0) == m.to_host(500) == 1000
    assert m.to_guest(1000) == 0 and m.to_guest(0) == OVERFLOW_ID


# ---- the tree under a map --------------------------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@needs_root
def test_tree_reports_maps_back_and_owns_new_files_by_host_id(make_tree: MakeTree) -> None:
    uids = IdMap(["map:0:1000:1", "map:5:2005:1"])
    gids = IdMap(namespace=[":0:1000:1:", ":5:2005:1:"], what="GID")
    tree = make_tree(uid_map=uids, gid_map=gids)
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "mine").write_text("x")
    os.chown(root / "mine", 1000, 1000)
    (root / "theirs").write_text("y")
    os.chown(root / "theirs", 3000, 3000)
    guest_root = tree.map_ctx(Ctx(0, 0, 1))
    assert (guest_root.uid, guest_root.gid) == (1000, 1000)

    # host -> guest in what is reported
    mine = tree.lookup(ROOT_ID, b"mine", guest_root)
    assert (mine.attr.uid, mine.attr.gid) == (0, 0)
    theirs = tree.getattr(tree.lookup(ROOT_ID, b"theirs", guest_root).nodeid, None, guest_root)[0]
    assert (theirs.uid, theirs.gid) == (3000, OVERFLOW_ID)  # passthrough / outside the namespace

    # guest -> host: the owner of what a creating op makes, and chown
    e, o = tree.create(ROOT_ID, b"new", 0o644, os.O_WRONLY, 0o022, guest_root)
    tree.release(o.fh)
    assert (os.stat(root / "new").st_uid, os.stat(root / "new").st_gid) == (1000, 1000)
    assert (e.attr.uid, e.attr.gid) == (0, 0)
    d = tree.mkdir(ROOT_ID, b"d", 0o755, 0o022, tree.map_ctx(Ctx(5, 5, 1)))
    assert (os.stat(root / "d").st_uid, os.stat(root / "d").st_gid) == (2005, 2005)
    assert (d.attr.uid, d.attr.gid) == (5, 5)
    a, _ = tree.setattr(e.nodeid, SetAttr(valid=FATTR_UID | FATTR_GID, uid=5, gid=5), guest_root)
    assert (os.stat(root / "new").st_uid, os.stat(root / "new").st_gid) == (2005, 2005)
    assert (a.uid, a.gid) == (5, 5)
    # a gid outside the namespace map cannot be given away
    assert err(lambda: tree.setattr(e.nodeid, SetAttr(valid=FATTR_GID, gid=7), guest_root)) \
        == errno.EPERM
    assert os.stat(root / "new").st_gid == 2005


@needs_root
def test_a_refused_caller_may_look_but_not_act_as_itself(make_tree: MakeTree) -> None:
    tree = make_tree(uid_map=IdMap(["forbid-guest:0:1000"]))
    root: Path = tree.path  # type: ignore[attr-defined]
    (root / "f").write_text("readable")
    guest_root = tree.map_ctx(Ctx(0, 0, 1))
    # Looking and reading name no id: they go on.
    f = tree.lookup(ROOT_ID, b"f", guest_root)
    o = tree.open(f.nodeid, os.O_RDONLY, guest_root)
    assert tree.read(o.fh, 0, 100) == b"readable"
    tree.release(o.fh)
    # Creating would make a file owned by a forbidden id; access would run as it.
    assert err(lambda: tree.mkdir(ROOT_ID, b"d", 0o755, 0, guest_root)) == errno.EPERM
    assert err(lambda: tree.create(ROOT_ID, b"c", 0o644, os.O_WRONLY, 0, guest_root)) \
        == errno.EPERM
    assert err(lambda: tree.symlink(ROOT_ID, b"s", b"f", guest_root)) == errno.EPERM
    assert err(lambda: tree.access(f.nodeid, os.R_OK, guest_root)) == errno.EPERM
    assert not (root / "d").exists() and not (root / "c").exists()
    # chown TO a forbidden id is refused; an allowed caller still creates.
    user = tree.map_ctx(Ctx(1000, 1000, 1))
    assert user.uid == 1000
    tree.mkdir(ROOT_ID, b"ok", 0o755, 0, user)
    assert os.stat(root / "ok").st_uid == 1000
    assert err(lambda: tree.setattr(f.nodeid, SetAttr(valid=FATTR_UID, uid=0), user)) \
        == errno.EPERM


@needs_root
def test_supplementary_groups_are_mapped_and_refused_ones_dropped(make_tree: MakeTree) -> None:
    tree = make_tree(gid_map=IdMap(["map:10:2010:5", "forbid-guest:20:1"], what="GID"))
    ctx = tree.map_ctx(Ctx(0, 10, 1, groups=(11, 20, 30)))
    assert ctx.gid == 2010 and ctx.groups == (2011, 30)


def test_identity_map_leaves_ctx_and_attr_alone(make_tree: MakeTree) -> None:
    tree = make_tree()
    ctx = Ctx(5, 6, 7)
    assert tree.map_ctx(ctx) is ctx
    assert tree._attr == Tree._attr.__get__(tree)  # not replaced: nothing on the hot path
