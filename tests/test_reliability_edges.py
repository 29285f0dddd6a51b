"""The reliability parts a connection uses beyond ACKs and loss: the delayed ACK held for a
regular sender's next packet (PROTOCOL.md 6.6), a packet forgotten without being lost (a path
MTU probe whose time ran out), and the packets a lost connection still owed (carry-over).
Each at its exact boundary; tests/test_connection.py checks the same through a connection."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from quantum.packet import MAX_SACK_BLOCKS
from quantum.reliability import (
    BURST_GAP,
    DEFAULT_MAX_ACK_DELAY,
    DUPLICATE,
    FAST_RETRANSMIT_THRESHOLD,
    HOLD_FACTOR,
    MAX_HELD_ACK_DELAY,
    NEW,
    TOO_OLD,
    ReceiveTracker,
    RttEstimator,
    SendTracker,
    SentPacket,
)
from quantum.serial import MASK
from tests.profiles import scaled


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


def model_fields(received: set[int]) -> tuple[int, list[tuple[int, int]]]:
    """What the ACK must say of `received`: the first missing pn, then the runs above it,
    highest first, at most MAX_SACK_BLOCKS of them."""
    cumulative = 1
    while cumulative in received:
        cumulative += 1
    runs: list[tuple[int, int]] = []
    for pn in sorted(p for p in received if p > cumulative):
        if runs and runs[-1][1] == pn - 1:
            runs[-1] = (runs[-1][0], pn)
        else:
            runs.append((pn, pn))
    return cumulative, runs[::-1][:MAX_SACK_BLOCKS]


@settings(max_examples=scaled(300), deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=80))
@example([1, 3, 5, 4, 2])  # a hole filled from both sides, then the cumulative point
@example([3, 9, 6, 7, 8, 4, 5])  # an insert between two ranges touching neither, then both
@example([30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 11])  # more ranges than blocks
def test_the_ack_always_says_what_arrived_whatever_the_order(arrivals: list[int]) -> None:
    """Any arrival order, duplicates included: after every packet, `check` and the ACK's
    cumulative point and SACK blocks say exactly what a set of received numbers says, and
    each new packet is owed an ACK."""
    tracker = ReceiveTracker()
    received: set[int] = set()
    for pn in arrivals:
        cumulative = model_fields(received)[0]
        verdict = tracker.check(pn)
        if pn < cumulative:
            assert verdict == TOO_OLD
        elif pn in received:
            assert verdict == DUPLICATE
        else:
            assert verdict == NEW
            tracker.on_ack_sent()
            tracker.on_received(pn, True, 0.0)
            received.add(pn)
            assert tracker.ack_deadline() is not None  # every new packet is acknowledged
        assert tracker.ack_fields() == model_fields(received), sorted(received)


def test_each_slide_of_the_receive_window_is_counted() -> None:
    tracker = ReceiveTracker(window=16)
    receive(tracker, 1, 0.0)
    receive(tracker, 20, 0.0)  # 16 or more above the cumulative point: an implicit floor
    assert tracker.ack_fields() == (5, [(20, 20)]) and tracker.window_slides == 1
    receive(tracker, 40, 0.0)
    assert tracker.ack_fields() == (25, [(40, 40)]) and tracker.window_slides == 2


def test_an_ack_already_due_is_not_put_off_by_a_later_packet() -> None:
    """A gap at t=1 makes the ACK due at once; another out-of-order packet at t=2, before
    it went, leaves it due at 1, not 2."""
    tracker = ReceiveTracker()
    receive(tracker, 1, 0.5)
    tracker.on_ack_sent()
    receive(tracker, 3, 1.0)  # 2 missing
    assert tracker.ack_deadline() == 1.0
    receive(tracker, 5, 2.0)  # 4 missing too
    assert tracker.ack_deadline() == 1.0


@settings(max_examples=scaled(200), deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.just(n), st.permutations(range(1, n + 1)), st.sets(st.integers(1, n)))))
@example((6, [1, 3, 5, 4, 2, 6], {2}))  # pn 2 lost: three acknowledged above it
@example((12, [12, 1, 11, 2, 10, 3, 9, 4, 8, 5, 7, 6], set()))  # two runs, many blocks
# a block longer than what is outstanding (two left), whose first pn is the new one
@example((8, [1, 2, 3, 4, 7, 8, 6, 5], {5}))
def test_the_sender_learns_exactly_what_each_ack_says(case: tuple[int, list[int], set[int]],
                                                       ) -> None:
    """Packets 1..n sent, some lost on the way, the rest arriving in any order; after each
    arrival the receiver's real ACK goes back. Each ACK acknowledges exactly the packets
    still outstanding that it covers (cumulative point and SACK blocks), in pn order; a
    packet is declared lost once three packets above it were acknowledged by SACK; nothing
    is acknowledged or lost twice, and the bytes in flight are what is still outstanding."""
    n, order, dropped = case
    sender, receiver = SendTracker(), ReceiveTracker()
    sizes = {sent(sender, 0.0, 100 + pn): 100 + pn for pn in range(1, n + 1)}
    outstanding = set(sizes)
    top: list[int] = []  # the three largest pns acknowledged by SACK at or above the cumulative
    for pn in (p for p in order if p not in dropped):
        receiver.on_received(pn, True, 0.0)
        cumulative, blocks = receiver.ack_fields()
        covered = {p for p in outstanding if p < cumulative
                   or any(start <= p <= end for start, end in blocks)}
        top = sorted({*top, *(p for start, end in blocks for p in range(start, end + 1)
                             if p >= cumulative)}, reverse=True)[:FAST_RETRANSMIT_THRESHOLD]
        outstanding -= covered
        lost = ({p for p in outstanding if p < top[-1]}
                if len(top) == FAST_RETRANSMIT_THRESHOLD else set())
        outstanding -= lost
        result = sender.on_ack(cumulative, blocks, 1.0)
        assert [p.pn for p in result.acked] == sorted(covered)
        assert [p.pn for p in result.lost] == sorted(lost)
        assert sender.bytes_in_flight == sum(sizes[p] for p in outstanding)
    assert {p.pn for p in sender.unacknowledged()} == outstanding


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": 1}, "window must be at least 2, got 1"),
    ({"max_ack_delay": -0.001}, "max_ack_delay must not be negative, got -0.001"),
    ({"first_pn": 0}, "packet numbers start at 1 or above, got 0"),
])
def test_a_receive_tracker_it_cannot_work_with_is_refused_naming_why(
        kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as info:
        ReceiveTracker(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_the_smallest_receive_tracker_settings_work() -> None:
    tracker = ReceiveTracker(window=2, max_ack_delay=0.0)
    receive(tracker, 1, 3.0)
    assert tracker.ack_deadline() == 3.0 and tracker.ack_fields() == (2, [])


def test_a_first_packet_sent_soon_after_the_clock_starts_sets_no_interval() -> None:
    """Before anything was sent there is no interval to follow, even 30 ms into a clock that
    starts at 0 (as the simulation's does)."""
    tracker = ReceiveTracker()
    tracker.on_eliciting_sent(0.03)
    receive(tracker, 1, 0.035)
    assert tracker.ack_deadline() == pytest.approx(0.035 + DEFAULT_MAX_ACK_DELAY)


def test_the_minimum_rtt_is_the_least_sample() -> None:
    rtt = RttEstimator()
    for sample in (0.05, 0.03, 0.04, 0.03, 0.08):
        rtt.update(sample)
    assert rtt.min_rtt == 0.03 and rtt.latest_rtt == 0.08


def test_every_invalid_ack_is_counted() -> None:
    tracker = SendTracker()
    sent(tracker, 0.0)
    for _ in range(2):
        tracker.on_ack(9, [], 0.1)  # acknowledges what was never sent
    assert tracker.invalid_acks == 2


def test_an_rtt_sample_of_zero_counts_and_one_from_a_clock_that_went_back_does_not() -> None:
    """A coarse clock can read the same for the send and its ACK: a 0 s sample is a real
    one; a negative one (the clock went back) is no sample at all."""
    tracker = SendTracker()
    sent(tracker, 1.0)
    result = tracker.on_ack(2, [], 1.0)
    assert result.rtt_sample == 0.0 and tracker.rtt.latest_rtt == 0.0
    sent(tracker, 5.0)
    result = tracker.on_ack(3, [], 4.0)
    assert [p.pn for p in result.acked] == [2] and result.rtt_sample is None
    assert tracker.rtt.latest_rtt == 0.0


def test_a_floor_into_a_range_drops_the_ranges_it_passes_and_keeps_the_rest() -> None:
    """1, 3, 6-8 and 12 received; ACK_FLOOR(6): the cumulative point moves past 6-8 (to 9),
    the ranges below it go, 12 stays reported."""
    tracker = ReceiveTracker()
    for pn in (1, 3, 6, 7, 8, 12):
        receive(tracker, pn, 0.0)
    tracker.on_floor(6)
    assert tracker.ack_fields() == (9, [(12, 12)])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": 0}, "window must be at least 1, got 0"),
    ({"first_pn": 0}, "packet numbers start at 1 or above, got 0"),
])
def test_a_send_tracker_it_cannot_work_with_is_refused_naming_why(
        kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError) as info:
        SendTracker(**kwargs)
    assert str(info.value) == message


