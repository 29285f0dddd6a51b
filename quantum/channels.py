"""Channels and delivery modes: fragmentation on the way out, reassembly and ordering on the way in.

Sans-I/O. The connection queues whole messages on a `ChannelSender` and pulls `MessageFrame`s
sized to the room left in the packet it is building; frames of lost packets come back through
`requeue`. Incoming `MessageFrame`s go to a `ChannelReceiver`, which answers with the whole
messages that became deliverable.

A *stream* is one (channel, mode) pair; message ids are u32 per stream and wrap. The receiver
unwraps each id to a 64-bit counter, `position + serial.diff(wire_id, position)` relative to
the stream's own position (RFC 1982: less than 2**31 ahead is newer, anything else older), so
all later bookkeeping is plain integer comparison and never mis-orders at the wrap.

Why each stream keeps its own state: a lost reliable message on one channel must not hold back
any other channel (no head-of-line blocking across channels), and the modes on one channel
are independent streams too.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from typing import Final, NoReturn

from quantum.errors import MessageError, ProtocolError, SendBufferFull
from quantum.frames import MESSAGE_FRAME_OVERHEAD, Delivery, MessageFrame
from quantum.serial import MASK, diff

__all__ = [
    "MAX_CHANNEL",
    "MAX_MESSAGE_SIZE",
    "UNRELIABLE_WINDOW",
    "ChannelReceiver",
    "ChannelSender",
]

MAX_MESSAGE_SIZE: Final = 1 << 20
MAX_CHANNEL: Final = 255
#: how far back (in message ids) an unreliable stream still tells a late message from a
#: duplicate; older arrivals cannot be told apart and are dropped to keep "at most once"
UNRELIABLE_WINDOW: Final = 1024

_MAX_FRAG_COUNT: Final = 0xFFFF
#: retransmissions examined per pop when the oldest does not fit: bounds the cost per packet
_RETRANSMIT_SCAN: Final = 16

# Receive-side memory is charged against one budget (`max_buffered_bytes`) as data bytes plus
# these approximate bookkeeping costs, so a peer cannot exhaust memory with many tiny or empty
# pieces that carry no data (e.g. one 1-byte fragment of a message announcing 65535 fragments).
_PARTIAL_COST: Final = 128  # one message under reassembly
_SLOT_COST: Final = 8  # one fragment slot in it (a list entry)
_FRAGMENT_COST: Final = 48  # one buffered fragment (a bytes object's header)
_READY_COST: Final = 96  # one complete message waiting for an earlier one (ordered)
_RANGE_COST: Final = 64  # one gap in the ids delivered by an unordered stream

_RELIABLE_ORDERED: Final = Delivery.RELIABLE_ORDERED
_RELIABLE_UNORDERED: Final = Delivery.RELIABLE_UNORDERED
_UNRELIABLE: Final = Delivery.UNRELIABLE
_UNRELIABLE_SEQUENCED: Final = Delivery.UNRELIABLE_SEQUENCED

Delivered = tuple[int, Delivery, bytes]


# ---------------------------------------------------------------------------------------- send


class _Outgoing:
    """A queued message; fragments are cut from `data` only when popped, never up front."""

    __slots__ = ("channel", "count", "data", "message_id", "mode", "next_index")

    def __init__(self, channel: int, mode: Delivery, message_id: int, data: bytes,
                 count: int) -> None:
        self.channel = channel
        self.mode = mode
        self.message_id = message_id
        self.data = data
        self.count = count
        self.next_index = 0


class ChannelSender:
    """Turns queued messages into `MessageFrame`s: retransmissions first, then new data.

    New data is served round-robin across channels, one frame per turn, so a 1 MiB transfer on
    one channel does not delay small messages on another by more than a frame per packet.
    Within a channel, messages go out in the order they were queued.
    """

    __slots__ = ("_active", "_first_id", "_max_fragment", "_next_ids", "_pending_bytes",
                 "_queues", "_retransmit")

    def __init__(self, max_fragment: int, *, first_message_id: int = 0) -> None:
        """`max_fragment` is the data bytes per fragment; `first_message_id` starts every stream.

        The connection passes what fits in one packet minus the frame overhead. The fragment
        count travels as a u16: with fragments under 17 bytes the largest messages cannot be
        sent, and `queue` says so.
        """
        if isinstance(max_fragment, bool) or not isinstance(max_fragment, int):
            raise ValueError(f"max_fragment must be an int, got {type(max_fragment).__name__}")
        if max_fragment < 1:
            raise ValueError(f"max_fragment must be at least 1, got {max_fragment}")
        if not 0 <= first_message_id <= MASK:
            raise ValueError(f"first_message_id {first_message_id} is not a u32")
        self._max_fragment = max_fragment
        self._next_ids: dict[int, int] = {}  # stream key (channel << 2 | mode) -> next id
        self._queues: dict[int, deque[_Outgoing]] = {}  # channel -> messages not fully popped
        self._active: deque[int] = deque()  # channels with queued messages, round-robin order
        self._retransmit: deque[MessageFrame] = deque()
        self._pending_bytes = 0
        self._first_id = first_message_id

    @property
    def pending_bytes(self) -> int:
        """Message data not yet handed out by `pop_frame` (new and requeued)."""
        return self._pending_bytes

    def queue(self, data: object, channel: object = 0,
              mode: object = Delivery.RELIABLE_ORDERED, *, room: int = 1 << 62) -> int:
        """Queue one message (bytes-like) on `channel` (0..255) with delivery `mode` (a
        `Delivery` or its int value); returns its id within its (channel, mode) stream.

        `room` is what the caller's send buffer still holds: a reliable message larger than
        that raises `SendBufferFull` (nothing is queued), an unreliable one is dropped and -1
        returned (those modes may lose a message anyway; queueing it would only grow memory).

        Raises `MessageError` if the message cannot be sent as asked. The parameters are typed
        `object` on purpose: this is where application input is checked, and the compiled
        build would otherwise answer a wrong type with a bare TypeError before the check runs.
        """
        if type(data) is bytes:
            size = len(data)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            # A mutable buffer may change or be resized after this call returns; copy it once
            # so the bytes sent are the bytes queued (a bytes subclass becomes plain bytes).
            data = bytes(data)
            size = len(data)
        else:
            raise MessageError(f"message must be bytes-like, got {type(data).__name__}")
        if type(channel) is not int:
            if isinstance(channel, bool) or not isinstance(channel, int):
                raise MessageError(f"channel must be an int, got {type(channel).__name__}")
            channel = int(channel)
        if not 0 <= channel <= MAX_CHANNEL:
            raise MessageError(f"channel {channel} is outside 0..{MAX_CHANNEL}")
        if type(mode) is not Delivery:  # the common case skips the costly enum lookup
            if isinstance(mode, bool) or not isinstance(mode, int):
                raise MessageError(f"unknown delivery mode {mode!r}")
            try:
                mode = Delivery(mode)
            except ValueError:
                raise MessageError(f"unknown delivery mode {mode!r}") from None
        if size > MAX_MESSAGE_SIZE:
            raise MessageError(f"message of {size} bytes exceeds the maximum of "
                               f"{MAX_MESSAGE_SIZE} bytes")
        max_fragment = self._max_fragment
        if size > max_fragment and mode >= _UNRELIABLE:
            raise MessageError(f"{mode.name.lower()} message of {size} bytes does not fit in "
                               f"one fragment of {max_fragment} bytes")
        count = -(-size // max_fragment) if size else 1
        if count > _MAX_FRAG_COUNT:
            raise MessageError(f"message of {size} bytes needs {count} fragments of "
                               f"{max_fragment} bytes, more than {_MAX_FRAG_COUNT}")
        if size > room:
            if mode >= _UNRELIABLE:
                return -1
            raise SendBufferFull(size, self._pending_bytes, self._pending_bytes + room)
        key = channel << 2 | mode
        message_id = self._next_ids.get(key, self._first_id)
        self._next_ids[key] = (message_id + 1) & MASK
        outgoing = _Outgoing(channel, mode, message_id, data, count)
        queue = self._queues.get(channel)
        if queue is None:
            self._queues[channel] = deque((outgoing,))
            self._active.append(channel)
        else:
            queue.append(outgoing)
        self._pending_bytes += size
        return message_id

    def has_pending(self) -> bool:
        """Whether `pop_frame` has anything to give (given enough room)."""
        return bool(self._retransmit or self._active)

    def pop_frame(self, max_size: int) -> MessageFrame | None:
        """The next frame whose encoded size fits `max_size`, or None if none fits."""
        room = max_size - MESSAGE_FRAME_OVERHEAD
        if room < 0:
            return None
        retransmit = self._retransmit
        if retransmit:
            frame = retransmit[0]
            if len(frame.data) <= room:
                retransmit.popleft()
                self._pending_bytes -= len(frame.data)
                return frame
            for i in range(1, min(len(retransmit), _RETRANSMIT_SCAN)):
                frame = retransmit[i]
                if len(frame.data) <= room:
                    del retransmit[i]
                    self._pending_bytes -= len(frame.data)
                    return frame
        active = self._active
        queues = self._queues
        max_fragment = self._max_fragment
        for _ in range(len(active)):
            channel = active[0]
            queue = queues[channel]
            outgoing = queue[0]
            index = outgoing.next_index
            start = index * max_fragment
            # slicing the immutable bytes object copies just this fragment; a memoryview slice
            # would cost the same copy (frames hold bytes) plus a view object per fragment
            data = (outgoing.data if outgoing.count == 1
                    else outgoing.data[start:start + max_fragment])
            if len(data) > room:
                active.rotate(-1)
                continue
            frame = MessageFrame(channel, outgoing.mode, outgoing.message_id, index,
                                 outgoing.count, data)
            index += 1
            if index == outgoing.count:
                queue.popleft()
                if not queue:
                    del queues[channel]
                    active.popleft()
                else:
                    active.rotate(-1)
            else:
                outgoing.next_index = index
                active.rotate(-1)
            self._pending_bytes -= len(data)
            return frame
        return None

    def requeue(self, frame: MessageFrame) -> None:
        """A frame whose packet was lost: reliable frames go out again before new data.

        Unreliable and sequenced frames are dropped here: those modes promise never to be
        retransmitted, so a caller may hand every lost frame back without sorting them.
        """
        if frame.mode >= _UNRELIABLE:
            return
        self._retransmit.append(frame)
        self._pending_bytes += len(frame.data)


# ------------------------------------------------------------------------------------- receive


class _Partial:
    """A message under reassembly: fragments land in their slot and are joined once."""

    __slots__ = ("cost", "count", "missing", "parts", "size")

    def __init__(self, count: int, cost: int) -> None:
        self.count = count
        self.parts = [b""] * count  # b"" marks a missing slot: multi-fragment parts are non-empty
        self.missing = count
        self.size = 0
        self.cost = cost  # budget charged for this message so far, released when it completes


class _OrderedStream:
    __slots__ = ("next_id", "partials", "ready")

    def __init__(self, first_id: int) -> None:
        self.next_id = first_id  # 64-bit: every id below it was delivered
        self.ready: dict[int, bytes] = {}  # complete messages waiting for an earlier one
        self.partials: dict[int, _Partial] = {}


class _UnorderedStream:
    __slots__ = ("ends", "partials", "starts", "watermark")

    def __init__(self, first_id: int) -> None:
        # Every id below the watermark was delivered; the ids delivered above it are kept as
        # sorted half-open ranges [starts[i], ends[i]), so memory follows the number of gaps
        # (charged to the budget), not the number of messages.
        self.watermark = first_id
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.partials: dict[int, _Partial] = {}


class _UnreliableStream:
    __slots__ = ("highest", "seen")

    def __init__(self, first_id: int) -> None:
        self.highest = first_id - 1
        # bit i set: id (highest - i) was delivered or predates the stream. Starting full means
        # ids before the first one are never taken for new messages.
        self.seen = (1 << UNRELIABLE_WINDOW) - 1


class _SequencedStream:
    __slots__ = ("highest",)

    def __init__(self, first_id: int) -> None:
        self.highest = first_id - 1  # the newest id delivered


_Stream = _OrderedStream | _UnorderedStream | _UnreliableStream | _SequencedStream
_WINDOW_MASK: Final = (1 << UNRELIABLE_WINDOW) - 1


class ChannelReceiver:
    """Reassembles and orders incoming `MessageFrame`s per (channel, mode) stream.

    Counters: `duplicates` (a fragment or message seen before, dropped), `stale_dropped`
    (sequenced messages older than one already delivered), `too_old` (unreliable messages
    beyond `UNRELIABLE_WINDOW` behind the newest, which cannot be told from duplicates),
    `delivered` (messages handed out).
    """

    __slots__ = ("_buffered", "_first_id", "_max_buffered", "_streams", "delivered",
                 "duplicates", "stale_dropped", "too_old")

    def __init__(self, max_buffered_bytes: int = 4 * MAX_MESSAGE_SIZE, *,
                 first_message_id: int = 0) -> None:
        """`max_buffered_bytes` bounds everything held for undelivered messages, all streams.

        A peer that makes the receiver hold more violates the protocol (`ProtocolError`).
        `first_message_id` must match the sender's.
        """
        if max_buffered_bytes < 1:
            raise ValueError(f"max_buffered_bytes must be positive, got {max_buffered_bytes}")
        if not 0 <= first_message_id <= MASK:
            raise ValueError(f"first_message_id {first_message_id} is not a u32")
        self._max_buffered = max_buffered_bytes
        self._first_id = first_message_id
        self._buffered = 0
        self._streams: dict[int, _Stream] = {}
        self.duplicates = 0
        self.stale_dropped = 0
        self.too_old = 0
        self.delivered = 0

    @property
    def buffered_bytes(self) -> int:
        """Budget in use: buffered data plus bookkeeping for undelivered messages."""
        return self._buffered

    def on_frame(self, frame: MessageFrame) -> list[Delivered]:
        """Take one frame; returns (channel, mode, message) for each message now deliverable.

        Raises `ProtocolError` for frames no correct sender produces and for a peer that makes
        this receiver buffer more than its bound.
        """
        count = frame.frag_count
        if frame.frag_index >= count:
            raise ProtocolError(f"fragment index {frame.frag_index} is not below the "
                                f"fragment count {count} (channel {frame.channel}, "
                                f"message {frame.message_id})")
        mode = frame.mode
        key = frame.channel << 2 | mode
        stream = self._streams.get(key)
        if stream is None:
            stream = self._new_stream(frame)
        if mode == _RELIABLE_ORDERED:
            assert isinstance(stream, _OrderedStream)
            return self._on_ordered(stream, frame)
        if mode == _RELIABLE_UNORDERED:
            assert isinstance(stream, _UnorderedStream)
            return self._on_unordered(stream, frame)
        if count != 1:
            raise ProtocolError(f"{Delivery(mode).name.lower()} message {frame.message_id} on "
                                f"channel {frame.channel} has {count} fragments; only 1 allowed")
        if mode == _UNRELIABLE:
            assert isinstance(stream, _UnreliableStream)
            return self._on_unreliable(stream, frame)
        if mode == _UNRELIABLE_SEQUENCED:
            assert isinstance(stream, _SequencedStream)
            return self._on_sequenced(stream, frame)
        # a bad mode can share a key with a valid stream (channel << 2 | mode), so it is
        # refused here, where the dispatch above ran out of modes, as well as in _new_stream
        raise ProtocolError(f"unknown delivery mode {mode!r}")

    def _new_stream(self, frame: MessageFrame) -> _Stream:
        channel = frame.channel
        if not 0 <= channel <= MAX_CHANNEL:
            raise ProtocolError(f"channel {channel} is outside 0..{MAX_CHANNEL}")
        try:
            mode = Delivery(frame.mode)
        except ValueError:
            raise ProtocolError(f"unknown delivery mode {frame.mode!r}") from None
        first = self._first_id
        stream: _Stream
        if mode is Delivery.RELIABLE_ORDERED:
            stream = _OrderedStream(first)
        elif mode is Delivery.RELIABLE_UNORDERED:
            stream = _UnorderedStream(first)
        elif mode is Delivery.UNRELIABLE:
            stream = _UnreliableStream(first)
        else:
            stream = _SequencedStream(first)
        self._streams[channel << 2 | mode] = stream
        return stream

    # -- the four modes

    def _on_ordered(self, stream: _OrderedStream, frame: MessageFrame) -> list[Delivered]:
        next_id = stream.next_id
        message_id = next_id + diff(frame.message_id, next_id)
        ready = stream.ready
        if message_id < next_id or message_id in ready:
            self.duplicates += 1
            return []
        data = self._complete(stream.partials, message_id, frame)
        if data is None:
            return []
        channel = frame.channel
        if message_id != next_id:
            self._charge(len(data) + _READY_COST, frame)
            ready[message_id] = data
            return []
        out: list[Delivered] = [(channel, _RELIABLE_ORDERED, data)]
        next_id += 1
        if ready:
            released = 0
            while True:
                waiting = ready.pop(next_id, None)
                if waiting is None:
                    break
                released += len(waiting) + _READY_COST
                out.append((channel, _RELIABLE_ORDERED, waiting))
                next_id += 1
            self._buffered -= released
        stream.next_id = next_id
        self.delivered += len(out)
        return out

    def _on_unordered(self, stream: _UnorderedStream, frame: MessageFrame) -> list[Delivered]:
        watermark = stream.watermark
        message_id = watermark + diff(frame.message_id, watermark)
        if message_id < watermark:
            self.duplicates += 1
            return []
        starts = stream.starts
        ends = stream.ends
        if starts:
            i = bisect_right(starts, message_id)
            if i and message_id < ends[i - 1]:
                self.duplicates += 1
                return []
        data = self._complete(stream.partials, message_id, frame)
        if data is None:
            return []
        if message_id == watermark:
            watermark += 1
            if starts and starts[0] == watermark:
                watermark = ends[0]
                del starts[0], ends[0]
                self._buffered -= _RANGE_COST
            stream.watermark = watermark
        else:
            self._mark_delivered(stream, message_id, frame)
        self.delivered += 1
        return [(frame.channel, _RELIABLE_UNORDERED, data)]

    def _mark_delivered(self, stream: _UnorderedStream, message_id: int,
                        frame: MessageFrame) -> None:
        """Record an id above the watermark, merging it with neighbouring ranges."""
        starts = stream.starts
        ends = stream.ends
        i = bisect_right(starts, message_id)
        joins_left = i > 0 and ends[i - 1] == message_id
        joins_right = i < len(starts) and starts[i] == message_id + 1
        if joins_left and joins_right:
            ends[i - 1] = ends[i]
            del starts[i], ends[i]
            self._buffered -= _RANGE_COST
        elif joins_left:
            ends[i - 1] = message_id + 1
        elif joins_right:
            starts[i] = message_id
        else:
            self._charge(_RANGE_COST, frame)
            starts.insert(i, message_id)
            ends.insert(i, message_id + 1)

    def _on_unreliable(self, stream: _UnreliableStream, frame: MessageFrame) -> list[Delivered]:
        highest = stream.highest
        message_id = highest + diff(frame.message_id, highest)
        if message_id > highest:
            shift = message_id - highest
            stream.seen = ((stream.seen << shift) | 1) & _WINDOW_MASK \
                if shift < UNRELIABLE_WINDOW else 1
            stream.highest = message_id
        else:
            offset = highest - message_id
            if offset >= UNRELIABLE_WINDOW:
                self.too_old += 1
                return []
            bit = 1 << offset
            if stream.seen & bit:
                self.duplicates += 1
                return []
            stream.seen |= bit
        self._check_size(frame)
        self.delivered += 1
        return [(frame.channel, _UNRELIABLE, frame.data)]

    def _on_sequenced(self, stream: _SequencedStream, frame: MessageFrame) -> list[Delivered]:
        highest = stream.highest
        message_id = highest + diff(frame.message_id, highest)
        if message_id <= highest:
            if message_id == highest:
                self.duplicates += 1
            else:
                self.stale_dropped += 1
            return []
        self._check_size(frame)
        stream.highest = message_id
        self.delivered += 1
        return [(frame.channel, _UNRELIABLE_SEQUENCED, frame.data)]

    # -- reassembly and the budget

    def _complete(self, partials: dict[int, _Partial], message_id: int,
                  frame: MessageFrame) -> bytes | None:
        """The whole message if `frame` completes it (or is all of it), else None."""
        count = frame.frag_count
        data = frame.data
        if count == 1:
            self._check_size(frame)
            return data
        size = len(data)
        if not size:
            raise ProtocolError(f"empty fragment {frame.frag_index} of {count} in message "
                                f"{frame.message_id} on channel {frame.channel}")
        partial = partials.get(message_id)
        if partial is None:
            cost = _PARTIAL_COST + _SLOT_COST * count + _FRAGMENT_COST + size
            if size > MAX_MESSAGE_SIZE:
                self._too_large(frame, size)
            self._charge(cost, frame)
            partial = _Partial(count, cost)
            partials[message_id] = partial
        else:
            if partial.count != count:
                raise ProtocolError(f"message {frame.message_id} on channel {frame.channel} "
                                    f"announced {partial.count} fragments, now {count}")
            if partial.parts[frame.frag_index]:
                self.duplicates += 1
                return None
            total = partial.size + size
            if total > MAX_MESSAGE_SIZE:
                self._too_large(frame, total)
            cost = _FRAGMENT_COST + size
            self._charge(cost, frame)
            partial.cost += cost
        partial.parts[frame.frag_index] = data
        partial.size += size
        partial.missing -= 1
        if partial.missing:
            return None
        del partials[message_id]
        self._buffered -= partial.cost
        return b"".join(partial.parts)

    def _charge(self, cost: int, frame: MessageFrame) -> None:
        buffered = self._buffered + cost
        if buffered > self._max_buffered:
            raise ProtocolError(f"peer exceeded the receive buffer bound of {self._max_buffered} "
                                f"bytes (channel {frame.channel}, message {frame.message_id})")
        self._buffered = buffered

    def _check_size(self, frame: MessageFrame) -> None:
        if len(frame.data) > MAX_MESSAGE_SIZE:
            self._too_large(frame, len(frame.data))

    @staticmethod
    def _too_large(frame: MessageFrame, size: int) -> NoReturn:
        raise ProtocolError(f"message {frame.message_id} on channel {frame.channel} is "
                            f"{size} bytes or more, beyond the maximum of {MAX_MESSAGE_SIZE}")
