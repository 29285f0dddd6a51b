"""Forward error correction: Reed-Solomon parity over groups of data packets, through zfec.

The sender groups the payloads of k consecutive data packets and sends m parity shards after
them; the receiver recovers up to m lost packets of a group from any k of the k + m shards,
without waiting a round trip for a retransmission. zfec does the coding (a systematic
Vandermonde code over GF(2^8)), so the data packets travel unchanged and only parity is extra.

Payloads differ in length, but zfec codes equal-length blocks, so each data shard is
`u16 length || payload`, zero-padded to the longest shard of its group; parity shards have that
padded length, which is how the receiver learns it. Both classes are sans-I/O and bounded in
memory: the decoder forgets old groups and old payloads instead of growing with the connection.

How much parity a group gets is the sender's policy (`FecState`, PROTOCOL.md 9): as little as
keeps the chance of the group losing a packet it cannot rebuild under a target, given the
loss the connection measures (`LossMeter`) and what the group holds (`parity_count`). At 0 %
loss that is none, and no group is even opened.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import zfec

from quantum.errors import ProtocolError
from quantum.limits import MAX_FEC_K, MAX_FEC_M
from quantum.reliability import SentPacket

_LEN_PREFIX: Final = 2
_MAX_PAYLOAD: Final = 0xFFFF

#: the default of `QuantumConfiguration.fec_target_loss`: the chance of a group losing a data
#: packet FEC cannot rebuild that the sender's parity aims to stay under (0.1 %: below the 1 %
#: a p99 looks at, so at most the rare packet waits a retransmission round trip)
DEFAULT_TARGET_LOSS: Final = 1e-3
#: the loss meter's two exponential averages of packet fates, over about 32 and 512 packets:
#: the fast one follows the onset of loss within a few dozen packets, the slow one remembers
#: sparse losses long enough that a 1 % path does not read as loss-free between two of them
#: (with only a 64-packet memory, protocol_bench's 1 % case lost a quarter of its unprotected
#: packets while the meter had decayed below what buys a lone packet its parity)
FAST_WEIGHT: Final = 1.0 / 32
SLOW_WEIGHT: Final = 1.0 / 512
#: protected groups the loss meter remembers; a group is forgotten once all its packets are
#: settled (below the send tracker's floor), and with the 256-packet send window and at least
#: two packets per protected group no more than 128 can be unsettled at once
_MAX_PROTECTED: Final = 256


class FecError(ProtocolError, ValueError):
    """A parity shard or payload contradicts its group: an authenticated peer broke the protocol."""


@dataclass(frozen=True, slots=True)
class ParityShard:
    """One parity block of a group; `data_seqs` (k pns) names the data packets it protects."""

    group_id: int
    index: int  # 0 <= index < m; zfec block number k + index
    m: int  # parity shards in this group (fewer than configured for a flushed partial group)
    data_seqs: tuple[int, ...]
    shard: bytes


@functools.lru_cache(maxsize=128)
def _encoder(k: int, n: int) -> zfec.Encoder:
    # Building the coding matrix costs more than coding a group: share one per (k, n).
    return zfec.Encoder(k, n)


@functools.lru_cache(maxsize=128)
def _decoder(k: int, n: int) -> zfec.Decoder:
    return zfec.Decoder(k, n)


def _pad(payload: bytes, size: int) -> bytes:
    """The data shard of a payload: length prefix, payload, zeros up to the group's shard size."""
    n = len(payload)
    return n.to_bytes(2, "big") + payload + bytes(size - _LEN_PREFIX - n)


def check_shape(k: int, m: int) -> None:
    """ValueError unless (k, m) is a group shape the protocol allows (`quantum.limits`)."""
    if not 1 <= k <= MAX_FEC_K:
        raise ValueError(f"FEC k must be between 1 and {MAX_FEC_K} data packets, got {k}")
    if not 1 <= m <= MAX_FEC_M:
        raise ValueError(f"FEC m must be between 1 and {MAX_FEC_M} parity packets, got {m}")


