"""Packet protection: the AEAD that seals every packet after the handshake, and its keys.

The 32-byte header is associated data (readable by the receiver before decryption, so it can
find the connection and expand the packet number) and everything after it is encrypted. The
nonce is `iv XOR pn` with the 64-bit packet number right-aligned in 96 bits; since every
transmission, retransmissions included, gets a fresh packet number, a nonce is never reused
under one key.

Keys come in generations (docs/PROTOCOL.md 5.4): the handshake gives each direction a traffic
secret, generation 0; every key update moves a direction to the next secret, derived from the
current one, so the old key cannot be recovered from the new. A generation's packet key and iv
are derived from its secret. Replay protection is not here on purpose: the receive tracker
rejects a packet number already received (or below its cumulative point) before `open()` is
called, and records it only after `open()` succeeded, so a forged packet cannot poison the
tracker and a replayed one never reaches the AEAD.

Two ciphers, negotiated in the handshake (5.2): AES-256-GCM, about 2.5-3x faster on CPUs with
AES instructions (benchmarks/crypto_bench.py), and ChaCha20-Poly1305 for CPUs without them.
"""

from __future__ import annotations

import hmac
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from quantum.errors import QuantumError
from quantum.packet import KEY_PHASE

KEY_SIZE: Final = 32
IV_SIZE: Final = 12
TAG_SIZE: Final = 16
SECRET_SIZE: Final = 32
#: packet numbers are 64-bit (docs/ARCHITECTURE.md); anything else is a caller bug
MAX_PACKET_NUMBER: Final = (1 << 64) - 1

Algorithm = Literal["aes-256-gcm", "chacha20-poly1305"]
DEFAULT_ALGORITHM: Final[Algorithm] = "aes-256-gcm"

#: cipher ids on the wire (ClientHello offer, ServerHello choice)
AES_256_GCM: Final = 0x01
CHACHA20_POLY1305: Final = 0x02
CIPHER_IDS: Final[dict[Algorithm, int]] = {"aes-256-gcm": AES_256_GCM,
                                           "chacha20-poly1305": CHACHA20_POLY1305}
CIPHERS: Final[dict[int, Algorithm]] = {v: k for k, v in CIPHER_IDS.items()}
#: what a client offers and a server accepts unless configured otherwise: AES-256-GCM first
#: (2.5-3x faster with AES instructions), ChaCha20-Poly1305 for CPUs and libraries without them
DEFAULT_CIPHERS: Final[tuple[str, ...]] = ("aes-256-gcm", "chacha20-poly1305")

#: every HKDF label starts with this (docs/PROTOCOL.md 5.3)
LABEL_PREFIX: Final = b"quantum 1.0 "


class ProtectionError(QuantumError):
    """A sealed packet failed authentication or cannot be processed (bad length, bad number)."""


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869) with SHA-256: the 32-byte pseudorandom key."""
    return hmac.digest(salt, ikm, "sha256")  # one-shot, in C: no HMAC object per call


def hkdf_expand(prk: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869) with SHA-256 and info = LABEL_PREFIX || label, for the lengths
    this protocol uses (at most one 32-byte block: T(1) = HMAC(prk, info || 0x01))."""
    if not 0 < length <= 32:
        raise ValueError(f"this HKDF-Expand derives 1..32 bytes, not {length}")
    return hmac.digest(prk, LABEL_PREFIX + label + b"\x01", "sha256")[:length]


def next_secret(secret: bytes) -> bytes:
    """The traffic secret of the next key generation."""
    return hkdf_expand(secret, b"key update", SECRET_SIZE)


def algorithm_of(cipher_id: int) -> Algorithm:
    try:
        return CIPHERS[cipher_id]
    except KeyError:
        raise ProtectionError(f"unknown cipher id 0x{cipher_id:02x}") from None


def aead(algorithm: Algorithm, key: bytes) -> AESGCM | ChaCha20Poly1305:
    """A one-off AEAD object (the handshake's confirmation and finish)."""
    if algorithm == "aes-256-gcm":
        return AESGCM(key)
    if algorithm == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    raise ProtectionError(f"unknown AEAD algorithm {algorithm!r}")


