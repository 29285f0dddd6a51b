"""The packet codec: layout, the SACK/payload split, limits, and that bad bytes only ever
raise PacketError. The hex vectors are the ones printed in docs/PROTOCOL.md section 7."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantum.packet import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    MAX_PAYLOAD,
    MAX_SACK_BLOCKS,
    VERSION,
    Flags,
    Packet,
    PacketError,
    decode_header,
    decode_packet,
    encode_packet,
    peek_connection_id,
    split_body,
)

CID = bytes(range(16))
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def sack_blocks(draw: st.DrawFn) -> tuple[tuple[int, int], ...]:
    count = draw(st.integers(0, MAX_SACK_BLOCKS))
    blocks = []
    for _ in range(count):
        start = draw(u32)
        length = draw(st.integers(0, (1 << 31) - 1))
        blocks.append((start, (start + length) & 0xFFFFFFFF))
    return tuple(blocks)


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    sack = draw(sack_blocks())
    room = min(MAX_PAYLOAD, MAX_DATAGRAM - HEADER_SIZE - 8 * len(sack))
    return Packet(
        flags=draw(st.integers(0, 255)),
        connection_id=draw(st.binary(min_size=16, max_size=16)),
        seq=draw(u32),
        ack=draw(u32),
        sack=sack,
        payload=draw(st.binary(max_size=room)),
        version=draw(st.integers(0, 255)),
    )


VECTORS = [
    (Packet(Flags.SYN, CID, 0, 0, (), b"hello"),
     "51554e540301000102030405060708090a0b0c0d0e0f0000000000000000000568656c6c6f"),
    (Packet(Flags.ACK | Flags.PSH, b"\xab" * 16, 0xFFFFFFFE, 5, ((0xFFFFFFFF, 2), (7, 9)),
            bytes.fromhex("020000002a")),
     "51554e540322ababababababababababababababababfffffffe000000050005"
     "ffffffff000000020000000700000009020000002a"),
    (Packet(Flags.ACK, CID, 7, 3, ((5, 6),), b""),
     "51554e540302000102030405060708090a0b0c0d0e0f000000070000000300000000000500000006"),
]


@pytest.mark.parametrize(("packet", "hexdata"), VECTORS)
def test_vectors_byte_for_byte(packet: Packet, hexdata: str) -> None:
    data = bytes.fromhex(hexdata)
    assert encode_packet(packet) == data
    assert decode_packet(data) == packet
    assert decode_packet(memoryview(data)) == packet
    assert decode_packet(bytearray(data)) == packet


def test_header_layout() -> None:
    p = Packet(Flags.ACK | Flags.FIN, CID, 0x01020304, 0x0A0B0C0D, ((1, 2),), b"xyz")
    data = encode_packet(p)
    assert data[:4] == b"QUNT"
    assert data[4] == VERSION == 3
    assert data[5] == Flags.ACK | Flags.FIN
    assert data[6:22] == CID
    assert struct.unpack("!IIH", data[22:32]) == (0x01020304, 0x0A0B0C0D, 3)
    assert struct.unpack("!II", data[32:40]) == (1, 2)
    assert data[40:] == b"xyz"
    assert decode_header(data) == (VERSION, p.flags, CID, p.seq, p.ack, 3)


def test_payload_not_a_multiple_of_eight_is_not_mistaken_for_sack() -> None:
    # the original's parser failed exactly here
    for n in (1, 7, 9, 65, 1400):
        p = Packet(Flags.ACK, CID, 1, 1, (), b"q" * n)
        assert decode_packet(encode_packet(p)) == p


@given(packets())
def test_round_trip(p: Packet) -> None:
    data = encode_packet(p)
    assert len(data) <= MAX_DATAGRAM
    assert decode_packet(data) == p
    version, flags, cid, seq, ack, payload_len = decode_header(data)
    assert split_body(data[HEADER_SIZE:], payload_len) == (p.sack, p.payload)
    assert (version, flags, cid, seq, ack) == (p.version, p.flags, p.connection_id, p.seq, p.ack)
    assert peek_connection_id(data) == p.connection_id


@given(st.binary(max_size=1600))
def test_arbitrary_bytes_raise_only_packet_error(data: bytes) -> None:
    with contextlib.suppress(PacketError):
        decode_packet(data)
    with contextlib.suppress(PacketError):
        decode_header(data)
    with contextlib.suppress(PacketError):
        split_body(data, len(data) // 3)
    cid = peek_connection_id(data)
    assert cid is None or len(cid) == 16


@given(packets(), st.data())
def test_mutated_truncated_extended_packets_raise_only_packet_error(
        p: Packet, data: st.DataObject) -> None:
    wire = bytearray(encode_packet(p))
    action = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if action == "flip":
        index = data.draw(st.integers(0, len(wire) - 1))
        wire[index] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del wire[data.draw(st.integers(0, len(wire) - 1)):]
    else:
        wire += data.draw(st.binary(min_size=1, max_size=200))
    try:
        q = decode_packet(bytes(wire))
    except PacketError:
        return
    assert encode_packet(q) == bytes(wire)  # whatever decodes is canonical


@pytest.mark.parametrize(("data", "message"), [
    (b"QUNT" + bytes(27), "shorter than the 32-byte header"),
    (b"XUNT" + bytes(28), "bad magic"),
    (b"QUNT" + bytes(26) + struct.pack("!H", 1401) + bytes(1401), "exceeds 1400"),
    (b"QUNT" + bytes(26) + struct.pack("!H", 10) + bytes(9), "truncated"),
    (b"QUNT" + bytes(26) + struct.pack("!H", 2) + bytes(5), "not a whole number"),
    (b"QUNT" + bytes(26) + struct.pack("!H", 0) + bytes(72), "9 SACK blocks"),
    (b"QUNT" + bytes(26) + struct.pack("!H", 0) + struct.pack("!II", 10, 9), "ends before"),
    (b"QUNT" + bytes(28) + bytes(1441), "exceeds 1472"),
])
def test_malformed_datagrams_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        decode_packet(data)


def test_sack_block_across_the_wrap_is_valid() -> None:
    p = Packet(Flags.ACK, CID, 1, 0xFFFFFFF0, ((0xFFFFFFF8, 3),))
    assert decode_packet(encode_packet(p)).sack == ((0xFFFFFFF8, 3),)


@pytest.mark.parametrize(("packet", "message"), [
    (Packet(0, CID, 0, 0, ((1, 1),) * 9), "9 SACK blocks"),
    (Packet(0, CID, 0, 0, (), bytes(1401)), "payload of 1401"),
    (Packet(0, CID, 0, 0, ((1, 1),) * 6, bytes(1400)), "datagram of 1480"),
    (Packet(0, bytes(15), 0, 0), "16 bytes"),
    (Packet(0, CID, 1 << 32, 0), "u32"),
    (Packet(0, CID, 0, -1), "u32"),
    (Packet(256, CID, 0, 0), "u8"),
    (Packet(0, CID, 0, 0, version=300), "u8"),
    (Packet(0, CID, 0, 0, ((5, 4),)), "ends before"),
    (Packet(0, CID, 0, 0, ((0, 1 << 32),)), "outside u32"),
])
def test_encode_refuses_what_decode_would_reject(packet: Packet, message: str) -> None:
    with pytest.raises(PacketError, match=message):
        encode_packet(packet)


def test_largest_datagram_is_exactly_the_limit() -> None:
    p = Packet(0, CID, 0, 0, ((1, 1),) * 5, bytes(MAX_DATAGRAM - HEADER_SIZE - 40))
    assert len(encode_packet(p)) == MAX_DATAGRAM


def test_split_body_after_decryption() -> None:
    body = struct.pack("!IIII", 3, 4, 9, 9) + b"payload"
    assert split_body(body, 7) == (((3, 4), (9, 9)), b"payload")
    with pytest.raises(PacketError, match="payload length 1401"):
        split_body(bytes(1401), 1401)


def test_peek_connection_id() -> None:
    data = encode_packet(Packet(Flags.SYN, CID, 0, 0))
    assert peek_connection_id(data) == CID
    assert peek_connection_id(memoryview(data)) == CID
    assert peek_connection_id(data[:31]) is None
    assert peek_connection_id(b"HTTP" + data[4:]) is None


def test_connection_flag_constants_match_the_wire_flags() -> None:
    from quantum import connection

    for flag in (Flags.SYN, Flags.ACK, Flags.FIN, Flags.RST, Flags.FEC, Flags.PSH, Flags.URG):
        assert getattr(connection, flag.name) == int(flag)
