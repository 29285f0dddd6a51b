"""Channels and delivery modes: each mode's promise under reordering, duplication and loss."""

from __future__ import annotations

import os
import random
import struct
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum.channels import (
    MAX_MESSAGE_SIZE,
    UNRELIABLE_WINDOW,
    ChannelReceiver,
    ChannelSender,
)
from quantum.errors import MessageError, ProtocolError
from quantum.frames import MESSAGE_FRAME_OVERHEAD, Delivery, MessageFrame, decode_frames

RO = Delivery.RELIABLE_ORDERED
RU = Delivery.RELIABLE_UNORDERED
UN = Delivery.UNRELIABLE
SEQ = Delivery.UNRELIABLE_SEQUENCED
BIG = 1 << 16  # a max_size that fits any frame in these tests
TAG = struct.Struct(">BBI")  # channel, mode, message id: makes every test message unique


def drain(sender: ChannelSender, max_size: int = BIG) -> list[MessageFrame]:
    frames = []
    while (frame := sender.pop_frame(max_size)) is not None:
        wire = frame.encode()
        assert len(wire) <= max_size
        assert decode_frames(wire) == [frame]  # what the sender makes survives the codec
        frames.append(frame)
    assert not sender.has_pending()
    assert sender.pending_bytes == 0
    return frames


def feed(receiver: ChannelReceiver,
         frames: list[MessageFrame]) -> list[tuple[int, Delivery, bytes]]:
    out = []
    for frame in frames:
        out.extend(receiver.on_frame(frame))
    return out


def frame(message_id: int, index: int = 0, count: int = 1, data: bytes = b"x", channel: int = 0,
          mode: Delivery = RO) -> MessageFrame:
    return MessageFrame(channel, mode, message_id, index, count, data)


# ---------------------------------------------------------------------------------- sender


def test_ids_count_per_channel_and_mode_stream() -> None:
    sender = ChannelSender(100)
    assert [sender.queue(b"a") for _ in range(3)] == [0, 1, 2]
    assert sender.queue(b"a", 1) == 0
    assert sender.queue(b"a", 0, RU) == 0
    assert sender.queue(b"a", 0, SEQ) == 0
    assert sender.queue(b"a") == 3


def test_fragments_cover_the_message_and_fit_max_fragment() -> None:
    sender = ChannelSender(10)
    data = bytes(range(95))
    sender.queue(data, 7, RU)
    assert sender.pending_bytes == 95
    frames = drain(sender)
    assert [len(f.data) for f in frames] == [10] * 9 + [5]
    assert {(f.channel, f.mode, f.message_id, f.frag_count) for f in frames} == {(7, RU, 0, 10)}
    assert [f.frag_index for f in frames] == list(range(10))
    assert b"".join(f.data for f in frames) == data


def test_exact_multiple_and_empty_message() -> None:
    sender = ChannelSender(10)
    sender.queue(b"z" * 20)
    sender.queue(b"")
    frames = drain(sender)
    assert [(f.message_id, f.frag_index, f.frag_count, f.data) for f in frames] == [
        (0, 0, 2, b"z" * 10), (0, 1, 2, b"z" * 10), (1, 0, 1, b"")]


def test_pop_respects_max_size() -> None:
    sender = ChannelSender(50)
    sender.queue(b"a" * 50)
    assert sender.pop_frame(MESSAGE_FRAME_OVERHEAD + 49) is None
    assert sender.pop_frame(-1) is None
    assert sender.has_pending()
    popped = sender.pop_frame(MESSAGE_FRAME_OVERHEAD + 50)
    assert popped is not None and popped.data == b"a" * 50
    assert not sender.has_pending()


def test_smaller_frame_of_another_channel_fills_leftover_room() -> None:
    sender = ChannelSender(50)
    sender.queue(b"a" * 50, 0)
    sender.queue(b"b" * 5, 1)
    popped = sender.pop_frame(MESSAGE_FRAME_OVERHEAD + 10)
    assert popped is not None and (popped.channel, popped.data) == (1, b"b" * 5)
    assert sender.pending_bytes == 50


def test_round_robin_across_channels_and_fifo_within() -> None:
    sender = ChannelSender(4)
    sender.queue(b"AAAAAAAA", 0)
    sender.queue(b"C", 0)
    sender.queue(b"B", 1)
    sender.queue(b"D", 2)
    order = [(f.channel, f.data) for f in drain(sender)]
    assert order == [(0, b"AAAA"), (1, b"B"), (2, b"D"), (0, b"AAAA"), (0, b"C")]


