"""Packet protection: round trips, tamper detection, nonce construction, key derivation and
key generations, bad input."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from quantum.crypto import (
    MAX_PACKET_NUMBER,
    TAG_SIZE,
    PacketProtection,
    ProtectionError,
    algorithm_of,
    hkdf_expand,
    next_secret,
)
from quantum.errors import QuantumError

SECRET = bytes(range(32))
KEY = hkdf_expand(SECRET, b"key", 32)
IV = hkdf_expand(SECRET, b"iv", 12)
HEADER = b"QUNT" + bytes(range(28))


@pytest.mark.parametrize("algorithm", ["aes-256-gcm", "chacha20-poly1305"])
def test_round_trip_and_length(algorithm: str) -> None:
    sender = PacketProtection(SECRET, algorithm)  # type: ignore[arg-type]
    receiver = PacketProtection(SECRET, algorithm)  # type: ignore[arg-type]
    body = b"sack blocks and payload" * 10
    sealed = sender.seal(7, HEADER, body)
    assert len(sealed) == len(body) + TAG_SIZE
    assert body not in sealed
    assert receiver.open(7, HEADER, sealed) == body


def test_nonce_is_iv_xor_packet_number() -> None:
    pn = 0x0102030405060708
    nonce = (int.from_bytes(IV, "big") ^ pn).to_bytes(12, "big")
    expected = AESGCM(KEY).encrypt(nonce, b"body", HEADER)
    assert PacketProtection(SECRET).seal(pn, HEADER, b"body") == expected
    chacha = ChaCha20Poly1305(KEY).encrypt(nonce, b"body", HEADER)
    assert PacketProtection(SECRET, "chacha20-poly1305").seal(pn, HEADER, b"body") == chacha


def test_distinct_packet_numbers_give_distinct_ciphertexts() -> None:
    p = PacketProtection(SECRET)
    assert p.seal(1, HEADER, b"same") != p.seal(2, HEADER, b"same")


def test_wrong_packet_number_header_or_key_fails() -> None:
    p = PacketProtection(SECRET)
    sealed = p.seal(5, HEADER, b"payload")
    with pytest.raises(ProtectionError, match="packet 6 failed authentication"):
        p.open(6, HEADER, sealed)
    with pytest.raises(ProtectionError):
        p.open(5, HEADER[:-1] + b"\x00", sealed)
    with pytest.raises(ProtectionError):
        PacketProtection(bytes(32)).open(5, HEADER, sealed)


def test_empty_body_is_authenticated() -> None:
    p = PacketProtection(SECRET)
    sealed = p.seal(1, HEADER, b"")
    assert len(sealed) == TAG_SIZE
    assert p.open(1, HEADER, sealed) == b""


@pytest.mark.parametrize("pn", [-1, MAX_PACKET_NUMBER + 1])
def test_packet_number_out_of_range(pn: int) -> None:
    p = PacketProtection(SECRET)
    with pytest.raises(ProtectionError, match="outside"):
        p.seal(pn, HEADER, b"x")
    with pytest.raises(ProtectionError, match="outside"):
        p.open(pn, HEADER, bytes(20))


def test_short_ciphertext() -> None:
    with pytest.raises(ProtectionError, match="shorter than the 16-byte tag"):
        PacketProtection(SECRET).open(1, HEADER, bytes(15))


def test_bad_construction() -> None:
    with pytest.raises(ProtectionError, match="secret must be 32 bytes"):
        PacketProtection(bytes(16))
    with pytest.raises(ProtectionError, match="unknown AEAD"):
        PacketProtection(SECRET, "rot13")  # type: ignore[arg-type]


def test_repr_hides_key() -> None:
    text = repr(PacketProtection(SECRET))
    assert KEY.hex() not in text and SECRET.hex() not in text and "aes-256-gcm" in text


@given(
    body=st.binary(max_size=300),
    pn=st.integers(0, MAX_PACKET_NUMBER),
    data=st.data(),
)
def test_any_single_bit_flip_is_rejected(body: bytes, pn: int, data: st.DataObject) -> None:
    p = PacketProtection(SECRET)
    datagram = HEADER + p.seal(pn, HEADER, body)
    bit = data.draw(st.integers(0, len(datagram) * 8 - 1))
    flipped = bytearray(datagram)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProtectionError):
        p.open(pn, bytes(flipped[:32]), bytes(flipped[32:]))


@given(pn=st.integers(0, MAX_PACKET_NUMBER), junk=st.binary(max_size=200))
def test_arbitrary_ciphertext_only_raises_protection_error(pn: int, junk: bytes) -> None:
    with pytest.raises(ProtectionError):
        PacketProtection(SECRET).open(pn, HEADER, junk)
    assert issubclass(ProtectionError, QuantumError)


def test_benchmark_reports_every_figure() -> None:
    from benchmarks.crypto_bench import measure

    figures = measure(20)
    assert figures["default_aead"] == "aes-256-gcm"
    ratio = figures["protected_ns_100"] / figures["bare_aead_ns_100"]
    assert figures["ratio"] == pytest.approx(ratio, abs=0.02)
    for name in ("aes_gcm_ns_100", "aes_gcm_ns_1200", "chacha20_ns_100", "chacha20_ns_1200",
                 "handshakes_per_cpu_s"):
        assert figures[name] > 0
    with pytest.raises(ValueError, match="at least 1"):
        measure(0)


def test_released_cipher_is_rebuilt_and_seals_the_same() -> None:
    sender, receiver = PacketProtection(SECRET), PacketProtection(SECRET)
    assert not sender.loaded  # built on first use
    first = sender.seal(3, HEADER, b"body")
    assert sender.loaded
    sender.release()
    receiver.release()
    assert not sender.loaded and not receiver.loaded
    assert sender.seal(3, HEADER, b"body") == first  # same key, same nonce, same bytes
    assert receiver.open(3, HEADER, first) == b"body"
    receiver.release()
    with pytest.raises(ProtectionError, match="failed authentication"):
        receiver.open(4, HEADER, first)


def test_the_key_and_iv_are_derived_from_the_secret_by_labelled_hkdf_expand() -> None:
    """RFC 5869 HKDF-Expand with info = "quantum 1.0 " || label, one block."""
    import hashlib
    import hmac

    assert hmac.new(SECRET, b"quantum 1.0 key\x01", hashlib.sha256).digest() == KEY
    assert hmac.new(SECRET, b"quantum 1.0 iv\x01", hashlib.sha256).digest()[:12] == IV
    with pytest.raises(ValueError):
        hkdf_expand(SECRET, b"key", 33)


def test_the_next_generation_has_a_new_secret_key_and_phase() -> None:
    gen0 = PacketProtection(SECRET)
    gen1 = gen0.next()
    gen2 = gen1.next()
    assert (gen0.generation, gen1.generation, gen2.generation) == (0, 1, 2)
    assert (gen0.phase, gen1.phase, gen2.phase) == (0, 1, 0)
    assert gen1.algorithm == gen0.algorithm
    # generation 1 is generation 0's "key update" secret, and not openable with the old key
    assert PacketProtection(next_secret(SECRET), generation=1).seal(9, HEADER, b"x") \
        == gen1.seal(9, HEADER, b"x")
    sealed = gen1.seal(10, HEADER, b"moved on")
    with pytest.raises(ProtectionError):
        gen0.open(10, HEADER, sealed)
    with pytest.raises(ProtectionError):
        gen2.open(10, HEADER, sealed)
    assert PacketProtection(next_secret(SECRET), generation=1).open(10, HEADER, sealed) \
        == b"moved on"


def test_a_generation_remembers_its_first_packet_number() -> None:
    sender, receiver = PacketProtection(SECRET), PacketProtection(SECRET)
    assert sender.first_pn == -1
    for pn in (5, 6, 9):
        receiver.open(pn, HEADER, sender.seal(pn, HEADER, b"."))
    assert sender.first_pn == 5 and receiver.first_pn == 5
    receiver.open(3, HEADER, sender.seal(3, HEADER, b"."))  # a reordered earlier one
    assert receiver.first_pn == 3


def test_release_drops_the_derived_next_generations_cipher_too() -> None:
    """After the key update derived the next generation, `release` drops both ciphers (a
    hibernating connection keeps neither), and the next one still seals and opens."""
    current = PacketProtection(SECRET)
    following = current.next()
    sealed = following.seal(9, HEADER, b"after the update")
    assert current.seal(8, HEADER, b"before") and current.loaded and following.loaded
    current.release()
    assert not current.loaded and not following.loaded
    assert following.seal(9, HEADER, b"after the update") == sealed
    assert PacketProtection(next_secret(SECRET)).open(9, HEADER, sealed) == b"after the update"


def test_an_unknown_cipher_id_is_refused_naming_it() -> None:
    with pytest.raises(ProtectionError) as info:
        algorithm_of(0x7F)
    assert str(info.value) == "unknown cipher id 0x7f"
