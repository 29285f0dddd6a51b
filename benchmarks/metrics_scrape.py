"""What a /metrics scrape costs the server's event loop, by number of live connections.

    python -m benchmarks.metrics_scrape --json [--connections 1000,10000,100000] [--scrapes 10]

The transport metrics add up every live connection's counters at each scrape: O(connections).
The endpoint does it before rendering, with `quantum_server.transport.TransportSampler`, a
chunk of connections at a time with the loop free between two chunks. This measures that walk
(`transport_ms`: its whole CPU; `transport_longest_pause_ms`: the longest the loop waited
between two chunks, which is what packets feel), the same sum in one go for comparison
(`transport_one_go_ms`), and the rest of the scrape (`render_ms`: the session gauges'
refresh and the rendering of every collector, one stop of the loop), median of `--scrapes`, in
one process holding a real `QuantumServer` whose peers are real server-side `Connection`s,
built directly with random keys rather than through 100,000 handshakes (the scrape only reads
their counters), with counters and RTTs filled in as traffic would leave them.
`loop_share_at_1s` is the fraction of one core a scrape per second takes;
`longest_pause_ms` the longest single stop of the loop a scrape causes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from typing import Any

from prometheus_client import generate_latest

from quantum.auth import AnonymousAuthenticator
from quantum.build import is_compiled
from quantum.crypto import PacketProtection
from quantum.handshake import Credentials, ServerParams, SessionKeys
from quantum.keys import ServerKeyFile
from quantum_server.metrics import SessionMetrics, TransportCollector, build_registry
from quantum_server.transport import TransportSampler, transport_totals
from server import Peer, QuantumServer, ServerConfig
from session.logs import configure_logging
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore


def _connection(params: ServerParams, now: float) -> Any:
    from quantum.connection import Connection

    keys = SessionKeys(PacketProtection(os.urandom(32)),
                       PacketProtection(os.urandom(32)))
    conn = Connection.server(os.urandom(16), ("127.0.0.1", random.randrange(1024, 65536)),
                             keys, Credentials("bench"), params, now)
    stats = conn.stats
    stats.packets_sent = stats.packets_received = random.randrange(100, 10_000)
    stats.bytes_sent = stats.bytes_received = stats.packets_sent * 60
    stats.fast_retransmits = random.randrange(0, 5)
    stats.srtt = random.uniform(0.0005, 0.2)
    return conn


async def measure(counts: list[int], scrapes: int) -> list[dict[str, Any]]:
    configure_logging("console", "warning")
    manager = SessionManager(ManagerConfig(store=MemoryStore()))
    server = QuantumServer(manager, ServerKeyFile.new(), AnonymousAuthenticator(),
                           ServerConfig(host="127.0.0.1", port=0))
    session_metrics = SessionMetrics(manager)
    sampler = TransportSampler(server)
    registry = build_registry(session_metrics, TransportCollector(sampler.latest))
    params = ServerParams(fec=(10, 3), keepalive_interval=10.0, idle_timeout=60.0)
    now = time.monotonic()
    results = []
    for count in sorted(counts):
        while len(server.peers) < count:
            conn = _connection(params, now)
            server.peers[conn.connection_id] = Peer(server, conn)
        one_go, walks, pauses, renders = [], [], [], []
        for _ in range(scrapes):
            started = time.perf_counter()
            transport_totals(server)
            one_go.append(time.perf_counter() - started)
            walk_s, pause_s = await _timed_walk(sampler)
            walks.append(walk_s)
            pauses.append(pause_s)
            started = time.perf_counter()
            await session_metrics.refresh()
            generate_latest(registry)
            renders.append(time.perf_counter() - started)
        walk, render = statistics.median(walks), statistics.median(renders)
        pause = statistics.median(pauses)
        results.append({"connections": count,
                        "transport_ms": round(walk * 1000, 3),
                        "transport_longest_pause_ms": round(pause * 1000, 3),
                        "transport_one_go_ms": round(statistics.median(one_go) * 1000, 3),
                        "render_ms": round(render * 1000, 3),
                        "scrape_ms": round((walk + render) * 1000, 3),
                        "longest_pause_ms": round(max(pause, render) * 1000, 3),
                        "loop_share_at_1s": round(walk + render, 4)})
    return results


async def _timed_walk(sampler: TransportSampler) -> tuple[float, float]:
    """(seconds the sampler's walk took, the longest stretch it held the loop), the latter
    seen by a task that asks for the loop back at every turn."""
    done = False
    longest = 0.0

    async def probe() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            at = time.perf_counter()
            longest = max(longest, at - last)
            last = at

    watcher = asyncio.ensure_future(probe())
    await asyncio.sleep(0)  # the probe is running
    started = time.perf_counter()
    await sampler.refresh()
    elapsed = time.perf_counter() - started
    done = True
    await watcher
    return elapsed, longest


def _counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated counts, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("counts must be positive")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_scrape",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--connections", type=_counts, default=[1000, 10_000, 100_000],
                        help="live connection counts to measure (default 1000,10000,100000)")
    parser.add_argument("--scrapes", type=int, default=10, help="scrapes per count (median)")
    args = parser.parse_args(argv)
    results = asyncio.run(measure(args.connections, max(1, args.scrapes)))
    out = {"compiled": is_compiled(), "results": results,
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for row in results:
            print(f"{row['connections']:>8} connections: transport sum {row['transport_ms']} ms "
                  f"(longest pause {row['transport_longest_pause_ms']} ms), whole scrape "
                  f"{row['scrape_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
