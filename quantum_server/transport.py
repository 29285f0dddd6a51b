"""The transport figures the metrics endpoint publishes, read from counters the server keeps.

Nothing here runs per packet. The transport metrics add up, at scrape time, the server's own
counters (`server.counters`), the listener's (`server.listener.stats`), every live
connection's (`conn.stats`) and the totals of connections that have closed
(`ConnectionTotals`, added to once per closed connection). That is O(live connections)
(`benchmarks/metrics_scrape.py` measures it: about 2 us a connection), so the endpoint does
not do it in one go: `TransportSampler.refresh` walks the connections in chunks of
`chunk` and yields the event loop between two, so a scrape of a million connections costs the
loop a few milliseconds at a time, never a stop of a second. `transport_totals(server)` is the
same sum in one go, for tests and tools.

Counters never go down between scrapes (Prometheus would read a decrease as a restart): a
walk counts the closed connections' totals as they were when it started, and each connection
live then by the stats it has when the walk reaches it, whether or not it has closed by then
(its object holds its final counts). So every connection is counted once per walk, by counts
that only grow; one accepted during a walk joins the next.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quantum.connection import ConnectionStats

if TYPE_CHECKING:
    from server import Peer, QuantumServer

__all__ = ["RTT_BUCKETS", "ConnectionTotals", "TransportSampler", "TransportTotals",
           "transport_totals"]

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


def _merge(into: dict[str, int], counts: Mapping[str, int], prefix: str = "") -> None:
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


class _Walk:
    """One sum over the connections: `start` reads the server-wide counters and the closed
    connections' totals, `add` each connection that was live then, `finish` the result."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "drops",
        "fec",
        "hibernating",
        "out",
        "received",
        "retransmissions",
        "rtt_sum",
        "sent",
    )

    def __init__(self, server: QuantumServer, live: int) -> None:
        counters, listener = server.counters, server.listener.stats
        closed: ConnectionTotals = counters.closed
        self.out = out = TransportTotals(
            connections=live,
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
        self.drops = drops = dict(counters.drops)
        _merge(drops, closed.drops)
        _merge(drops, listener.drops, "handshake_")
        self.sent, self.received = closed.packets_sent, closed.packets_received
        self.bytes_sent, self.bytes_received = closed.bytes_sent, closed.bytes_received
        self.retransmissions, self.fec = closed.retransmissions, closed.fec_recovered
        self.hibernating = 0
        self.rtt_sum = 0.0
        probe = server.stall_probe
        out.loop_stall_max_seconds = probe.max_lag_ever if probe is not None else None

    def add(self, peers: Iterable[Peer]) -> None:
        rtt_counts = self.out.rtt_counts
        bucket_of = bisect.bisect_left
        sent, received = self.sent, self.received
        bytes_sent, bytes_received = self.bytes_sent, self.bytes_received
        retransmissions, fec, hibernating, rtt_sum = (self.retransmissions, self.fec,
                                                      self.hibernating, self.rtt_sum)
        drops = self.drops
        for peer in peers:
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
        self.sent, self.received = sent, received
        self.bytes_sent, self.bytes_received = bytes_sent, bytes_received
        self.retransmissions, self.fec, self.hibernating, self.rtt_sum = (
            retransmissions, fec, hibernating, rtt_sum)

    def finish(self) -> TransportTotals:
        out = self.out
        out.datagrams_sent, out.datagrams_received = self.sent, self.received
        out.bytes_sent, out.bytes_received = self.bytes_sent, self.bytes_received
        out.retransmissions, out.fec_recoveries = self.retransmissions, self.fec
        out.connections_hibernating = self.hibernating
        out.drops = self.drops
        out.rtt_sum = self.rtt_sum
        return out


def transport_totals(server: QuantumServer) -> TransportTotals:
    """Read every transport counter of `server` now, in one go (on its event loop's
    thread): O(live connections) without a pause, for tests and tools."""
    peers = server.peers
    walk = _Walk(server, len(peers))
    walk.add(peers.values())
    return walk.finish()


class TransportSampler:
    """The transport totals for the metrics endpoint: `refresh()` (awaited before each
    scrape) walks the connections `chunk` at a time, yielding the loop between chunks;
    `latest()` is what the last refresh found (what the collector publishes)."""

    def __init__(self, server: QuantumServer, chunk: int = 2000) -> None:
        if type(chunk) is not int or chunk < 1:
            raise ValueError(f"chunk must be a positive number of connections, got {chunk!r}")
        self.server = server
        self.chunk = chunk
        self._latest: TransportTotals | None = None
        #: CPU the walks have taken on the loop's thread (seconds, chunks only: not the
        #: packets handled between two)
        self.cpu_seconds = 0.0
        #: CPU the last walk took (seconds, its chunks only)
        self.last_walk_seconds = 0.0
        self._walking: asyncio.Future[TransportTotals] | None = None

    def latest(self) -> TransportTotals:
        """The last refresh's totals (one taken now, in one go, if there was none yet)."""
        if self._latest is None:
            self._latest = transport_totals(self.server)
        return self._latest

    async def refresh(self) -> None:
        """Walk the connections once. Scrapes that arrive during a walk share it (one walk
        at a time, however many scrapers)."""
        walking = self._walking
        if walking is not None:
            await asyncio.shield(walking)
            return
        self._walking = asyncio.get_running_loop().create_future()
        try:
            totals = await self._walk()
        except BaseException as exc:
            self._walking.set_exception(exc)
            self._walking.exception()  # retrieved: a lone walker's failure is raised below
            raise
        finally:
            walking, self._walking = self._walking, None
        self._latest = totals
        walking.set_result(totals)

    async def _walk(self) -> TransportTotals:
        # the connections live now, in a list: the walk must not see the dict change size
        peers = list(self.server.peers.values())
        walk = _Walk(self.server, len(peers))
        chunk = self.chunk
        clock = time.thread_time
        cpu = 0.0
        started = clock()
        for start in range(0, len(peers), chunk):
            if start:
                cpu += clock() - started
                await asyncio.sleep(0)  # let packets in between two chunks
                started = clock()
            walk.add(peers[start:start + chunk])
        totals = walk.finish()
        cpu += clock() - started
        self.last_walk_seconds = cpu
        self.cpu_seconds += cpu
        return totals
