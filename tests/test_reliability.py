"""Reliable delivery: RFC 6298 arithmetic, SACK generation and processing, fast retransmit at
exactly three later acks, the RTO, the ack floor, windows, delayed ACKs, and the 32-bit wrap."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum.reliability import (
    BEYOND_WINDOW,
    DUPLICATE,
    MAX_BACKOFF,
    MAX_PN_JUMP,
    NEW,
    TOO_OLD,
    ReceiveTracker,
    RttEstimator,
    SendTracker,
    SentPacket,
)
from quantum.serial import MASK
from tests.profiles import scaled

WRAP = 1 << 32


def send(tracker: SendTracker, now: float, size: int = 1000, eliciting: bool = True,
         in_flight: bool | None = None) -> int:
    pn = tracker.allocate_pn()
    flight = eliciting if in_flight is None else in_flight
    tracker.on_packet_sent(SentPacket(pn, now, size, eliciting, flight, [f"frame{pn}"]))
    return pn


def pns(packets: list[SentPacket]) -> list[int]:
    return [p.pn for p in packets]


# ------------------------------------------------------------------------------ RttEstimator


def test_rto_before_any_sample_is_one_second() -> None:
    rtt = RttEstimator()
    assert rtt.srtt is None and rtt.min_rtt is None and rtt.latest_rtt is None
    assert rtt.rto == 1.0


def test_rfc6298_first_and_second_sample() -> None:
    rtt = RttEstimator()
    rtt.update(0.1)
    assert rtt.srtt == pytest.approx(0.1)
    assert rtt.rttvar == pytest.approx(0.05)
    assert rtt.rto == pytest.approx(0.1 + 4 * 0.05)
    rtt.update(0.2)
    # rttvar uses the old srtt: 3/4 * 0.05 + 1/4 * |0.1 - 0.2|
    assert rtt.rttvar == pytest.approx(0.0625)
    assert rtt.srtt == pytest.approx(7 / 8 * 0.1 + 1 / 8 * 0.2)
    assert rtt.rto == pytest.approx(0.1125 + 0.25)
    assert rtt.min_rtt == pytest.approx(0.1)
    assert rtt.latest_rtt == pytest.approx(0.2)


def test_rto_clamps_and_clock_granularity() -> None:
    fast = RttEstimator()
    fast.update(0.01)
    assert fast.rto == 0.2  # 0.01 + 0.02 is below the 200 ms floor
    slow = RttEstimator()
    slow.update(100.0)
    assert slow.rto == 60.0
    steady = RttEstimator()
    for _ in range(300):
        steady.update(1.0)
    # rttvar has decayed to nothing: G (1 ms) is what is left above srtt
    assert steady.rto == pytest.approx(1.001)


def test_backoff_doubles_caps_and_resets() -> None:
    rtt = RttEstimator()
    rtt.update(0.1)
    rtt.on_timeout()
    assert rtt.rto == pytest.approx(0.6)
    rtt.on_timeout()
    assert rtt.rto == pytest.approx(1.2)
    for _ in range(40):
        rtt.on_timeout()
    assert rtt.rto == 60.0
    assert rtt.backoff == MAX_BACKOFF  # the counter is bounded too: 1 << backoff stays small
    rtt.reset_backoff()
    assert rtt.rto == pytest.approx(0.3)


def test_negative_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        RttEstimator().update(-0.001)


# ------------------------------------------------------------------------------ SendTracker


def test_cumulative_ack() -> None:
    tracker = SendTracker()
    for i in range(5):
        send(tracker, i * 0.01)
    assert tracker.bytes_in_flight == 5000
    assert tracker.floor == 1
    result = tracker.on_ack(6, [], 0.1)
    assert pns(result.acked) == [1, 2, 3, 4, 5]
    assert result.lost == []
    assert result.rtt_sample == pytest.approx(0.1 - 0.04)  # from pn 5, the largest
    assert tracker.rtt.srtt == pytest.approx(0.06)
    assert tracker.bytes_in_flight == 0
    assert tracker.floor == tracker.next_pn == 6


def test_sack_acks_only_the_blocks_and_keeps_order() -> None:
    tracker = SendTracker()
    for _ in range(8):
        send(tracker, 0.0)
    result = tracker.on_ack(2, [(7, 8), (4, 5)], 0.05)
    assert pns(result.acked) == [1, 4, 5, 7, 8]
    assert pns(result.lost) == [2, 3]  # 4, 5, 7, 8 are above them
    assert tracker.floor == 6
    assert tracker.bytes_in_flight == 1000
    assert tracker.fast_retransmits == 2


def test_fast_retransmit_exactly_at_three_later_acks() -> None:
    tracker = SendTracker()
    for _ in range(6):
        send(tracker, 0.0)
    assert tracker.on_ack(1, [(2, 2)], 0.1).lost == []
    assert tracker.on_ack(1, [(2, 3)], 0.1).lost == []
    result = tracker.on_ack(1, [(2, 4)], 0.1)
    assert pns(result.acked) == [4]
    assert pns(result.lost) == [1]
    assert tracker.fast_retransmits == 1
    assert tracker.floor == 5


def test_three_separate_blocks_count_too() -> None:
    tracker = SendTracker()
    for _ in range(7):
        send(tracker, 0.0)
    assert tracker.on_ack(1, [(6, 6), (4, 4)], 0.1).lost == []
    result = tracker.on_ack(1, [(6, 6), (4, 4), (2, 2)], 0.1)
    assert pns(result.lost) == [1]  # 3 and 5 have only two acked above them
    assert tracker.floor == 3


def test_late_ack_of_a_lost_packet_acks_nothing() -> None:
    tracker = SendTracker()
    for _ in range(4):
        send(tracker, 0.0)
    assert pns(tracker.on_ack(1, [(2, 4)], 0.1).lost) == [1]
    result = tracker.on_ack(5, [], 0.2)
    assert result.acked == [] and result.lost == [] and result.rtt_sample is None


def test_rtt_sample_from_largest_newly_acked_only_if_ack_eliciting() -> None:
    tracker = SendTracker()
    send(tracker, 0.0)
    send(tracker, 0.5)
    assert tracker.on_ack(3, [], 1.0).rtt_sample == pytest.approx(0.5)
    send(tracker, 1.0)
    send(tracker, 1.1, eliciting=False, in_flight=True)
    result = tracker.on_ack(5, [], 2.0)
    assert pns(result.acked) == [3, 4]
    assert result.rtt_sample is None


def test_pure_acks_are_not_tracked_and_never_hold_the_floor() -> None:
    tracker = SendTracker()
    send(tracker, 0.0, eliciting=False)
    assert tracker.floor == tracker.next_pn == 2
    assert tracker.bytes_in_flight == 0
    assert tracker.loss_deadline() is None


def test_acks_for_unsent_packets_are_ignored_and_counted() -> None:
    tracker = SendTracker()
    send(tracker, 0.0)
    send(tracker, 0.0)
    for ack, sack in [(4, []), (1, [(2, 3)])]:
        result = tracker.on_ack(ack, sack, 0.1)
        assert result.acked == [] and result.lost == []
    assert tracker.invalid_acks == 2
    assert tracker.floor == 1 and tracker.bytes_in_flight == 2000


def test_on_packet_sent_rejects_unallocated_and_out_of_order() -> None:
    tracker = SendTracker()
    with pytest.raises(ValueError, match="never allocated"):
        tracker.on_packet_sent(SentPacket(1, 0.0, 1, True, True, []))
    first, second = tracker.allocate_pn(), tracker.allocate_pn()
    tracker.on_packet_sent(SentPacket(second, 0.0, 1, True, True, []))
    with pytest.raises(ValueError, match="after packet"):
        tracker.on_packet_sent(SentPacket(first, 0.0, 1, True, True, []))


def test_rto_deadline_and_expiry() -> None:
    tracker = SendTracker()
    assert tracker.loss_deadline() is None
    send(tracker, 0.0)
    send(tracker, 0.5)
    assert tracker.loss_deadline() == 1.0
    assert tracker.on_loss_timer(0.999) == []
    assert tracker.rtt.backoff == 0
    lost = tracker.on_loss_timer(1.0)
    assert pns(lost) == [1]  # pn 2 was sent after now - rto
    assert tracker.timeout_retransmits == 1
    assert tracker.rtt.rto == 2.0
    assert tracker.loss_deadline() == 0.5 + 2.0
    assert pns(tracker.on_loss_timer(2.5)) == [2]
    assert tracker.rtt.rto == 4.0
    send(tracker, 3.0)
    tracker.on_ack(4, [], 3.1)  # new data acked: back to the unbacked-off RTO
    assert tracker.rtt.backoff == 0
    assert tracker.loss_deadline() is None


def test_rto_counts_from_the_oldest_ack_eliciting_packet() -> None:
    tracker = SendTracker()
    send(tracker, 0.0)
    send(tracker, 0.3)
    tracker.on_ack(1, [(2, 2)], 0.4)
    rto = tracker.rtt.rto
    assert tracker.loss_deadline() == pytest.approx(0.0 + rto)
    tracker.on_ack(2, [], 0.5)
    assert tracker.loss_deadline() is None


def test_send_window() -> None:
    tracker = SendTracker(window=4)
    for _ in range(4):
        assert tracker.can_send()
        send(tracker, 0.0)
    assert not tracker.can_send()
    tracker.on_ack(1, [(3, 4)], 0.1)  # 1 and 2 still outstanding
    assert not tracker.can_send()
    tracker.on_ack(2, [(3, 4)], 0.1)
    assert tracker.can_send()  # floor moved to 2: next_pn 5 - 2 < 4


def test_floor_is_announced_once_per_round_trip() -> None:
    tracker = SendTracker()
    for _ in range(5):
        send(tracker, 0.0)
    tracker.on_ack(1, [(2, 4)], 0.1)  # pn 1 lost
    assert tracker.floor == 5
    assert tracker.peer_needs_floor(1)
    assert not tracker.peer_needs_floor(1)  # announced; wait for the peer to ack beyond it
    send(tracker, 0.2)  # pn 6 carries ACK_FLOOR(5) and is lost
    send(tracker, 0.3)
    tracker.on_ack(1, [(7, 7), (2, 4)], 0.4)
    assert tracker.peer_needs_floor(1)  # the peer acked pn 7 but its cumulative is still 1
    tracker.on_ack(5, [(7, 7)], 0.5)
    assert not tracker.peer_needs_floor(5)  # caught up with the floor (5)


def test_no_floor_while_the_peer_has_no_hole() -> None:
    tracker = SendTracker()
    send(tracker, 0.0)
    tracker.on_ack(2, [], 0.1)
    send(tracker, 0.1, eliciting=False)  # pure ACK pn 2, still on its way: floor is 3
    assert tracker.floor == 3
    assert not tracker.peer_needs_floor(2)


def test_send_tracker_across_the_wrap() -> None:
    tracker = SendTracker(first_pn=WRAP - 3)
    sent = [send(tracker, 0.0) for _ in range(8)]
    assert sent[3] == WRAP
    # the peer got everything up to 2**32 + 1 and 2**32 + 3 .. 2**32 + 4
    result = tracker.on_ack((WRAP + 2) & MASK, [((WRAP + 3) & MASK, (WRAP + 4) & MASK)], 0.1)
    assert pns(result.acked) == [*sent[:5], WRAP + 3, WRAP + 4]
    assert tracker.floor == WRAP + 2
    assert tracker.peer_needs_floor((WRAP + 2) & MASK) is False
    # a block across the wrap boundary itself
    wrap_tracker = SendTracker(first_pn=WRAP - 2)
    for _ in range(5):
        send(wrap_tracker, 0.0)
    result = wrap_tracker.on_ack((WRAP - 2) & MASK, [((WRAP - 1) & MASK, (WRAP + 1) & MASK)], 0.1)
    assert pns(result.acked) == [WRAP - 1, WRAP, WRAP + 1]
    assert pns(result.lost) == [WRAP - 2]


# ------------------------------------------------------------------------------ ReceiveTracker


def receive(tracker: ReceiveTracker, pn: int, now: float = 0.0, eliciting: bool = True) -> None:
    assert tracker.check(pn) == NEW
    tracker.on_received(pn, eliciting, now)


def test_in_order_packets_move_the_cumulative_point() -> None:
    tracker = ReceiveTracker()
    for pn in (1, 2, 3):
        receive(tracker, pn)
    assert tracker.ack_fields() == (4, [])


def test_sack_generation_highest_first_and_hole_filling() -> None:
    tracker = ReceiveTracker()
    for pn in (1, 3, 5, 6):
        receive(tracker, pn)
    assert tracker.ack_fields() == (2, [(5, 6), (3, 3)])
    receive(tracker, 2)
    assert tracker.ack_fields() == (4, [(5, 6)])
    receive(tracker, 4)
    assert tracker.ack_fields() == (7, [])
    receive(tracker, 9)
    receive(tracker, 11)
    receive(tracker, 10)  # joins both neighbours
    receive(tracker, 13)
    receive(tracker, 14)
    assert tracker.ack_fields() == (7, [(13, 14), (9, 11)])


def test_at_most_eight_sack_blocks() -> None:
    tracker = ReceiveTracker()
    for pn in range(3, 40, 2):  # 19 separate ranges
        receive(tracker, pn)
    ack, blocks = tracker.ack_fields()
    assert ack == 1
    assert blocks == [(pn, pn) for pn in range(39, 23, -2)]


def test_check_verdicts() -> None:
    tracker = ReceiveTracker()
    for pn in (1, 2, 5):
        receive(tracker, pn)
    assert tracker.check(0) == TOO_OLD
    assert tracker.check(2) == TOO_OLD
    assert tracker.check(5) == DUPLICATE
    assert tracker.check(3) == NEW
    assert tracker.check(3 + MAX_PN_JUMP) == NEW
    assert tracker.check(4 + MAX_PN_JUMP) == BEYOND_WINDOW
    tracker.on_received(5, True, 0.0)  # a duplicate slipping through changes nothing
    assert tracker.ack_fields() == (3, [(5, 5)])


def test_packet_beyond_the_window_is_an_implicit_floor() -> None:
    tracker = ReceiveTracker(window=16)
    receive(tracker, 1)
    for pn in range(3, 7):
        receive(tracker, pn)
    receive(tracker, 20)  # the sender's floor was at least 20 - 16 + 1 = 5
    assert tracker.ack_fields() == (7, [(20, 20)])
    assert tracker.window_slides == 1
    assert tracker.check(2) == TOO_OLD
    receive(tracker, 40)
    assert tracker.ack_fields() == (25, [(40, 40)])


def test_slide_that_lands_on_the_packet_itself() -> None:
    tracker = ReceiveTracker(window=16)
    receive(tracker, 1)
    for pn in range(3, 18):
        receive(tracker, pn)
    receive(tracker, 18)  # slide to 3 swallows 3..17, and 18 is then the next expected
    assert tracker.ack_fields() == (19, [])


@given(st.lists(st.integers(1, 400), max_size=300))
def test_ranges_stay_sorted_disjoint_and_within_one_window(arrivals: list[int]) -> None:
    tracker = ReceiveTracker(window=32)
    got: set[int] = set()
    for pn in arrivals:
        verdict = tracker.check(pn)
        if pn < tracker.cumulative:
            assert verdict == TOO_OLD
            continue
        assert verdict == (DUPLICATE if pn in got else NEW)
        tracker.on_received(pn, True, 0.0)
        got.add(pn)
        cumulative = tracker.cumulative
        assert cumulative not in got
        lowest_allowed = cumulative + 1
        for start, end in tracker.ranges:
            assert lowest_allowed <= start <= end < cumulative + 32
            assert all(p in got for p in range(start, end + 1))
            lowest_allowed = end + 2  # disjoint and not adjacent


def test_ack_floor() -> None:
    tracker = ReceiveTracker()
    for pn in (1, 5, 6):
        receive(tracker, pn)
    tracker.on_floor(4)
    assert tracker.ack_fields() == (4, [(5, 6)])  # 4 itself may still come
    tracker.on_floor(5)
    assert tracker.ack_fields() == (7, [])
    tracker.on_floor(3)  # an old floor changes nothing
    assert tracker.ack_fields() == (7, [])
    tracker.on_floor(100)  # the sender abandoned everything below 100
    assert tracker.ack_fields() == (100, [])
    assert tracker.check(99) == TOO_OLD
    assert tracker.expand(101) == 101


def test_delayed_ack_timing() -> None:
    tracker = ReceiveTracker(max_ack_delay=0.025)
    assert tracker.ack_deadline() is None
    receive(tracker, 1, now=10.0, eliciting=False)
    assert tracker.ack_deadline() is None  # nothing owed for a non-ack-eliciting packet
    receive(tracker, 2, now=10.0)
    assert tracker.ack_deadline() == pytest.approx(10.025)
    receive(tracker, 3, now=10.01, eliciting=False)
    assert tracker.ack_deadline() == pytest.approx(10.025)
    receive(tracker, 4, now=10.02)
    assert tracker.ack_deadline() == 10.02  # two unacknowledged: at once
    tracker.on_ack_sent()
    assert tracker.ack_deadline() is None
    receive(tracker, 6, now=11.0)
    assert tracker.ack_deadline() == 11.0  # a gap: at once
    tracker.on_ack_sent()
    receive(tracker, 5, now=12.0)
    assert tracker.ack_deadline() == 12.0  # filling a hole: at once
    tracker.on_ack_sent()
    receive(tracker, 7, now=13.0)
    assert tracker.ack_deadline() == pytest.approx(13.025)


def test_receive_tracker_across_the_wrap() -> None:
    tracker = ReceiveTracker(first_pn=WRAP - 2)
    wire = [(WRAP - 2) & MASK, (WRAP - 1) & MASK, 1, 2, 0]
    expanded = [tracker.expand(seq) for seq in wire[:2]]
    assert expanded == [WRAP - 2, WRAP - 1]
    for pn in expanded:
        receive(tracker, pn)
    for seq in wire[2:4]:
        receive(tracker, tracker.expand(seq))
    assert tracker.ack_fields() == (WRAP & MASK, [(1, 2)])
    assert tracker.expand(0) == WRAP
    receive(tracker, WRAP)
    assert tracker.ack_fields() == (3, [])
    assert tracker.expand(MASK) == WRAP - 1
    assert tracker.check(tracker.expand(MASK)) == TOO_OLD


# ------------------------------------------------------------------------------ both ends


@settings(max_examples=scaled(40), deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([1, WRAP - 100, 2**40 - 7]),
       st.floats(0.0, 0.5))
def test_lossy_exchange_across_the_wrap(seed: int, first_pn: int, loss: float) -> None:
    """Sender and receiver trackers over a link that loses data and ACKs: every packet ends up
    acked (only if it really arrived) or lost, never both. Then the loss stops and only
    retransmissions (one new packet per lost one) go out, too few to slide the receiver's
    window: the ack floor alone must bring its cumulative point up to the sender's next pn."""
    rng = random.Random(seed)
    sender = SendTracker(window=32, first_pn=first_pn)
    receiver = ReceiveTracker(window=32, first_pn=first_pn)
    arrived: set[int] = set()
    acked: set[int] = set()
    lost: set[int] = set()
    floor_to_send: int | None = None
    retransmissions_due = 0
    now = 0.0
    for step in range(600):
        now += 0.01
        lossy = step < 200
        for _ in range(3):
            if not sender.can_send():
                break
            if not lossy and floor_to_send is None and not retransmissions_due:
                break
            retransmissions_due = max(0, retransmissions_due - 1)
            pn = send(sender, now)
            floor, floor_to_send = floor_to_send, None
            if lossy and rng.random() < loss:
                continue
            got = receiver.expand(pn & MASK)
            assert got == pn
            assert receiver.check(got) == NEW
            receiver.on_received(got, True, now)
            arrived.add(pn)
            if floor is not None:
                receiver.on_floor(floor)
        if receiver.ack_deadline() is not None:
            ack32, sack = receiver.ack_fields()
            receiver.on_ack_sent()
            if not (lossy and rng.random() < loss):
                result = sender.on_ack(ack32, sack, now)
                for p in result.acked:
                    assert p.pn in arrived and p.pn not in lost
                    acked.add(p.pn)
                lost.update(pns(result.lost))
                retransmissions_due += len(result.lost)
                if sender.peer_needs_floor(ack32):
                    floor_to_send = sender.floor & MASK
        deadline = sender.loss_deadline()
        if deadline is not None and now >= deadline:
            expired = sender.on_loss_timer(now)
            lost.update(pns(expired))
            retransmissions_due += len(expired)
        assert not acked & lost
    assert sender.outstanding == 0
    assert acked | lost == set(range(first_pn, sender.next_pn))
    assert receiver.cumulative == sender.next_pn
    assert sender.invalid_acks == 0
