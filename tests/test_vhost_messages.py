"""vhost.messages, table-driven: bytes+fds in, typed messages out, and back."""

from __future__ import annotations

import errno
import struct

import pytest

from vhost import messages as m
from vhost.messages import (
    Config,
    Empty,
    FramingError,
    MemRegion,
    MemTable,
    MessageError,
    Request,
    U64Payload,
    VringAddr,
    VringFile,
    VringState,
)

REGION = MemRegion(0x1000, 0x20000, 0x7F0000000000, 0x3000)
REGION_BYTES = struct.pack("<QQQQ", 0x1000, 0x20000, 0x7F0000000000, 0x3000)

# (request, payload, number of fds, expected body)
GOOD = [
    (Request.GET_FEATURES, b"", 0, Empty()),
    (Request.SET_FEATURES, struct.pack("<Q", 1 << 32 | 1 << 30), 0,
     U64Payload(1 << 32 | 1 << 30)),
    (Request.SET_OWNER, b"", 0, Empty()),
    (Request.RESET_OWNER, b"", 0, Empty()),
    (Request.RESET_DEVICE, b"", 0, Empty()),
    (Request.GET_PROTOCOL_FEATURES, b"", 0, Empty()),
    (Request.SET_PROTOCOL_FEATURES, struct.pack("<Q", 0x8209), 0, U64Payload(0x8209)),
    (Request.GET_QUEUE_NUM, b"", 0, Empty()),
    (Request.GET_MAX_MEM_SLOTS, b"", 0, Empty()),
    (Request.SET_VRING_NUM, struct.pack("<II", 1, 256), 0, VringState(1, 256)),
    (Request.SET_VRING_BASE, struct.pack("<II", 0, 7), 0, VringState(0, 7)),
    (Request.GET_VRING_BASE, struct.pack("<II", 2, 0), 0, VringState(2, 0)),
    (Request.SET_VRING_ENABLE, struct.pack("<II", 0, 1), 0, VringState(0, 1)),
    (Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 1, 0, 10, 20, 30, 0), 0,
     VringAddr(1, 0, 10, 20, 30, 0)),
    (Request.SET_VRING_KICK, struct.pack("<Q", 3), 1, VringFile(3, True)),
    (Request.SET_VRING_CALL, struct.pack("<Q", 0x100 | 2), 0, VringFile(2, False)),
    (Request.SET_VRING_ERR, struct.pack("<Q", 0), 1, VringFile(0, True)),
    (Request.SET_MEM_TABLE, struct.pack("<II", 1, 0) + REGION_BYTES, 1, MemTable((REGION,))),
    (Request.SET_MEM_TABLE, struct.pack("<II", 2, 0) + REGION_BYTES * 2, 2,
     MemTable((REGION, REGION))),
    (Request.ADD_MEM_REG, bytes(8) + REGION_BYTES, 1, REGION),
    (Request.REM_MEM_REG, bytes(8) + REGION_BYTES, 0, REGION),
    (Request.REM_MEM_REG, bytes(8) + REGION_BYTES, 1, REGION),  # tolerated, closed unused
    (Request.GET_CONFIG, struct.pack("<III", 4, 8, 0) + bytes(8), 0, Config(4, 8, 0, bytes(8))),
    (Request.SET_CONFIG, struct.pack("<III", 0, 3, 1) + b"abc", 0, Config(0, 3, 1, b"abc")),
    (Request.SET_BACKEND_REQ_FD, b"", 1, Empty()),
]


@pytest.mark.parametrize(("request_", "payload", "nfds", "body"), GOOD,
                         ids=[f"{r.name}-{i}" for i, (r, *_) in enumerate(GOOD)])
def test_parse_good(request_: Request, payload: bytes, nfds: int, body: m.Payload) -> None:
    fds = list(range(100, 100 + nfds))
    msg = m.parse_request(request_, m.VERSION, payload, fds)
    assert msg.request == request_
    assert msg.body == body
    assert msg.fds == fds
    assert not msg.need_reply
    # the same layouts encode back to the same bytes
    assert m.encode(body) == payload


