"""Path MTU discovery (DPLPMTUD, RFC 8899 in spirit): the datagram size a connection uses.

Quantum never relies on IP fragmentation. Every connection starts at `BASE_DATAGRAM` (1200
bytes, safe on any path, as QUIC's minimum) and probes upward with padded probe packets (a PING
frame and PADDING up to the size tried) to the largest its address family allows:
`MAX_DATAGRAM_V4` (1472 = 1500 - IPv4 20 - UDP 8) or `MAX_DATAGRAM_V6` (1452). A probe is
judged by its acknowledgement alone: it is not retransmitted, its loss is not congestion, and
only an acknowledged probe raises the size. A search is a binary search between the size that
worked and the largest untried one, `MAX_PROBES` tries per size; it ends when the bounds are
within `SEARCH_GRANULARITY` bytes, and starts again `RAISE_INTERVAL` later in case the path grew.

A black hole (the path shrank: large packets vanish while the connection otherwise works) is
detected from data: `BLACK_HOLE_LOSSES` packets larger than the base declared lost in a row,
none acknowledged in between. The size then falls back to the base at once, and a new search
starts after `BLACK_HOLE_RETRY` seconds. Sans-I/O: the connection asks `probe_due`, sends the
probe and reports `on_probe_sent`, acknowledgements, losses and timeouts. docs/PROTOCOL.md 10.6.
"""

from __future__ import annotations

from typing import Any, Final

from quantum.addresses import packed_ip
from quantum.packet import (
    BASE_DATAGRAM,
    HEADER_SIZE,
    MAX_DATAGRAM_V4,
    MAX_DATAGRAM_V6,
    MAX_SACK_BLOCKS,
    SACK_BLOCK_SIZE,
)

__all__ = [
    "BASE_DATAGRAM",
    "BLACK_HOLE_LOSSES",
    "BLACK_HOLE_RETRY",
    "MAX_DATAGRAM_V4",
    "MAX_DATAGRAM_V6",
    "MAX_PROBES",
    "MIN_PROBE_TIMEOUT",
    "RAISE_INTERVAL",
    "SEARCH_GRANULARITY",
    "PathMtu",
    "max_data_payload",
    "max_datagram_for",
    "max_datagram_for_address",
]

#: tries of one probe size before it is taken as too large
MAX_PROBES: Final = 3
#: a search stops when the largest size known to work and the smallest known (or assumed)
#: not to are this close
SEARCH_GRANULARITY: Final = 8
#: seconds between the end of a search and the next one (RFC 8899's PMTU_RAISE_TIMER)
RAISE_INTERVAL: Final = 600.0
#: consecutive losses of packets larger than the base (none of them acknowledged between) that
#: mean the path no longer carries them
BLACK_HOLE_LOSSES: Final = 3
#: seconds after a black hole before the search starts again
BLACK_HOLE_RETRY: Final = 30.0
#: the shortest wait for a probe's acknowledgement
MIN_PROBE_TIMEOUT: Final = 0.2

_NONE: Final = -1.0


#: the AEAD tag after every protected payload
_TAG: Final = 16
#: the PARITY frame's fixed fields (type, group, m, index, k, shard length) and the shard's
#: own 2-byte length prefix (quantum/fec.py pads every payload to the longest plus 2)
_PARITY_FIXED: Final = 12


def max_datagram_for(host: str) -> int:
    """The largest datagram for a peer address (IPv6 has a 20-byte larger IP header). An
    IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket reports an IPv4 peer)
    is IPv4 on the wire (docs/PROTOCOL.md 2.4)."""
    if ":" not in host:
        return MAX_DATAGRAM_V4
    try:
        return MAX_DATAGRAM_V4 if len(packed_ip(host)) == 4 else MAX_DATAGRAM_V6
    except ValueError:  # not an IP literal: a name with colons is no IPv4 address
        return MAX_DATAGRAM_V6


def max_datagram_for_address(addr: Any) -> int:
    """The same for a socket address: (host, port) or an IPv6 4-tuple (host, port, flow,
    scope)."""
    return max_datagram_for(str(addr[0]))


def max_data_payload(plpmtu: int, fec_k: int) -> int:
    """D, the most plaintext payload a packet carrying MESSAGE frames may have at datagram
    size `plpmtu` (fec_k: FEC's k, 0 without FEC). Room for 8 SACK blocks always; with FEC,
    also room for the group's parity packet, whose PARITY frame holds 12 + 4k bytes of framing
    around a shard 2 bytes longer than the longest data payload: 32 + 12 + 4k + D + 16 <= P.
    docs/PROTOCOL.md 2.3."""
    d = plpmtu - HEADER_SIZE - MAX_SACK_BLOCKS * SACK_BLOCK_SIZE - _TAG
    if fec_k:
        parity_bound = plpmtu - HEADER_SIZE - _PARITY_FIXED - 4 * fec_k - _TAG
        if parity_bound < d:
            d = parity_bound
    return d