def test_retransmissions_go_first_and_count_as_pending() -> None:
    sender = ChannelSender(100)
    sender.queue(b"one")
    sender.queue(b"two")
    first = sender.pop_frame(BIG)
    assert first is not None
    sender.requeue(first)
    assert sender.pending_bytes == 6
    assert [f.data for f in drain(sender)] == [b"one", b"two"]


def test_retransmission_that_does_not_fit_lets_a_smaller_one_pass() -> None:
    sender = ChannelSender(100)
    big = frame(0, data=b"x" * 100)
    small = frame(1, data=b"y")
    sender.requeue(big)
    sender.requeue(small)
    assert sender.pop_frame(MESSAGE_FRAME_OVERHEAD + 10) is small
    assert sender.pop_frame(BIG) is big


def test_unreliable_frames_are_never_retransmitted() -> None:
    sender = ChannelSender(100)
    sender.requeue(frame(0, mode=UN))
    sender.requeue(frame(0, mode=SEQ))
    assert not sender.has_pending()
    assert sender.pending_bytes == 0


def test_mutable_buffers_are_copied_at_queue_time() -> None:
    sender = ChannelSender(100)
    buffer = bytearray(b"before")
    sender.queue(buffer)
    sender.queue(memoryview(b"view"))
    buffer[:] = b"after!"
    assert [f.data for f in drain(sender)] == [b"before", b"view"]


def test_a_large_message_is_not_copied_up_front() -> None:
    sender = ChannelSender(1000)
    data = os.urandom(MAX_MESSAGE_SIZE)
    sender.queue(data)
    queued = sender._queues[0][0]  # the sender holds the caller's object until popped
    assert queued.data is data


@pytest.mark.parametrize(("args", "reason"), [
    (("text",), "bytes-like"),
    ((12,), "bytes-like"),
    ((None,), "bytes-like"),
    ((b"x" * (MAX_MESSAGE_SIZE + 1),), "exceeds the maximum"),
    ((b"x", -1), "outside 0..255"),
    ((b"x", 256), "outside 0..255"),
    ((b"x", "1"), "channel must be an int"),
    ((b"x", True), "channel must be an int"),
    ((b"x" * 101, 0, UN), "does not fit in one fragment"),
    ((b"x" * 101, 0, SEQ), "does not fit in one fragment"),
    ((b"x", 0, 4), "unknown delivery mode"),
    ((b"x", 0, "reliable"), "unknown delivery mode"),
])
def test_queue_rejects_bad_messages(args: tuple[object, ...], reason: str) -> None:
    sender = ChannelSender(100)
    with pytest.raises(MessageError, match=reason):
        sender.queue(*args)  # type: ignore[arg-type]
    assert not sender.has_pending()


def test_largest_allowed_messages_are_accepted() -> None:
    sender = ChannelSender(100)
    sender.queue(b"x" * MAX_MESSAGE_SIZE)
    sender.queue(b"x" * 100, 3, UN)
    sender.queue(b"x" * 100, 3, SEQ)
    sender.queue(b"x", 0, 1)  # type: ignore[arg-type]  # a plain int naming a mode is accepted
    assert sender.pending_bytes == MAX_MESSAGE_SIZE + 201


@pytest.mark.parametrize("max_fragment", [0, -5])
def test_fragment_size_must_be_positive(max_fragment: int) -> None:
    with pytest.raises(ValueError, match="max_fragment"):
        ChannelSender(max_fragment)


def test_fragment_count_must_fit_u16() -> None:
    sender = ChannelSender(16)
    sender.queue(b"x" * (16 * 0xFFFF))
    with pytest.raises(MessageError, match="needs 65536 fragments of 16 bytes"):
        sender.queue(b"x" * (16 * 0xFFFF + 1))


# -------------------------------------------------------------- every mode's promise, fuzzed


def sent_messages(specs: list[tuple[int, int, int]], sender: ChannelSender,
                  ) -> dict[tuple[int, Delivery], list[bytes]]:
    """Queue one message per (channel, mode, size) spec; returns the messages per stream."""
    per_stream: dict[tuple[int, Delivery], list[bytes]] = defaultdict(list)
    for channel, mode_value, size in specs:
        mode = Delivery(mode_value)
        key = (channel, mode)
        data = TAG.pack(channel, mode, len(per_stream[key])) + bytes([size % 251]) * size
        if mode >= UN:
            data = data[:16]
        per_stream[key].append(data)
        sender.queue(data, channel, mode)
    return per_stream


