"""Channels and delivery modes: fragmentation on the way out, reassembly and ordering on the way in.

Sans-I/O. The connection queues whole messages on a `ChannelSender` and pulls `MessageFrame`s
sized to the room left in the packet it is building; frames of lost packets come back through
`requeue`. Incoming `MessageFrame`s go to a `ChannelReceiver`, which answers with the whole
messages that became deliverable.

Fragments are byte ranges (offset, total) of their message, not numbered pieces, so a sender
cuts them to whatever the packet has room for when it sends (a larger path MTU gives larger
fragments) and can split a lost one again when the path MTU shrank; the receiver keeps the
union of the ranges it got and tolerates overlaps (a late original after its split copy).

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
from quantum.frames import FRAGMENT_OVERHEAD, MESSAGE_OVERHEAD, Delivery, MessageFrame
from quantum.limits import MAX_MESSAGE_SIZE, MAX_UNRELIABLE
from quantum.serial import MASK, diff

__all__ = [
    "MAX_CHANNEL",
    "MAX_MESSAGE_SIZE",
    "MAX_UNRELIABLE",
    "UNRELIABLE_WINDOW",
    "ChannelReceiver",
    "ChannelSender",
]

MAX_CHANNEL: Final = 255
#: how far back (in message ids) an unreliable stream still tells a late message from a
#: duplicate; older arrivals cannot be told apart and are dropped to keep "at most once"
UNRELIABLE_WINDOW: Final = 1024

#: the smallest fragment cut while more of the message remains: a packet with less room left
#: than this (beyond the 17 bytes of fragment fields) goes without, and the next one carries it
MIN_FRAGMENT: Final = 64
#: the packet room a sender assumes until told (`ChannelSender.packet_room`): the data payload
#: of a base-size (1200-byte) datagram without FEC
DEFAULT_PACKET_ROOM: Final = 1088
#: retransmissions examined per pop when the oldest does not fit: bounds the cost per packet
_RETRANSMIT_SCAN: Final = 16
#: the fragment size a carried-over message that was partly sent is cut into (it fits the
#: room of any packet, whatever the path MTU)
CARRY_FRAGMENT: Final = 1024

# Receive-side memory is charged against one budget (`max_buffered_bytes`) as data bytes plus
# these approximate bookkeeping costs, so a peer cannot exhaust memory with many tiny or empty
# pieces that carry no data (e.g. 1-byte fragments at every other offset of a 1 MiB message).
_PARTIAL_COST: Final = 128  # one message under reassembly
_PIECE_COST: Final = 64  # one received range in it (a bytes object's header, three list entries)
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

    __slots__ = ("channel", "data", "message_id", "mode", "offset")

    def __init__(self, channel: int, mode: Delivery, message_id: int, data: bytes) -> None:
        self.channel = channel
        self.mode = mode
        self.message_id = message_id
        self.data = data
        self.offset = 0  # the bytes before it are out (in fragments)


class ChannelSender:
    """Turns queued messages into `MessageFrame`s: retransmissions first, then new data.

    New data is served round-robin across channels, one frame per turn, so a 1 MiB transfer on
    one channel does not delay small messages on another by more than a frame per packet.
    Within a channel, messages go out in the order they were queued.

    Cutting: a message that fits the room left in the packet goes whole (9 + n bytes); one that
    would fit a packet of its own (`packet_room`) waits for the next packet rather than be cut
    (no reassembly for messages a packet can hold); a longer one is cut into fragments as large
    as each packet's room allows (17 + n bytes, at least MIN_FRAGMENT of data unless less is
    left). A retransmitted frame larger than a whole packet (`packet_room` shrank with the path
    MTU) is split to fit.
    """

    __slots__ = ("_active", "_first_id", "_min_fragment", "_next_ids", "_pending_bytes",
                 "_queues", "_retransmit", "packet_room")

    def __init__(self, *, first_message_id: int = 0, packet_room: int = DEFAULT_PACKET_ROOM,
                 min_fragment: int = MIN_FRAGMENT) -> None:
        """`first_message_id` starts every stream; `packet_room` is the payload room of an
        empty data packet (the connection keeps it at `pmtu.max_data_payload`, at least
        1076, as the path MTU changes); `min_fragment` see MIN_FRAGMENT."""
        if not 0 <= first_message_id <= MASK:
            raise ValueError(f"first_message_id {first_message_id} is not a u32")
        if min_fragment < 1:
            raise ValueError(f"min_fragment must be at least 1, got {min_fragment}")
        if packet_room < FRAGMENT_OVERHEAD + min_fragment:
            raise ValueError(f"packet_room {packet_room} leaves no room for a fragment of "
                             f"{min_fragment} bytes")
        self.packet_room = packet_room
        self._min_fragment = min_fragment
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

        Raises `MessageError` if the message cannot be sent as asked: larger than
        MAX_MESSAGE_SIZE, or unreliable and larger than MAX_UNRELIABLE (never fragmented, it
        must fit one packet on any path). The parameters are typed `object` on purpose: this
        is where application input is checked, and the compiled build would otherwise answer
        a wrong type with a bare TypeError before the check runs.
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
        if mode >= _UNRELIABLE and (size > MAX_UNRELIABLE
                                    or size + MESSAGE_OVERHEAD > self.packet_room):
            # (the connection's packet room always holds MAX_UNRELIABLE: only a sender used on
            # its own with a smaller room refuses for the second reason)
            raise MessageError(f"{mode.name.lower()} message of {size} bytes exceeds the "
                               f"maximum of {min(MAX_UNRELIABLE, self.packet_room - 9)} bytes "
                               "for unreliable messages (they are never fragmented)")
        if size > room:
            if mode >= _UNRELIABLE:
                return -1
            raise SendBufferFull(size, self._pending_bytes, self._pending_bytes + room)
        key = channel << 2 | mode
        message_id = self._next_ids.get(key, self._first_id)
        self._next_ids[key] = (message_id + 1) & MASK
        outgoing = _Outgoing(channel, mode, message_id, data)
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
        """The next frame whose encoded size fits `max_size`, or None if none fits (or
        none should be cut that small: see the class's "Cutting")."""
        if max_size < MESSAGE_OVERHEAD:
            return None
        retransmit = self._retransmit
        if retransmit:
            frame = self._pop_retransmission(retransmit, max_size)
            if frame is not None:
                return frame
        active = self._active
        queues = self._queues
        packet_room = self.packet_room
        for _ in range(len(active)):
            channel = active[0]
            queue = queues[channel]
            outgoing = queue[0]
            data = outgoing.data
            offset = outgoing.offset
            left = len(data) - offset
            if offset == 0 and left + MESSAGE_OVERHEAD <= max_size:
                frame = MessageFrame(channel, outgoing.mode, outgoing.message_id, data)
                left = 0
            elif offset == 0 and (left + MESSAGE_OVERHEAD <= packet_room
                                  or outgoing.mode >= _UNRELIABLE):
                active.rotate(-1)  # it goes whole in the next packet
                continue
            else:
                cut = max_size - FRAGMENT_OVERHEAD
                if cut >= left:
                    cut = left
                elif cut < self._min_fragment:
                    active.rotate(-1)
                    continue
                # slicing the immutable bytes object copies just this fragment; a memoryview
                # slice would cost the same copy (frames hold bytes) plus a view object
                frame = MessageFrame(channel, outgoing.mode, outgoing.message_id,
                                     data[offset:offset + cut], offset, len(data))
                left -= cut
                outgoing.offset = offset + cut
                self._pending_bytes -= cut
            if not left:
                if offset == 0:
                    self._pending_bytes -= len(data)
                queue.popleft()
                if not queue:
                    del queues[channel]
                    active.popleft()
                    return frame
            active.rotate(-1)
            return frame
        return None

    def _pop_retransmission(self, retransmit: deque[MessageFrame],
                            max_size: int) -> MessageFrame | None:
        """The first of the oldest retransmissions that fits; else the oldest one split, if
        it is too large for any packet now (the path MTU shrank since it was cut)."""
        frame = retransmit[0]
        if frame.size <= max_size:
            retransmit.popleft()
            self._pending_bytes -= len(frame.data)
            return frame
        for i in range(1, min(len(retransmit), _RETRANSMIT_SCAN)):
            frame = retransmit[i]
            if frame.size <= max_size:
                del retransmit[i]
                self._pending_bytes -= len(frame.data)
                return frame
        frame = retransmit[0]
        cut = max_size - FRAGMENT_OVERHEAD
        if frame.size <= self.packet_room or cut < self._min_fragment:
            return None  # it fits the next packet whole
        # a whole message becomes fragments of itself; a fragment, two smaller ones
        data = frame.data
        total = len(data) if frame.total < 0 else frame.total
        head = MessageFrame(frame.channel, frame.mode, frame.message_id, data[:cut],
                            frame.offset, total)
        retransmit[0] = MessageFrame(frame.channel, frame.mode, frame.message_id, data[cut:],
                                     frame.offset + cut, total)
        self._pending_bytes -= cut
        return head

    def requeue(self, frame: MessageFrame) -> None:
        """A frame whose packet was lost: reliable frames go out again before new data.

        Unreliable and sequenced frames are dropped here: those modes promise never to be
        retransmitted, so a caller may hand every lost frame back without sorting them.
        """
        if frame.mode >= _UNRELIABLE:
            return
        self._retransmit.append(frame)
        self._pending_bytes += len(frame.data)


    # -- carry-over across a resume (quantum/carryover.py; never on the per-packet path)

    def export_state(self) -> tuple[list[tuple[int, int, int]], list[MessageFrame]]:
        """What this sender still owes on its reliable streams: (channel, mode, next id) per
        stream, and the frames not yet handed out (retransmissions, then queued messages: a
        message partly cut already is owed from its offset on, in fragments of at most
        CARRY_FRAGMENT bytes). Unreliable messages are not carried: never replayed."""
        next_ids = [(key >> 2, key & 3, next_id) for key, next_id in self._next_ids.items()
                    if key & 3 <= _RELIABLE_UNORDERED]
        owed = [f for f in self._retransmit if f.mode <= _RELIABLE_UNORDERED]
        for queue in self._queues.values():
            for outgoing in queue:
                if outgoing.mode > _RELIABLE_UNORDERED:
                    continue
                data, offset = outgoing.data, outgoing.offset
                if offset == 0:
                    owed.append(MessageFrame(outgoing.channel, outgoing.mode,
                                             outgoing.message_id, data))
                    continue
                for start in range(offset, len(data), CARRY_FRAGMENT):
                    owed.append(MessageFrame(outgoing.channel, outgoing.mode,
                                             outgoing.message_id,
                                             data[start:start + CARRY_FRAGMENT], start,
                                             len(data)))
        return next_ids, owed

    def restore_state(self, next_ids: list[tuple[int, int, int]],
                      owed: list[MessageFrame]) -> None:
        """Continue a lost connection's reliable streams (`export_state`): their ids go on
        from `next_ids`, and `owed` goes out before anything new. Whole messages too large
        for one packet are queued as messages (cut as usual); the rest are retransmissions."""
        for channel, mode, next_id in next_ids:
            self._next_ids[channel << 2 | mode] = next_id & MASK
        for frame in owed:
            if frame.total < 0 and frame.size > self.packet_room:
                outgoing = _Outgoing(frame.channel, frame.mode, frame.message_id, frame.data)
                queue = self._queues.get(frame.channel)
                if queue is None:
                    self._queues[frame.channel] = deque((outgoing,))
                    self._active.append(frame.channel)
                else:
                    queue.append(outgoing)
            else:
                self._retransmit.append(frame)
            self._pending_bytes += len(frame.data)

    def trim_delivered(self, channel: int, mode: int, mark: int) -> int:
        """The peer delivered every message below `mark` (u32, serial) on this stream: drop
        what is still owed of them (PROTOCOL.md 12.4). Returns the data bytes dropped."""
        def delivered(message_id: int) -> bool:
            return diff(message_id, mark) < 0

        dropped = 0
        kept: deque[MessageFrame] = deque()
        for frame in self._retransmit:
            if frame.channel == channel and frame.mode == mode and delivered(frame.message_id):
                dropped += len(frame.data)
            else:
                kept.append(frame)
        self._retransmit = kept
        queue = self._queues.get(channel)
        if queue is not None:
            left: deque[_Outgoing] = deque()
            for outgoing in queue:
                if outgoing.mode == mode and delivered(outgoing.message_id):
                    dropped += len(outgoing.data) - outgoing.offset
                else:
                    left.append(outgoing)
            if left:
                self._queues[channel] = left
            else:
                del self._queues[channel]
                self._active.remove(channel)
        self._pending_bytes -= dropped
        return dropped


# ------------------------------------------------------------------------------------- receive


class _Partial:
    """A message under reassembly: the disjoint byte ranges received so far, sorted, with
    their data (joined once the message is whole)."""

    __slots__ = ("cost", "datas", "ends", "received", "starts", "total")

    def __init__(self, total: int, cost: int, offset: int, data: bytes) -> None:
        self.total = total
        self.starts = [offset]
        self.ends = [offset + len(data)]
        self.datas = [data]
        self.received = len(data)  # bytes of [0, total) covered
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
        if frame.total >= 0:
            raise ProtocolError(f"{Delivery(mode).name.lower()} message {frame.message_id} on "
                                f"channel {frame.channel} is a fragment; unreliable messages "
                                "are always whole")
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
        total = frame.total
        data = frame.data
        partial = partials.get(message_id)
        if total < 0:  # the whole message
            self._check_size(frame)
            if partial is not None:  # a late original of a message whose split copy came first
                self._check_total(partial, len(data), frame)
                del partials[message_id]
                self._buffered -= partial.cost
            return data
        offset = frame.offset
        end = offset + len(data)
        if not data or end > total or total > MAX_MESSAGE_SIZE:
            raise ProtocolError(f"fragment [{offset}, {end}) of a {total}-byte message "
                                f"{frame.message_id} on channel {frame.channel}: empty, past "
                                f"its end or beyond the maximum of {MAX_MESSAGE_SIZE}")
        if partial is None:
            if offset == 0 and end == total:
                return data  # a fragment that is the whole message
            cost = _PARTIAL_COST + _PIECE_COST + len(data)
            self._charge(cost, frame)
            partials[message_id] = _Partial(total, cost, offset, data)
            return None
        self._check_total(partial, total, frame)
        gaps = _gaps(partial.starts, partial.ends, offset, end)
        if not gaps:
            self.duplicates += 1  # every byte of it was here already
            return None
        cost = 0
        for start, stop in gaps:
            cost += _PIECE_COST + stop - start
        self._charge(cost, frame)
        partial.cost += cost
        starts, ends, datas = partial.starts, partial.ends, partial.datas
        for start, stop in gaps:
            i = bisect_right(starts, start)
            starts.insert(i, start)
            ends.insert(i, stop)
            datas.insert(i, data if start == offset and stop == end
                         else data[start - offset:stop - offset])
            partial.received += stop - start
        if partial.received < total:
            return None
        del partials[message_id]
        self._buffered -= partial.cost
        return b"".join(datas)

    @staticmethod
    def _check_total(partial: _Partial, total: int, frame: MessageFrame) -> None:
        if partial.total != total:
            raise ProtocolError(f"message {frame.message_id} on channel {frame.channel} was "
                                f"{partial.total} bytes long, now {total}")

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


    # -- carry-over across a resume (quantum/carryover.py; never on the per-packet path)

    def export_state(self) -> list[tuple[int, int, int, list[tuple[int, int]],
                                         list[tuple[int, bytes]],
                                         list[tuple[int, int, list[tuple[int, bytes]]]]]]:
        """How far each reliable stream got, to continue it on the next connection:
        (channel, mode, mark, delivered ranges above the mark (unordered), complete messages
        waiting (ordered), messages under reassembly as (id, total, [(offset, data)])). The
        mark and ids are 64-bit stream positions. Unreliable streams start afresh."""
        out: list[tuple[int, int, int, list[tuple[int, int]], list[tuple[int, bytes]],
                        list[tuple[int, int, list[tuple[int, bytes]]]]]] = []
        for key, stream in self._streams.items():
            partials: dict[int, _Partial]
            if isinstance(stream, _OrderedStream):
                mark, ranges = stream.next_id, []
                ready = sorted(stream.ready.items())
                partials = stream.partials
            elif isinstance(stream, _UnorderedStream):
                mark, ranges = stream.watermark, list(zip(stream.starts, stream.ends,
                                                          strict=True))
                ready = []
                partials = stream.partials
            else:
                continue
            pieces = [(mid, p.total, list(zip(p.starts, p.datas, strict=True)))
                      for mid, p in sorted(partials.items())]
            out.append((key >> 2, key & 3, mark, ranges, ready, pieces))
        return out

    def restore_stream(self, channel: int, mode: int, mark: int,
                       ranges: list[tuple[int, int]], ready: list[tuple[int, bytes]],
                       partials: list[tuple[int, int, list[tuple[int, bytes]]]]) -> None:
        """Continue a reliable stream of a lost connection (`export_state`), charging what it
        holds against the receive budget. Raises `ProtocolError` if that does not fit or the
        state is not one a receiver can be in."""
        if not 0 <= channel <= MAX_CHANNEL or mode not in (_RELIABLE_ORDERED,
                                                           _RELIABLE_UNORDERED):
            raise ProtocolError(f"no reliable stream ({channel}, {mode})")
        key = channel << 2 | mode
        if key in self._streams:
            raise ProtocolError(f"stream ({channel}, {mode}) restored twice")
        probe = MessageFrame(channel, Delivery(mode), 0, b"")  # names the stream in errors
        held: dict[int, _Partial] = {}
        for message_id, total, pieces in partials:
            if message_id < mark or not 0 < total <= MAX_MESSAGE_SIZE or not pieces:
                raise ProtocolError(f"message {message_id} under reassembly is not valid")
            partial: _Partial | None = None
            end = 0
            for offset, data in pieces:
                if offset < end or not data or offset + len(data) > total:
                    raise ProtocolError(f"pieces of message {message_id} overlap or overrun")
                end = offset + len(data)
                cost = _PIECE_COST + len(data)
                if partial is None:
                    cost += _PARTIAL_COST
                    self._charge(cost, probe)
                    partial = _Partial(total, cost, offset, data)
                else:
                    self._charge(cost, probe)
                    partial.cost += cost
                    partial.starts.append(offset)
                    partial.ends.append(end)
                    partial.datas.append(data)
                    partial.received += len(data)
            assert partial is not None
            if partial.received >= total:
                raise ProtocolError(f"message {message_id} is complete, not under reassembly")
            held[message_id] = partial
        if mode == _RELIABLE_ORDERED:
            if ranges:
                raise ProtocolError("an ordered stream keeps no delivered ranges")
            ordered = _OrderedStream(mark)
            for message_id, data in ready:
                if message_id <= mark or message_id in ordered.ready or message_id in held:
                    raise ProtocolError(f"waiting message {message_id} is not valid")
                self._charge(len(data) + _READY_COST, probe)
                ordered.ready[message_id] = data
            ordered.partials = held
            self._streams[key] = ordered
            return
        if ready:
            raise ProtocolError("an unordered stream keeps no waiting messages")
        unordered = _UnorderedStream(mark)
        last = mark
        for start, stop in ranges:
            if not last < start < stop:
                raise ProtocolError("delivered ranges are not sorted, disjoint and above the "
                                    "watermark")
            self._charge(_RANGE_COST, probe)
            unordered.starts.append(start)
            unordered.ends.append(stop)
            last = stop
        for message_id in held:
            i = bisect_right(unordered.starts, message_id)
            if i and message_id < unordered.ends[i - 1]:
                raise ProtocolError(f"message {message_id} is delivered and under reassembly")
        unordered.partials = held
        self._streams[key] = unordered

    def delivered_marks(self) -> list[tuple[int, int, int]]:
        """(channel, mode, mark as u32) for every reliable stream: what DELIVERED says."""
        marks: list[tuple[int, int, int]] = []
        for key, stream in self._streams.items():
            if isinstance(stream, _OrderedStream):
                marks.append((key >> 2, key & 3, stream.next_id & MASK))
            elif isinstance(stream, _UnorderedStream):
                marks.append((key >> 2, key & 3, stream.watermark & MASK))
        return marks


def _gaps(starts: list[int], ends: list[int], offset: int, end: int) -> list[tuple[int, int]]:
    """The parts of [offset, end) that the sorted disjoint ranges [starts[i], ends[i]) do not
    cover, in order."""
    i = bisect_right(starts, offset)
    pos = offset
    if i and ends[i - 1] > pos:
        pos = ends[i - 1]
    gaps: list[tuple[int, int]] = []
    n = len(starts)
    while pos < end:
        if i < n and starts[i] <= pos:
            if ends[i] > pos:
                pos = ends[i]
            i += 1
            continue
        stop = starts[i] if i < n and starts[i] < end else end
        gaps.append((pos, stop))
        pos = stop
    return gaps