class PathMtu:
    """The datagram size in use (`size`), and the search for a larger one."""

    __slots__ = ("_fresh", "_high", "_low", "_next_search", "black_holes", "large_losses",
                 "max_size",
                 "probe_deadline", "probe_pn", "probe_size", "probes_lost", "probes_sent",
                 "size", "tries")

    def __init__(self, max_size: int, now: float, *, base: int = BASE_DATAGRAM) -> None:
        if not base <= max_size <= MAX_DATAGRAM_V4:
            raise ValueError(f"max datagram {max_size} outside {base}..{MAX_DATAGRAM_V4}")
        self.size = base  # every packet but a probe fits in this
        self.max_size = max_size
        self._low = base  # known to work
        self._high = max_size  # the largest not known to fail
        self._next_search = now  # when the next search may start (_NONE: searching)
        self._fresh = True  # nothing tried yet in this search
        self.probe_pn = -1  # the probe in flight (-1: none)
        self.probe_size = 0
        self.probe_deadline = _NONE
        self.tries = 0
        self.large_losses = 0
        # counters for people (stats): probes sent and lost, black holes met
        self.probes_sent = 0
        self.probes_lost = 0
        self.black_holes = 0

    @property
    def searching(self) -> bool:
        return self._next_search < 0

    def timer(self) -> float:
        """When it needs the connection again: the probe's deadline, or the next search."""
        return self.probe_deadline if self.probe_pn >= 0 else self._next_search

    def probe_due(self, now: float) -> int:
        """The size to probe now, or 0: no probe in flight and a search wants one."""
        if self.probe_pn >= 0:
            return 0
        if not self.searching:
            if now < self._next_search:
                return 0
            self._start_search()
        if self.probe_size and self.tries < MAX_PROBES:
            return self.probe_size  # the same size again: its last probe was lost
        if self._high - self._low < SEARCH_GRANULARITY:
            self._end_search(now)
            return 0
        # the largest size first (most paths carry it), then a binary search
        self.probe_size = self._high if self._fresh else (self._low + self._high + 1) // 2
        self.tries = 0
        return self.probe_size

    def _start_search(self) -> None:
        self._next_search = _NONE
        self._low = self.size
        self._high = self.max_size
        self._fresh = True
        self.probe_size = 0
        self.tries = 0

    def _end_search(self, now: float) -> None:
        self._next_search = now + RAISE_INTERVAL
        self.probe_size = 0
        self.tries = 0

    def on_probe_sent(self, pn: int, now: float, timeout: float) -> None:
        """The probe for `probe_size` left as packet `pn`."""
        self.probe_pn = pn
        self.tries += 1
        self.probes_sent += 1
        self.probe_deadline = now + (timeout if timeout > MIN_PROBE_TIMEOUT
                                     else MIN_PROBE_TIMEOUT)

    def on_probe_acked(self) -> None:
        """The probe arrived: the path carries its size."""
        self.size = self._low = self.probe_size
        self._fresh = False
        self.probe_pn = -1
        self.probe_deadline = _NONE
        self.probe_size = 0
        self.tries = 0
        self.large_losses = 0

    def on_probe_timeout(self, now: float) -> None:
        """No acknowledgement in time: lost. After MAX_PROBES of one size, it is too large."""
        self.probe_pn = -1
        self.probe_deadline = _NONE
        self.probes_lost += 1
        if self.tries >= MAX_PROBES:
            self._high = self.probe_size - 1
            self._fresh = False
            self.probe_size = 0
            self.tries = 0

    def on_acked(self, largest_size: int) -> None:
        """Packets were acknowledged, the largest of them `largest_size` bytes."""
        if largest_size > BASE_DATAGRAM:
            self.large_losses = 0

    def on_lost(self, size: int, now: float) -> bool:
        """A data packet of `size` bytes was declared lost; True if that means a black hole
        (the size is back at the base: the caller re-cuts what it sends)."""
        if size <= BASE_DATAGRAM or self.size <= BASE_DATAGRAM:
            return False
        self.large_losses += 1
        if self.large_losses < BLACK_HOLE_LOSSES:
            return False
        self.size = self._low = BASE_DATAGRAM
        self.large_losses = 0
        self.black_holes += 1
        self.probe_pn = -1
        self.probe_deadline = _NONE
        self.probe_size = 0
        self.tries = 0
        self._next_search = now + BLACK_HOLE_RETRY
        return True