def test_a_send_tracker_keeps_the_rtt_estimator_it_is_given_and_a_window_of_one() -> None:
    rtt = RttEstimator()
    tracker = SendTracker(window=1, rtt=rtt)
    assert tracker.rtt is rtt
    sent(tracker, 0.0)
    tracker.on_ack(2, [], 0.25)
    assert rtt.latest_rtt == 0.25


def test_a_sent_packet_keeps_its_frames_and_its_rate_sample() -> None:
    frames = ["a frame"]
    packet = SentPacket(1, 0.0, 100, True, True, frames, "rate sample")  # type: ignore[arg-type]
    assert packet.frames is frames and packet.rate == "rate sample"


def test_fast_retransmits_are_counted_up() -> None:
    tracker = SendTracker()
    for _ in range(10):
        sent(tracker, 0.0)
    tracker.on_ack(1, [(2, 4)], 0.1)  # 1 lost
    tracker.on_ack(5, [(7, 9)], 0.2)  # 5 and 6 lost
    assert tracker.fast_retransmits == 3


def test_releasing_an_idle_tracker_keeps_what_is_in_flight_and_works_after() -> None:
    tracker = SendTracker()
    first = sent(tracker, 0.0)
    tracker.release_idle()  # a packet in flight: nothing is dropped
    assert [p.pn for p in tracker.unacknowledged()] == [first]
    tracker.on_ack(first + 1, [], 0.1)
    tracker.release_idle()  # nothing in flight now
    assert tracker.unacknowledged() == [] and tracker.loss_deadline() is None
    later = [sent(tracker, 1.0) for _ in range(5)]  # and the tracker works as before
    result = tracker.on_ack(later[0] & MASK, [(later[1], later[3])], 1.1)
    assert [p.pn for p in result.acked] == later[1:4]
    assert [p.pn for p in result.lost] == [later[0]]


