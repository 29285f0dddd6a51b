"""Frames: the units inside a packet's payload.

A payload is a sequence of frames, each starting with a one-byte type. A 0x00 byte where a
frame type is expected starts PADDING, which runs to the end of the payload and must be all
zero bytes. All integers are big-endian. Every frame but padding is ack-eliciting; there is no
ACK frame because acknowledgements live in the packet header (packet.py). Byte layouts and
test vectors: docs/PROTOCOL.md section 4.

Frames are validated when decoded (`decode_frames` raises only `PacketError`) and when
encoded (`encode()` raises `PacketError` for a value that does not fit its field); the
constructors do not validate, because the hot path builds one `MessageFrame` per fragment.

The frames that come with data and keepalives (MESSAGE, KEEPALIVE, KEEPALIVE_ACK, ACK_FLOOR,
PARITY) are mutable slots dataclasses with a hand-written `__init__`, which mypyc compiles (the
generated one runs interpreted: the callgrind counts that justify it are in
docs/ARCHITECTURE.md, "The compiled core"); they compare by value and are not hashable. The
others, sent a few times per connection, are plain frozen dataclasses.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from quantum.limits import MAX_FEC_K, MAX_TOKEN_BYTES, SESSION_ID_SIZE
from quantum.packet import PacketError


class Delivery(enum.IntEnum):
    RELIABLE_ORDERED = 0
    RELIABLE_UNORDERED = 1
    UNRELIABLE = 2
    UNRELIABLE_SEQUENCED = 3


PADDING: Final = 0x00
MESSAGE: Final = 0x01
KEEPALIVE: Final = 0x02
KEEPALIVE_ACK: Final = 0x03
CLOSE: Final = 0x04
PARITY: Final = 0x05
ACK_FLOOR: Final = 0x06
PATH_CHALLENGE: Final = 0x07
PATH_RESPONSE: Final = 0x08
SESSION: Final = 0x09
REJECT: Final = 0x0A

#: type, channel, mode, message id, fragment index, fragment count, data length
MESSAGE_FRAME_OVERHEAD: Final = 13
MAX_REASON_BYTES: Final = 512
#: a PARITY frame names the k data packets of its group: k is FEC's group size
MAX_PARITY_SEQS: Final = MAX_FEC_K
PATH_DATA_SIZE: Final = 8
#: "remaining ms" (KEEPALIVE_ACK, SESSION) is the session's remaining lifetime in whole
#: milliseconds, 0..MAX_REMAINING_MS; a longer one (about 49.7 days and up) is sent as
#: MAX_REMAINING_MS, "at least that". NO_SESSION_MS, only in a KEEPALIVE_ACK, says that the
#: connection has no session; a SESSION frame always carries a lifetime.
MAX_REMAINING_MS: Final = 0xFFFFFFFE
NO_SESSION_MS: Final = 0xFFFFFFFF

_MESSAGE: Final = struct.Struct("!BBBIHHH")
_U32_FRAME: Final = struct.Struct("!BI")
_U32_U32_FRAME: Final = struct.Struct("!BII")
_CODE_LEN: Final = struct.Struct("!BHH")
_PARITY_HEAD: Final = struct.Struct("!BIBBB")
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_U32_PAIR: Final = struct.Struct("!II")
_BODY_MESSAGE: Final = struct.Struct("!BBIHHH")
_BODY_CODE_LEN: Final = struct.Struct("!HH")
_BODY_PARITY: Final = struct.Struct("!IBBB")
_SESSION_TAIL: Final = struct.Struct("!IB")
_U32_SEQS: Final = tuple(struct.Struct("!" + "I" * k) for k in range(MAX_PARITY_SEQS + 1))
_DELIVERY: Final = tuple(Delivery)


def remaining_ms(seconds: float | None) -> int:
    """The wire form of a session's remaining lifetime (None: no session, NO_SESSION_MS)."""
    if seconds is None:
        return NO_SESSION_MS
    return max(0, min(MAX_REMAINING_MS, int(seconds * 1000)))


def remaining_seconds(ms: int) -> float | None:
    """The lifetime a "remaining ms" field says, in seconds; None for NO_SESSION_MS."""
    return None if ms == NO_SESSION_MS else ms / 1000


