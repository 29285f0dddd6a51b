"""Prometheus metrics: the original session service's seven, and the transport's.

Everything is read at scrape time by custom collectors (prometheus_client renders them); no
packet handler increments anything for the metrics' sake:

- transport (`quantum_*`): `TransportCollector` calls one data source, by default
  `quantum_server.transport.transport_totals(server)`, which reads the server's counters;
- sessions (`session_*`, the original's names): gauges from `SessionManager.get_stats()`
  (refreshed before a scrape, at most every `refresh_interval` seconds), counters and the
  duration histogram from the manager's change events (`SessionMetrics` is a watcher: once per
  session created or ended, never per packet);
- gRPC (`quantum_grpc_requests_total`): the API guard's per-method, per-code counts.

README.md lists every metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from quantum_server.transport import RTT_BUCKETS, TransportTotals
from session.api.auth import RequestCounts
from session.errors import SessionError
from session.logs import LazyLogger
from session.manager import SessionManager
from session.watch import EventKind, SessionEvent

__all__ = [
    "DURATION_BUCKETS",
    "GrpcCollector",
    "SessionMetrics",
    "TransportCollector",
    "build_registry",
]

log = LazyLogger("quantum.metrics")  # quiet unless the application configured structlog

#: upper bounds (seconds) of session_duration_seconds: 10 s to a day
DURATION_BUCKETS: tuple[float, ...] = (10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
                                       21600.0, 43200.0, 86400.0)


def _le(bound: float) -> str:
    return f"{bound:g}"


def _buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs from per-bucket counts (the last one is +Inf)."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*map(_le, bounds), "+Inf"), counts, strict=True):
        running += n
        out.append((bound, float(running)))
    return out


class TransportCollector(Collector):
    """The `quantum_*` transport metrics from one data source called at each scrape.
    `cost`, if given, says what producing the source's figures took (seconds): a source that
    only hands out totals gathered beforehand (`TransportSampler.latest`) costs nothing
    itself; without it, the call of `source` is timed."""

    def __init__(self, source: Callable[[], TransportTotals],
                 cost: Callable[[], float] | None = None) -> None:
        self.source = source
        self.cost = cost
        #: seconds the last collection took (published as a gauge)
        self.last_collect_seconds = 0.0

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        t = self.source()
        cost = self.cost
        self.last_collect_seconds = (time.perf_counter() - started if cost is None
                                     else cost())

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield GaugeMetricFamily("quantum_connections", "Connections established now.",
                                value=t.connections)
        yield GaugeMetricFamily("quantum_connections_hibernating",
                                "Quiet connections that released their cipher objects.",
                                value=t.connections_hibernating)
        yield counter("quantum_connections_opened",
                      "Connections whose handshake completed (refused ones included).",
                      t.connections_opened)
        yield counter("quantum_connections_closed", "Connections ended.", t.connections_closed)
        handshakes = CounterMetricFamily("quantum_handshakes", "Handshakes by result.",
                                         labels=["result"])
        for result, n in sorted(t.handshakes.items()):
            handshakes.add_metric([result], n)
        yield handshakes
        yield counter("quantum_datagrams_received",
                      "Datagrams received on established connections.", t.datagrams_received)
        yield counter("quantum_datagrams_sent", "Datagrams sent on established connections.",
                      t.datagrams_sent)
        yield counter("quantum_bytes_received",
                      "UDP payload bytes received on established connections.", t.bytes_received)
        yield counter("quantum_bytes_sent", "UDP payload bytes sent on established connections.",
                      t.bytes_sent)
        drops = CounterMetricFamily("quantum_drops", "Datagrams dropped, by reason.",
                                    labels=["reason"])
        for reason, n in sorted(t.drops.items()):
            drops.add_metric([reason], n)
        yield drops
        yield counter("quantum_retransmissions", "Packets retransmitted (fast and on timeout).",
                      t.retransmissions)
        yield counter("quantum_fec_recoveries", "Packets recovered by forward error correction.",
                      t.fec_recoveries)
        yield counter("quantum_keepalives_answered", "Client keepalives handled.",
                      t.keepalives_answered)
        yield GaugeHistogramMetricFamily(
            "quantum_rtt_seconds", "Smoothed RTT of the live connections (as of their last "
            "stats sweep).", buckets=_buckets(RTT_BUCKETS, t.rtt_counts), gsum_value=t.rtt_sum)
        if t.loop_stall_max_seconds is not None:
            yield GaugeMetricFamily(
                "quantum_event_loop_stall_seconds_max",
                "Longest the event loop went without running a callback, since start (the "
                "lag of a call_later chain every stall_probe_interval).",
                value=t.loop_stall_max_seconds)
        yield GaugeMetricFamily("quantum_metrics_collect_seconds",
                                "CPU seconds the last scrape spent summing the transport counters.",
                                value=self.last_collect_seconds)


class GrpcCollector(Collector):
    """`quantum_grpc_requests_total{method, code}` from the API's request counts."""

    def __init__(self, counts: RequestCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("quantum_grpc_requests",
                                     "session.SessionService calls by method and status code.",
                                     labels=["method", "code"])
        for (method, code), n in sorted(self.counts.counts.items()):
            family.add_metric([method, code], n)
        yield family


class SessionMetrics(Collector):
    """The original's seven session metrics, under its names.

    Counters and the duration histogram count what this node's manager did (on a shared
    store, changes that other nodes made are theirs to count). The gauges count every
    session in the store. Call `refresh` before a scrape (the HTTP endpoint does); a store
    that cannot be reached leaves the gauges out rather than repeat stale values.
    """

    def __init__(self, manager: SessionManager, refresh_interval: float = 0.0) -> None:
        self.manager = manager
        self.refresh_interval = refresh_interval
        self.created = 0
        self.deleted = 0
        self.expired = 0
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self._counts: dict[str, int] | None = None
        self._refreshed_at = -float("inf")
        manager.add_watcher(self.observe)

    def close(self) -> None:
        self.manager.remove_watcher(self.observe)

    def observe(self, event: SessionEvent) -> None:
        if event.remote:
            return
        kind = event.kind
        if kind is EventKind.CREATED:
            self.created += 1
            return
        if kind is EventKind.DELETED:
            self.deleted += 1
        elif kind is EventKind.EXPIRED:
            self.expired += 1
        else:
            return
        lived = max(0.0, (event.at - event.session.created_at).total_seconds())
        index = next((i for i, bound in enumerate(DURATION_BUCKETS) if lived <= bound),
                     len(DURATION_BUCKETS))
        self.duration_counts[index] += 1
        self.duration_sum += lived

    async def refresh(self) -> None:
        """Re-read the per-state counts, unless that was done less than the interval ago."""
        now = time.monotonic()
        if now - self._refreshed_at < self.refresh_interval and self._counts is not None:
            return
        try:
            self._counts = await self.manager.get_stats()
            self._refreshed_at = now
        except SessionError as exc:
            self._counts = None
            log.debug("session counts unavailable for metrics", error=str(exc))

    def collect(self) -> Iterator[Metric]:
        counts = self._counts
        if counts is not None:
            yield GaugeMetricFamily("session_total", "Sessions stored.", value=counts["total"])
            yield GaugeMetricFamily("session_active", "Sessions in state ACTIVE.",
                                    value=counts["active"])
            yield GaugeMetricFamily("session_idle", "Sessions in state IDLE.",
                                    value=counts["idle"])
        yield CounterMetricFamily("session_created", "Sessions created by this node.",
                                  value=self.created)
        yield CounterMetricFamily("session_deleted", "Sessions deleted by this node.",
                                  value=self.deleted)
        yield CounterMetricFamily("session_expired", "Sessions this node expired.",
                                  value=self.expired)
        yield HistogramMetricFamily(
            "session_duration_seconds", "How long sessions lived, deleted or expired.",
            buckets=_buckets(DURATION_BUCKETS, self.duration_counts), sum_value=self.duration_sum)


def build_registry(*collectors: Any) -> CollectorRegistry:
    """A registry of exactly these collectors (no process or platform defaults)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry
