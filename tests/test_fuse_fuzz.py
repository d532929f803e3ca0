"""Hostile FUSE messages against the codec and a real tree: whatever the bytes, dispatch
answers (or stays silent for reply-less opcodes) and never raises."""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msbfs.fuse import abi
from msbfs.fuse.abi import Opcode
from msbfs.fuse.kernel import Requests, parse_reply
from msbfs.fuse.server import Deferred, FuseSession
from msbfs.tree import Tree

_dir = tempfile.TemporaryDirectory(prefix="msbfs-fuzz-")
_tree = Tree(_dir.name)
_session = FuseSession(_tree)
_req = Requests()
_session.dispatch(_req.init())

NO_REPLY = {Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT}
opcodes = st.one_of(st.sampled_from([int(o) for o in Opcode if o not in (Opcode.INIT, Opcode.DESTROY)]),
                    st.integers(0, 2**32 - 1))


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(opcode=opcodes, nodeid=st.sampled_from([0, 1, 2, 3, 2**64 - 1]),
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