# (request, payload, number of fds, flags, what the error says)
BAD = [
    (999, b"", 0, m.VERSION, "unknown request"),
    (Request.GET_FEATURES, b"", 0, 0x2, "version"),
    (Request.GET_FEATURES, b"", 0, m.VERSION | m.FLAG_REPLY, "reply flag"),
    (Request.GET_FEATURES, b"x", 0, m.VERSION, "expected 0"),
    (Request.GET_FEATURES, b"", 1, m.VERSION, "1 fds"),
    (Request.SET_FEATURES, b"1234567", 0, m.VERSION, "expected 8"),
    (Request.SET_VRING_NUM, struct.pack("<III", 0, 1, 2), 0, m.VERSION, "expected 8"),
    (Request.SET_VRING_ADDR, bytes(39), 0, m.VERSION, "expected 40"),
    (Request.SET_VRING_KICK, struct.pack("<Q", 0), 0, m.VERSION, "0 fds"),
    (Request.SET_VRING_KICK, struct.pack("<Q", 0x100), 1, m.VERSION, "1 fds"),
    (Request.SET_VRING_CALL, struct.pack("<Q", 0x200), 1, m.VERSION, "unknown bits"),
    (Request.SET_VRING_CALL, struct.pack("<Q", 0), 2, m.VERSION, "2 fds"),
    (Request.SET_MEM_TABLE, struct.pack("<II", 0, 0), 0, m.VERSION, "0 regions"),
    (Request.SET_MEM_TABLE, struct.pack("<II", 9, 0) + REGION_BYTES * 9, 9, m.VERSION,
     "9 regions"),
    (Request.SET_MEM_TABLE, struct.pack("<II", 2, 0) + REGION_BYTES, 2, m.VERSION, "expected 72"),
    (Request.SET_MEM_TABLE, struct.pack("<II", 1, 0) + REGION_BYTES, 2, m.VERSION, "2 fds"),
    (Request.SET_MEM_TABLE, b"\x01", 0, m.VERSION, "too short"),
    (Request.ADD_MEM_REG, bytes(8) + REGION_BYTES, 0, m.VERSION, "0 fds"),
    (Request.ADD_MEM_REG, REGION_BYTES, 1, m.VERSION, "expected 40"),
    (Request.REM_MEM_REG, bytes(8) + REGION_BYTES, 2, m.VERSION, "2 fds"),
    (Request.GET_CONFIG, struct.pack("<III", 250, 8, 0) + bytes(8), 0, m.VERSION, "out of bounds"),
    (Request.GET_CONFIG, struct.pack("<III", 0, 300, 0) + bytes(300), 0, m.VERSION,
     "out of bounds"),
    (Request.SET_CONFIG, struct.pack("<III", 0, 4, 0) + b"ab", 0, m.VERSION, "expected 16"),
    (Request.GET_CONFIG, b"\x00", 0, m.VERSION, "too short"),
    (Request.SET_BACKEND_REQ_FD, b"", 0, m.VERSION, "0 fds"),
    (Request.IOTLB_MSG, bytes(24), 0, m.VERSION, "not supported"),
    (Request.SET_INFLIGHT_FD, bytes(24), 1, m.VERSION, "not supported"),
]


@pytest.mark.parametrize(("request_", "payload", "nfds", "flags", "says"), BAD,
                         ids=[f"{r}-{i}" for i, (r, *_) in enumerate(BAD)])
def test_parse_bad(request_: int, payload: bytes, nfds: int, flags: int, says: str) -> None:
    fds = list(range(100, 100 + nfds))
    with pytest.raises(MessageError, match=says):
        m.parse_request(request_, flags, payload, fds)
    assert fds == list(range(100, 100 + nfds))  # fds stay the caller's to close


def test_unknown_request_is_enosys() -> None:
    with pytest.raises(MessageError) as e:
        m.parse_request(12345, m.VERSION, b"", [])
    assert e.value.errno == errno.ENOSYS


@pytest.mark.parametrize(("header", "error"), [
    (b"\x01\x00", "short header"),
    (struct.pack("<III", 1, 1, m.MAX_PAYLOAD + 1), "exceeds"),
])
def test_header_framing(header: bytes, error: str) -> None:
    with pytest.raises(FramingError, match=error):
        m.parse_header(header)


def test_header_roundtrip() -> None:
    data = m.build(Request.SET_VRING_NUM, m.encode(VringState(1, 64)), need_reply=True)
    req, flags, size = m.parse_header(data[:12])
    msg = m.parse_request(req, flags, data[12:12 + size], [])
    assert msg.need_reply and msg.body == VringState(1, 64)


@pytest.mark.parametrize(("request_", "body", "payload"), [
    (Request.GET_FEATURES, U64Payload(5), struct.pack("<Q", 5)),
    (Request.GET_VRING_BASE, VringState(1, 9), struct.pack("<II", 1, 9)),
    (Request.GET_CONFIG, Config(0, 2, 0, b"ab"), struct.pack("<III", 0, 2, 0) + b"ab"),
])
def test_build_reply(request_: Request, body: m.Payload, payload: bytes) -> None:
    data = m.build_reply(request_, body)
    req, flags, size = m.parse_header(data[:12])
    assert (req, size) == (request_, len(payload))
    assert flags == m.VERSION | m.FLAG_REPLY
    assert m.parse_reply(req, flags, data[12:]).payload == payload


def test_ack() -> None:
    ok, bad = m.build_ack(Request.SET_OWNER, True), m.build_ack(Request.SET_OWNER, False)
    assert struct.unpack("<Q", ok[12:]) == (0,)
    assert struct.unpack("<Q", bad[12:])[0] != 0
    with pytest.raises(MessageError):
        m.parse_reply(Request.SET_OWNER, m.VERSION, ok[12:])  # reply flag missing


def test_take_fd() -> None:
    msg = m.parse_request(Request.SET_VRING_KICK, m.VERSION, struct.pack("<Q", 0), [42])
    assert msg.take_fd(0) == 42
    assert msg.fds == [-1]
