"""The metrics endpoint over real HTTP: values that match what happened on the wire, the
original's session metric names, the endpoints' answers to odd requests."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantum_server.metrics import TransportCollector, build_registry
from quantum_server.transport import TransportTotals
from session.api import session_pb2 as pb
from session.memory import MemoryStore
from session.store import Store
from tests.api_harness import Stack, api_store, http_get, running_stack, scrape  # noqa: F401
from tests.test_server import HOST, client_config, dial

N = 5
HEARTBEATS = 3
SYN_BYTES = 1200  # docs/PROTOCOL.md: the ClientHello datagram is padded to 1200 bytes

ORIGINAL_SESSION_METRICS = {
    "session_total": "gauge", "session_active": "gauge", "session_idle": "gauge",
    "session_created": "counter", "session_deleted": "counter", "session_expired": "counter",
    "session_duration_seconds": "histogram",
}


async def settled(stack: Stack) -> dict[str, float]:
    """A scrape taken once the datagram counters stopped moving (delayed ACKs are out)."""
    previous = await scrape(stack)
    for _ in range(100):
        await asyncio.sleep(0.1)
        current = await scrape(stack)
        keys = ("quantum_datagrams_received_total", "quantum_datagrams_sent_total")
        if all(current[k] == previous[k] for k in keys):
            return current
        previous = current
    pytest.fail("the datagram counters never settled")


async def test_metrics_match_what_n_clients_did_on_the_wire(api_store: Store,
                                                            tmp_path: Path) -> None:
    async with running_stack(api_store, tmp_path, keepalive_interval=5.0) as stack:
        clients = [await dial(stack.udp_port, f"user-{i}", server_key=stack.key.public_key_text,
                              configuration=client_config(keepalive=None, idle_timeout=20.0))
                   for i in range(N)]
        for client in clients:
            for _ in range(HEARTBEATS):
                assert await client.heartbeat() is not None
            await client.send(b"hello")
        garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(4):
            garbage.sendto(b"not a quantum datagram at all", (HOST, stack.udp_port))
        garbage.close()
        unknown = f"{'0' * 8}-0000-0000-0000-{'0' * 12}"
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await stack.stub.GetSession(pb.GetSessionRequest(session_id=unknown),
                                            metadata=stack.auth)
        await stack.stub.GetStats(pb.GetStatsRequest(), metadata=stack.auth)
        # a connection's RTT sample is read at its upkeep look, up to two stats_intervals
        # (0.1 s here) after its last packet on an idle machine: waited for, not slept for,
        # however late a loaded machine runs the upkeep (the count is asserted below)
        deadline = time.monotonic() + 20
        while ((await scrape(stack)).get("quantum_rtt_seconds_gcount", 0) < N
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)

        m = await settled(stack)
        sent = sum(c.stats.packets_sent for c in clients)
        received = sum(c.stats.packets_received for c in clients)
        bytes_sent = sum(c.stats.bytes_sent for c in clients)
        bytes_received = sum(c.stats.bytes_received for c in clients)
        started = m["quantum_handshakes_total{result=started}"]
        assert m["quantum_connections"] == N
        assert m["quantum_connections_opened_total"] == N
        assert m["quantum_handshakes_total{result=completed}"] == N
        assert started >= N  # more if a client resent its hello
        # what the clients received is what the established connections sent
        assert m["quantum_datagrams_sent_total"] == received
        assert m["quantum_bytes_sent_total"] == bytes_received
        # what they sent, less the handshake datagrams the listener took (each hello it
        # answered, and the handshake-finishing ACK that made each connection)
        assert m["quantum_datagrams_received_total"] == sent - started - N
        handshake_finish_bytes = bytes_sent - started * SYN_BYTES - m[
            "quantum_bytes_received_total"]
        assert 0 < handshake_finish_bytes <= 400 * N
        assert m["quantum_keepalives_answered_total"] == N * HEARTBEATS
        assert m["quantum_drops_total{reason=handshake_not_quantum}"] == 4
        assert m["quantum_retransmissions_total"] == 0
        assert m["quantum_rtt_seconds_gcount"] == N  # each has an RTT sample by now
        assert 0 < m["quantum_rtt_seconds_gsum"] < N * 0.5
        assert m["quantum_rtt_seconds_bucket{le=+Inf}"] == N
        assert m["session_total"] == m["session_active"] == N
        assert m["session_created_total"] == N and m["session_deleted_total"] == 0
        assert m["quantum_grpc_requests_total{code=NOT_FOUND,method=GetSession}"] == 2
        assert m["quantum_grpc_requests_total{code=OK,method=GetStats}"] == 1

        for client in clients:
            await client.close()
        after = await settled(stack)
        assert after["quantum_connections"] == 0
        assert after["quantum_connections_closed_total"] == N
        # closed connections keep counting: totals never go down
        for name in ("quantum_datagrams_received_total", "quantum_datagrams_sent_total",
                     "quantum_bytes_received_total", "quantum_bytes_sent_total"):
            assert after[name] >= m[name], name
        assert after["quantum_datagrams_sent_total"] == sum(
            c.stats.packets_received for c in clients)
        assert after["session_total"] == 0
        assert after["session_deleted_total"] == N  # "client closed"
        assert after["session_duration_seconds_count"] == N
        assert after["session_duration_seconds_bucket{le=10}"] == N
        assert 0 < after["session_duration_seconds_sum"] < N * 10


async def test_the_original_session_metric_names_and_types(tmp_path: Path) -> None:
    async with running_stack(MemoryStore(), tmp_path) as stack:
        status, content_type, text = await http_get(stack.metrics_url + "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        families = {f.name: f.type for f in text_string_to_metric_families(text)}
        for name, kind in ORIGINAL_SESSION_METRICS.items():
            assert families.get(name) == kind, name
        for line in ("session_created_total 0.0", "session_expired_total 0.0",
                     "session_duration_seconds_count 0.0", "session_total 0.0"):
            assert line in text.splitlines()
        assert "quantum_grpc_requests" in families and "process_cpu_seconds" in families


async def test_session_expiry_is_counted(tmp_path: Path) -> None:
    async with running_stack(MemoryStore(), tmp_path, cleanup_interval=0.1) as stack:
        await stack.stub.CreateSession(pb.CreateSessionRequest(user_id="a", timeout_seconds=1),
                                       metadata=stack.auth)
        for _ in range(60):
            m = await scrape(stack)
            if m["session_expired_total"] == 1:
                break
            await asyncio.sleep(0.05)
        assert (m["session_expired_total"], m["session_deleted_total"]) == (1, 0)
        assert m["session_duration_seconds_bucket{le=10}"] == 1


async def test_health_endpoints_and_bad_requests(tmp_path: Path) -> None:
    async with running_stack(MemoryStore(), tmp_path) as stack:
        assert await http_get(stack.metrics_url + "/healthz") == (
            200, "text/plain; charset=utf-8", "ok\n")
        assert (await http_get(stack.metrics_url + "/readyz"))[::2] == (200, "ready\n")
        assert (await http_get(stack.metrics_url + "/metrics?x=1"))[0] == 200
        assert (await http_get(stack.metrics_url + "/nope"))[0] == 404
        assert stack.services.metrics is not None
        port = stack.services.metrics.port

        async def raw(request: bytes) -> bytes:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer

        assert (await raw(b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await raw(b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await raw(b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n")).startswith(
            b"HTTP/1.1 400")
        head = await raw(b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        openmetrics = await raw(b"GET /metrics HTTP/1.1\r\n"
                                b"Accept: application/openmetrics-text; version=1.0.0\r\n\r\n")
        assert b"application/openmetrics-text" in openmetrics.split(b"\r\n\r\n")[0]
        assert openmetrics.rstrip().endswith(b"# EOF")
        # a client that sends nothing holds its slot only until the read timeout; others
        # are served meanwhile
        idle_reader, idle_writer = await asyncio.open_connection(HOST, port)
        assert (await http_get(stack.metrics_url + "/healthz"))[0] == 200
        idle_writer.close()
        del idle_reader


def test_the_transport_data_source_is_one_swappable_function() -> None:
    totals = TransportTotals(connections=7, datagrams_sent=11, drops={"x": 2},
                             handshakes={"completed": 3})
    totals.rtt_counts[2] = 4
    totals.rtt_sum = 0.02
    registry = build_registry(TransportCollector(lambda: totals))
    samples = {s.name + str(sorted(s.labels.items())): s.value
               for f in registry.collect() for s in f.samples}
    assert samples["quantum_connections[]"] == 7
    assert samples["quantum_datagrams_sent_total[]"] == 11
    assert samples["quantum_drops_total[('reason', 'x')]"] == 2
    assert samples["quantum_handshakes_total[('result', 'completed')]"] == 3
    assert samples["quantum_rtt_seconds_bucket[('le', '0.001')]"] == 0
    assert samples["quantum_rtt_seconds_bucket[('le', '0.005')]"] == 4  # cumulative
    assert samples["quantum_rtt_seconds_bucket[('le', '+Inf')]"] == 4
    assert samples["quantum_rtt_seconds_gcount[]"] == 4
