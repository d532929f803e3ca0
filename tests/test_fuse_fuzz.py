"""Hostile FUSE messages against the codec and a real, populated tree, in-process: an
exception in dispatch fails here (a daemon would turn it into a log line and an EIO).

- structure-aware (tools/fuzz/fuse_model, the campaign's FUSE generator): mostly valid
  requests on node ids and handles from earlier replies, as root and two unprivileged
  users, plus mutated and random ones; every answer is a well-formed reply to that
  request, and well-formed requests mostly succeed (the old version of this test sent
  1,500 messages at an empty tree and got 3 successes);
- hypothesis: any opcode, node id, body, length lie and reply room still gets an answer
  (or none for the reply-less opcodes), never an exception;
- garbage shorter than a header.
The same generator runs against real daemons through vhost-user in test_fuzz_campaign.
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msbfs.fuse import abi
from msbfs.fuse.abi import Opcode
from msbfs.fuse.kernel import Requests, parse_reply
from msbfs.fuse.server import Deferred, FuseSession
from msbfs.tree import Tree
from tools.fuzz.fuse_model import NO_REPLY, UNIMPLEMENTED, Generator, Model
from tools.fuzz.layout import Layout

_dir = tempfile.TemporaryDirectory(prefix="msbfs-fuzz-")
_layout = Layout(Path(_dir.name))
_layout.create()
_tree = Tree(_layout.root)
_session = FuseSession(_tree)
_req = Requests()
_session.dispatch(_req.init())

#: Node ids a hostile kernel might name: the root, ones the tree gave out, made-up ones.
NODEIDS = [0, 1, 2, 3, 2**64 - 1]
for name in (b"f1", b"d1", b"ln_up", b"fifo", b"priv"):
    rep = parse_reply(_session.dispatch(_req.lookup(1, name)))  # type: ignore[arg-type]
    NODEIDS.append(int.from_bytes(rep.payload[:8], "little"))


def _answer(out: bytes | Deferred | None) -> bytes | None:
    return out.run() if isinstance(out, Deferred) else out


def test_structure_aware_requests_go_deep_and_get_well_formed_answers(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.create()
    tree = Tree(layout.root)
    try:
        session = FuseSession(tree)
        model = Model()
        gen = Generator(random.Random(11), model)
        assert parse_reply(session.dispatch(gen.r.init())).error == 0  # type: ignore[arg-type]
        model.reset()
        ok: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for _ in range(4000):
            d = gen.next()
            out = _answer(session.dispatch(d.data, d.room))
            if out is None:
                assert d.op in NO_REPLY or d.form != "valid" or len(d.data) < 16, d
                if d.form == "valid":
                    model.absorb(d.op, d.info, None)
                continue
            rep = parse_reply(out)
            assert rep.unique == int.from_bytes(d.data[8:16], "little")
            assert 0 <= rep.error < 4096
            assert len(out) <= max(d.room, abi.fuse_out_header.size)
            if d.form == "valid":
                name = Opcode(d.op).name
                seen[name] += 1
                ok[name] += rep.error == 0
                model.absorb(d.op, d.info, rep)
        implemented = [k for k in seen if Opcode[k] not in UNIMPLEMENTED]
        assert sum(ok[k] for k in implemented) > 0.55 * sum(seen[k] for k in implemented)
        never = [k for k in implemented if ok[k] == 0 and Opcode[k] not in NO_REPLY]
        assert never == [], f"never succeeded: {never}"
    finally:
        tree.close()


opcodes = st.one_of(st.sampled_from([int(o) for o in Opcode if o not in (Opcode.INIT, Opcode.DESTROY)]),
                    st.integers(0, 2**32 - 1))


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(opcode=opcodes, nodeid=st.sampled_from(NODEIDS),
       body=st.binary(max_size=300), lie=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
       extlen=st.integers(0, 3), room=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_any_message_gets_an_answer_never_an_exception(opcode: int, nodeid: int, body: bytes,
                                                       lie: int | None, extlen: int,
                                                       room: int | None) -> None:
    if opcode == Opcode.SETLKW:
        opcode = Opcode.SETLK  # the blocking variant is exercised in test_fuse_server
    req = _req.raw(opcode, nodeid, body, length=lie, extlen=extlen)
    out = _session.dispatch(req, room)
    assert not isinstance(out, Deferred)
    if out is None:
        assert opcode in NO_REPLY
        return
    rep = parse_reply(out)
    assert rep.unique == _req.last_unique
    assert 0 <= rep.error < 4096
    if room is not None and rep.error == 0:
        assert len(out) <= max(room, abi.fuse_out_header.size) or opcode not in (
            Opcode.READ, Opcode.READDIR, Opcode.READDIRPLUS, Opcode.GETXATTR, Opcode.LISTXATTR)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_shorter_than_a_header(data: bytes) -> None:
    out = _session.dispatch(data)
    if len(data) < abi.fuse_in_header.size:
        assert out is None or parse_reply(out).error > 0
    elif out is not None:
        # 40-64 bytes: a header, maybe lying about its length; whatever it says, an
        # answer is a whole reply carrying the header's unique
        rep = parse_reply(out)
        assert rep.unique == int.from_bytes(data[8:16], "little")
        assert 0 <= rep.error < 4096
