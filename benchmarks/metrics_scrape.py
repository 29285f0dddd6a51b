"""What one /metrics scrape costs the server's event loop, by number of live connections.

    python -m benchmarks.metrics_scrape --json [--connections 1000,10000,100000] [--scrapes 10]

`quantum_server.transport.transport_totals` adds up every live connection's counters at each
scrape: O(connections), on the event loop, which does nothing else meanwhile. This measures
that sum alone (`transport_ms`) and the whole scrape as the endpoint serves it (`scrape_ms`:
the session gauges' refresh and the rendering of every collector), median of `--scrapes`, in
one process holding a real `QuantumServer` whose peers are real server-side `Connection`s,
built directly with random keys rather than through 100,000 handshakes (the scrape only reads
their counters), with counters and RTTs filled in as traffic would leave them.
`loop_share_at_1s` is the fraction of one core a scrape per second takes.
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
from quantum_server.transport import transport_totals
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
    registry = build_registry(session_metrics,
                              TransportCollector(lambda: transport_totals(server)))
    params = ServerParams(fec=(10, 3), keepalive_interval=10.0, idle_timeout=60.0)
    now = time.monotonic()
    results = []
    for count in sorted(counts):
        while len(server.peers) < count:
            conn = _connection(params, now)
            server.peers[conn.connection_id] = Peer(server, conn)
        transport, whole = [], []
        for _ in range(scrapes):
            started = time.perf_counter()
            transport_totals(server)
            transport.append(time.perf_counter() - started)
            started = time.perf_counter()
            await session_metrics.refresh()
            generate_latest(registry)
            whole.append(time.perf_counter() - started)
        scrape_s = statistics.median(whole)
        results.append({"connections": count,
                        "transport_ms": round(statistics.median(transport) * 1000, 3),
                        "scrape_ms": round(scrape_s * 1000, 3),
                        "loop_share_at_1s": round(scrape_s, 4)})
    return results


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
            print(f"{row['connections']:>8} connections: transport sum {row['transport_ms']} ms, "
                  f"whole scrape {row['scrape_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
