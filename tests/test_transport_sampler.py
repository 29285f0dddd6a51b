"""The transport metrics' walk over the connections: in chunks with the loop free between
them, the same sums as in one go, and counters that never go down when connections close
during a walk."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from quantum.auth import AnonymousAuthenticator
from quantum.connection import Connection
from quantum.crypto import PacketProtection
from quantum.handshake import Credentials, ServerParams, SessionKeys
from quantum.keys import ServerKeyFile
from quantum_server.transport import TransportSampler, TransportTotals, transport_totals
from server import Peer, QuantumServer, ServerConfig
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore

PARAMS = ServerParams(fec=(10, 3), keepalive_interval=10.0, idle_timeout=60.0)


def _server(peers: int) -> QuantumServer:
    server = QuantumServer(SessionManager(ManagerConfig(store=MemoryStore())),
                           ServerKeyFile.new(), AnonymousAuthenticator(),
                           ServerConfig(host="127.0.0.1", port=0))
    now = time.monotonic()
    for i in range(peers):
        keys = SessionKeys(PacketProtection(os.urandom(32)), PacketProtection(os.urandom(32)))
        conn = Connection.server(os.urandom(16), ("127.0.0.1", 1024 + i), keys,
                                 Credentials("u"), PARAMS, now)
        conn.stats.packets_sent = conn.stats.packets_received = 10 + i
        conn.stats.bytes_sent = 100 * (i + 1)
        conn.stats.srtt = 0.001 * (i + 1)
        server.peers[conn.connection_id] = Peer(server, conn)
    return server


def _figures(t: TransportTotals) -> tuple[object, ...]:
    return (t.connections, t.datagrams_sent, t.datagrams_received, t.bytes_sent,
            t.rtt_counts, round(t.rtt_sum, 9))


async def test_the_walk_yields_between_chunks_and_sums_as_one_go() -> None:
    server = _server(10)
    sampler = TransportSampler(server, chunk=3)
    turns = 0
    done = False

    async def other_work() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other_work())
    await asyncio.sleep(0)
    started_at = turns
    await sampler.refresh()
    done = True
    await task
    assert turns - started_at >= 3  # 4 chunks: the loop ran other work between them
    assert _figures(sampler.latest()) == _figures(transport_totals(server))
    assert sampler.latest().datagrams_sent == sum(10 + i for i in range(10))
    assert sampler.cpu_seconds >= sampler.last_walk_seconds > 0.0


async def test_a_connection_closing_mid_walk_is_counted_once_and_counters_never_drop() -> None:
    server = _server(9)
    sampler = TransportSampler(server, chunk=2)
    before = transport_totals(server)
    peers = list(server.peers.values())

    async def close_two_mid_walk() -> None:
        await asyncio.sleep(0)  # the walk has begun: its first chunk is summed
        for peer in (peers[0], peers[-1]):  # one walked already, one not yet
            peer.conn.stats.packets_sent += 5  # its last packets, then it closes
            del server.peers[peer.conn.connection_id]
            server.counters.closed.add(peer.conn.stats)
            server.counters.connections_closed += 1

    closer = asyncio.ensure_future(close_two_mid_walk())
    await sampler.refresh()
    await closer
    during = sampler.latest()
    # the first peer was summed before its last 5 packets, the last one after: each once
    assert during.datagrams_sent in (before.datagrams_sent + 5, before.datagrams_sent + 10)
    await sampler.refresh()
    after = sampler.latest()
    assert after.datagrams_sent == before.datagrams_sent + 10 >= during.datagrams_sent
    assert after.connections == 7


async def test_scrapes_during_a_walk_wait_for_it_and_see_its_result() -> None:
    server = _server(6)
    sampler = TransportSampler(server, chunk=1)
    first = asyncio.ensure_future(sampler.refresh())
    await asyncio.sleep(0)  # the first walk is under way
    server.counters.connections_opened = 41  # read at a walk's start: the first saw 0
    await asyncio.gather(sampler.refresh(), sampler.refresh())
    assert first.done()  # the later scrapes waited for the walk under way ...
    assert sampler.latest().connections_opened == 0  # ... and took its result
    await sampler.refresh()  # a scrape after it walks anew
    assert sampler.latest().connections_opened == 41
    assert _figures(sampler.latest()) == _figures(transport_totals(server))


async def test_a_bad_chunk_is_refused() -> None:
    with pytest.raises(ValueError, match="chunk must be a positive number"):
        TransportSampler(_server(0), chunk=0)
