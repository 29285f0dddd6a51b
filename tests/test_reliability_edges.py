"""The reliability parts a connection uses beyond ACKs and loss: the delayed ACK held for a
regular sender's next packet (PROTOCOL.md 6.6), a packet forgotten without being lost (a path
MTU probe whose time ran out), and the packets a lost connection still owed (carry-over).
Each at its exact boundary; tests/test_connection.py checks the same through a connection."""

from __future__ import annotations

import pytest

from quantum.reliability import (
    BURST_GAP,
    DEFAULT_MAX_ACK_DELAY,
    HOLD_FACTOR,
    MAX_HELD_ACK_DELAY,
    NEW,
    ReceiveTracker,
    SendTracker,
    SentPacket,
)
from quantum.serial import MASK


def receive(tracker: ReceiveTracker, pn: int, now: float) -> None:
    assert tracker.check(pn) == NEW
    tracker.on_received(pn, True, now)


def sending_every(gap: float, times: int = 3, start: float = 10.0) -> tuple[ReceiveTracker,
                                                                             float]:
    """A receiver whose own side sent an ack-eliciting packet every `gap` seconds, `times`
    times; and when the last one went."""
    tracker = ReceiveTracker()
    at = start
    for i in range(times):
        at = start + i * gap
        tracker.on_eliciting_sent(at)
    return tracker, at


def test_with_nothing_sent_a_delayed_ack_waits_the_max_ack_delay() -> None:
    tracker = ReceiveTracker()
    receive(tracker, 1, 5.0)
    assert tracker.ack_deadline() == pytest.approx(5.0 + DEFAULT_MAX_ACK_DELAY)


def test_a_regular_sender_holds_the_ack_for_its_next_packet() -> None:
    """Sending every 40 ms: an ACK owed 5 ms after our last packet waits for the next one
    (expected at the last + 1.25 gaps), not the 25 ms max ACK delay."""
    gap = 0.04
    tracker, last = sending_every(gap)
    receive(tracker, 1, last + 0.005)
    assert tracker.ack_deadline() == pytest.approx(last + gap * HOLD_FACTOR)
    assert HOLD_FACTOR == 1.25


def test_the_hold_never_exceeds_the_held_ack_bound() -> None:
    """Sending every 95 ms (just within the bound): the next packet would come at +119 ms;
    the ACK is held at most MAX_HELD_ACK_DELAY after the packet it acknowledges."""
    gap = 0.095
    tracker, last = sending_every(gap)
    receive(tracker, 1, last + 0.001)
    assert tracker.ack_deadline() == pytest.approx(last + 0.001 + MAX_HELD_ACK_DELAY)


@pytest.mark.parametrize(("gap", "held"), [
    (MAX_HELD_ACK_DELAY, True),  # a gap of exactly the bound still counts as regular
    (MAX_HELD_ACK_DELAY + 0.001, False),  # longer: not a sender worth waiting for
])
def test_a_sender_slower_than_the_bound_is_not_waited_for(gap: float, held: bool) -> None:
    tracker, last = sending_every(gap)
    receive(tracker, 1, last + 0.01)
    plain = last + 0.01 + DEFAULT_MAX_ACK_DELAY
    assert (tracker.ack_deadline() != pytest.approx(plain)) is held


def test_packets_of_one_burst_do_not_shorten_the_interval() -> None:
    """Packets sent within BURST_GAP of the last are one burst: the interval stays the one
    between bursts (40 ms), it does not become the 1 ms inside the burst."""
    tracker, last = sending_every(0.04)
    tracker.on_eliciting_sent(last + BURST_GAP / 2)  # within the burst gap: the same burst
    receive(tracker, 1, last + 0.005)
    assert tracker.ack_deadline() == pytest.approx(last + 0.04 * HOLD_FACTOR)


def test_a_packet_just_past_the_burst_gap_starts_a_new_interval() -> None:
    tracker, last = sending_every(0.04)
    second = last + BURST_GAP * 1.5
    tracker.on_eliciting_sent(second)  # a new burst, 3 ms later: the interval is now 3 ms
    receive(tracker, 1, second + 0.001)
    # expected next at second + 3.75 ms, sooner than the max ACK delay: no hold
    assert tracker.ack_deadline() == pytest.approx(second + 0.001 + DEFAULT_MAX_ACK_DELAY)


def test_the_first_packet_sent_sets_no_interval() -> None:
    tracker = ReceiveTracker()
    tracker.on_eliciting_sent(10.0)  # an interval needs two bursts
    receive(tracker, 1, 10.005)
    assert tracker.ack_deadline() == pytest.approx(10.005 + DEFAULT_MAX_ACK_DELAY)


def packet(pn: int, size: int = 1000, in_flight: bool = True) -> SentPacket:
    return SentPacket(pn, 1.0, size, True, in_flight, [f"frame{pn}"])


def test_a_forgotten_packet_leaves_the_flight_without_being_lost() -> None:
    tracker = SendTracker()
    first, probe = tracker.allocate_pn(), tracker.allocate_pn()
    tracker.on_packet_sent(packet(first, 1000))
    tracker.on_packet_sent(packet(probe, 1400))
    assert tracker.bytes_in_flight == 2400
    assert tracker.forget(probe) is True
    assert tracker.bytes_in_flight == 1000
    assert [p.pn for p in tracker.unacknowledged()] == [first]
    assert tracker.fast_retransmits == 0 and tracker.timeout_retransmits == 0  # not a loss
    assert tracker.forget(probe) is False  # gone already
    assert tracker.forget(999) is False
    assert tracker.bytes_in_flight == 1000