class PacketProtection:
    """Seals and opens the packets of one direction of one connection, for one key
    generation (`next()` gives the following one).

    Only the generation's secret is kept; the key is derived from it whenever the cipher
    object is built. The cipher object is built on first use and can be dropped with
    `release()`: an `AESGCM` holds about 2.4 KB of OpenSSL context for its whole life, which
    for a server with two per connection is most of an idle connection's memory. A quiet
    connection releases them; its next packet rebuilds one (about 2 us with the derivation).
    """

    __slots__ = ("_aead", "_factory", "_following", "_iv", "_secret", "algorithm", "first_pn",
                 "generation",
                 "phase_flag")

    def __init__(self, secret: bytes, algorithm: Algorithm = DEFAULT_ALGORITHM,
                 generation: int = 0) -> None:
        if len(secret) != SECRET_SIZE:
            raise ProtectionError(f"traffic secret must be {SECRET_SIZE} bytes, "
                                  f"got {len(secret)}")
        factory: type[AESGCM] | type[ChaCha20Poly1305]
        if algorithm == "aes-256-gcm":
            factory = AESGCM
        elif algorithm == "chacha20-poly1305":
            factory = ChaCha20Poly1305
        else:
            raise ProtectionError(f"unknown AEAD algorithm {algorithm!r}")
        self.algorithm = algorithm
        self.generation = generation
        #: the header's KEY_PHASE bit as this generation's packets carry it (0 or KEY_PHASE)
        self.phase_flag = KEY_PHASE if generation & 1 else 0
        #: the first packet number this generation sealed or opened (-1: none yet)
        self.first_pn = -1
        self._factory = factory
        self._secret = bytes(secret)
        # built on first use; its methods are called directly (compiled, that is a method call
        # in C: a cached bound method would be one more object to fetch from memory per packet)
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        # the next generation, derived once: a receiver tries it for every packet whose phase
        # bit differs, so a forged one must not cost a key derivation each time
        self._following: PacketProtection | None = None
        self._iv = int.from_bytes(hkdf_expand(secret, b"iv", IV_SIZE), "big")

    @property
    def phase(self) -> int:
        """The key-phase bit this generation's packets carry (its low bit)."""
        return self.generation & 1

    @property
    def loaded(self) -> bool:
        """Whether the cipher object currently exists (False after `release()`)."""
        return self._aead is not None

    def release(self) -> None:
        """Drop the cipher objects (this generation's and a derived next one's) and their
        OpenSSL context; the next seal/open rebuilds them."""
        self._aead = None
        following = self._following
        if following is not None:
            following._aead = None

    def next(self) -> PacketProtection:
        """The next key generation's protection (the key update's), derived once."""
        following = self._following
        if following is None:
            following = self._following = PacketProtection(
                next_secret(self._secret), self.algorithm, self.generation + 1)
        return following

    def _load(self) -> AESGCM | ChaCha20Poly1305:
        aead = self._aead = self._factory(hkdf_expand(self._secret, b"key", KEY_SIZE))
        return aead

    def __repr__(self) -> str:  # never show key material
        return f"PacketProtection(algorithm={self.algorithm!r}, generation={self.generation})"

    def seal(self, pn: int, header: bytes, body: bytes) -> bytes:
        """Encrypt `body` for packet number `pn`, authenticating `header`: ciphertext || tag."""
        if not 0 <= pn <= MAX_PACKET_NUMBER:
            raise ProtectionError(f"packet number {pn} outside 0..2**64-1")
        aead = self._aead
        if aead is None:
            aead = self._load()
        if self.first_pn < 0:
            self.first_pn = pn
        return aead.encrypt((self._iv ^ pn).to_bytes(12, "big"), body, header)

    def open(self, pn: int, header: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and authenticate a sealed body; ProtectionError if anything does not match."""
        if not 0 <= pn <= MAX_PACKET_NUMBER:
            raise ProtectionError(f"packet number {pn} outside 0..2**64-1")
        if len(ciphertext) < TAG_SIZE:
            raise ProtectionError(
                f"sealed body of {len(ciphertext)} bytes is shorter than the {TAG_SIZE}-byte tag")
        aead = self._aead
        if aead is None:
            aead = self._load()
        try:
            plain = aead.decrypt((self._iv ^ pn).to_bytes(12, "big"), ciphertext, header)
        except InvalidTag:
            raise ProtectionError(f"packet {pn} failed authentication") from None
        if self.first_pn < 0 or pn < self.first_pn:
            self.first_pn = pn
        return plain
