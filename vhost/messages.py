"""vhost-user wire messages, sans-I/O (QEMU docs/interop/vhost-user.rst).

A message is a 12-byte header (request u32, flags u32, size u32, native endian = little
on every host we run on) followed by ``size`` payload bytes; file descriptors travel in
SCM_RIGHTS ancillary data with it. This module turns header+payload+fds into a typed
``Message`` (checking payload size and fd count for the request) and builds requests and
replies as bytes. It never touches a socket, and it never closes an fd: the caller owns
the fds of a message and closes every one that no handler took (see ``Message.take_fd``).

Rules enforced here, for the backend side:
- version bits must be 1, the reply flag must be clear on a request;
- payload size must match the request's payload type exactly (config: 12 + its size);
- fd count must match: SET_MEM_TABLE one per region, ADD_MEM_REG one, KICK/CALL/ERR one
  unless the invalid-fd bit is set, SET_BACKEND_REQ_FD one, REM_MEM_REG zero or one,
  every other request zero.
Violations raise ``MessageError``; a header that cannot be framed raises ``FramingError``
(the stream cannot be resynchronised: the connection must be closed).
"""

from __future__ import annotations

import enum
import errno
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
MAX_PAYLOAD = 4096          # larger than any message we accept; framing sanity bound
MAX_FDS = 8                 # VHOST_MEMORY_BASELINE_NREGIONS: most fds one message carries
MEM_TABLE_MAX_REGIONS = 8
MAX_CONFIG_SIZE = 256       # VHOST_USER_MAX_CONFIG_SIZE
VRING_IDX_MASK = 0xFF
VRING_NOFD = 1 << 8
VRING_F_LOG = 1             # vhost_vring_addr.flags: log used-ring writes