def _pack(fmt: struct.Struct, *values: object) -> bytes:
    try:
        return fmt.pack(*values)
    except struct.error as exc:
        raise _field_error(exc) from None


def _field_error(exc: struct.error) -> PacketError:
    return PacketError(f"cannot encode frame field: {exc}")


@dataclass(slots=True, init=False)
class MessageFrame:
    channel: int
    mode: Delivery
    message_id: int
    frag_index: int
    frag_count: int
    data: bytes

    def __init__(
        self,
        channel: int,
        mode: Delivery,
        message_id: int,
        frag_index: int,
        frag_count: int,
        data: bytes,
    ) -> None:
        self.channel = channel
        self.mode = mode
        self.message_id = message_id
        self.frag_index = frag_index
        self.frag_count = frag_count
        self.data = data

    @property
    def size(self) -> int:
        return MESSAGE_FRAME_OVERHEAD + len(self.data)

    def encode(self) -> bytes:
        if not 0 <= self.mode <= 3:
            raise PacketError(f"unknown delivery mode {self.mode}")
        if not 0 <= self.frag_index < self.frag_count:
            raise PacketError(f"fragment index {self.frag_index} not below count {self.frag_count}")
        # struct called directly, not through _pack: one frame per fragment on the hot path
        try:
            return _MESSAGE.pack(MESSAGE, self.channel, self.mode, self.message_id,
                                 self.frag_index, self.frag_count, len(self.data)) + self.data
        except struct.error as exc:
            raise _field_error(exc) from None


@dataclass(slots=True, init=False)
class KeepaliveFrame:
    keepalive_id: int

    def __init__(self, keepalive_id: int) -> None:
        self.keepalive_id = keepalive_id

    @property
    def size(self) -> int:
        return 5

    def encode(self) -> bytes:
        try:
            return _U32_FRAME.pack(KEEPALIVE, self.keepalive_id)
        except struct.error as exc:
            raise _field_error(exc) from None


@dataclass(slots=True, init=False)
class KeepaliveAckFrame:
    keepalive_id: int
    #: the session's remaining lifetime in ms, or NO_SESSION_MS (see `remaining_ms`)
    remaining_ms: int

    def __init__(self, keepalive_id: int, remaining_ms: int) -> None:
        self.keepalive_id = keepalive_id
        self.remaining_ms = remaining_ms

    @property
    def size(self) -> int:
        return 9

    def encode(self) -> bytes:
        try:
            return _U32_U32_FRAME.pack(KEEPALIVE_ACK, self.keepalive_id, self.remaining_ms)
        except struct.error as exc:
            raise _field_error(exc) from None


def _encode_code_reason(frame_type: int, code: int, reason: str) -> bytes:
    try:
        raw = reason.encode("utf-8")
    except UnicodeEncodeError:
        raise PacketError("reason is not encodable as UTF-8 (lone surrogate)") from None
    if len(raw) > MAX_REASON_BYTES:
        raise PacketError(f"reason of {len(raw)} bytes exceeds {MAX_REASON_BYTES}")
    return _pack(_CODE_LEN, frame_type, code, len(raw)) + raw


