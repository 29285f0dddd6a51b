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

from quantum.limits import MAX_FEC_K, MAX_MESSAGE_SIZE, MAX_TOKEN_BYTES, SESSION_ID_SIZE
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
PING: Final = 0x0B
DELIVERED: Final = 0x0C

#: a whole message: type, channel, mode, message id, data length
MESSAGE_OVERHEAD: Final = 9
#: a fragment: the same plus offset and total (u32 each)
FRAGMENT_OVERHEAD: Final = 17
#: the MESSAGE frame's mode byte: bit 7 says the offset and total fields follow; bits 2..6 are
#: reserved (zero); bits 0..1 are the delivery mode
FRAGMENT_BIT: Final = 0x80
_MODE_RESERVED: Final = 0x7C
#: `MessageFrame.total` of a frame that holds its whole message (no fragment fields)
WHOLE: Final = -1
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

_MESSAGE: Final = struct.Struct("!BBBIH")
_FRAGMENT: Final = struct.Struct("!BBBIIIH")
_U32_FRAME: Final = struct.Struct("!BI")
_U32_U32_FRAME: Final = struct.Struct("!BII")
_CODE_LEN: Final = struct.Struct("!BHH")
_PARITY_HEAD: Final = struct.Struct("!BIBBB")
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_U32_PAIR: Final = struct.Struct("!II")
_BODY_MESSAGE: Final = struct.Struct("!BBIH")
_BODY_FRAGMENT: Final = struct.Struct("!IIH")
_BODY_CODE_LEN: Final = struct.Struct("!HH")
_BODY_PARITY: Final = struct.Struct("!IBBB")
_SESSION_TAIL: Final = struct.Struct("!IB")
_MARK: Final = struct.Struct("!BBI")
#: the most (channel, mode, mark) entries one DELIVERED frame carries (2 + 6 x 128 = 770
#: bytes: it fits any packet's room)
MAX_DELIVERED_MARKS: Final = 128
#: SESSION's `resumed` byte: 0 a new session, 1 resumed (streams start again at id 0), 2
#: resumed with the carry-over (streams continue where the lost connection left them)
RESUMED_CARRIED: Final = 2
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
    """A whole message (`total` is WHOLE), or the bytes [offset, offset + len(data)) of a
    message of `total` bytes (a fragment, docs/PROTOCOL.md 4.1)."""

    channel: int
    mode: Delivery
    message_id: int
    data: bytes
    offset: int
    total: int

    def __init__(
        self,
        channel: int,
        mode: Delivery,
        message_id: int,
        data: bytes,
        offset: int = 0,
        total: int = WHOLE,
    ) -> None:
        self.channel = channel
        self.mode = mode
        self.message_id = message_id
        self.data = data
        self.offset = offset
        self.total = total

    @property
    def size(self) -> int:
        return (MESSAGE_OVERHEAD if self.total < 0 else FRAGMENT_OVERHEAD) + len(self.data)

    def encode(self) -> bytes:
        mode = self.mode
        if not 0 <= mode <= 3:
            raise PacketError(f"unknown delivery mode {mode}")
        total = self.total
        # struct called directly, not through _pack: one frame per fragment on the hot path
        try:
            if total < 0:
                return _MESSAGE.pack(MESSAGE, self.channel, mode, self.message_id,
                                     len(self.data)) + self.data
            _check_fragment(mode, self.offset, len(self.data), total)
            return _FRAGMENT.pack(MESSAGE, self.channel, mode | FRAGMENT_BIT, self.message_id,
                                  self.offset, total, len(self.data)) + self.data
        except struct.error as exc:
            raise _field_error(exc) from None


def _check_fragment(mode: int, offset: int, length: int, total: int) -> None:
    """The fragment rules (PacketError): reliable modes only, 1 byte or more, inside a
    message of at most MAX_MESSAGE_SIZE bytes."""
    if mode > 1:
        raise PacketError(f"MESSAGE fragment in unreliable mode {mode} (only reliable "
                          "messages are fragmented)")
    if length < 1:
        raise PacketError("empty MESSAGE fragment")
    if total > MAX_MESSAGE_SIZE:
        raise PacketError(f"MESSAGE fragment of a {total}-byte message, beyond the maximum "
                          f"of {MAX_MESSAGE_SIZE}")
    if offset < 0 or offset + length > total:
        raise PacketError(f"MESSAGE fragment [{offset}, {offset + length}) outside the "
                          f"{total}-byte message")


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


def cut_reason(reason: str) -> str:
    """`reason` cut to at most MAX_REASON_BYTES of UTF-8 at a character boundary (4: a sender
    cuts a longer reason), so every outgoing CLOSE and REJECT encodes. A lone surrogate (not
    encodable) becomes "?"."""
    # the cut may split a character: "ignore" drops only that incomplete tail
    return reason.encode("utf-8", "replace")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


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
    #: resumed with the lost connection's carry-over (`resumed` byte 2, PROTOCOL.md 12.4)
    carried: bool = False

    def __repr__(self) -> str:
        # the token is a credential: a repr ends up in logs and tracebacks
        return (f"SessionFrame(session_id={self.session_id.hex()}, token=<hidden>, "
                f"remaining_ms={self.remaining_ms}, resumed={self.resumed}, "
                f"carried={self.carried})")

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
                         _pack(_SESSION_TAIL, self.remaining_ms,
                               RESUMED_CARRIED if self.carried else 1 if self.resumed else 0)))