class Request(enum.IntEnum):
    """Frontend -> backend request types."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


#: Requests whose reply carries a body: the backend always answers them (whatever the
#: NEED_REPLY flag says), and REPLY_ACK never applies to them.
HAS_REPLY = frozenset({Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES,
                       Request.GET_VRING_BASE, Request.GET_QUEUE_NUM, Request.GET_CONFIG,
                       Request.GET_MAX_MEM_SLOTS})


class ProtocolFeature(enum.IntFlag):
    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    BACKEND_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    BACKEND_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16


class Feature(enum.IntFlag):
    """Virtio / vhost feature bits the backend itself deals with."""

    NOTIFY_ON_EMPTY = 1 << 24
    LOG_ALL = 1 << 26                 # VHOST_F_LOG_ALL (never offered)
    RING_INDIRECT_DESC = 1 << 28
    RING_EVENT_IDX = 1 << 29
    PROTOCOL_FEATURES = 1 << 30       # VHOST_USER_F_PROTOCOL_FEATURES
    VERSION_1 = 1 << 32


#: What every backend offers (``vhost.backend``; ``vhost.prelude`` answers with it too,
#: before the backend exists). CONFIG is left to devices that have a config space of
#: their own: QEMU's vhost-user-fs keeps the config itself and warns when a backend
#: offers it.
BASE_FEATURES = (Feature.VERSION_1 | Feature.RING_INDIRECT_DESC | Feature.RING_EVENT_IDX
                 | Feature.PROTOCOL_FEATURES)
BASE_PROTOCOL_FEATURES = (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK
                          | ProtocolFeature.BACKEND_REQ | ProtocolFeature.RESET_DEVICE
                          | ProtocolFeature.CONFIGURE_MEM_SLOTS)


class FramingError(Exception):
    """The byte stream cannot be parsed further; close the connection."""


class MessageError(Exception):
    """A well-framed message that is invalid; the backend answers with an error."""

    def __init__(self, message: str, err: int = errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = err


# ---- payload types -----------------------------------------------------------------

U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_REGION = struct.Struct("<QQQQ")
MEM_TABLE_HEAD = struct.Struct("<II")
CONFIG_HEAD = struct.Struct("<III")


@dataclass(frozen=True)
class Empty:
    pass


@dataclass(frozen=True)
class U64Payload:
    value: int


@dataclass(frozen=True)
class VringState:
    index: int
    num: int


@dataclass(frozen=True)
class VringAddr:
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True)
class VringFile:
    """KICK/CALL/ERR: the queue index and whether an fd came (bit 8 clear)."""

    index: int
    has_fd: bool


@dataclass(frozen=True)
class MemRegion:
    gpa: int
    size: int
    uaddr: int
    mmap_offset: int


@dataclass(frozen=True)
class MemTable:
    regions: tuple[MemRegion, ...]


@dataclass(frozen=True)
class Config:
    offset: int
    size: int
    flags: int
    data: bytes


Payload = Empty | U64Payload | VringState | VringAddr | VringFile | MemRegion | MemTable | Config


@dataclass
class Message:
    """A parsed request. ``fds`` are owned by whoever holds the message: handlers take
    the ones they keep with ``take_fd``; the rest must be closed by the caller."""

    request: int
    flags: int
    body: Payload
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def take_fd(self, i: int = 0) -> int:
        fd = self.fds[i]
        self.fds[i] = -1
        return fd


# request -> (payload kind, size check)
_U64_REQS = {Request.SET_FEATURES, Request.SET_PROTOCOL_FEATURES, Request.SET_LOG_BASE,
             Request.SEND_RARP, Request.NET_SET_MTU, Request.CLOSE_CRYPTO_SESSION,
             Request.SET_STATUS}
_STATE_REQS = {Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.GET_VRING_BASE,
               Request.SET_VRING_ENABLE, Request.SET_VRING_ENDIAN, Request.VRING_KICK}
_FILE_REQS = {Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR}
_EMPTY_REQS = {Request.GET_FEATURES, Request.SET_OWNER, Request.RESET_OWNER,
               Request.GET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM, Request.RESET_DEVICE,
               Request.GET_MAX_MEM_SLOTS, Request.SET_BACKEND_REQ_FD, Request.SET_LOG_FD,
               Request.POSTCOPY_ADVISE, Request.POSTCOPY_LISTEN, Request.POSTCOPY_END,
               Request.GET_STATUS, Request.GPU_SET_SOCKET}
_ONE_FD_REQS = {Request.SET_BACKEND_REQ_FD, Request.SET_LOG_FD, Request.GPU_SET_SOCKET,
                Request.ADD_MEM_REG}


def parse_header(data: bytes) -> tuple[int, int, int]:
    """(request, flags, size) of a 12-byte header; FramingError if unusable."""
    if len(data) != HEADER_SIZE:
        raise FramingError(f"short header ({len(data)} bytes)")
    request, flags, size = HEADER.unpack(data)
    if size > MAX_PAYLOAD:
        raise FramingError(f"payload size {size} exceeds {MAX_PAYLOAD}")
    return request, flags, size


def _expect_size(name: str, payload: bytes, size: int) -> None:
    if len(payload) != size:
        raise MessageError(f"{name}: payload is {len(payload)} bytes, expected {size}")


def _expect_fds(name: str, fds: list[int], n: int | tuple[int, ...]) -> None:
    ok = n if isinstance(n, tuple) else (n,)
    if len(fds) not in ok:
        raise MessageError(f"{name}: {len(fds)} fds, expected {' or '.join(map(str, ok))}")


def parse_request(request: int, flags: int, payload: bytes, fds: list[int]) -> Message:
    """Check and decode one request. Raises MessageError (fds still owned by caller)."""
    if flags & VERSION_MASK != VERSION:
        raise MessageError(f"unsupported vhost-user version {flags & VERSION_MASK}")
    if flags & FLAG_REPLY:
        raise MessageError("reply flag set on a request")
    try:
        req = Request(request)
    except ValueError:
        raise MessageError(f"unknown request type {request}", errno.ENOSYS) from None
    name = req.name
    body: Payload
    if req in _EMPTY_REQS:
        _expect_size(name, payload, 0)
        body = Empty()
    elif req in _U64_REQS:
        _expect_size(name, payload, U64.size)
        body = U64Payload(U64.unpack(payload)[0])
    elif req in _STATE_REQS:
        _expect_size(name, payload, VRING_STATE.size)
        body = VringState(*VRING_STATE.unpack(payload))
    elif req in _FILE_REQS:
        _expect_size(name, payload, U64.size)
        v = U64.unpack(payload)[0]
        if v & ~(VRING_IDX_MASK | VRING_NOFD):
            raise MessageError(f"{name}: unknown bits in {v:#x}")
        body = VringFile(v & VRING_IDX_MASK, not v & VRING_NOFD)
        _expect_fds(name, fds, 1 if body.has_fd else 0)
    elif req == Request.SET_VRING_ADDR:
        _expect_size(name, payload, VRING_ADDR.size)
        body = VringAddr(*VRING_ADDR.unpack(payload))
    elif req == Request.SET_MEM_TABLE:
        if len(payload) < MEM_TABLE_HEAD.size:
            raise MessageError(f"{name}: payload too short")
        n, _pad = MEM_TABLE_HEAD.unpack_from(payload)
        if not 1 <= n <= MEM_TABLE_MAX_REGIONS:
            raise MessageError(f"{name}: {n} regions (1..{MEM_TABLE_MAX_REGIONS})")
        _expect_size(name, payload, MEM_TABLE_HEAD.size + n * MEM_REGION.size)
        _expect_fds(name, fds, n)
        body = MemTable(tuple(MemRegion(*MEM_REGION.unpack_from(payload, 8 + 32 * i))
                              for i in range(n)))
    elif req in (Request.ADD_MEM_REG, Request.REM_MEM_REG):
        _expect_size(name, payload, 8 + MEM_REGION.size)
        body = MemRegion(*MEM_REGION.unpack_from(payload, 8))
    elif req in (Request.GET_CONFIG, Request.SET_CONFIG):
        if len(payload) < CONFIG_HEAD.size:
            raise MessageError(f"{name}: payload too short")
        off, size, cflags = CONFIG_HEAD.unpack_from(payload)
        if size > MAX_CONFIG_SIZE or off > MAX_CONFIG_SIZE - size:
            raise MessageError(f"{name}: config range {off}+{size} out of bounds")
        _expect_size(name, payload, CONFIG_HEAD.size + size)
        body = Config(off, size, cflags, bytes(payload[CONFIG_HEAD.size:]))
    else:
        raise MessageError(f"{name} is not supported", errno.ENOSYS)
    if req in _ONE_FD_REQS:
        _expect_fds(name, fds, 1)
    elif req == Request.REM_MEM_REG:
        _expect_fds(name, fds, (0, 1))  # spec: MAY carry one, which is closed unused
    elif req not in _FILE_REQS and req != Request.SET_MEM_TABLE:
        _expect_fds(name, fds, 0)
    return Message(req, flags, body, fds)


# ---- building ----------------------------------------------------------------------


def encode(body: Payload) -> bytes:
    """Payload bytes of a typed body (both directions use the same layouts)."""
    match body:
        case Empty():
            return b""
        case U64Payload(value):
            return U64.pack(value)
        case VringState(index, num):
            return VRING_STATE.pack(index, num)
        case VringAddr(index, flags, desc, used, avail, log):
            return VRING_ADDR.pack(index, flags, desc, used, avail, log)
        case VringFile(index, has_fd):
            return U64.pack(index | (0 if has_fd else VRING_NOFD))
        case MemRegion(gpa, size, uaddr, off):
            return U64.pack(0) + MEM_REGION.pack(gpa, size, uaddr, off)
        case MemTable(regions):
            return MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(
                MEM_REGION.pack(r.gpa, r.size, r.uaddr, r.mmap_offset) for r in regions)
        case Config(offset, size, flags, data):
            return CONFIG_HEAD.pack(offset, size, flags) + data
    raise TypeError(f"cannot encode {body!r}")


def build(request: int, payload: bytes = b"", *, reply: bool = False,
          need_reply: bool = False) -> bytes:
    """Header + payload of one message."""
    flags = VERSION | (FLAG_REPLY if reply else 0) | (FLAG_NEED_REPLY if need_reply else 0)
    return HEADER.pack(request, flags, len(payload)) + payload


def build_reply(request: int, body: Payload | bytes) -> bytes:
    payload = body if isinstance(body, bytes | bytearray) else encode(body)
    return build(request, bytes(payload), reply=True)


def build_ack(request: int, ok: bool) -> bytes:
    """REPLY_ACK answer: u64 0 on success, non-zero on failure."""
    return build_reply(request, U64Payload(0 if ok else 1))


@dataclass(frozen=True)
class Reply:
    request: int
    flags: int
    payload: bytes


def parse_reply(request: int, flags: int, payload: bytes) -> Reply:
    """Frontend side: check a reply's header (it must answer ``request``)."""
    if flags & VERSION_MASK != VERSION or not flags & FLAG_REPLY:
        raise MessageError(f"bad reply flags {flags:#x}")
    return Reply(request, flags, payload)