def test_the_first_packets_set_the_interval_at_its_exact_bounds() -> None:
    """From a clock at 0: packets 2 ms apart are one burst (the interval is not cut short),
    packets exactly MAX_HELD_ACK_DELAY apart still count as regular."""
    tracker = ReceiveTracker()
    for at in (0.0, 0.002, 0.042):  # 0.002 is BURST_GAP exactly: the same burst as 0.0
        tracker.on_eliciting_sent(at)
    receive(tracker, 1, 0.045)
    assert tracker.ack_deadline() == pytest.approx(0.042 + 0.042 * HOLD_FACTOR)
    regular = ReceiveTracker()
    for at in (0.0, MAX_HELD_ACK_DELAY):
        regular.on_eliciting_sent(at)
    receive(regular, 1, 0.11)
    assert regular.ack_deadline() == pytest.approx(0.11 + MAX_HELD_ACK_DELAY)


def test_a_cumulative_ack_exactly_half_the_number_space_away_reads_as_ahead() -> None:
    """The tie of the serial-number rule: 2**31 below the next pn is read as 2**31 above it,
    beyond what was sent, and announces nothing."""
    tracker = floor_due(first_pn=1 << 33)
    assert not tracker.peer_needs_floor((tracker.next_pn - (1 << 31)) & MASK)


