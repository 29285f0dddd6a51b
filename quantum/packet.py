"""The Quantum wire format: a 32-byte header, up to 8 SACK blocks, then the payload.

    offset  size  field
    0       4     magic "QUNT"
    4       1     version (3: Quantum 1.0)
    5       1     flags (Flags)
    6       16    connection id
    22      4     sequence: low 32 bits of the packet number
    26      4     ack: the sender's cumulative "next packet number expected" (32 bits)
    30      2     payload length n (at most MAX_PAYLOAD = 1424)
    32      8k    k SACK blocks (start u32, end u32, inclusive), 0 <= k <= 8
    32+8k   n     payload (frames, see frames.py)

All integers are big-endian. The SACK count is not on the wire: it is what remains once the
header and the payload are accounted for, k = (len - 32 - n) / 8, and it must come out whole.
(The original parser treated every byte after the header as SACK blocks and so could not
carry a payload; the length field is what separates them.) After the handshake everything
from offset 32 on is encrypted and the header is the AEAD's associated data, hence
`decode_header` and `split_body` as separate steps around decryption.

Every decode function raises `PacketError` and nothing else, whatever the input.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from quantum.errors import ProtocolError

MAGIC: Final = b"QUNT"
#: wire version 3 is Quantum 1.0 (docs/PROTOCOL.md)
VERSION: Final = 3
HEADER_SIZE: Final = 32
CONNECTION_ID_SIZE: Final = 16
# Datagram sizes (docs/PROTOCOL.md 3.5). Every endpoint may send BASE_DATAGRAM at any time;
# a sender goes beyond it only up to the path MTU it discovered (quantum/pmtu.py), at most
# MAX_DATAGRAM_V4 / MAX_DATAGRAM_V6 (1500-byte Ethernet minus the IP and UDP headers). A
# receiver accepts anything up to MAX_DATAGRAM whatever the address family (simpler).
BASE_DATAGRAM: Final = 1200
MAX_DATAGRAM_V4: Final = 1472
MAX_DATAGRAM_V6: Final = 1452
MAX_DATAGRAM: Final = MAX_DATAGRAM_V4
#: the payload length field's bound: a MAX_DATAGRAM datagram without SACK blocks, less the
#: 16-byte AEAD tag (1472 - 32 - 16)
MAX_PAYLOAD: Final = 1424
MAX_SACK_BLOCKS: Final = 8
SACK_BLOCK_SIZE: Final = 8

_HEADER: Final = struct.Struct("!4sBB16sIIH")
# one precompiled format per block count, so that all blocks unpack in one call
_SACKS: Final = tuple(struct.Struct("!" + "II" * k) for k in range(MAX_SACK_BLOCKS + 1))
_U32_MAX: Final = 0xFFFFFFFF
_HALF: Final = 1 << 31

BytesLike = bytes | bytearray | memoryview
SackBlocks = tuple[tuple[int, int], ...]


# The header's flag bits, defined once. The hot path uses these plain ints (IntFlag arithmetic
# goes through the enum machinery on every packet, a Final int compiles to a constant); `Flags`
# names the same numbers for everything else.
SYN: Final = 0x01
ACK: Final = 0x02
FIN: Final = 0x04
RST: Final = 0x08
FEC: Final = 0x10
PSH: Final = 0x20
URG: Final = 0x40
#: in a protected packet, the low bit of the sender's key generation (the key update)
KEY_PHASE: Final = 0x80


class Flags(enum.IntFlag):
    SYN = SYN
    ACK = ACK
    FIN = FIN
    RST = RST
    FEC = FEC
    PSH = PSH
    URG = URG
    KEY_PHASE = KEY_PHASE


class PacketError(ProtocolError, ValueError):
    """Bytes that are not a well-formed Quantum packet or frame (the message says why).

    A `ProtocolError`: from an authenticated packet, it can only be the peer's doing."""


@dataclass(frozen=True, slots=True)
class Packet:
    flags: int
    connection_id: bytes
    seq: int
    ack: int
    sack: SackBlocks = ()
    payload: bytes = b""
    version: int = VERSION


