"""How fast a session comes back: reconnect latency after a dark path, and the server's
restart time with its sessions in a snapshot.

    python -m benchmarks.reconnect --json [--resumes 100] [--dark 0.4] [--restart-sessions 50000]

**Reconnect** (`"reconnect"` in the JSON). A real server (in this process, an echo
application) and one `quantum.connect` client with `reconnect=True` talk through a relay on
loopback that can drop everything (the path goes dark). Each of `--resumes` rounds: the
client sends a message and gets its echo (the path works), the path goes dark for `--dark`
seconds (longer than the client's idle timeout, 0.25 s here, so the client gives the
connection up and starts reconnecting into the dark), the client queues one reliable message
during the outage, and the path is restored. Measured from the instant it is restored: when
the server's application receives the queued message (`to_server_ms`) and when its echo
reaches the client (`round_trip_ms`), p50/p99 over the rounds. Every round is a real resume
that continues the streams (the JSON counts `carried` resumes and `data_lost` reports: 0).

The time includes waiting for the client's next handshake transmission into the restored
path: with the benchmark's handshake schedule (a SYN every `handshake_resend_ms`) that is up
to one interval, which is the part a faster retry schedule buys. The baseline, measured in the
same run on the same relay: a fresh `quantum.connect` from scratch (no outage) to its first
echo (`fresh_connect_ms`); `ratio_p50` is the resume's round trip over it (about 1 plus the
mean wait for the next SYN, over the fresh connection's handshake time).

**Restart** (`"restart"`): the server's restart time with `--restart-sessions` (50,000)
sessions in its snapshot, a tenth of them with retained data (write on stop, load on start),
measured by `benchmarks.restart` (its own module and figures: docs/SNAPSHOT.md); 0 leaves it
out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.protocol_bench import _percentile
from quantum.auth import AnonymousAuthenticator
from quantum.build import is_compiled
from quantum.client import QuantumClient, connect
from quantum.config import QuantumConfiguration
from quantum.frames import Delivery
from quantum.keys import ServerKeyFile
from quantum.reconnect import ConnectionEvent, DataLost, Reconnected, ReconnectPolicy
from server import Application, Peer, QuantumServer, ServerConfig
from session.logs import configure_logging
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore

HOST = "127.0.0.1"
CLIENT_IDLE = 0.25
HANDSHAKE_TIMEOUT = 2.0
HANDSHAKE_TRIES = 40  # a SYN every 50 ms while unanswered
POLICY = ReconnectPolicy(initial_delay=0.01, max_delay=0.1, jitter=0.5, give_up_after=30.0)


class _Echo(Application):
    """Echoes every message; notes when each arrived (for the server-side latency)."""

    def __init__(self) -> None:
        self.arrived: dict[bytes, float] = {}

    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        self.arrived[message] = time.perf_counter()
        peer.send(message, channel, mode)


class _DarkRelay(asyncio.DatagramProtocol):
    """Loopback relay between one client (whichever address wrote last: a reconnect comes
    from a new socket) and the server; `dark` drops everything both ways."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.dark = False
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.dark or self.transport is None:
            return
        if addr == self.server:
            if self.client is not None:
                self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.transport.sendto(data, self.server)

    def error_received(self, exc: Exception) -> None:
        pass  # the client's old socket is gone: a relay shrugs


def _config() -> QuantumConfiguration:
    return QuantumConfiguration(keepalive_interval=0.1, idle_timeout=CLIENT_IDLE,
                                handshake_timeout=HANDSHAKE_TIMEOUT,
                                handshake_tries=HANDSHAKE_TRIES)


async def _echo_of(client: QuantumClient, message: bytes) -> None:
    while (await asyncio.wait_for(client.recv(), 10)) != message:
        pass


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(_percentile(values, 0.5) * 1000, 2),
            "p99": round(_percentile(values, 0.99) * 1000, 2),
            "mean": round(statistics.fmean(values) * 1000, 2) if values else float("nan")}


