"""Serial order exactly 2^31 apart, where RFC 1982 stops defining it (PROTOCOL.md 3.2): the one
pair our arithmetic orders by choice, the packet-number expansion's tie, and what the send and
receive trackers make of acknowledgements and packets at, just inside and just past half the
number space. test_serial.py and test_reliability.py stop their strategies at 2^31 - 1.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quantum import serial
from quantum.reliability import BEYOND_WINDOW, MAX_PN_JUMP, ReceiveTracker, SendTracker
from quantum.serial import HALF, MASK, MODULUS
from tests.test_reliability import pns, send

u32 = st.integers(0, MASK)
#: first packet numbers far enough from 0 that "2^31 back" is still a packet number
first_pns = st.integers(HALF + 1, 1 << 40)


@given(u32)
def test_values_half_the_space_apart_are_each_before_the_other(a: int) -> None:
    b = (a + HALF) & MASK
    assert serial.diff(a, b) == serial.diff(b, a) == -HALF
    assert serial.lt(a, b) and serial.lt(b, a)
    assert serial.le(a, b) and serial.le(b, a)
    assert not serial.gt(a, b) and not serial.gt(b, a)
    assert not serial.ge(a, b) and not serial.ge(b, a)


@given(u32, st.sampled_from([HALF - 1, -(HALF - 1)]))
def test_just_inside_half_the_order_is_strict_and_antisymmetric(a: int, n: int) -> None:
    b = (a + n) & MASK
    assert serial.diff(b, a) == n and serial.diff(a, b) == -n
    assert serial.lt(a, b) != serial.lt(b, a)


@given(u32)
def test_serial_addition_is_defined_up_to_half_exclusive(a: int) -> None:
    assert serial.add(a, HALF - 1) == (a + HALF - 1) & MASK
    assert serial.add(a, 0) == a
    for bad in (HALF, -1):
        try:
            serial.add(a, bad)
        except ValueError as exc:
            assert "0 <= n < 2**31" in str(exc)
        else:
            raise AssertionError(f"add({a}, {bad}) was accepted")


@given(st.integers(HALF, 1 << 62))
def test_expansion_resolves_the_half_way_tie_to_the_newer_packet(largest: int) -> None:
    expected = largest + 1
    truncated = (expected - HALF) & MASK  # exactly half a window behind, or ahead
    assert serial.expand(truncated, largest) == expected + HALF
    # one closer behind is behind; one further is ahead
    assert serial.expand((expected - HALF + 1) & MASK, largest) == expected - HALF + 1
    assert serial.expand((expected + HALF - 1) & MASK, largest) == expected + HALF - 1


def test_expansion_near_the_ends_of_the_packet_number_space() -> None:
    assert serial.expand(MASK, 0) == MASK  # never negative
    top = (1 << 64) - 2
    assert serial.expand(top & MASK, top - 1) == top
    assert serial.expand(0, top) == (top & ~MASK)  # never at or past 2^64


# ------------------------------------------------------------------ the send tracker


def sent_tracker(first: int, count: int) -> tuple[SendTracker, list[int]]:
    tracker = SendTracker(first_pn=first)
    return tracker, [send(tracker, 0.0) for _ in range(count)]


@given(first_pns, st.integers(1, 20))
def test_an_ack_half_the_space_behind_is_read_as_from_the_future_and_refused(
        first: int, count: int) -> None:
    tracker, _ = sent_tracker(first, count)
    ack32 = (tracker.next_pn - HALF) & MASK  # expands to next_pn + 2^31: never sent
    result = tracker.on_ack(ack32, [], 0.1)
    assert (result.acked, result.lost) == ([], [])
    assert tracker.invalid_acks == 1 and tracker.outstanding == count


@given(first_pns, st.integers(1, 20))
def test_a_sack_block_ending_half_the_space_back_is_refused_and_acks_nothing(
        first: int, count: int) -> None:
    tracker, sent = sent_tracker(first, count)
    end32 = (tracker.next_pn - HALF) & MASK
    result = tracker.on_ack(first & MASK, [(end32, end32)], 0.1)
    assert result.acked == [] and tracker.invalid_acks == 1
    assert tracker.outstanding == count
    # the block one further back is old news: valid, and it acks nothing either
    old = (tracker.next_pn - HALF + 1) & MASK
    result = tracker.on_ack(first & MASK, [(old, old)], 0.2)
    assert result.acked == [] and tracker.invalid_acks == 1
    # and a block on what was sent is taken
    last = sent[-1] & MASK
    result = tracker.on_ack(first & MASK, [(last, last)], 0.3)
    assert pns(result.acked) == [sent[-1]]


@given(first_pns)
def test_the_longest_valid_sack_block_reaching_back_before_the_first_packet(
        first: int) -> None:
    tracker, sent = sent_tracker(first, 4)
    end = sent[-1]
    start = end - (HALF - 1)  # 2^31 - 1 long: valid serial order, reaching far back
    result = tracker.on_ack(first & MASK, [(start & MASK, end & MASK)], 0.1)
    assert pns(result.acked) == sent
    assert tracker.invalid_acks == 0


def test_a_sack_block_reaching_below_packet_number_one_is_refused() -> None:
    tracker, sent = sent_tracker(1, 4)
    result = tracker.on_ack(1, [((MODULUS - 2) & MASK, 3)], 0.1)  # "starts" at pn -2
    assert result.acked == [] and tracker.invalid_acks == 1
    assert tracker.outstanding == len(sent)


# ------------------------------------------------------------------ the receive tracker


@given(st.integers(1, 1 << 40))
def test_a_packet_number_more_than_max_jump_ahead_is_refused_before_decryption(
        first: int) -> None:
    tracker = ReceiveTracker(first_pn=first)
    assert tracker.check(first + MAX_PN_JUMP) == 0  # at the limit: new
    assert tracker.check(first + MAX_PN_JUMP + 1) == BEYOND_WINDOW
    # half the space ahead on the wire is far beyond it
    assert tracker.check(tracker.expand((first + HALF) & MASK)) == BEYOND_WINDOW