message_specs = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 60)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(specs=message_specs, data=st.data(), first_id=st.sampled_from([0, 0xFFFFFFFF - 5]))
def test_every_mode_keeps_its_promise(specs: list[tuple[int, int, int]], data: st.DataObject,
                                      first_id: int) -> None:
    sender = ChannelSender(16, first_message_id=first_id)
    sent = sent_messages(specs, sender)
    frames = drain(sender)
    # the network duplicates some frames, drops some unreliable ones and reorders everything
    arrivals: list[MessageFrame] = []
    for f in frames:
        if f.mode >= UN and data.draw(st.booleans(), label="drop"):
            continue
        arrivals.extend([f] * data.draw(st.integers(1, 3), label="copies"))
    arrivals = data.draw(st.permutations(arrivals), label="order")

    receiver = ChannelReceiver(first_message_id=first_id)
    delivered: dict[tuple[int, Delivery], list[bytes]] = defaultdict(list)
    for f in arrivals:
        for channel, mode, message in receiver.on_frame(f):
            delivered[(channel, mode)].append(message)

    def index(message: bytes) -> int:
        return int(TAG.unpack_from(message)[2])

    arrived_ids = {(f.channel, f.mode, f.message_id) for f in arrivals}
    for (channel, mode), messages in sent.items():
        got = delivered[(channel, mode)]
        if mode == RO:
            assert got == messages  # exactly once, byte-identical, in order
        elif mode == RU:
            assert sorted(got, key=index) == messages  # exactly once, byte-identical
        else:
            arrived = [m for i, m in enumerate(messages)
                       if (channel, mode, (first_id + i) & 0xFFFFFFFF) in arrived_ids]
            assert len(got) == len(set(got))  # at most once
            if mode == UN:
                assert sorted(got, key=index) == arrived  # within the window nothing is lost
            else:
                assert [index(m) for m in got] == sorted({index(m) for m in got})
                if arrived:
                    assert got[-1] == arrived[-1]  # the newest always gets through
    # the sequenced drops, recomputed from the arrival order: older than the newest so far
    stale = 0
    newest: dict[int, int] = {}
    for f in arrivals:
        if f.mode == SEQ:
            position = (f.message_id - first_id) & 0xFFFFFFFF
            stale += position < newest.get(f.channel, -1)
            newest[f.channel] = max(newest.get(f.channel, -1), position)
    assert receiver.stale_dropped == stale
    assert receiver.delivered == sum(len(m) for m in delivered.values())
    # frames are mutable, so not hashable: count the distinct ones by their fields
    distinct = {(f.channel, f.mode, f.message_id, f.frag_index, f.frag_count, f.data)
                for f in arrivals}
    assert receiver.duplicates >= len(arrivals) - len(distinct) - stale
    assert receiver.buffered_bytes == 0  # nothing left behind once every message is complete


# ----------------------------------------------------------------------- focused behaviour


def test_a_missing_fragment_on_one_channel_holds_back_no_other_channel() -> None:
    sender = ChannelSender(10)
    sender.queue(b"1" * 30, 1)
    sender.queue(b"after", 1)
    sender.queue(b"2" * 25, 2)
    sender.queue(b"two", 2)
    frames = drain(sender)
    lost = next(f for f in frames if f.channel == 1 and f.frag_index == 1)
    receiver = ChannelReceiver()
    early = feed(receiver, [f for f in frames if f is not lost])
    assert early == [(2, RO, b"2" * 25), (2, RO, b"two")]
    assert feed(receiver, [lost]) == [(1, RO, b"1" * 30), (1, RO, b"after")]


def test_a_mode_is_its_own_stream_within_a_channel() -> None:
    receiver = ChannelReceiver()
    assert receiver.on_frame(frame(1, mode=RO)) == []  # waits for id 0
    assert receiver.on_frame(frame(0, data=b"u", mode=RU)) == [(0, RU, b"u")]
    assert receiver.on_frame(frame(0, data=b"s", mode=SEQ)) == [(0, SEQ, b"s")]