def encode_packet(p: Packet) -> bytes:
    """The datagram for `p`; refuses (PacketError) anything decode_packet would reject."""
    sack = p.sack
    k = len(sack)
    if k > MAX_SACK_BLOCKS:
        raise PacketError(f"{k} SACK blocks, at most {MAX_SACK_BLOCKS} allowed")
    payload = p.payload
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise PacketError(f"payload of {n} bytes exceeds {MAX_PAYLOAD}")
    size = HEADER_SIZE + SACK_BLOCK_SIZE * k + n
    if size > MAX_DATAGRAM:
        raise PacketError(f"datagram of {size} bytes exceeds {MAX_DATAGRAM}")
    if len(p.connection_id) != CONNECTION_ID_SIZE:
        raise PacketError(f"connection id must be {CONNECTION_ID_SIZE} bytes, "
                          f"got {len(p.connection_id)}")
    if not (0 <= p.seq <= _U32_MAX and 0 <= p.ack <= _U32_MAX):
        raise PacketError(f"seq and ack must be u32, got {p.seq} and {p.ack}")
    if not (0 <= p.flags <= 0xFF and 0 <= p.version <= 0xFF):
        raise PacketError(f"flags and version must be u8, got {p.flags} and {p.version}")
    flat: list[int] = []
    for block in sack:
        start, end = block
        if not (0 <= start <= _U32_MAX and 0 <= end <= _U32_MAX):
            raise PacketError(f"SACK block {block} has a value outside u32")
        if (end - start) & _U32_MAX >= _HALF:
            raise PacketError(f"SACK block {block} ends before it starts (serial order)")
        flat.append(start)
        flat.append(end)
    header = _HEADER.pack(MAGIC, p.version, p.flags, p.connection_id, p.seq, p.ack, n)
    if k:
        return b"".join((header, _SACKS[k].pack(*flat), payload))
    return header + payload


def build_header(flags: int, connection_id: bytes, seq: int, ack: int, payload_len: int) -> bytes:
    """The 32-byte header alone, for the send hot path (the caller guarantees valid fields)."""
    return _HEADER.pack(MAGIC, VERSION, flags, connection_id, seq, ack, payload_len)


def encode_sack(sack: SackBlocks | list[tuple[int, int]]) -> bytes:
    """SACK blocks as they follow the header (at most MAX_SACK_BLOCKS, caller-checked)."""
    if not sack:
        return b""
    return _SACKS[len(sack)].pack(*[n for block in sack for n in block])


def decode_header(data: BytesLike) -> tuple[int, int, bytes, int, int, int]:
    """(version, flags, connection id, seq, ack, payload length); checks the datagram's
    length, the magic and the payload-length bound. A datagram over MAX_DATAGRAM, or whose
    payload length exceeds MAX_PAYLOAD, is malformed, a protected one too: dropped before
    decryption (docs/PROTOCOL.md 2.3)."""
    if len(data) < HEADER_SIZE:
        raise PacketError(f"datagram of {len(data)} bytes is shorter than the "
                          f"{HEADER_SIZE}-byte header")
    if len(data) > MAX_DATAGRAM:
        raise PacketError(f"datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    try:
        magic, version, flags, cid, seq, ack, payload_len = _HEADER.unpack_from(data)
    except (struct.error, TypeError) as exc:  # a non-byte memoryview format
        raise PacketError(f"unreadable header: {exc}") from None
    if magic != MAGIC:
        raise PacketError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if payload_len > MAX_PAYLOAD:
        raise PacketError(f"payload length {payload_len} exceeds {MAX_PAYLOAD}")
    return version, flags, cid, seq, ack, payload_len


def split_body(body: BytesLike, payload_len: int) -> tuple[SackBlocks, bytes]:
    """Separate the SACK blocks from the payload in what follows the header (decrypted)."""
    n = len(body)
    if n == payload_len and type(body) is bytes and n <= MAX_PAYLOAD:
        return (), body  # the common case: no SACK blocks, nothing to copy
    if not 0 <= payload_len <= MAX_PAYLOAD:
        raise PacketError(f"payload length {payload_len} exceeds {MAX_PAYLOAD}")
    rest = n - payload_len
    if rest < 0:
        raise PacketError(f"truncated: payload length says {payload_len} bytes, "
                          f"only {n} follow the header")
    k, odd = divmod(rest, SACK_BLOCK_SIZE)
    if odd:
        raise PacketError(f"{rest} bytes between header and payload is not a whole number "
                          "of 8-byte SACK blocks")
    if k > MAX_SACK_BLOCKS:
        raise PacketError(f"{k} SACK blocks, at most {MAX_SACK_BLOCKS} allowed")
    payload = bytes(body[rest:])
    if not k:
        return (), payload
    try:
        flat = _SACKS[k].unpack_from(body)
    except (struct.error, TypeError) as exc:
        raise PacketError(f"unreadable SACK blocks: {exc}") from None
    it = iter(flat)
    sack = tuple(zip(it, it, strict=True))
    for start, end in sack:
        if (end - start) & _U32_MAX >= _HALF:
            raise PacketError(f"SACK block ({start}, {end}) ends before it starts (serial order)")
    return sack, payload


def decode_packet(data: BytesLike) -> Packet:
    """Parse a whole unprotected datagram (handshake packets; tests)."""
    version, flags, cid, seq, ack, payload_len = decode_header(data)
    body = data[HEADER_SIZE:] if isinstance(data, memoryview) else memoryview(data)[HEADER_SIZE:]
    sack, payload = split_body(body, payload_len)
    return Packet(flags, cid, seq, ack, sack, payload, version)


def peek_connection_id(data: BytesLike) -> bytes | None:
    """The connection id of something that looks like a Quantum packet, else None; never raises."""
    if len(data) < HEADER_SIZE or bytes(data[:4]) != MAGIC:
        return None
    return bytes(data[6:22])