@dataclass(frozen=True, slots=True)
class DeliveredFrame:
    """How far the sender has delivered each reliable stream of a carried-over connection
    (PROTOCOL.md 12.4): `marks` are (channel, mode, mark) with mode 0 or 1; for
    RELIABLE_ORDERED every id below the mark was delivered, for RELIABLE_UNORDERED every id
    below it too (the watermark). The peer need not resend what lies below."""

    marks: tuple[tuple[int, int, int], ...]

    @property
    def size(self) -> int:
        return 2 + 6 * len(self.marks)

    def encode(self) -> bytes:
        marks = self.marks
        if not 1 <= len(marks) <= MAX_DELIVERED_MARKS:
            raise PacketError(f"DELIVERED carries {len(marks)} marks, must be "
                              f"1..{MAX_DELIVERED_MARKS}")
        parts = [bytes((DELIVERED, len(marks)))]
        for channel, mode, mark in marks:
            if mode > Delivery.RELIABLE_UNORDERED or mode < 0:
                raise PacketError(f"DELIVERED mark for mode {mode}: only reliable modes")
            parts.append(_pack(_MARK, channel, mode, mark))
        return b"".join(parts)


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


@dataclass(frozen=True, slots=True)
class PingFrame:
    """No body: elicits an acknowledgement and nothing else (a path MTU probe's frame)."""

    @property
    def size(self) -> int:
        return 1

    def encode(self) -> bytes:
        return _PING_BYTES


_PING_BYTES: Final = bytes((PING,))

Frame = (MessageFrame | KeepaliveFrame | KeepaliveAckFrame | CloseFrame | ParityFrame
         | AckFloorFrame | PathChallengeFrame | PathResponseFrame | SessionFrame | RejectFrame
         | PaddingFrame | PingFrame | DeliveredFrame)

_FRAME_TYPES: Final = (MessageFrame, KeepaliveFrame, KeepaliveAckFrame, CloseFrame, ParityFrame,
                       AckFloorFrame, PathChallengeFrame, PathResponseFrame, SessionFrame,
                       RejectFrame, PaddingFrame, PingFrame, DeliveredFrame)


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


#: the frames other than messages that a lost packet's retransmission carries again
_RETRANSMITTED_TYPES: Final = frozenset((CloseFrame, SessionFrame, RejectFrame, DeliveredFrame))


def is_retransmittable(frame: object) -> bool:
    """Whether a lost packet's frame must go out again in a new packet.

    Unreliable messages never are (their delivery mode says so), keepalives are re-sent by the
    keepalive timer, keepalive answers by the keepalive's sender re-sending the keepalive,
    parity only helps while the group is fresh, path probes are re-issued by the migration
    logic, an ack floor is recomputed from the next ACK when still needed, and a PING (a path
    MTU probe) is judged by its acknowledgement alone.
    """
    if isinstance(frame, MessageFrame):
        return frame.mode <= Delivery.RELIABLE_UNORDERED
    # a set of the (final) classes: `isinstance(frame, A | B | ...)` builds the union objects
    # anew at every call, compiled or not (about 1,000 instructions, for every frame sent)
    return type(frame) in _RETRANSMITTED_TYPES



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
            if pos + 8 > n:
                _need(payload, pos + 8, "MESSAGE")
            channel, mode, message_id, length = _BODY_MESSAGE.unpack_from(payload, pos)
            if mode <= 3:  # a whole message
                start = pos + 8
                pos = start + length
                if pos > n:
                    _need(payload, pos, "MESSAGE")
                frames.append(MessageFrame(channel, _DELIVERY[mode], message_id,
                                           payload[start:pos]))
            else:
                pos = _decode_fragment(payload, pos, channel, mode, message_id, frames)
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
        elif frame_type == PING:
            frames.append(PingFrame())
        elif frame_type == DELIVERED:
            pos = _decode_delivered(payload, pos, frames)
        else:
            raise PacketError(f"unknown frame type 0x{frame_type:02x} at offset {pos - 1}")
    return frames


def _decode_fragment(payload: bytes, pos: int, channel: int, mode: int, message_id: int,
                     frames: list[Frame]) -> int:
    """A MESSAGE frame whose mode byte is not a bare delivery mode: a fragment, or malformed."""
    if mode & _MODE_RESERVED or not mode & FRAGMENT_BIT:
        raise PacketError(f"MESSAGE frame with reserved mode bits set (0x{mode:02x})")
    mode &= 3
    _need(payload, pos + 16, "MESSAGE")
    offset, total, length = _BODY_FRAGMENT.unpack_from(payload, pos + 6)
    _check_fragment(mode, offset, length, total)
    start = pos + 16
    end: int = start + length
    _need(payload, end, "MESSAGE")
    frames.append(MessageFrame(channel, _DELIVERY[mode], message_id, payload[start:end],
                               offset, total))
    return end


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
    if resumed > RESUMED_CARRIED:
        raise PacketError(f"SESSION resumed byte must be 0, 1 or 2, got {resumed}")
    frames.append(SessionFrame(session_id, raw.decode("ascii"), remaining, resumed >= 1,
                               resumed == RESUMED_CARRIED))
    return end + 5


def _decode_delivered(payload: bytes, pos: int, frames: list[Frame]) -> int:
    _need(payload, pos + 1, "DELIVERED")
    count = payload[pos]
    if not 1 <= count <= MAX_DELIVERED_MARKS:
        raise PacketError(f"DELIVERED carries {count} marks, must be 1..{MAX_DELIVERED_MARKS}")
    pos += 1
    end = pos + 6 * count
    _need(payload, end, "DELIVERED")
    marks: list[tuple[int, int, int]] = []
    for at in range(pos, end, 6):
        channel, mode, mark = _MARK.unpack_from(payload, at)
        if mode > 1:
            raise PacketError(f"DELIVERED mark for mode {mode}: only reliable modes (0, 1)")
        marks.append((channel, mode, mark))
    frames.append(DeliveredFrame(tuple(marks)))
    return end