def test_forgetting_a_packet_not_in_flight_leaves_the_bytes_in_flight() -> None:
    tracker = SendTracker()
    pn = tracker.allocate_pn()
    tracker.on_packet_sent(packet(pn, 500, in_flight=False))
    assert tracker.bytes_in_flight == 0
    assert tracker.forget(pn) is True and tracker.bytes_in_flight == 0


def test_the_unacknowledged_packets_are_the_outstanding_ones_oldest_first() -> None:
    tracker = SendTracker()
    sent = [tracker.allocate_pn() for _ in range(4)]
    for pn in sent:
        tracker.on_packet_sent(packet(pn))
    assert [p.pn for p in tracker.unacknowledged()] == sent
    tracker.forget(sent[1])
    owed = tracker.unacknowledged()
    assert [p.pn for p in owed] == [sent[0], sent[2], sent[3]]
    owed.clear()  # a copy: the tracker still owes them
    assert len(tracker.unacknowledged()) == 3


def sent(tracker: SendTracker, at: float, size: int = 100, eliciting: bool = True,
         in_flight: bool = True) -> int:
    pn = tracker.allocate_pn()
    tracker.on_packet_sent(SentPacket(pn, at, size, eliciting, in_flight, [f"frame{pn}"]))
    return pn


def test_only_an_ack_eliciting_packet_in_flight_arms_the_retransmission_timer() -> None:
    tracker = SendTracker()
    sent(tracker, 1.0, eliciting=False)  # in flight (counted by congestion control) only
    sent(tracker, 2.0, in_flight=False)  # ack-eliciting, not in flight
    assert tracker.loss_deadline() is None
    sent(tracker, 3.0)
    assert tracker.loss_deadline() == pytest.approx(3.0 + tracker.rtt.rto)


def test_a_retransmission_timeout_takes_the_expired_packets_out_of_the_flight() -> None:
    tracker = SendTracker()
    early = [sent(tracker, 0.0, 1000) for _ in range(3)]
    late = sent(tracker, 5.0, 700)
    assert tracker.bytes_in_flight == 3700
    lost = tracker.on_loss_timer(tracker.rtt.rto)
    assert [p.pn for p in lost] == early
    assert tracker.bytes_in_flight == 700 and tracker.timeout_retransmits == 3
    lost = tracker.on_loss_timer(5.0 + tracker.rtt.rto)  # the backed-off RTO
    assert [p.pn for p in lost] == [late]
    assert tracker.bytes_in_flight == 0 and tracker.timeout_retransmits == 4  # counted up


def floor_due(first_pn: int = 1) -> SendTracker:
    """Five packets sent, the first lost (the peer acknowledged the next three): the floor
    is above the peer's cumulative point, an ACK_FLOOR would be due."""
    tracker = SendTracker(first_pn=first_pn)
    for _ in range(5):
        sent(tracker, 0.0)
    tracker.on_ack(first_pn & MASK, [((first_pn + 1) & MASK, (first_pn + 3) & MASK)], 0.1)
    assert tracker.floor == first_pn + 4
    return tracker


def test_a_cumulative_ack_beyond_what_was_sent_announces_nothing() -> None:
    tracker = floor_due()
    assert not tracker.peer_needs_floor((tracker.next_pn + 3) & MASK)  # a lie: never sent
    assert tracker.peer_needs_floor(1)  # and the honest one still does


def test_a_cumulative_ack_at_the_largest_acknowledged_shows_no_hole() -> None:
    """The peer says it expects pn 4, the largest it acknowledged (it takes its SACK of 4
    back): nothing above its cumulative point is acknowledged, so no floor is announced."""
    tracker = floor_due()
    assert not tracker.peer_needs_floor(4)


def test_a_cumulative_ack_half_the_number_space_behind_reads_as_behind() -> None:
    """Serial numbers (PROTOCOL.md 6.1): a 32-bit cumulative ack is the packet number
    closest to the next one; one just under half the space below is behind (the peer is
    stuck: the floor is announced), not ahead."""
    tracker = floor_due(first_pn=1 << 33)
    behind = (tracker.next_pn + (1 << 31) + 1) & MASK  # next_pn - 2**31 + 1, truncated
    assert tracker.peer_needs_floor(behind)


def test_a_floor_above_the_largest_received_moves_the_largest_with_it() -> None:
    """ACK_FLOOR(7) after 1..5 (the sender gave pn 6 up): pn 7 is then the next in order, so
    it gets the delayed ACK; a gap after it still gets one at once."""
    tracker = ReceiveTracker()
    for pn in range(1, 6):
        receive(tracker, pn, 0.0)
    tracker.on_ack_sent()
    tracker.on_floor(7)
    assert tracker.ack_fields() == (7, [])
    receive(tracker, 7, 1.0)
    assert tracker.ack_deadline() == pytest.approx(1.0 + DEFAULT_MAX_ACK_DELAY)
    receive(tracker, 9, 1.001)  # 8 missing: reported at once
    assert tracker.ack_deadline() == pytest.approx(1.001)