class FecEncoder:
    """Collects outgoing data payloads into groups of at most k and codes up to m parity shards
    for each; how many a group gets is the caller's choice (`close`, `FecState`)."""

    __slots__ = ("_group_id", "_payloads", "_seqs", "k", "m")

    def __init__(self, k: int = 10, m: int = 3, first_group_id: int = 0) -> None:
        check_shape(k, m)
        self.k = k
        self.m = m
        self._group_id = first_group_id
        self._seqs: list[int] = []
        self._payloads: list[bytes] = []

    @property
    def next_group_id(self) -> int:
        """The id the next group gets (a successor encoder continues from here)."""
        return self._group_id

    @property
    def pending(self) -> int:
        """Packets in the open group (parity not yet produced)."""
        return len(self._seqs)

    def add(self, pn: int, payload: bytes) -> bool:
        """Add an outgoing data packet to the open group; whether the group now holds k
        (then `close` it)."""
        if len(payload) > _MAX_PAYLOAD:
            raise ValueError(f"FEC payload of {len(payload)} bytes exceeds {_MAX_PAYLOAD}")
        seqs = self._seqs
        if seqs and pn <= seqs[-1]:
            raise ValueError(f"FEC packet numbers must increase: {pn} after {seqs[-1]}")
        if len(seqs) == self.k:
            raise ValueError(f"the FEC group already holds k={self.k} packets: close it first")
        seqs.append(pn)
        self._payloads.append(payload)
        return len(seqs) == self.k

    def close(self, m: int) -> list[ParityShard]:
        """Close the open group (full or not) with m parity shards, 0 <= m <= the encoder's m.

        A group closed with no parity leaves no trace on the wire: it takes no group id, and
        its packets are only ever retransmitted."""
        if not 0 <= m <= self.m:
            raise ValueError(f"a group of this encoder has 0..{self.m} parity shards, got {m}")
        seqs, payloads = tuple(self._seqs), self._payloads
        self._seqs = []
        self._payloads = []
        if not seqs or not m:
            return []
        k = len(seqs)
        size = _LEN_PREFIX + max(map(len, payloads))
        blocks = tuple(_pad(p, size) for p in payloads)
        parity = _encoder(k, k + m).encode(blocks, tuple(range(k, k + m)))
        gid = self._group_id
        self._group_id = gid + 1
        return [ParityShard(gid, i, m, seqs, bytes(parity[i])) for i in range(m)]

    @property
    def first_pn(self) -> int:
        """The packet number of the open group's first packet (-1: the group is empty)."""
        seqs = self._seqs
        return seqs[0] if seqs else -1

    @property
    def last_pn(self) -> int:
        """The packet number of the open group's last packet (-1: the group is empty)."""
        seqs = self._seqs
        return seqs[-1] if seqs else -1


def parity_count(n: int, m: int, loss: float, target: float) -> int:
    """Parity shards for a group of n data packets: the fewest, at most m, that keep the chance
    of losing more shards than there is parity (so possibly a data packet for good) at or below
    `target` when each of the n + j shards is lost independently with probability `loss`.

    0 at 0 % loss. At the default target of 0.1 %: a lone packet gets 1 from 0.1 % loss, 2 from
    3.2 % and 3 from 10 %; a full group of 10 (m = 3) 1 from 0.01 %, 2 from 0.43 %, 3 from 1.7 %.
    """
    if loss <= 0.0:
        return 0
    if loss >= 1.0:
        return m
    keep = 1.0 - loss
    ratio = loss / keep
    for j in range(m + 1):
        # P(at most j of the n + j shards lost) for Binomial(n + j, loss), term by term
        total = n + j
        term = keep ** total
        kept = term
        for i in range(1, j + 1):
            term *= ratio * (total - i + 1) / i
            kept += term
        if 1.0 - kept <= target:
            return j
    return m