@pytest.mark.parametrize("mode", [RO, RU])
def test_one_mebibyte_round_trip_shuffled(mode: Delivery) -> None:
    sender = ChannelSender(1300)
    data = os.urandom(MAX_MESSAGE_SIZE)
    sender.queue(data, 9, mode)
    frames = drain(sender, 1300 + MESSAGE_FRAME_OVERHEAD)
    assert len(frames) == -(-MAX_MESSAGE_SIZE // 1300)
    random.Random(7).shuffle(frames)
    receiver = ChannelReceiver()
    out = feed(receiver, frames + frames[:50])
    assert out == [(9, mode, data)]
    assert receiver.duplicates == 50
    assert receiver.buffered_bytes == 0


def test_message_ids_wrap_at_u32() -> None:
    first = 0xFFFFFFFE
    sender = ChannelSender(100, first_message_id=first)
    ids = [sender.queue(bytes([i])) for i in range(4)]
    assert ids == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    frames = drain(sender)
    receiver = ChannelReceiver(first_message_id=first)
    assert feed(receiver, frames[::-1]) == [(0, RO, bytes([i])) for i in range(4)]
    assert feed(receiver, frames) == []  # all already delivered, across the wrap
    assert receiver.duplicates == 4


def test_sequenced_order_across_the_wrap() -> None:
    receiver = ChannelReceiver(first_message_id=0xFFFFFFF0)
    assert receiver.on_frame(frame(0xFFFFFFFF, mode=SEQ)) == [(0, SEQ, b"x")]
    assert receiver.on_frame(frame(1, mode=SEQ)) == [(0, SEQ, b"x")]  # newer despite wrapping
    assert receiver.on_frame(frame(0xFFFFFFFE, mode=SEQ)) == []
    assert receiver.on_frame(frame(0, mode=SEQ)) == []
    assert receiver.on_frame(frame(1, mode=SEQ)) == []
    assert (receiver.stale_dropped, receiver.duplicates) == (2, 1)


def test_unordered_duplicate_memory_collapses_once_gaps_fill() -> None:
    receiver = ChannelReceiver()
    for message_id in range(200, 0, -2):  # even ids above 0: 100 separate gaps
        assert receiver.on_frame(frame(message_id, mode=RU)) == [(0, RU, b"x")]
    held = receiver.buffered_bytes
    assert held > 0
    for message_id in range(199, 0, -2):
        assert receiver.on_frame(frame(message_id, mode=RU)) == [(0, RU, b"x")]
    assert 0 < receiver.buffered_bytes < held  # the gaps merged into one range: 1..200
    assert receiver.on_frame(frame(0, mode=RU)) == [(0, RU, b"x")]
    assert receiver.buffered_bytes == 0
    for message_id in (0, 57, 200):
        assert receiver.on_frame(frame(message_id, mode=RU)) == []
    assert receiver.duplicates == 3
    assert receiver.on_frame(frame(201, mode=RU)) == [(0, RU, b"x")]


def test_unordered_gap_bookkeeping_is_bounded() -> None:
    receiver = ChannelReceiver(max_buffered_bytes=4096)
    with pytest.raises(ProtocolError, match="receive buffer bound"):
        for message_id in range(2, 100_000, 2):
            receiver.on_frame(frame(message_id, mode=RU))


def test_unreliable_too_old_to_tell_is_dropped_and_counted() -> None:
    receiver = ChannelReceiver()
    assert receiver.on_frame(frame(UNRELIABLE_WINDOW + 5, mode=UN)) == [(0, UN, b"x")]
    assert receiver.on_frame(frame(5, mode=UN)) == []
    assert receiver.on_frame(frame(6, mode=UN)) == [(0, UN, b"x")]
    assert receiver.on_frame(frame(6, mode=UN)) == []
    assert (receiver.too_old, receiver.duplicates, receiver.delivered) == (1, 1, 2)


def test_unreliable_ids_before_the_first_are_not_new() -> None:
    receiver = ChannelReceiver(first_message_id=10)
    assert receiver.on_frame(frame(9, mode=UN)) == []
    assert receiver.on_frame(frame(10, mode=UN)) == [(0, UN, b"x")]


def test_duplicate_fragment_of_a_partial_message_is_counted() -> None:
    receiver = ChannelReceiver()
    first = frame(0, 0, 2, b"ab")
    assert receiver.on_frame(first) == []
    assert receiver.on_frame(first) == []
    assert receiver.on_frame(frame(0, 1, 2, b"c")) == [(0, RO, b"abc")]
    assert receiver.duplicates == 1


def test_complete_message_waiting_in_order_is_a_duplicate_too() -> None:
    receiver = ChannelReceiver()
    assert receiver.on_frame(frame(1, 0, 2, b"ab")) == []
    assert receiver.on_frame(frame(1, 1, 2, b"c")) == []
    assert receiver.on_frame(frame(1, 1, 2, b"c")) == []
    assert receiver.duplicates == 1
    assert feed(receiver, [frame(0, data=b"z")]) == [(0, RO, b"z"), (0, RO, b"abc")]
    assert receiver.buffered_bytes == 0


# ------------------------------------------------------------------- peer violations


def test_fragment_count_must_not_change() -> None:
    receiver = ChannelReceiver()
    receiver.on_frame(frame(0, 0, 3, b"a"))
    with pytest.raises(ProtocolError, match="announced 3 fragments, now 4"):
        receiver.on_frame(frame(0, 1, 4, b"b"))


@pytest.mark.parametrize(("index", "count"), [(2, 2), (0, 0), (5, 1)])
def test_fragment_index_must_be_below_count(index: int, count: int) -> None:
    with pytest.raises(ProtocolError, match="not below the fragment count"):
        ChannelReceiver().on_frame(frame(0, index, count))


def test_reassembled_message_must_not_exceed_the_maximum() -> None:
    receiver = ChannelReceiver(max_buffered_bytes=8 * MAX_MESSAGE_SIZE)
    half = b"x" * (MAX_MESSAGE_SIZE // 2)
    receiver.on_frame(frame(0, 0, 3, half))
    receiver.on_frame(frame(0, 1, 3, half))
    with pytest.raises(ProtocolError, match="beyond the maximum"):
        receiver.on_frame(frame(0, 2, 3, b"y"))


@pytest.mark.parametrize("mode", [RO, RU, UN, SEQ])
def test_single_fragment_must_not_exceed_the_maximum(mode: Delivery) -> None:
    with pytest.raises(ProtocolError, match="beyond the maximum"):
        ChannelReceiver().on_frame(frame(0, data=b"x" * (MAX_MESSAGE_SIZE + 1), mode=mode))


def test_first_fragment_over_the_maximum_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="beyond the maximum"):
        ChannelReceiver(8 * MAX_MESSAGE_SIZE).on_frame(
            frame(0, 0, 2, b"x" * (MAX_MESSAGE_SIZE + 1)))


@pytest.mark.parametrize("mode", [UN, SEQ])
def test_unreliable_modes_have_one_fragment(mode: Delivery) -> None:
    with pytest.raises(ProtocolError, match="has 2 fragments; only 1 allowed"):
        ChannelReceiver().on_frame(frame(0, 0, 2, mode=mode))


def test_fragments_of_a_split_message_are_not_empty() -> None:
    with pytest.raises(ProtocolError, match="empty fragment 0 of 2"):
        ChannelReceiver().on_frame(frame(0, 0, 2, b""))


def test_out_of_order_data_beyond_the_bound_is_a_violation() -> None:
    receiver = ChannelReceiver(max_buffered_bytes=10_000)
    with pytest.raises(ProtocolError, match="receive buffer bound of 10000"):
        for message_id in range(1, 100):  # id 0 never comes: everything waits
            receiver.on_frame(frame(message_id, data=b"x" * 500))
    assert receiver.buffered_bytes <= 10_000


def test_announced_fragment_slots_are_charged() -> None:
    receiver = ChannelReceiver(max_buffered_bytes=100_000)
    with pytest.raises(ProtocolError, match="receive buffer bound"):
        for message_id in range(10):  # one byte each, but 65535 slots announced
            receiver.on_frame(frame(message_id, 0, 0xFFFF, b"x"))


def test_unknown_channel_or_mode_in_a_frame_is_a_violation() -> None:
    with pytest.raises(ProtocolError, match="channel 300"):
        ChannelReceiver().on_frame(frame(0, channel=300))
    # A frame with an unknown mode never reaches a stream: in the compiled build the frame
    # itself cannot be built (its `mode` field is typed), in pure Python the receiver refuses it.
    with pytest.raises((ProtocolError, TypeError), match=r"unknown delivery mode|Delivery"):
        ChannelReceiver().on_frame(frame(0, mode=7))  # type: ignore[arg-type]


def test_receiver_rejects_a_useless_bound() -> None:
    with pytest.raises(ValueError, match="max_buffered_bytes"):
        ChannelReceiver(0)
