"""The packet codec at every limit it enforces, exactly there and one past it (PROTOCOL.md 2.3):
u32 fields at 2^32 - 1, u8 fields at 255, the SACK block of length 2^31 - 1 (valid) and 2^31
(the serial order's undefined pair: refused), the 1472-byte datagram, and the hot-path
helpers (`build_header`, `encode_sack`) against the reference encoder.
"""

from __future__ import annotations

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
    build_header,
    decode_header,
    decode_packet,
    encode_packet,
    encode_sack,
    split_body,
)
from quantum.serial import HALF, MASK
from tests.test_packet import CID, packets

u32 = st.integers(0, MASK)


@pytest.mark.parametrize("field", ["seq", "ack"])
def test_u32_fields_take_their_largest_value_and_refuse_one_more(field: str) -> None:
    largest = Packet(Flags.ACK, CID, **{"seq": 0, "ack": 0, field: MASK})
    assert decode_packet(encode_packet(largest)) == largest
    with pytest.raises(PacketError, match="must be u32"):
        encode_packet(Packet(Flags.ACK, CID, **{"seq": 0, "ack": 0, field: MASK + 1}))
    with pytest.raises(PacketError, match="must be u32"):
        encode_packet(Packet(Flags.ACK, CID, **{"seq": 0, "ack": 0, field: -1}))


def test_u8_fields_take_their_largest_value_and_refuse_one_more() -> None:
    p = Packet(0xFF, CID, 1, 1, version=0xFF)
    assert decode_packet(encode_packet(p)) == p
    for bad in (Packet(0x100, CID, 1, 1), Packet(Flags.ACK, CID, 1, 1, version=0x100),
                Packet(-1, CID, 1, 1), Packet(Flags.ACK, CID, 1, 1, version=-1)):
        with pytest.raises(PacketError, match="must be u8"):
            encode_packet(bad)


@given(u32)
def test_a_sack_block_of_length_half_minus_one_is_valid_and_half_is_not(start: int) -> None:
    longest = (start, (start + HALF - 1) & MASK)
    p = Packet(Flags.ACK, CID, 1, 1, (longest,))
    data = encode_packet(p)
    assert decode_packet(data).sack == (longest,)
    undefined = (start, (start + HALF) & MASK)
    with pytest.raises(PacketError, match="ends before it starts"):
        encode_packet(Packet(Flags.ACK, CID, 1, 1, (undefined,)))
    # the same block arriving on the wire (written past the encoder's check)
    forged = data[:HEADER_SIZE] + encode_sack([undefined]) + data[HEADER_SIZE + 8:]
    with pytest.raises(PacketError, match="ends before it starts"):
        decode_packet(forged)


def test_sack_values_are_u32() -> None:
    for block in ((MASK, MASK), (0, MASK), (MASK, 0)):
        if (block[1] - block[0]) & MASK < HALF:
            assert decode_packet(encode_packet(Packet(Flags.ACK, CID, 1, 1, (block,)))).sack \
                == (block,)
    for block in ((MASK + 1, MASK + 1), (0, MASK + 1), (-1, 0), (5, -1)):
        with pytest.raises(PacketError, match="outside u32"):
            encode_packet(Packet(Flags.ACK, CID, 1, 1, (block,)))


def test_a_datagram_of_exactly_the_limit_round_trips_and_one_byte_more_does_not() -> None:
    sack = tuple((i, i) for i in range(0, 2 * MAX_SACK_BLOCKS, 2))
    room = MAX_DATAGRAM - HEADER_SIZE - 8 * MAX_SACK_BLOCKS
    p = Packet(Flags.ACK, CID, 1, 1, sack, b"x" * room)
    data = encode_packet(p)
    assert len(data) == MAX_DATAGRAM
    assert decode_packet(data) == p
    assert decode_packet(memoryview(data)) == p
    with pytest.raises(PacketError, match=f"exceeds {MAX_DATAGRAM}"):
        encode_packet(Packet(Flags.ACK, CID, 1, 1, sack, b"x" * (room + 1)))
    with pytest.raises(PacketError, match=f"exceeds {MAX_DATAGRAM}"):
        decode_packet(data + b"x")


def test_the_largest_payload_alone_round_trips() -> None:
    p = Packet(Flags.ACK, CID, 1, 1, (), b"y" * MAX_PAYLOAD)
    assert decode_packet(encode_packet(p)) == p
    body = encode_packet(p)[HEADER_SIZE:]
    assert split_body(body, MAX_PAYLOAD) == ((), body)
    assert split_body(bytearray(body), MAX_PAYLOAD) == ((), body)  # not bytes: copied
    with pytest.raises(PacketError, match=f"exceeds {MAX_PAYLOAD}"):
        split_body(body + b"y", MAX_PAYLOAD + 1)
    with pytest.raises(PacketError, match=f"exceeds {MAX_PAYLOAD}"):
        split_body(body, -1)


def test_a_payload_length_over_the_bound_is_malformed_in_the_header() -> None:
    # 2.3: refused by the header decoder, so a protected packet claiming it is dropped before
    # any decryption is spent on it
    at_bound = build_header(int(Flags.ACK), CID, 1, 1, MAX_PAYLOAD) + bytes(16)
    assert decode_header(at_bound)[5] == MAX_PAYLOAD
    over = build_header(int(Flags.ACK), CID, 1, 1, MAX_PAYLOAD + 1) + bytes(16)
    with pytest.raises(PacketError, match=f"payload length {MAX_PAYLOAD + 1} exceeds"):
        decode_header(over)


def test_nine_sack_blocks_are_refused_both_ways() -> None:
    nine = tuple((i, i) for i in range(MAX_SACK_BLOCKS + 1))
    with pytest.raises(PacketError, match="9 SACK blocks, at most 8"):
        encode_packet(Packet(Flags.ACK, CID, 1, 1, nine))


def test_undecodable_inputs_say_why() -> None:
    with pytest.raises(PacketError, match="unreadable header"):
        decode_header("QUNT" + "x" * 40)  # type: ignore[arg-type]
    with pytest.raises(PacketError, match="unreadable SACK blocks"):
        split_body(list(bytes(8 + 2)), 2)  # type: ignore[arg-type]
    with pytest.raises(PacketError, match="is not a whole number of 8-byte SACK blocks"):
        split_body(bytes(5), 2)
    with pytest.raises(PacketError, match="connection id must be 16 bytes, got 15"):
        encode_packet(Packet(Flags.ACK, CID[:15], 1, 1))


@given(packets())
def test_the_hot_path_header_and_sack_encoders_match_the_reference(p: Packet) -> None:
    if p.version != VERSION:
        p = Packet(p.flags, p.connection_id, p.seq, p.ack, p.sack, p.payload)
    hot = (build_header(p.flags, p.connection_id, p.seq, p.ack, len(p.payload))
           + encode_sack(p.sack) + p.payload)
    assert hot == encode_packet(p)
    assert encode_sack(()) == b"" and encode_sack([]) == b""


@given(packets())
def test_decoded_payloads_are_bytes_never_views_of_the_datagram(p: Packet) -> None:
    for data in (encode_packet(p), memoryview(encode_packet(p))):
        decoded = decode_packet(data)
        assert type(decoded.payload) is bytes
        assert hash(decoded) == hash(p)  # a view inside would make the packet unhashable
