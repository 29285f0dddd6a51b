"""Every retransmission decision of the Quantum protocol, sans-I/O.

The design is QUIC's: each datagram after the handshake carries a fresh 64-bit packet number
(pn) and lost data is re-sent in *new* packets, so a pn is never reused and every RTT sample
is unambiguous (Karn's problem cannot arise). Acknowledgements ride in every packet header:
the cumulative "next pn expected" plus up to 8 SACK blocks above it. Because a lost pn is never
sent again, the receiver's cumulative point would stick at the hole forever; the sender moves
it with an ACK_FLOOR frame ("nothing below this will ever come"), and a receiver also infers a
floor from any packet beyond its window, since the sender never sends more than one window
above its own floor. docs/PROTOCOL.md section 6 is the normative description.

`SendTracker` remembers what is in flight and turns ACKs and timers into "acked" and "lost";
`ReceiveTracker` is the receive side: replay guard, received ranges, ACK fields, delayed ACK.
`RttEstimator` is RFC 6298. Packet *contents* are opaque here: the connection decides what to
re-send from `SentPacket.frames`.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Final

from quantum.packet import MAX_SACK_BLOCKS
from quantum.serial import MASK, expand

# RFC 6298 (the original's bounds: 200 ms floor instead of the RFC's 1 s, 60 s ceiling)
INITIAL_RTO: Final = 1.0
MIN_RTO: Final = 0.2
MAX_RTO: Final = 60.0
RTT_ALPHA: Final = 1 / 8
RTT_BETA: Final = 1 / 4
RTO_K: Final = 4
#: the G of RFC 6298: the RTO never undercuts srtt by less than one clock tick
CLOCK_GRANULARITY: Final = 0.001
#: 0.2 s * 2**9 already exceeds MAX_RTO; the cap only keeps the multiplier finite
MAX_BACKOFF: Final = 16

#: a packet is lost once this many packets with a higher pn are acknowledged
FAST_RETRANSMIT_THRESHOLD: Final = 3
DEFAULT_WINDOW: Final = 256
DEFAULT_MAX_ACK_DELAY: Final = 0.025
#: this many unacknowledged ack-eliciting packets make an ACK due at once
ACK_ELICITING_THRESHOLD: Final = 2
#: an endpoint that itself sends every G seconds (G at most this) holds an owed ACK until its
#: next packet is due, 1.25 G after its last, so the ACK rides on that packet instead of
#: costing one of its own (PROTOCOL.md 6.6); never longer than this after the packet it
#: acknowledges: half the 200 ms RTO floor, so a held ACK never times the peer out
MAX_HELD_ACK_DELAY: Final = 0.1
HOLD_FACTOR: Final = 1.25
#: packets sent closer together than this are one burst (a data packet and its parity): the
#: interval the hold follows is the one between bursts
BURST_GAP: Final = 0.002

# ReceiveTracker.check verdicts (0 = new packet)
NEW: Final = 0
DUPLICATE: Final = 1
TOO_OLD: Final = 2
BEYOND_WINDOW: Final = 3
#: a pn further than this above the cumulative point is refused before decryption: a live
#: peer cannot get there (it would need 2**30 consecutive losses), and at 2**31 the 32-bit
#: ack fields stop being unambiguous
MAX_PN_JUMP: Final = 1 << 30

_PN: Final = attrgetter("pn")


class RttEstimator:
    """Smoothed RTT and retransmission timeout per RFC 6298.

    The estimates are kept as plain floats beside a "sampled" flag rather than as
    `float | None`: compiled, a plain float attribute is stored unboxed, an optional one is a
    24-byte object per value, and every connection holds three of them."""

    __slots__ = ("_latest", "_min", "_sampled", "_srtt", "backoff", "rttvar")

    def __init__(self) -> None:
        self._sampled = False
        self._srtt = 0.0
        self._min = 0.0
        self._latest = 0.0
        self.rttvar = 0.0
        self.backoff = 0

    @property
    def srtt(self) -> float | None:
        """The smoothed RTT; None before the first sample."""
        return self._srtt if self._sampled else None

    @property
    def min_rtt(self) -> float | None:
        return self._min if self._sampled else None

    @property
    def latest_rtt(self) -> float | None:
        return self._latest if self._sampled else None

    def update(self, sample: float) -> None:
        if sample < 0:
            raise ValueError(f"RTT sample must not be negative, got {sample}")
        self._latest = sample
        if not self._sampled:
            self._sampled = True
            self._min = self._srtt = sample
            self.rttvar = sample / 2
            return
        if sample < self._min:
            self._min = sample
        srtt = self._srtt
        # rttvar first: RFC 6298 2.3 uses the srtt from before this sample
        self.rttvar = (1 - RTT_BETA) * self.rttvar + RTT_BETA * abs(srtt - sample)
        self._srtt = (1 - RTT_ALPHA) * srtt + RTT_ALPHA * sample

    @property
    def base_rto(self) -> float:
        """The RTO before exponential backoff."""
        if not self._sampled:
            rto = INITIAL_RTO
        else:
            # comparisons instead of max()/min(): read for every timer query
            var = RTO_K * self.rttvar
            rto = self._srtt + (var if var > CLOCK_GRANULARITY else CLOCK_GRANULARITY)
        if rto < MIN_RTO:
            return MIN_RTO
        return rto if rto < MAX_RTO else MAX_RTO

    @property
    def rto(self) -> float:
        backoff = self.backoff
        if not backoff:
            return self.base_rto
        rto = self.base_rto * (1 << backoff)
        return rto if rto < MAX_RTO else MAX_RTO

    def on_timeout(self) -> None:
        if self.backoff < MAX_BACKOFF:
            self.backoff += 1

    def reset_backoff(self) -> None:
        self.backoff = 0


@dataclass(slots=True, init=False)
class SentPacket:
    pn: int
    sent_time: float
    size: int
    ack_eliciting: bool
    in_flight: bool
    #: retransmittable frames, opaque to this module
    frames: list[object]
    #: the congestion controller's per-packet snapshot, opaque to this module
    rate: object | None = None

    def __init__(
        self,
        pn: int,
        sent_time: float,
        size: int,
        ack_eliciting: bool,
        in_flight: bool,
        frames: list[object],
        rate: object | None = None,
    ) -> None:
        self.pn = pn
        self.sent_time = sent_time
        self.size = size
        self.ack_eliciting = ack_eliciting
        self.in_flight = in_flight
        self.frames = frames
        self.rate = rate


@dataclass(slots=True, init=False)
class AckResult:
    acked: list[SentPacket]
    lost: list[SentPacket]
    rtt_sample: float | None

    def __init__(
        self,
        acked: list[SentPacket],
        lost: list[SentPacket],
        rtt_sample: float | None,
    ) -> None:
        self.acked = acked
        self.lost = lost
        self.rtt_sample = rtt_sample


#: the result of an ACK that acknowledges nothing tracked; shared, so never to be mutated
_NOTHING_ACKED: Final = AckResult([], [], None)
#: `SendTracker._outstanding` until its first tracked packet, and again once a quiet spell
#: (`release_idle`) finds nothing in flight: one empty dict shared by every tracker instead of
#: one each. Only `on_packet_sent` adds entries, and it swaps this one for the tracker's own
#: dict first; every other use reads, or removes entries it found there, so this stays empty.
_NOTHING_IN_FLIGHT: Final[dict[int, SentPacket]] = {}


class SendTracker:
    """Packets in flight, ACK/SACK processing, fast retransmit and the RTO timer.

    Only packets that are ack-eliciting or in flight are tracked; a pure ACK is done the
    moment it is sent, so it never holds the floor back.
    """

    __slots__ = (
        "_floor_announced_at",
        "_largest_acked",
        "_last_tracked",
        "_outstanding",
        "_peer_cumulative",
        "_top_acked",
        "bytes_in_flight",
        "fast_retransmits",
        "invalid_acks",
        "next_pn",
        "rtt",
        "timeout_retransmits",
        "window",
    )

    def __init__(self, window: int = DEFAULT_WINDOW, rtt: RttEstimator | None = None, *,
                 first_pn: int = 1) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if first_pn < 1:
            raise ValueError(f"packet numbers start at 1 or above, got {first_pn}")
        self.window = window
        self.rtt = rtt if rtt is not None else RttEstimator()
        self.next_pn = first_pn
        self.bytes_in_flight = 0
        #: packets declared lost by fast retransmit and by the RTO, respectively
        self.fast_retransmits = 0
        self.timeout_retransmits = 0
        #: ACKs ignored because they acknowledged packet numbers never sent
        self.invalid_acks = 0
        # pn -> packet, inserted in pn order; dicts keep insertion order, so the first key is
        # the floor and loss scans stop at the first packet that is too recent
        self._outstanding = _NOTHING_IN_FLIGHT
        self._last_tracked = first_pn - 1
        self._peer_cumulative = first_pn
        self._largest_acked = first_pn - 1
        # the three largest pns ever acked above the peer's cumulative point, descending;
        # a packet below the third is lost (FAST_RETRANSMIT_THRESHOLD). None until a SACK
        # block first acknowledges one (reordering or loss: most connections never see it)
        self._top_acked: list[int] | None = None
        self._floor_announced_at = 0

    def unacknowledged(self) -> list[SentPacket]:
        """Every packet still awaiting its acknowledgement, oldest first (what a lost
        connection still owed its peer, `Connection.carryover`)."""
        return list(self._outstanding.values())

    @property
    def floor(self) -> int:
        """Lowest pn neither acknowledged nor declared lost (next_pn when none)."""
        for pn in self._outstanding:
            return pn
        return self.next_pn

    @property
    def largest_acked(self) -> int:
        """Largest pn the peer has acknowledged (first_pn - 1 before any ACK)."""
        return self._largest_acked

    @property
    def outstanding(self) -> int:
        """How many packets are awaiting an acknowledgement."""
        return len(self._outstanding)

    def allocate_pn(self) -> int:
        pn = self.next_pn
        self.next_pn = pn + 1
        return pn

    def can_send(self) -> bool:
        return self.next_pn - self.floor < self.window

    def on_packet_sent(self, pkt: SentPacket) -> None:
        pn = pkt.pn
        if pn >= self.next_pn:
            raise ValueError(f"packet number {pn} was never allocated (next is {self.next_pn})")
        if not (pkt.ack_eliciting or pkt.in_flight):
            return
        if pn <= self._last_tracked:
            raise ValueError(f"packet {pn} reported after packet {self._last_tracked}")
        self._last_tracked = pn
        outstanding = self._outstanding
        if outstanding is _NOTHING_IN_FLIGHT:  # the shared empty one: see its comment
            outstanding = self._outstanding = {}
        outstanding[pn] = pkt
        if pkt.in_flight:
            self.bytes_in_flight += pkt.size

    def on_ack(self, ack32: int, sack32: Sequence[tuple[int, int]], now: float) -> AckResult:
        """Process the ACK fields of one received packet."""
        next_pn = self.next_pn
        largest_sent = next_pn - 1
        cumulative = expand(ack32 & MASK, largest_sent)
        if cumulative > next_pn:
            self.invalid_acks += 1
            return AckResult([], [], None)
        blocks: list[tuple[int, int]] | None = None
        if sack32:
            blocks = []
            for start32, end32 in sack32:
                end = expand(end32 & MASK, largest_sent)
                start = end - ((end32 - start32) & MASK)
                if end >= next_pn or start < 1:
                    self.invalid_acks += 1
                    return AckResult([], [], None)
                blocks.append((start, end))

        outstanding = self._outstanding
        if cumulative > self._peer_cumulative:
            self._peer_cumulative = cumulative
        if cumulative - 1 > self._largest_acked:
            self._largest_acked = cumulative - 1
        if not outstanding and blocks is None:
            return _NOTHING_ACKED  # nothing in flight (a heartbeat-only connection): no news
        acked: list[SentPacket]
        if outstanding and cumulative > self._last_tracked:
            # the common case: the cumulative ack covers everything in flight
            acked = list(outstanding.values())
            outstanding.clear()
        else:
            acked = [outstanding.pop(pn) for pn in _keys_below(outstanding, cumulative)]
        if blocks is not None:
            self._process_sack(blocks, cumulative, acked)

        rtt_sample: float | None = None
        if acked:
            gone = 0
            for p in acked:
                if p.in_flight:
                    gone += p.size
            self.bytes_in_flight -= gone
            newest = acked[-1]
            rtt = self.rtt
            if newest.ack_eliciting:
                rtt_sample = now - newest.sent_time
                if rtt_sample >= 0:
                    rtt.update(rtt_sample)
                else:
                    rtt_sample = None
            if rtt.backoff:
                rtt.reset_backoff()

        lost: list[SentPacket] = []
        top = self._top_acked
        if top is not None and len(top) == FAST_RETRANSMIT_THRESHOLD and outstanding:
            threshold = min(top)
            for pn in _keys_below(outstanding, threshold):
                lost.append(outstanding.pop(pn))
            if lost:
                self.bytes_in_flight -= sum(p.size for p in lost if p.in_flight)
                self.fast_retransmits += len(lost)
        return AckResult(acked, lost, rtt_sample)

    def _process_sack(self, blocks: list[tuple[int, int]], cumulative: int,
                      acked: list[SentPacket]) -> None:
        """Add what the SACK blocks newly acknowledge to `acked` (kept in pn order) and
        remember the largest pns acknowledged above the cumulative point."""
        outstanding = self._outstanding
        sort_needed = False
        top = self._top_acked
        if top is None:
            top = self._top_acked = []
        for start, end in blocks:
            if end > self._largest_acked:
                self._largest_acked = end
            for pn in range(end, max(start, end - FAST_RETRANSMIT_THRESHOLD + 1) - 1, -1):
                if pn >= cumulative and pn not in top:
                    top.append(pn)
            lo = max(start, cumulative)
            if lo > end or not outstanding:
                continue
            if end - lo + 1 > len(outstanding):
                hits = [pn for pn in outstanding if lo <= pn <= end]
            else:
                hits = [pn for pn in range(lo, end + 1) if pn in outstanding]
            if hits:
                sort_needed = sort_needed or bool(acked)
                acked.extend(outstanding.pop(pn) for pn in hits)
        if len(top) > FAST_RETRANSMIT_THRESHOLD:
            top.sort(reverse=True)
            del top[FAST_RETRANSMIT_THRESHOLD:]
        if sort_needed:
            acked.sort(key=_PN)

    def release_idle(self) -> None:
        """Drop what only matters while packets are in flight, once none are: the dict of
        packets in flight (for the shared empty one), and the largest SACKed pns (every
        packet sent from now on is above them, so they could never make one lost). For a
        quiet connection (the server's hibernation)."""
        if not self._outstanding:
            self._outstanding = _NOTHING_IN_FLIGHT
            self._top_acked = None

    def loss_deadline(self) -> float | None:
        """When the RTO fires: the oldest ack-eliciting in-flight packet's send time + RTO."""
        for p in self._outstanding.values():
            if p.ack_eliciting and p.in_flight:
                return p.sent_time + self.rtt.rto
        return None

    def on_loss_timer(self, now: float) -> list[SentPacket]:
        """The RTO fired: every packet sent at or before now - RTO is lost; the RTO backs off."""
        rto = self.rtt.rto
        outstanding = self._outstanding
        expired = [pn for pn, p in outstanding.items() if p.sent_time + rto <= now]
        if not expired:
            return []
        lost = [outstanding.pop(pn) for pn in expired]
        self.bytes_in_flight -= sum(p.size for p in lost if p.in_flight)
        self.timeout_retransmits += len(lost)
        self.rtt.on_timeout()
        return lost

    def forget(self, pn: int) -> bool:
        """Stop waiting for packet `pn` without calling it lost (a path MTU probe whose time
        ran out: its loss is not the retransmission timer's business); whether it was here."""
        pkt = self._outstanding.pop(pn, None)
        if pkt is None:
            return False
        if pkt.in_flight:
            self.bytes_in_flight -= pkt.size
        return True

    def peer_needs_floor(self, peer_ack32: int) -> bool:
        """Whether to send ACK_FLOOR(floor): the peer's cumulative ack is stuck below our floor.

        Only when the peer has acknowledged something above its cumulative point (so the hole
        is real, not a packet still on its way), and at most once per round trip: after an
        announcement, not again until the peer acknowledges a packet sent after it (the
        announcement then either arrived, or was lost and is due again).
        """
        cumulative = expand(peer_ack32 & MASK, self.next_pn - 1)
        if cumulative > self.next_pn:
            return False
        cumulative = max(cumulative, self._peer_cumulative)
        largest = self._largest_acked
        if cumulative >= self.floor or largest <= cumulative:
            return False
        if largest < self._floor_announced_at:
            return False
        self._floor_announced_at = self.next_pn
        return True


def _keys_below(outstanding: dict[int, SentPacket], limit: int) -> list[int]:
    keys: list[int] = []
    for pn in outstanding:
        if pn >= limit:
            break
        keys.append(pn)
    return keys


class ReceiveTracker:
    """Received ranges, replay guard, ACK fields and the delayed-ACK timer.

    The cumulative point is the next pn expected: everything below it was received or
    abandoned by the sender. Ranges received above it are kept for SACK, only within one
    window above it, so memory is bounded by the window.
    """

    __slots__ = (
        "_ack_due",
        "_cumulative",
        "_ends",
        "_largest",
        "_send_gap",
        "_sent_at",
        "_starts",
        "_unacked_eliciting",
        "max_ack_delay",
        "window",
        "window_slides",
    )

    def __init__(self, window: int = DEFAULT_WINDOW,
                 max_ack_delay: float = DEFAULT_MAX_ACK_DELAY, *, first_pn: int = 1) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        if max_ack_delay < 0:
            raise ValueError(f"max_ack_delay must not be negative, got {max_ack_delay}")
        if first_pn < 1:
            raise ValueError(f"packet numbers start at 1 or above, got {first_pn}")
        self.window = window
        self.max_ack_delay = max_ack_delay
        #: times a packet beyond the window moved the cumulative point (implicit floor)
        self.window_slides = 0
        self._cumulative = first_pn
        self._largest = first_pn - 1
        # disjoint, non-adjacent inclusive ranges above the cumulative point, ascending:
        # None while there are none (packets arriving in order, most of a connection's
        # life), else two non-empty lists
        self._starts: list[int] | None = None
        self._ends: list[int] | None = None
        self._unacked_eliciting = 0
        self._ack_due: float | None = None
        # when our own latest burst of ack-eliciting packets began, and the interval between
        # our last two bursts (0.0: none, or longer than MAX_HELD_ACK_DELAY)
        self._sent_at = -1.0
        self._send_gap = 0.0

    @property
    def cumulative(self) -> int:
        """The next pn expected (everything below is received or abandoned)."""
        return self._cumulative

    @property
    def largest(self) -> int:
        """The largest pn received (first_pn - 1 before any)."""
        return self._largest

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """Received ranges above the cumulative point, ascending (for inspection)."""
        starts, ends = self._starts, self._ends
        if starts is None or ends is None:
            return []
        return list(zip(starts, ends, strict=True))

    def expand(self, seq32: int) -> int:
        return expand(seq32 & MASK, self._largest)

    def check(self, pn: int) -> int:
        """NEW (0) or why the packet must be dropped; cheap, and done before decryption."""
        cumulative = self._cumulative
        if pn < cumulative:
            return TOO_OLD
        if pn - cumulative > MAX_PN_JUMP:
            return BEYOND_WINDOW
        starts, ends = self._starts, self._ends
        if starts is not None and ends is not None and pn <= ends[-1]:
            i = bisect_right(starts, pn) - 1
            if i >= 0 and pn <= ends[i]:
                return DUPLICATE
        return NEW

    def on_received(self, pn: int, ack_eliciting: bool, now: float) -> None:
        """Record an authenticated packet (check() must have said NEW)."""
        cumulative = self._cumulative
        if pn < cumulative:
            return
        largest = self._largest
        if pn >= cumulative + self.window:
            # the sender never sends a window above its floor, so everything below
            # pn - window + 1 is acked or abandoned at the sender: an implicit floor
            self._advance(pn - self.window + 1)
            self.window_slides += 1
            cumulative = self._cumulative
        if pn == cumulative:
            cumulative += 1
            starts, ends = self._starts, self._ends
            if starts is not None and ends is not None and starts[0] == cumulative:
                cumulative = ends[0] + 1
                self._drop_ranges(1)
            self._cumulative = cumulative
        elif not self._insert(pn):
            return
        if pn > largest:
            self._largest = pn
        if ack_eliciting:
            unacked = self._unacked_eliciting + 1
            self._unacked_eliciting = unacked
            if unacked >= ACK_ELICITING_THRESHOLD or pn != largest + 1:
                due = self._ack_due
                if due is None or now < due:
                    self._ack_due = now
            elif self._ack_due is None:
                self._ack_due = self._delayed_until(now)

    def _delayed_until(self, now: float) -> float:
        """When a delayed ACK is due for a packet received now: max ACK delay later, or, if we
        send regularly and our next packet is due after that, when it is (up to
        MAX_HELD_ACK_DELAY): the ACK then leaves in it."""
        due = now + self.max_ack_delay
        gap = self._send_gap
        if gap > 0.0:
            expected = self._sent_at + gap * HOLD_FACTOR
            if expected > due:
                held = now + MAX_HELD_ACK_DELAY
                return expected if expected < held else held
        return due

    def on_eliciting_sent(self, now: float) -> None:
        """We sent an ack-eliciting packet: follow the interval of our own sending."""
        gap = now - self._sent_at
        if gap > BURST_GAP:
            self._send_gap = gap if gap <= MAX_HELD_ACK_DELAY else 0.0
            self._sent_at = now

    def on_floor(self, floor32: int) -> None:
        """ACK_FLOOR received: the sender will never send anything below the floor."""
        floor = expand(floor32 & MASK, self._largest)
        if floor > self._cumulative:
            self._advance(floor)

    def ack_fields(self) -> tuple[int, list[tuple[int, int]]]:
        """(cumulative ack, SACK blocks) as 32-bit wire values, highest blocks first."""
        starts, ends = self._starts, self._ends
        if starts is None or ends is None:
            return self._cumulative & MASK, []
        n = len(starts)
        stop = max(0, n - MAX_SACK_BLOCKS) - 1
        return self._cumulative & MASK, [
            (starts[i] & MASK, ends[i] & MASK) for i in range(n - 1, stop, -1)
        ]

    def ack_deadline(self) -> float | None:
        """When an ACK must go out (at or before now: at once); None when none is owed."""
        return self._ack_due

    def on_ack_sent(self) -> None:
        self._unacked_eliciting = 0
        self._ack_due = None

    def _advance(self, cumulative: int) -> None:
        starts, ends = self._starts, self._ends
        if starts is not None and ends is not None:
            gone = bisect_left(ends, cumulative)
            if gone < len(starts) and starts[gone] <= cumulative:
                cumulative = ends[gone] + 1
                gone += 1
            if gone:
                self._drop_ranges(gone)
        self._cumulative = cumulative
        if cumulative - 1 > self._largest:
            self._largest = cumulative - 1

    def _drop_ranges(self, count: int) -> None:
        """Forget the lowest `count` ranges (the cumulative point passed them); the lists go
        when they empty."""
        starts, ends = self._starts, self._ends
        if starts is None or ends is None:
            return
        if count >= len(starts):
            self._starts = self._ends = None
        else:
            del starts[:count]
            del ends[:count]

    def _insert(self, pn: int) -> bool:
        starts, ends = self._starts, self._ends
        if starts is None or ends is None:
            self._starts, self._ends = [pn], [pn]
            return True
        if pn > ends[-1] + 1:
            starts.append(pn)
            ends.append(pn)
            return True
        if pn == ends[-1] + 1:
            ends[-1] = pn
            return True
        i = bisect_right(starts, pn)
        if i and ends[i - 1] >= pn:
            return False
        joins_left = i > 0 and ends[i - 1] + 1 == pn
        joins_right = i < len(starts) and starts[i] == pn + 1
        if joins_left and joins_right:
            ends[i - 1] = ends[i]
            del starts[i]
            del ends[i]
        elif joins_left:
            ends[i - 1] = pn
        elif joins_right:
            starts[i] = pn
        else:
            starts.insert(i, pn)
            ends.insert(i, pn)
        return True
