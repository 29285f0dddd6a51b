"""Serial-number arithmetic (RFC 1982) on the protocol's 32-bit wire numbers.

Packet numbers are 64-bit inside an endpoint and only their low 32 bits travel in the header
(sequence, ack, SACK blocks, ack floor). Any comparison of two wire values must therefore be
made modulo 2**32, and a received wire value must be expanded back to 64 bits before it is
used as a packet number (and as the AEAD nonce). Everything here is pure and allocation-free.
"""

from __future__ import annotations

from typing import Final

SERIAL_BITS: Final = 32
MODULUS: Final = 1 << SERIAL_BITS
MASK: Final = MODULUS - 1
HALF: Final = 1 << (SERIAL_BITS - 1)
#: packet numbers are 64-bit: expansion never produces a value at or above this
PN_LIMIT: Final = 1 << 64


def diff(a: int, b: int) -> int:
    """Signed distance a - b in [-2**31, 2**31).

    RFC 1982 leaves a pair exactly 2**31 apart undefined; mapping that case to -2**31 (a
    before b) makes every comparison total and antisymmetric except for that one pair.
    """
    return ((a - b + HALF) & MASK) - HALF


def lt(a: int, b: int) -> bool:
    return diff(a, b) < 0


def le(a: int, b: int) -> bool:
    return diff(a, b) <= 0


def gt(a: int, b: int) -> bool:
    return diff(a, b) > 0


def ge(a: int, b: int) -> bool:
    return diff(a, b) >= 0


def add(a: int, n: int) -> int:
    """a + n modulo 2**32; RFC 1982 defines addition only for 0 <= n < 2**31."""
    if not 0 <= n < HALF:
        raise ValueError(f"serial addition is defined for 0 <= n < 2**31, got {n}")
    return (a + n) & MASK


def expand(truncated: int, largest: int) -> int:
    """The 64-bit packet number closest to largest + 1 whose low 32 bits are `truncated`.

    RFC 9000 appendix A.3 with a 32-bit encoding: candidates more than half the number space
    away from the expected value are moved one window towards it, unless that would leave
    [0, 2**64). `largest` is the largest packet number seen so far (0 when none).
    """
    if not 0 <= truncated <= MASK:
        raise ValueError(f"wire number must be a u32, got {truncated}")
    if not 0 <= largest < PN_LIMIT:
        raise ValueError(f"largest packet number out of range: {largest}")
    expected = largest + 1
    candidate = (expected & ~MASK) | truncated
    if candidate <= expected - HALF and candidate < PN_LIMIT - MODULUS:
        return candidate + MODULUS
    if candidate > expected + HALF and candidate >= MODULUS:
        return candidate - MODULUS
    return candidate