class LossMeter:
    """The loss rate a sender measures, as FEC's parity policy needs it: the larger of two
    exponential averages (FAST_WEIGHT, SLOW_WEIGHT) of packet fates (lost 1, acknowledged 0)
    over the packets whose loss FEC cannot hide.

    A data packet of a group that carried parity is left out: if FEC rebuilt it the receiver
    acknowledges it like any packet, so counting it would measure the loss FEC repaired as no
    loss at all, and the parity would then be withdrawn just when it worked. Parity packets,
    unprotected data and control packets are each a fair sample of the path.
    """

    __slots__ = ("_ends", "_fast", "_slow", "_starts", "loss")

    def __init__(self) -> None:
        self.loss = 0.0
        self._fast = 0.0
        self._slow = 0.0
        # the packet numbers [start, end] of groups sent with parity, oldest first: None
        # while there are none (no parity in flight: an idle connection, or 0 % loss)
        self._starts: list[int] | None = None
        self._ends: list[int] | None = None

    def protect(self, first: int, last: int) -> None:
        """The data packets first..last (a group) went out with parity."""
        starts, ends = self._starts, self._ends
        if starts is None or ends is None:
            self._starts, self._ends = [first], [last]
            return
        starts.append(first)
        ends.append(last)
        if len(starts) > _MAX_PROTECTED:
            del starts[0]
            del ends[0]

    def on_fates(self, packets: Sequence[SentPacket], lost: bool, floor: int) -> None:
        """Packets just acknowledged (or declared lost); `floor`: the send tracker's floor, below
        which every packet is settled (so their groups can be forgotten)."""
        starts, ends = self._starts, self._ends
        if starts is not None and ends is not None:
            settled = 0
            for end in ends:
                if end >= floor:
                    break
                settled += 1
            if settled == len(ends):
                starts = ends = self._starts = self._ends = None
            elif settled:
                del starts[:settled]
                del ends[:settled]
        if not lost and self.loss == 0.0:
            return  # nothing to decay: the common case at 0 % loss
        fast, slow = self._fast, self._slow
        x = 1.0 if lost else 0.0
        for p in packets:
            pn = p.pn
            if starts is not None and ends is not None and pn >= starts[0]:
                i = bisect_right(starts, pn) - 1
                if i >= 0 and pn <= ends[i]:
                    continue  # FEC could have hidden this one's loss
            fast += (x - fast) * FAST_WEIGHT
            slow += (x - slow) * SLOW_WEIGHT
        self._fast, self._slow = fast, slow
        self.loss = fast if fast > slow else slow


@dataclass(slots=True)
class _Group:
    """What the decoder knows of one group; `done` groups only remain to ignore late parity."""

    m: int
    data_seqs: tuple[int, ...]
    size: int  # padded shard length, from the parity shards
    parity: dict[int, bytes] = field(default_factory=dict)  # parity index -> shard
    data: dict[int, bytes] = field(default_factory=dict)  # data index -> payload
    done: bool = False


