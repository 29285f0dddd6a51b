"""FEC is on only when the client asks for it and the server has it (PROTOCOL.md 5.2.6).

`quantum.connect(fec=False)` used to do nothing: `Connection.client` replaced the credentials'
request with the configuration's FEC. Here the server side is checked, in the simulation and
over real UDP: what it negotiated, and that no FEC-grouped or parity packet crosses the wire.
The networks lose packets: at 0 % loss even negotiated FEC sends nothing (PROTOCOL.md 9), so
only a lossy path tells "FEC off" from "FEC on but idle".
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from quantum.config import QuantumConfiguration
from quantum.connection import ConnectionState
from quantum.frames import Delivery
from quantum.handshake import Credentials
from quantum.packet import FEC, PSH, decode_header
from quantum.simulation import (
    CLIENT_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)
from tests.relay import LossyRelay, RelayProfile
from tests.test_server import HOST, Echo, dial, running_server

Address = tuple[str, int]


def fec_packets(flags: Counter[int]) -> int:
    """Datagrams that were part of FEC: data in a group (PSH) or parity (FEC)."""
    return sum(n for f, n in flags.items() if f & (FEC | PSH))


class RecordingNetwork(SimulatedNetwork):
    """Counts the header flags of every datagram sent."""

    def __init__(self, loss: float) -> None:
        super().__init__(LinkProfile(loss=loss), seed=4)
        self.flags: Counter[int] = Counter()

    def send(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        self.flags[decode_header(data)[1]] += 1
        super().send(data, src, dst, now)


def simulate(credentials: Credentials,
             client_fec: tuple[int, int] | None) -> tuple[object, object, RecordingNetwork]:
    """A handshake and 100 messages each way, 20 ms apart, over a path losing 10 % of
    datagrams; (server's negotiated FEC, client's, network)."""
    config = QuantumConfiguration(keepalive_interval=None, fec=(10, 3), handshake_tries=20)
    server = SimulatedServer.create(config)
    network = RecordingNetwork(loss=0.1)
    sim = Simulation(network, server)
    client = sim.add_client(credentials, configuration=QuantumConfiguration(
        keepalive_interval=None, fec=client_fec, handshake_tries=20))
    sim.run(until=10.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    (conn,) = server.connections.values()
    for i in range(100):
        client.send(b"c%d" % i, 0, Delivery.RELIABLE_ORDERED)
        conn.send(b"s%d" % i, 0, Delivery.RELIABLE_ORDERED)
        sim.flush()
        sim.run(until=sim.now + 0.02)
    sim.run(until=sim.now + 10.0)
    assert conn.stats.messages_received == 100
    assert client.stats.messages_received == 100
    assert sim.client_events[CLIENT_ADDR]
    return conn.params.fec, client.params.fec, network


@pytest.mark.parametrize(("credentials", "client_fec"), [
    (Credentials("alice", fec=None), (10, 3)),  # what connect(fec=False) builds
    (Credentials("alice"), None),  # the configuration says no
], ids=["credentials-off", "configuration-off"])
def test_a_client_that_asks_for_no_fec_gets_none(credentials: Credentials,
                                                 client_fec: tuple[int, int] | None) -> None:
    server_fec, negotiated, network = simulate(credentials, client_fec)
    assert (server_fec, negotiated) == (None, None)
    assert fec_packets(network.flags) == 0


def test_a_client_that_asks_for_fec_gets_the_servers() -> None:
    # the control: the same exchange with FEC wanted on both sides does use it
    server_fec, negotiated, network = simulate(Credentials("alice"), (4, 2))
    assert server_fec == negotiated == (10, 3)  # the server's (k, m) apply
    assert fec_packets(network.flags) > 0
    assert network.flags[FEC | 0x02] > 0  # parity packets (FEC | ACK)


class FlagRelay(LossyRelay):
    """A relay that loses nothing and counts the header flags of what it forwards."""

    flags: Counter[int]

    def _send(self, data: bytes, to_server: bool) -> None:
        self.flags[decode_header(data)[1]] += 1
        super()._send(data, to_server)


@pytest.mark.parametrize("fec", [False, True])
async def test_connect_fec_false_negotiates_no_fec_on_a_real_server(fec: bool) -> None:
    async with running_server(app=Echo()) as h:
        relay = await FlagRelay.start((HOST, h.port), RelayProfile(loss=0.1))
        relay.flags = Counter()
        try:
            client = await dial(relay.port, fec=fec)
            try:
                (peer,) = h.server.peers.values()
                assert peer.conn.params.fec == ((10, 3) if fec else None)
                for i in range(100):
                    await client.send(b"m%d" % i)
                    await asyncio.sleep(0.002)
                for _ in range(100):
                    await asyncio.wait_for(client.recv(), timeout=10)
            finally:
                await client.close()
        finally:
            relay.close()
    assert (fec_packets(relay.flags) > 0) is fec
