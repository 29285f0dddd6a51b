"""RFC 1982 comparisons and RFC 9000 A.3 packet-number expansion, across the 32-bit wrap."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from quantum import serial
from quantum.serial import HALF, MASK, MODULUS

u32 = st.integers(0, MASK)
pn64 = st.integers(0, (1 << 62))


def test_comparisons_across_the_wrap() -> None:
    assert serial.lt(MASK, 0)
    assert serial.lt(0xFFFFFFF0, 5)
    assert serial.gt(5, 0xFFFFFFF0)
    assert serial.le(7, 7) and serial.ge(7, 7)
    assert not serial.lt(7, 7)
    assert serial.diff(2, MASK) == 3
    assert serial.diff(MASK, 2) == -3


def test_half_space_apart_is_ordered_one_way_only() -> None:
    # RFC 1982 leaves this undefined; we pick a - b = -2**31 so that exactly one holds
    assert serial.diff(0, HALF) == -HALF
    assert serial.diff(HALF, 0) == -HALF
    assert serial.lt(0, HALF) and serial.lt(HALF, 0)


@given(u32, st.integers(-HALF + 1, HALF - 1))
def test_diff_inverts_addition(a: int, n: int) -> None:
    b = (a + n) & MASK
    assert serial.diff(b, a) == n
    assert serial.lt(a, b) == (n > 0)
    assert serial.gt(a, b) == (n < 0)
    assert serial.le(a, b) == (n >= 0)
    assert serial.ge(a, b) == (n <= 0)


@given(u32, st.integers(0, HALF - 1))
def test_add_wraps(a: int, n: int) -> None:
    assert serial.add(a, n) == (a + n) % MODULUS


@pytest.mark.parametrize("n", [-1, HALF, MODULUS])
def test_add_outside_rfc1982_domain_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match="2\\*\\*31"):
        serial.add(0, n)


def test_expand_examples() -> None:
    # RFC 9000 A.3's own example, widened to 32 bits: largest 0xa82f30ea, truncated 0x9b32
    assert serial.expand(0xA82F9B32, 0xA82F30EA) == 0xA82F9B32
    assert serial.expand(1, 0) == 1
    assert serial.expand(0, MASK) == MODULUS  # the first pn after the wrap
    assert serial.expand(MASK, MODULUS) == MASK  # a late packet from just before it
    assert serial.expand(5, MODULUS + 2) == MODULUS + 5
    # never negative: near zero a far value stays in the first window
    assert serial.expand(MASK, 0) == MASK


@given(pn64, st.integers(-HALF + 1, HALF))
def test_expand_recovers_any_pn_within_half_a_window(largest: int, offset: int) -> None:
    pn = largest + 1 + offset
    assume(pn >= 0)
    assert serial.expand(pn & MASK, largest) == pn


@given(u32, pn64)
def test_expand_matches_truncated_and_is_closest(truncated: int, largest: int) -> None:
    pn = serial.expand(truncated, largest)
    assert pn & MASK == truncated
    assert pn >= 0
    expected = largest + 1
    for other in (pn - MODULUS, pn + MODULUS):
        if other >= 0:
            assert abs(pn - expected) <= abs(other - expected)


@pytest.mark.parametrize(("truncated", "largest"), [(-1, 0), (MODULUS, 0), (0, -1), (0, 1 << 64)])
def test_expand_rejects_out_of_range_input(truncated: int, largest: int) -> None:
    with pytest.raises(ValueError):
        serial.expand(truncated, largest)
