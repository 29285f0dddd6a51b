"""The transport figures the metrics endpoint publishes, read from counters the server keeps.

Nothing here runs per packet. `transport_totals(server)` is the one data source of the
transport metrics: it adds up, at scrape time, the server's own counters (`server.counters`),
the listener's (`server.listener.stats`), every live connection's (`conn.stats`) and the totals
of connections that have closed (`ConnectionTotals`, added to once per closed connection). It
is O(live connections): `benchmarks/metrics_scrape.py` measures what that costs at 100,000.
A server that keeps running totals instead can hand the collector another function with the
same result type; nothing else would change.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quantum.connection import ConnectionStats

if TYPE_CHECKING:
    from server import QuantumServer

__all__ = ["RTT_BUCKETS", "ConnectionTotals", "TransportTotals", "transport_totals"]

#: upper bounds (seconds) of the RTT histogram's buckets; +Inf follows
RTT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                  1.0, 2.5)


@dataclass(slots=True)
class ConnectionTotals:
    """The counters of connections that have closed: the server adds each one as it goes, so
    that totals over all connections never go down when a connection does."""

    packets_sent: int = 0
    packets_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retransmissions: int = 0
    fec_recovered: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    def add(self, stats: ConnectionStats) -> None:
        self.packets_sent += stats.packets_sent
        self.packets_received += stats.packets_received
        self.bytes_sent += stats.bytes_sent
        self.bytes_received += stats.bytes_received
        self.retransmissions += stats.retransmissions
        self.fec_recovered += stats.fec_recovered
        if stats.drops:
            _merge(self.drops, stats.drops)


def _merge(into: dict[str, int], counts: dict[str, int], prefix: str = "") -> None:
    for reason, n in counts.items():
        key = prefix + reason
        into[key] = into.get(key, 0) + n


@dataclass(slots=True)
class TransportTotals:
    """Everything the transport metrics show, at one instant. Counts are totals since start."""

    connections: int = 0
    connections_hibernating: int = 0
    connections_opened: int = 0
    connections_closed: int = 0
    #: result -> count: started, retry_requested, completed, authentication_failed, and
    #: rejected_<reason> (server_full, rate_limited, version_not_supported)
    handshakes: dict[str, int] = field(default_factory=dict)
    datagrams_received: int = 0
    datagrams_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    #: reason -> count; handshake-stage drops are prefixed handshake_
    drops: dict[str, int] = field(default_factory=dict)
    retransmissions: int = 0
    fec_recoveries: int = 0
    keepalives_answered: int = 0
    #: live connections per RTT bucket (RTT_BUCKETS, then +Inf; not cumulative), with the
    #: sum of their RTTs: connections without an RTT sample yet are left out
    rtt_counts: list[int] = field(default_factory=lambda: [0] * (len(RTT_BUCKETS) + 1))
    rtt_sum: float = 0.0
    #: the longest event-loop stall since start (seconds; None: the probe is off)
    loop_stall_max_seconds: float | None = None


def transport_totals(server: QuantumServer) -> TransportTotals:
    """Read every transport counter of `server` now (on its event loop's thread)."""
    counters, listener = server.counters, server.listener.stats
    closed: ConnectionTotals = counters.closed
    out = TransportTotals(
        connections=len(server.peers),
        connections_opened=counters.connections_opened,
        connections_closed=counters.connections_closed,
        keepalives_answered=counters.heartbeats,
        handshakes={"started": listener.handshakes_started,
                    "retry_requested": listener.retries_sent,
                    "completed": listener.handshakes_completed,
                    "authentication_failed": counters.auth_failures},
    )
    _merge(out.handshakes, listener.rejected, "rejected_")
    _merge(out.handshakes, counters.rejected, "rejected_")  # the session limits' refusals
    drops = dict(counters.drops)
    _merge(drops, closed.drops)
    _merge(drops, listener.drops, "handshake_")
    sent, received = closed.packets_sent, closed.packets_received
    bytes_sent, bytes_received = closed.bytes_sent, closed.bytes_received
    retransmissions, fec = closed.retransmissions, closed.fec_recovered
    hibernating = 0
    rtt_counts, rtt_sum = out.rtt_counts, 0.0
    bucket_of = bisect.bisect_left
    for peer in server.peers.values():
        conn = peer.conn
        stats = conn.stats
        sent += stats.packets_sent
        received += stats.packets_received
        bytes_sent += stats.bytes_sent
        bytes_received += stats.bytes_received
        retransmissions += stats.fast_retransmits + stats.timeout_retransmits
        fec += stats.fec_recovered
        if stats.drops:
            _merge(drops, stats.drops)
        if conn.hibernating:
            hibernating += 1
        rtt = stats.srtt  # as of the connection's last stats refresh (every stats sweep)
        if rtt is not None:
            rtt_counts[bucket_of(RTT_BUCKETS, rtt)] += 1
            rtt_sum += rtt
    out.datagrams_sent, out.datagrams_received = sent, received
    out.bytes_sent, out.bytes_received = bytes_sent, bytes_received
    out.retransmissions, out.fec_recoveries = retransmissions, fec
    out.connections_hibernating = hibernating
    out.drops = drops
    out.rtt_sum = rtt_sum
    probe = server.stall_probe
    out.loop_stall_max_seconds = probe.max_lag_ever if probe is not None else None
    return out