@dataclass(frozen=True, slots=True)
class _CodeReasonFrame:
    """The body CLOSE and REJECT share: u16 code, u16 length, UTF-8 reason. Neither is a kind
    of the other (the connection tells them apart with isinstance), so both derive from this."""

    code: int
    reason: str

    @property
    def size(self) -> int:
        return 5 + len(self.reason.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class CloseFrame(_CodeReasonFrame):
    def encode(self) -> bytes:
        return _encode_code_reason(CLOSE, self.code, self.reason)


@dataclass(frozen=True, slots=True)
class RejectFrame(_CodeReasonFrame):
    def encode(self) -> bytes:
        return _encode_code_reason(REJECT, self.code, self.reason)


@dataclass(slots=True, init=False)
class ParityFrame:
    group_id: int
    #: parity shards in the group
    m: int
    #: this shard's index among the parity shards, 0..m-1
    index: int
    #: wire sequence numbers of the group's data packets, in shard order
    data_seqs: tuple[int, ...]
    shard: bytes

    def __init__(
        self,
        group_id: int,
        m: int,
        index: int,
        data_seqs: tuple[int, ...],
        shard: bytes,
    ) -> None:
        self.group_id = group_id
        self.m = m
        self.index = index
        self.data_seqs = data_seqs
        self.shard = shard

    @property
    def size(self) -> int:
        return 8 + 4 * len(self.data_seqs) + 2 + len(self.shard)

    def encode(self) -> bytes:
        k = len(self.data_seqs)
        if not 1 <= k <= MAX_PARITY_SEQS:
            raise PacketError(f"parity group of {k} data packets, must be 1..{MAX_PARITY_SEQS}")
        if not 0 <= self.index < self.m:
            raise PacketError(f"parity index {self.index} not below m={self.m}")
        return b"".join((
            _pack(_PARITY_HEAD, PARITY, self.group_id, self.m, self.index, k),
            _pack(_U32_SEQS[k], *self.data_seqs),
            _pack(_U16, len(self.shard)),
            self.shard,
        ))


@dataclass(slots=True, init=False)
class AckFloorFrame:
    #: the sender will never send or retransmit a packet numbered below this (32-bit wire value)
    floor: int

    def __init__(self, floor: int) -> None:
        self.floor = floor

    @property
    def size(self) -> int:
        return 5

    def encode(self) -> bytes:
        return _pack(_U32_FRAME, ACK_FLOOR, self.floor)


def _check_path_data(data: bytes) -> None:
    if len(data) != PATH_DATA_SIZE:
        raise PacketError(f"path challenge data must be {PATH_DATA_SIZE} bytes, got {len(data)}")


@dataclass(frozen=True, slots=True)
class PathChallengeFrame:
    data: bytes

    @property
    def size(self) -> int:
        return 1 + PATH_DATA_SIZE

    def encode(self) -> bytes:
        _check_path_data(self.data)
        return bytes((PATH_CHALLENGE,)) + self.data


@dataclass(frozen=True, slots=True)
class PathResponseFrame:
    data: bytes

    @property
    def size(self) -> int:
        return 1 + PATH_DATA_SIZE

    def encode(self) -> bytes:
        _check_path_data(self.data)
        return bytes((PATH_RESPONSE,)) + self.data


@dataclass(frozen=True, slots=True)
class SessionFrame:
    session_id: bytes
    token: str
    #: the session's remaining lifetime in ms, at most MAX_REMAINING_MS
    remaining_ms: int
    resumed: bool

    @property
    def size(self) -> int:
        return 1 + SESSION_ID_SIZE + 1 + len(self.token) + 5

    def encode(self) -> bytes:
        if len(self.session_id) != SESSION_ID_SIZE:
            raise PacketError(f"session id must be {SESSION_ID_SIZE} bytes, "
                              f"got {len(self.session_id)}")
        if not self.token.isascii():
            raise PacketError("session token must be ASCII")
        raw = self.token.encode("ascii")
        if not 1 <= len(raw) <= MAX_TOKEN_BYTES:
            raise PacketError(f"session token of {len(raw)} bytes, must be 1..{MAX_TOKEN_BYTES}")
        if not 0 <= self.remaining_ms <= MAX_REMAINING_MS:
            raise PacketError(f"session remaining ms {self.remaining_ms} outside "
                              f"0..{MAX_REMAINING_MS} (a SESSION frame always has a lifetime)")
        return b"".join((bytes((SESSION,)), self.session_id, bytes((len(raw),)), raw,
                         _pack(_SESSION_TAIL, self.remaining_ms, 1 if self.resumed else 0)))


@dataclass(frozen=True, slots=True)
class PaddingFrame:
    """`length` zero bytes; only ever last in a payload. Decoding skips padding silently."""

    length: int

    @property
    def size(self) -> int:
        return self.length

    def encode(self) -> bytes:
        if self.length < 1:
            raise PacketError(f"padding length must be at least 1, got {self.length}")
        return bytes(self.length)


Frame = (MessageFrame | KeepaliveFrame | KeepaliveAckFrame | CloseFrame | ParityFrame
         | AckFloorFrame | PathChallengeFrame | PathResponseFrame | SessionFrame | RejectFrame
         | PaddingFrame)

_FRAME_TYPES: Final = (MessageFrame, KeepaliveFrame, KeepaliveAckFrame, CloseFrame, ParityFrame,
                       AckFloorFrame, PathChallengeFrame, PathResponseFrame, SessionFrame,
                       RejectFrame, PaddingFrame)


def encode_frames(frames: Iterable[object]) -> bytes:
    """Concatenate the frames' encodings (padding, if any, must come last)."""
    if type(frames) is list and len(frames) == 1:
        # the common case on the hot path: one frame, nothing to join
        frame = frames[0]
        if not isinstance(frame, _FRAME_TYPES):
            raise TypeError(f"not a frame: {type(frame).__name__}")
        return frame.encode()
    parts: list[bytes] = []
    padded = False
    for frame in frames:
        if not isinstance(frame, _FRAME_TYPES):
            raise TypeError(f"not a frame: {type(frame).__name__}")
        if padded:
            raise PacketError("padding must be the last frame of a payload")
        padded = isinstance(frame, PaddingFrame)
        parts.append(frame.encode())
    return b"".join(parts)


def is_retransmittable(frame: object) -> bool:
    """Whether a lost packet's frame must go out again in a new packet.

    Unreliable messages never are (their delivery mode says so), keepalives are re-sent by the
    keepalive timer, keepalive answers by the keepalive's sender re-sending the keepalive,
    parity only helps while the group is fresh, path probes are re-issued by the migration
    logic, and an ack floor is recomputed from the next ACK when still needed.
    """
    if isinstance(frame, MessageFrame):
        return frame.mode <= Delivery.RELIABLE_UNORDERED
    return isinstance(frame, CloseFrame | SessionFrame | RejectFrame)


def elicits_ack(frames: list[Frame]) -> bool:
    """Whether a packet carrying `frames` must be acknowledged (and so is tracked in flight).

    Every frame elicits an ACK except KEEPALIVE_ACK (PADDING never reaches a frame list): like
    an ACK, the answer to a keepalive is neither acknowledged, retransmitted nor congestion
    controlled, so a heartbeat costs the answering side no in-flight state and no timer."""
    return any(type(frame) is not KeepaliveAckFrame for frame in frames)


def _need(payload: bytes, end: int, what: str) -> None:
    if end > len(payload):
        raise PacketError(f"truncated {what} frame: needs {end} bytes, payload has {len(payload)}")


def _decode_reason(payload: bytes, pos: int, what: str) -> tuple[int, str, int]:
    _need(payload, pos + 4, what)
    code, length = _BODY_CODE_LEN.unpack_from(payload, pos)
    if length > MAX_REASON_BYTES:
        raise PacketError(f"{what} reason of {length} bytes exceeds {MAX_REASON_BYTES}")
    start = pos + 4
    end = start + length
    _need(payload, end, what)
    try:
        reason = payload[start:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PacketError(f"{what} reason is not valid UTF-8: {exc.reason}") from None
    return code, reason, end


def decode_frames(payload: bytes | bytearray | memoryview) -> list[Frame]:
    """Parse a payload into frames (padding is skipped); raises only PacketError."""
    if type(payload) is not bytes and not isinstance(payload, bytes):
        if not isinstance(payload, bytearray | memoryview):
            raise PacketError(f"payload must be bytes, got {type(payload).__name__}")
        payload = bytes(payload)
    frames: list[Frame] = []  # frames.append, not a bound alias: compiled, that is a C call
    n = len(payload)
    pos = 0
    while pos < n:
        frame_type = payload[pos]
        pos += 1
        # the hot frame types check their length inline instead of calling _need
        if frame_type == MESSAGE:
            if pos + 12 > n:
                _need(payload, pos + 12, "MESSAGE")
            channel, mode, message_id, index, count, length = _BODY_MESSAGE.unpack_from(
                payload, pos)
            if mode > 3:
                raise PacketError(f"MESSAGE frame with unknown delivery mode {mode}")
            if index >= count:
                raise PacketError(f"MESSAGE fragment index {index} not below count {count}")
            start = pos + 12
            pos = start + length
            if pos > n:
                _need(payload, pos, "MESSAGE")
            frames.append(MessageFrame(channel, _DELIVERY[mode], message_id, index, count,
                                payload[start:pos]))
        elif frame_type == PADDING:
            zeros = payload.count(0, pos)
            if zeros != n - pos:
                raise PacketError(f"nonzero byte in padding after offset {pos - 1}")
            break
        elif frame_type in (KEEPALIVE, ACK_FLOOR):
            if pos + 4 > n:
                _need(payload, pos + 4, "KEEPALIVE" if frame_type == KEEPALIVE else "ACK_FLOOR")
            (value,) = _U32.unpack_from(payload, pos)
            pos += 4
            frames.append(KeepaliveFrame(value) if frame_type == KEEPALIVE
                          else AckFloorFrame(value))
        elif frame_type == KEEPALIVE_ACK:
            if pos + 8 > n:
                _need(payload, pos + 8, "KEEPALIVE_ACK")
            keepalive_id, remaining = _U32_PAIR.unpack_from(payload, pos)
            pos += 8
            frames.append(KeepaliveAckFrame(keepalive_id, remaining))
        elif frame_type == CLOSE:
            code, reason, pos = _decode_reason(payload, pos, "CLOSE")
            frames.append(CloseFrame(code, reason))
        elif frame_type == REJECT:
            code, reason, pos = _decode_reason(payload, pos, "REJECT")
            frames.append(RejectFrame(code, reason))
        elif frame_type == PARITY:
            pos = _decode_parity(payload, pos, frames)
        elif frame_type in (PATH_CHALLENGE, PATH_RESPONSE):
            end = pos + PATH_DATA_SIZE
            _need(payload, end, "PATH")
            data = payload[pos:end]
            pos = end
            frames.append(PathChallengeFrame(data) if frame_type == PATH_CHALLENGE
                   else PathResponseFrame(data))
        elif frame_type == SESSION:
            pos = _decode_session(payload, pos, frames)
        else:
            raise PacketError(f"unknown frame type 0x{frame_type:02x} at offset {pos - 1}")
    return frames


def _decode_parity(payload: bytes, pos: int, frames: list[Frame]) -> int:
    _need(payload, pos + 7, "PARITY")
    group_id, m, index, k = _BODY_PARITY.unpack_from(payload, pos)
    if index >= m:
        raise PacketError(f"PARITY index {index} not below m={m}")
    if not 1 <= k <= MAX_PARITY_SEQS:
        raise PacketError(f"PARITY group of {k} data packets, must be 1..{MAX_PARITY_SEQS}")
    pos += 7
    _need(payload, pos + 4 * k + 2, "PARITY")
    seqs = _U32_SEQS[k].unpack_from(payload, pos)
    pos += 4 * k
    length: int = _U16.unpack_from(payload, pos)[0]
    start = pos + 2
    end = start + length
    _need(payload, end, "PARITY")
    frames.append(ParityFrame(group_id, m, index, seqs, payload[start:end]))
    return end


def _decode_session(payload: bytes, pos: int, frames: list[Frame]) -> int:
    _need(payload, pos + SESSION_ID_SIZE + 1, "SESSION")
    session_id = payload[pos:pos + SESSION_ID_SIZE]
    length = payload[pos + SESSION_ID_SIZE]
    if not 1 <= length <= MAX_TOKEN_BYTES:
        raise PacketError(f"SESSION token of {length} bytes, must be 1..{MAX_TOKEN_BYTES}")
    start = pos + SESSION_ID_SIZE + 1
    end = start + length
    _need(payload, end + 5, "SESSION")
    raw = payload[start:end]
    if not raw.isascii():
        raise PacketError("SESSION token is not ASCII")
    remaining, resumed = _SESSION_TAIL.unpack_from(payload, end)
    if remaining == NO_SESSION_MS:
        raise PacketError("SESSION remaining ms is FFFFFFFF (no session): a SESSION frame "
                          "always carries the session's lifetime")
    if resumed > 1:
        raise PacketError(f"SESSION resumed flag must be 0 or 1, got {resumed}")
    frames.append(SessionFrame(session_id, raw.decode("ascii"), remaining, resumed == 1))
    return end + 5
