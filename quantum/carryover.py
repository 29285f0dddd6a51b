"""What a lost connection still owed, carried to the connection that resumes its session.

Sans-I/O. When a connection is lost while its session stays resumable, `Connection.carryover`
captures, per reliable stream (a (channel, mode) pair of mode RELIABLE_ORDERED or
RELIABLE_UNORDERED):

* the sending side: the next message id, and every reliable message or piece of one not
  known to have arrived (in flight unacknowledged, waiting for retransmission, or queued);
* the receiving side: how far the stream was delivered (the ordered stream's next id, the
  unordered stream's watermark and the ids delivered above it), the complete messages waiting
  for an earlier one, and the messages under reassembly.

The resuming connection continues every stream from there (PROTOCOL.md 12.4): the sender
resends what it owes with the ids it had, the receiver's duplicate detection drops what it
had already, so each reliable message is delivered exactly once and in order. Unreliable
streams are not carried (never replayed): they start again at id 0.

The server keeps a `Carryover` as one opaque blob in `quantum_server.retained.RetainedStore`
(and its snapshot on disk), so the encoding is self-contained and strictly validated:
`decode` raises `CarryoverError`, and nothing else, for any input that `encode` could not have
produced, including states a receiver cannot be in. The blob holds message payloads and
stream positions, never a key, token or address.

Encoding, version 1 (big-endian; u64 stream positions are 64-bit, ids on the wire u32):

    magic "QCRY" (4) || version u8 = 1
    sender streams: u16 n, n x (channel u8, mode u8, next id u32)
    owed pieces:    u32 n, n x (channel u8, mode u8, id u32, kind u8 (0 whole, 1 fragment),
                                [offset u32, total u32 if fragment], length u32, data)
    receiver streams: u16 n, n x (channel u8, mode u8, mark u64,
                                  u32 r, r x (start u64, end u64)        delivered above mark
                                  u32 w, w x (id u64, length u32, data)  complete, waiting
                                  u32 p, p x (id u64, total u32, u32 k,
                                              k x (offset u32, length u32, data)))
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from quantum.channels import ChannelReceiver
from quantum.errors import ProtocolError, QuantumError
from quantum.frames import WHOLE, Delivery, MessageFrame
from quantum.limits import MAX_MESSAGE_SIZE

__all__ = ["VERSION", "Carryover", "CarryoverError", "InboundStream", "decode", "encode"]

MAGIC: Final = b"QCRY"
VERSION: Final = 1

_STREAM = struct.Struct(">BBI")
_PIECE = struct.Struct(">BBIB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64_PAIR = struct.Struct(">QQ")
_INBOUND = struct.Struct(">BBQ")
_U64_U32 = struct.Struct(">QI")
_U32_PAIR = struct.Struct(">II")

InboundPartial = tuple[int, int, tuple[tuple[int, bytes], ...]]


class CarryoverError(QuantumError):
    """A carry-over blob that is not one `encode` produced (truncated, foreign, corrupt)."""


@dataclass(frozen=True, slots=True)
class InboundStream:
    """How far one reliable stream was delivered, and what it held undelivered."""

    channel: int
    mode: int
    #: 64-bit stream position: every id below it was delivered
    mark: int
    #: unordered: the ids delivered above the mark, as sorted half-open ranges
    delivered: tuple[tuple[int, int], ...] = ()
    #: ordered: complete messages waiting for an earlier one, (id, data)
    ready: tuple[tuple[int, bytes], ...] = ()
    #: messages under reassembly: (id, total, ((offset, data), ...))
    partials: tuple[InboundPartial, ...] = ()


@dataclass(frozen=True, slots=True)
class Carryover:
    """One lost connection's reliable state, both directions (see the module's docstring)."""

    #: (channel, mode, next message id) per reliable stream we sent on
    next_ids: tuple[tuple[int, int, int], ...]
    #: reliable messages or pieces of them not known to have arrived, oldest first
    owed: tuple[MessageFrame, ...]
    #: the reliable streams we received on
    inbound: tuple[InboundStream, ...]

    def __repr__(self) -> str:
        return (f"Carryover({len(self.next_ids)} sending streams, {len(self.owed)} pieces "
                f"owed ({self.owed_bytes} bytes), {len(self.inbound)} receiving streams)")

    @property
    def owed_bytes(self) -> int:
        return sum(len(f.data) for f in self.owed)

    @property
    def unacknowledged_messages(self) -> int:
        """How many distinct messages the owed pieces belong to."""
        return len({(f.channel, f.mode, f.message_id) for f in self.owed})

    def delivered_marks(self) -> list[tuple[int, int, int]]:
        """(channel, mode, mark as u32) per receiving stream: what the peer need not resend."""
        return [(s.channel, s.mode, s.mark & 0xFFFFFFFF) for s in self.inbound]

    def receiver(self, max_buffered_bytes: int) -> ChannelReceiver:
        """A `ChannelReceiver` that continues the receiving streams. Raises `CarryoverError`
        if they do not fit its budget or are not a state a receiver can be in."""
        receiver = ChannelReceiver(max_buffered_bytes)
        try:
            for s in self.inbound:
                receiver.restore_stream(s.channel, s.mode, s.mark, list(s.delivered),
                                        list(s.ready),
                                        [(mid, total, list(pieces))
                                         for mid, total, pieces in s.partials])
        except ProtocolError as exc:
            raise CarryoverError(f"carry-over cannot be restored: {exc}") from None
        return receiver


def capture(next_ids: list[tuple[int, int, int]], owed: list[MessageFrame],
            receiver: ChannelReceiver | None) -> Carryover:
    """A `Carryover` from a sender's and a receiver's exported state."""
    inbound: list[InboundStream] = []
    if receiver is not None:
        for channel, mode, mark, ranges, ready, partials in receiver.export_state():
            inbound.append(InboundStream(
                channel, mode, mark, tuple(ranges), tuple(ready),
                tuple((mid, total, tuple(pieces)) for mid, total, pieces in partials)))
    return Carryover(tuple(next_ids), tuple(owed), tuple(inbound))


# ------------------------------------------------------------------------------ encoding


def encode(carryover: Carryover) -> bytes:
    """The blob (version 1) for `carryover`."""
    out = [MAGIC, bytes((VERSION,)), _U16.pack(len(carryover.next_ids))]
    for channel, mode, next_id in carryover.next_ids:
        out.append(_STREAM.pack(channel, mode, next_id))
    out.append(_U32.pack(len(carryover.owed)))
    for f in carryover.owed:
        fragment = f.total != WHOLE
        out.append(_PIECE.pack(f.channel, f.mode, f.message_id, 1 if fragment else 0))
        if fragment:
            out.append(_U32_PAIR.pack(f.offset, f.total))
        out += [_U32.pack(len(f.data)), f.data]
    out.append(_U16.pack(len(carryover.inbound)))
    for s in carryover.inbound:
        out.append(_INBOUND.pack(s.channel, s.mode, s.mark))
        out.append(_U32.pack(len(s.delivered)))
        out += [_U64_PAIR.pack(start, end) for start, end in s.delivered]
        out.append(_U32.pack(len(s.ready)))
        for message_id, data in s.ready:
            out += [_U64_U32.pack(message_id, len(data)), data]
        out.append(_U32.pack(len(s.partials)))
        for message_id, total, pieces in s.partials:
            out += [_U64_U32.pack(message_id, total), _U32.pack(len(pieces))]
            for offset, data in pieces:
                out += [_U32_PAIR.pack(offset, len(data)), data]
    return b"".join(out)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CarryoverError(f"carry-over truncated in {what}")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct, what: str) -> tuple[int, ...]:
        return tuple(fmt.unpack(self.take(fmt.size, what)))

    def count(self, fmt: struct.Struct, per_item: int, what: str) -> int:
        """A count, refused if its items cannot fit what is left (no huge loops)."""
        (n,) = self.unpack(fmt, what)
        if n * per_item > len(self.data) - self.pos:
            raise CarryoverError(f"carry-over {what} count {n} exceeds what follows")
        return n

    def blob(self, what: str) -> bytes:
        (n,) = self.unpack(_U32, what)
        if n > MAX_MESSAGE_SIZE:
            raise CarryoverError(f"carry-over {what} of {n} bytes exceeds {MAX_MESSAGE_SIZE}")
        return self.take(n, what)


def _reliable(mode: int, what: str) -> Delivery:
    if mode not in (Delivery.RELIABLE_ORDERED, Delivery.RELIABLE_UNORDERED):
        raise CarryoverError(f"carry-over {what} has mode {mode}: only reliable modes")
    return Delivery(mode)


def decode(blob: bytes) -> Carryover:
    """The `Carryover` a blob holds; `CarryoverError` for anything `encode` did not make
    (and for a receiving state no receiver can be in, `Carryover.receiver`)."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise CarryoverError(f"carry-over must be bytes, got {type(blob).__name__}")
    r = _Reader(bytes(blob))
    if r.take(4, "magic") != MAGIC:
        raise CarryoverError("not a carry-over (bad magic)")
    (version,) = r.take(1, "version")
    if version != VERSION:
        raise CarryoverError(f"carry-over version {version}, this build reads {VERSION}")
    next_ids: list[tuple[int, int, int]] = []
    seen: set[tuple[int, int]] = set()
    for _ in range(r.count(_U16, _STREAM.size, "sender stream")):
        channel, mode, next_id = r.unpack(_STREAM, "sender stream")
        _reliable(mode, "sender stream")
        if (channel, mode) in seen:
            raise CarryoverError(f"carry-over names sender stream ({channel}, {mode}) twice")
        seen.add((channel, mode))
        next_ids.append((channel, mode, next_id))
    owed: list[MessageFrame] = []
    for _ in range(r.count(_U32, _PIECE.size + 4, "owed piece")):
        channel, mode, message_id, kind = r.unpack(_PIECE, "owed piece")
        delivery = _reliable(mode, "owed piece")
        if kind == 0:
            owed.append(MessageFrame(channel, delivery, message_id, r.blob("owed message")))
            continue
        if kind != 1:
            raise CarryoverError(f"carry-over piece kind {kind}, must be 0 or 1")
        offset, total = r.unpack(_U32_PAIR, "owed fragment")
        data = r.blob("owed fragment")
        if not data or offset + len(data) > total or total > MAX_MESSAGE_SIZE:
            raise CarryoverError(f"carry-over fragment [{offset}, {offset + len(data)}) of a "
                                 f"{total}-byte message is not valid")
        owed.append(MessageFrame(channel, delivery, message_id, data, offset, total))
    inbound: list[InboundStream] = []
    for _ in range(r.count(_U16, _INBOUND.size + 12, "receiver stream")):
        channel, mode, mark = r.unpack(_INBOUND, "receiver stream")
        _reliable(mode, "receiver stream")
        ranges = tuple((start, end) for start, end in
                       (r.unpack(_U64_PAIR, "delivered range")
                        for _ in range(r.count(_U32, _U64_PAIR.size, "delivered range"))))
        ready: list[tuple[int, bytes]] = []
        for _ in range(r.count(_U32, _U64_U32.size, "waiting message")):
            (message_id,) = r.unpack(_U64, "waiting message")
            ready.append((message_id, r.blob("waiting message")))
        partials: list[InboundPartial] = []
        for _ in range(r.count(_U32, _U64_U32.size + 4, "partial message")):
            message_id, total = r.unpack(_U64_U32, "partial message")
            pieces: list[tuple[int, bytes]] = []
            for _ in range(r.count(_U32, 8, "partial piece")):
                (offset,) = r.unpack(_U32, "partial piece")
                pieces.append((offset, r.blob("partial piece")))
            partials.append((message_id, total, tuple(pieces)))
        inbound.append(InboundStream(channel, mode, mark, ranges, tuple(ready),
                                     tuple(partials)))
    if r.pos != len(r.data):
        raise CarryoverError(f"carry-over has {len(r.data) - r.pos} trailing bytes")
    carryover = Carryover(tuple(next_ids), tuple(owed), tuple(inbound))
    carryover.receiver(1 << 62)  # the receiving state must be one a receiver can be in
    return carryover