async def measure_reconnect(resumes: int, dark: float) -> dict[str, Any]:
    configure_logging("console", "warning")
    echo = _Echo()
    manager = SessionManager(ManagerConfig(store=MemoryStore()))
    server = QuantumServer(manager, ServerKeyFile.new(), AnonymousAuthenticator(),
                           ServerConfig(host=HOST, port=0, keepalive_interval=0.1,
                                        idle_timeout=5.0), echo)
    await server.start()
    loop = asyncio.get_running_loop()
    relay = _DarkRelay((HOST, server.port))
    transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(HOST, 0))
    port = transport.get_extra_info("sockname")[1]
    events: list[ConnectionEvent] = []
    try:
        fresh: list[float] = []
        for i in range(min(resumes, 30)):
            started = time.perf_counter()
            probe = await connect(HOST, port, user_id=f"fresh-{i}", configuration=_config(),
                                  reconnect=False)
            await probe.send(b"first")
            await _echo_of(probe, b"first")
            fresh.append(time.perf_counter() - started)
            await probe.close()
        client = await connect(HOST, port, user_id="alice", configuration=_config(),
                               reconnect_policy=POLICY, on_event=events.append)
        to_server: list[float] = []
        round_trip: list[float] = []
        for i in range(resumes):
            await client.send(b"before-%d" % i)
            await _echo_of(client, b"before-%d" % i)
            relay.dark = True
            while not client.reconnecting:
                await asyncio.sleep(0.01)
            queued = b"queued-%d" % i
            await client.send(queued)  # waits in the outage queue
            await asyncio.sleep(max(0.0, dark - CLIENT_IDLE))
            relay.dark = False
            restored = time.perf_counter()
            await _echo_of(client, queued)
            round_trip.append(time.perf_counter() - restored)
            to_server.append(echo.arrived[queued] - restored)
        await client.close()
    finally:
        transport.close()
        await server.stop()
    fresh_p50 = _percentile(fresh, 0.5)
    return {
        "resumes": resumes,
        "dark_s": dark,
        "client_idle_timeout_s": CLIENT_IDLE,
        "handshake_resend_ms": round(HANDSHAKE_TIMEOUT / HANDSHAKE_TRIES * 1000, 1),
        "to_server_ms": _summary(to_server),
        "round_trip_ms": _summary(round_trip),
        "fresh_connect_ms": _summary(fresh),
        "ratio_p50": round(_percentile(round_trip, 0.5) / fresh_p50, 2),
        "carried": sum(isinstance(e, Reconnected) and e.carried for e in events),
        "data_lost": sum(isinstance(e, DataLost) for e in events),
    }


def measure_restart(sessions: int) -> dict[str, Any]:
    """The server's restart with `sessions` sessions in the snapshot (write on stop, load on
    start): `benchmarks.restart`, the snapshot's own benchmark, under the key "restart", in a
    process of its own (it reads the snapshot's timings from the server's INFO log, which
    this process keeps quiet)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.restart", "--json",
                           "--sessions", str(sessions)], capture_output=True, text=True,
                          timeout=1800, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.restart failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reconnect",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--resumes", type=int, default=100, help="resumes to time (default 100)")
    parser.add_argument("--dark", type=float, default=0.4,
                        help=f"seconds each outage lasts (default 0.4; above {CLIENT_IDLE})")
    parser.add_argument("--restart-sessions", type=int, default=50_000,
                        help="sessions in the snapshot of the restart measurement "
                             "(default 50000; 0 leaves it out)")
    args = parser.parse_args(argv)
    if args.resumes < 1 or not args.dark > CLIENT_IDLE:
        parser.error(f"--resumes must be at least 1 and --dark above {CLIENT_IDLE} s")
    if args.restart_sessions < 0:
        parser.error("--restart-sessions must be 0 (left out) or a number of sessions")
    out: dict[str, Any] = {"compiled": is_compiled(),
                           "reconnect": asyncio.run(measure_reconnect(args.resumes, args.dark))}
    if args.restart_sessions:
        out["restart"] = measure_restart(args.restart_sessions)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        r = out["reconnect"]
        print(f"{r['resumes']} resumes: path restored -> first message at the server "
              f"p50 {r['to_server_ms']['p50']} ms, p99 {r['to_server_ms']['p99']} ms; echo back "
              f"p50 {r['round_trip_ms']['p50']} ms, p99 {r['round_trip_ms']['p99']} ms; fresh "
              f"connect p50 {r['fresh_connect_ms']['p50']} ms (ratio {r['ratio_p50']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