class FecDecoder:
    """Caches received payloads and parity shards; rebuilds lost data packets of a group."""

    __slots__ = (
        "_cache",
        "_floor",
        "_groups",
        "_max_cached",
        "_max_groups",
        "_waiting",
        "recovered",
    )

    def __init__(self, max_cached: int = 512, max_groups: int = 64) -> None:
        if max_cached < 1 or max_groups < 1:
            raise ValueError(
                f"max_cached and max_groups must be positive, got {max_cached}, {max_groups}")
        self._max_cached = max_cached
        self._max_groups = max_groups
        self._cache: dict[int, bytes] = {}  # pn -> payload, oldest first
        self._groups: dict[int, _Group] = {}
        self._waiting: dict[int, int] = {}  # missing pn -> id of the open group that names it
        # Group ids below the floor were evicted; late parity for them is ignored so that a
        # forgotten group is never rebuilt and its packets never "recovered" a second time.
        self._floor = 0
        self.recovered = 0

    def on_data(self, pn: int, payload: bytes) -> list[tuple[int, bytes]]:
        """A received data packet; returns packets it lets an open group recover (usually [])."""
        cache = self._cache
        if pn in cache:
            return []
        cache[pn] = payload
        if len(cache) > self._max_cached:
            del cache[next(iter(cache))]
        gid = self._waiting.pop(pn, None)
        if gid is None:
            return []
        group = self._groups[gid]
        index = group.data_seqs.index(pn)
        self._check_fits(group, pn, payload)
        group.data[index] = payload
        return self._try_recover(gid, group)

    def on_parity(self, shard: ParityShard) -> list[tuple[int, bytes]]:
        """A received parity shard; returns the group's missing packets once k shards are known."""
        gid, seqs = shard.group_id, shard.data_seqs
        k, m = len(seqs), shard.m
        if not 1 <= k <= MAX_FEC_K or not 1 <= m <= MAX_FEC_M or not 0 <= shard.index < m:
            raise FecError(f"parity shard {shard.index} of group {gid} has k={k}, m={m}")
        if len(set(seqs)) != k:
            raise FecError(f"parity shard of group {gid} names a packet twice")
        if len(shard.shard) < _LEN_PREFIX:
            raise FecError(f"parity shard of group {gid} is shorter than a length prefix: "
                           f"{len(shard.shard)} bytes")
        if gid < self._floor:
            return []
        group = self._groups.get(gid)
        if group is None:
            group = self._open(gid, shard)
        elif group.data_seqs != seqs or group.m != m or group.size != len(shard.shard):
            raise FecError(f"parity shard {shard.index} contradicts the rest of group {gid}")
        if group.done or shard.index in group.parity:
            return []
        group.parity[shard.index] = shard.shard
        return self._try_recover(gid, group)

    def _open(self, gid: int, shard: ParityShard) -> _Group:
        group = _Group(shard.m, shard.data_seqs, len(shard.shard))
        cache, waiting = self._cache, self._waiting
        for index, pn in enumerate(shard.data_seqs):
            payload = cache.get(pn)
            if payload is None:
                waiting[pn] = gid
            else:
                self._check_fits(group, pn, payload)
                group.data[index] = payload
        groups = self._groups
        groups[gid] = group
        if len(groups) > self._max_groups:
            oldest = min(groups)
            self._floor = max(self._floor, oldest + 1)
            self._close(oldest, groups.pop(oldest))
        return group

    @staticmethod
    def _check_fits(group: _Group, pn: int, payload: bytes) -> None:
        if len(payload) + _LEN_PREFIX > group.size:
            raise FecError(
                f"packet {pn} has {len(payload)} bytes, more than its FEC group's shards hold")

    def _close(self, gid: int, group: _Group) -> None:
        """Mark a group finished and drop its shards; it stays only as a tombstone."""
        waiting = self._waiting
        for pn in group.data_seqs:
            if waiting.get(pn) == gid:
                del waiting[pn]
        group.done = True
        group.parity.clear()
        group.data.clear()

    def _try_recover(self, gid: int, group: _Group) -> list[tuple[int, bytes]]:
        seqs, data, parity = group.data_seqs, group.data, group.parity
        k = len(seqs)
        if len(data) == k:
            self._close(gid, group)
            return []
        if len(data) + len(parity) < k:
            return []
        size = group.size
        blocks: list[bytes] = []
        nums: list[int] = []
        for index, payload in data.items():
            blocks.append(_pad(payload, size))
            nums.append(index)
        for index, shard in parity.items():
            if len(blocks) == k:
                break
            blocks.append(shard)
            nums.append(k + index)
        decoded = _decoder(k, k + group.m).decode(tuple(blocks), tuple(nums))
        out: list[tuple[int, bytes]] = []
        for index in range(k):
            if index in data:
                continue
            block = decoded[index]
            length = int.from_bytes(block[:_LEN_PREFIX], "big")
            if length + _LEN_PREFIX > size:
                raise FecError(f"recovered packet {seqs[index]} of group {gid} claims "
                               f"{length} bytes in a {size}-byte shard")
            out.append((seqs[index], bytes(block[_LEN_PREFIX:_LEN_PREFIX + length])))
        self.recovered += len(out)
        self._close(gid, group)
        return out