def test_acknowledgements_spread_over_several_acks_count_together_for_a_loss() -> None:
    """Three packets above pn 1 acknowledged, one per ACK (reordered ACKs each naming one):
    pn 1 is lost at the third, as if one ACK had named all three."""
    tracker = SendTracker()
    for _ in range(6):
        sent(tracker, 0.0)
    assert tracker.on_ack(1, [(5, 5)], 0.1).lost == []
    assert tracker.on_ack(1, [(4, 4)], 0.1).lost == []
    assert [p.pn for p in tracker.on_ack(1, [(3, 3)], 0.1).lost] == [1, 2]


def test_with_nothing_sent_yet_even_at_the_clocks_start_the_ack_is_not_held() -> None:
    tracker = ReceiveTracker()
    receive(tracker, 1, 0.0)
    assert tracker.ack_deadline() == pytest.approx(DEFAULT_MAX_ACK_DELAY)


@pytest.mark.parametrize("first_pn", [1, 2, 1000, MASK + 5])
def test_before_any_ack_the_largest_acknowledged_is_just_below_the_first_pn(
        first_pn: int) -> None:
    assert SendTracker(first_pn=first_pn).largest_acked == first_pn - 1


def test_a_packet_reported_sent_twice_is_refused() -> None:
    tracker = SendTracker()
    pn = sent(tracker, 1.0)
    with pytest.raises(ValueError, match=f"packet {pn} reported after packet {pn}"):
        tracker.on_packet_sent(SentPacket(pn, 1.1, 100, True, True, ["again"]))
    assert tracker.outstanding == 1 and tracker.bytes_in_flight == 100


def test_an_ack_delivered_late_does_not_move_the_largest_acknowledged_back() -> None:
    """ACKs may arrive out of order: one sent before a newer one says less, and the largest
    acknowledged pn stays where the newer one put it."""
    tracker = SendTracker()
    for i in range(12):
        sent(tracker, 1.0 + i / 100)
    tracker.on_ack(11, [], 2.0)  # pns 1-10
    assert tracker.largest_acked == 10
    tracker.on_ack(10, [], 2.1)  # an older ACK of pns 1-9, overtaken on the way
    assert tracker.largest_acked == 10
    assert tracker.outstanding == 2 and tracker.invalid_acks == 0


def test_a_stale_sack_block_from_pn_1_does_not_void_the_ack() -> None:
    """PROTOCOL.md 6.2 ignores an ACK only for a block ending at or above the next pn or
    starting below 1: a block from pn 1, below the cumulative point, is redundant, and the
    cumulative point it came with still acknowledges what it covers."""
    tracker = SendTracker()
    for i in range(10):
        sent(tracker, 1.0 + i / 100)
    result = tracker.on_ack(6, [(1, 3)], 2.0)
    assert [p.pn for p in result.acked] == [1, 2, 3, 4, 5]
    assert tracker.invalid_acks == 0 and tracker.largest_acked == 5