class FecState:
    """One connection's FEC, while it is negotiated on: the open group of what it sends, the
    parity waiting to go out, the loss it measures, and the groups of what it receives.

    A connection without FEC has none of this (`Connection._fec` is None). The sender's policy
    (PROTOCOL.md 9): a group is opened only while the measured loss says a full group would
    need parity (`grouping`); a group closes when it holds k packets or the sender runs dry
    (`sender_idle`), with `parity_count` shards for what it holds at the loss measured then,
    none at all at 0 % loss. The encoder exists only while a group is open; group ids continue
    across encoders.
    """

    __slots__ = ("_decoder", "_encoder", "_next_group", "_open_above", "k", "m", "meter",
                 "parity", "target")

    def __init__(self, k: int, m: int, target: float = DEFAULT_TARGET_LOSS) -> None:
        check_shape(k, m)
        if not 0.0 < target < 1.0:
            raise ValueError(f"the FEC target loss must be between 0 and 1, got {target}")
        self.k = k
        self.m = m
        self.target = target
        #: the measured loss above which a full group needs parity: below it none is opened
        self._open_above = 1.0 - (1.0 - target) ** (1.0 / k)
        self.meter = LossMeter()
        self._encoder: FecEncoder | None = None
        self._next_group = 0
        self._decoder: FecDecoder | None = None  # built by the first packet of a group
        #: parity shards waiting for the next packets, in order (None: none)
        self.parity: list[ParityShard] | None = None

    def grouping(self) -> bool:
        """Whether the next data packet joins a group (is sent with PSH): a group is open, or
        the measured loss is high enough for a full group to get parity."""
        return self._encoder is not None or self.meter.loss > self._open_above

    def on_sent(self, pn: int, payload: bytes) -> None:
        """A data packet of a group left (`grouping` said so): it joins the open group, which
        may close and queue parity."""
        encoder = self._encoder
        if encoder is None:
            encoder = self._encoder = FecEncoder(self.k, self.m, self._next_group)
        if encoder.add(pn, payload):
            self._close(encoder, pn)

    def sender_idle(self) -> bool:
        """The sender ran dry: close the open group now rather than let a partial group wait
        for packets that may not come. Whether there was one (its parity, if any, is then
        queued)."""
        encoder = self._encoder
        if encoder is None:
            return False
        self._encoder = None
        if encoder.pending:
            self._close(encoder, encoder.last_pn)
        self._next_group = encoder.next_group_id
        return True

    def _close(self, encoder: FecEncoder, last: int) -> None:
        first = encoder.first_pn
        count = parity_count(encoder.pending, self.m, self.meter.loss, self.target)
        shards = encoder.close(count)
        if not shards:
            return
        self.meter.protect(first, last)
        if self.parity is None:
            self.parity = shards
        else:
            self.parity.extend(shards)

    def on_fates(self, packets: Sequence[SentPacket], lost: bool, floor: int) -> None:
        """Packets of ours acknowledged or declared lost (`LossMeter.on_fates`)."""
        self.meter.on_fates(packets, lost, floor)

    def take_parity(self) -> ParityShard | None:
        parity = self.parity
        if not parity:
            return None
        shard = parity.pop(0)
        if not parity:
            self.parity = None
        return shard

    def _receiving(self) -> FecDecoder:
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = FecDecoder()
        return decoder

    def on_data(self, pn: int, payload: bytes) -> list[tuple[int, bytes]]:
        """A received data packet of a group; what it lets us recover. Raises FecError."""
        return self._receiving().on_data(pn, payload)

    def on_parity(self, shard: ParityShard) -> list[tuple[int, bytes]]:
        """A received parity shard; what it lets us recover. Raises FecError."""
        return self._receiving().on_parity(shard)
