"""Path MTU discovery in the connection, on the simulated network: a path smaller than the
largest datagram is found, a path that shrinks mid-transfer is a black hole survived without
losing or repeating a message, and a lost probe is never congestion (docs/PROTOCOL.md 2.3, 10.6)."""

from __future__ import annotations

import os

import pytest

from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.events import MessageReceived
from quantum.frames import PING, PingFrame, decode_frames
from quantum.handshake import Credentials
from quantum.packet import BASE_DATAGRAM, HEADER_SIZE, decode_header, split_body
from quantum.pmtu import (
    MAX_DATAGRAM_V4,
    MAX_DATAGRAM_V6,
    max_data_payload,
    max_datagram_for_address,
)
from quantum.simulation import (
    CLIENT_ADDR,
    SERVER_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)

ALICE = Credentials(user_id="alice")


def connect(mtu: int = MAX_DATAGRAM_V4, fec: tuple[int, int] | None = None,
            loss: float = 0.0) -> tuple[Simulation, Connection, Connection]:
    cfg = QuantumConfiguration(keepalive_interval=None, idle_timeout=600.0, fec=fec,
                               max_send_buffer=8 << 20)
    sim = Simulation(SimulatedNetwork(LinkProfile(delay=0.02, mtu=mtu, loss=loss), 5),
                     SimulatedServer.create(cfg))
    client = sim.add_client(ALICE, configuration=cfg)
    sim.run(until=5.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    assert client.state is ConnectionState.ESTABLISHED
    server = next(iter(sim.server.connections.values()))
    return sim, client, server


def received(sim: Simulation) -> list[bytes]:
    return [e.data for e in sim.client_events[CLIENT_ADDR] if isinstance(e, MessageReceived)]


def test_every_connection_starts_at_the_base_size_and_finds_the_largest_datagram() -> None:
    sim, client, server = connect()
    assert client.refresh_stats().plpmtu == BASE_DATAGRAM or client._pmtu.probe_pn >= 0
    sim.run(until=sim.now + 5.0)
    for conn in (client, server):
        stats = conn.refresh_stats()
        assert stats.plpmtu == MAX_DATAGRAM_V4
        assert (stats.pmtu_probes_sent, stats.pmtu_probes_lost) == (1, 0)


@pytest.mark.parametrize("fec", [None, (10, 3), (16, 3)])
def test_a_1280_byte_path_is_discovered_and_carries_everything(
        fec: tuple[int, int] | None) -> None:
    sim, client, server = connect(mtu=1280, fec=fec)
    sent = [os.urandom(n) for n in (5000, 1, 70_000, 1100, 33)]
    for m in sent:
        server.send(m)
    sim.run(until=sim.now + 60.0, condition=lambda: len(received(sim)) == len(sent))
    assert received(sim) == sent
    sim.run(until=sim.now + 30.0)
    for conn in (client, server):
        stats = conn.refresh_stats()
        assert 1273 <= stats.plpmtu <= 1280
        assert stats.pmtu_probes_lost >= 3
        # no loss but the probes': nothing counted lost, nothing retransmitted
        assert stats.packets_lost == 0 and stats.retransmissions == 0
    # every probe judged lost was too large for the path, and only probes were
    lost = client.stats.pmtu_probes_lost + server.stats.pmtu_probes_lost
    assert sim.network.stats.too_big == lost


def test_lost_probes_are_not_congestion() -> None:
    """Only probes are lost (a 1200-byte path): congestion control never hears of it."""
    sim, _client, server = connect(mtu=BASE_DATAGRAM)
    cwnd = server._cc.cwnd
    server.send(os.urandom(200_000))
    sim.run(until=sim.now + 60.0, condition=lambda: len(received(sim)) == 1)
    sim.run(until=sim.now + 30.0)
    stats = server.refresh_stats()
    assert stats.plpmtu == BASE_DATAGRAM
    assert stats.pmtu_probes_lost >= 3 and stats.packets_lost == 0
    assert not server._cc._in_recovery
    assert server._cc.cwnd >= cwnd
    assert server._flight.timeout_retransmits == 0 and server._flight.rtt.backoff == 0


def test_a_path_that_shrinks_mid_transfer_is_a_black_hole_survived_in_order() -> None:
    sim, _client, server = connect()
    sim.run(until=sim.now + 3.0)
    assert server.refresh_stats().plpmtu == MAX_DATAGRAM_V4
    sent = [os.urandom(3000 + i) for i in range(400)]
    for m in sent:
        server.send(m)
    sim.run(until=sim.now + 0.3)  # the transfer is under way at 1472 bytes
    assert 0 < len(received(sim)) < len(sent)
    sim.network.set_mtu(1250)
    sim.run(until=sim.now + 120.0, condition=lambda: len(received(sim)) == len(sent))
    assert received(sim) == sent  # every message exactly once, in order
    stats = server.refresh_stats()
    assert stats.pmtu_black_holes == 1
    assert stats.plpmtu <= 1250
    sim.run(until=sim.now + 60.0)  # the search after the black hole finds the new size
    assert 1243 <= server.refresh_stats().plpmtu <= 1250


def test_a_mebibyte_message_crosses_a_shrink() -> None:
    sim, client, server = connect(fec=(10, 3))
    sim.run(until=sim.now + 3.0)
    big = os.urandom(1 << 20)
    server.send(big)
    # under way: part of it is reassembled at the client, in ranges cut for 1472 bytes
    sim.run(until=sim.now + 5.0, condition=lambda: client._inbox is not None
            and client._inbox.buffered_bytes > 200_000)
    assert not received(sim)
    sim.network.set_mtu(1210)
    sim.run(until=sim.now + 120.0, condition=lambda: len(received(sim)) == 1)
    assert received(sim) == [big]
    assert server.refresh_stats().pmtu_black_holes == 1
    assert client._inbox is not None and client._inbox.buffered_bytes == 0


def test_the_data_payload_cap_leaves_room_for_sack_and_parity() -> None:
    assert max_data_payload(1200, 0) == 1088
    assert max_data_payload(1472, 0) == 1360
    assert max_data_payload(1472, 10) == 1360  # min(1360, 1372)
    assert max_data_payload(1472, 16) == 1348  # min(1360, 1348)
    assert max_data_payload(1200, 16) == 1076
    # the table of docs/PROTOCOL.md 2.3, the data payload cap D
    table = {1200: (1088, 1088, 1076), 1280: (1168, 1168, 1156), 1452: (1340, 1340, 1328),
             1472: (1360, 1360, 1348)}
    for p, row in table.items():
        assert tuple(max_data_payload(p, k) for k in (0, 10, 16)) == row
    for p in (1200, 1280, 1452, 1472):
        for k in range(0, 17):
            d = max_data_payload(p, k)
            assert HEADER_SIZE + 8 * 8 + d + 16 <= p  # a data packet with 8 SACK blocks
            if k:
                assert HEADER_SIZE + 12 + 4 * k + d + 16 <= p  # its group's parity packet


def test_the_ceiling_follows_the_peer_address_family() -> None:
    cfg = QuantumConfiguration(keepalive_interval=None)
    for addr, ceiling in [(("10.0.0.1", 9), MAX_DATAGRAM_V4), (("::1", 9), MAX_DATAGRAM_V6),
                          (("fe80::1%eth0", 9), MAX_DATAGRAM_V6)]:
        conn = Connection.client(addr, ALICE, 0.0, configuration=cfg)
        assert conn._pmtu.max_size == ceiling
        assert conn._pmtu.size == BASE_DATAGRAM
    # the socket form of an IPv6 address (the connection takes it once IPv6 support lands)
    assert max_datagram_for_address(("2001:db8::1", 9, 0, 0)) == MAX_DATAGRAM_V6
    assert max_datagram_for_address(("192.0.2.1", 9)) == MAX_DATAGRAM_V4
    # an IPv4 client on a dual-stack socket is IPv4 on the wire (2.4): 1472, not 1452
    assert max_datagram_for_address(("::ffff:192.0.2.1", 9, 0, 0)) == MAX_DATAGRAM_V4
    assert max_datagram_for_address(("::ffff:c000:201", 9, 0, 0)) == MAX_DATAGRAM_V4
    assert max_datagram_for_address(("fe80::1%eth0", 9, 0, 2)) == MAX_DATAGRAM_V6


def test_probe_vector_the_plaintext_of_a_1280_byte_probe() -> None:
    """docs/PROTOCOL.md 11, the PMTU probe vector: a probe of 1280 bytes with no SACK blocks
    has the plaintext payload PING (0b) then 1231 zero bytes (PADDING): 1232 = 1280 - 32 - 16."""
    sim, client, _server = connect(mtu=1280)
    probes: list[bytes] = []
    original = sim.network.send

    def tap(data: bytes, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        if src == SERVER_ADDR and len(data) > BASE_DATAGRAM:
            probes.append(data)
        original(data, src, dst, now)

    sim.network.send = tap  # type: ignore[method-assign]
    sim.run(until=sim.now + 30.0)
    sizes = sorted({len(p) for p in probes})
    assert 1280 in sizes and 1472 in sizes
    probe = next(p for p in probes if len(p) == 1280)
    _, _, _, seq, _, payload_len = decode_header(probe)
    assert client._open is not None
    body = client._open.open(client._acks.expand(seq), probe[:HEADER_SIZE], probe[HEADER_SIZE:])
    sack, payload = split_body(body, payload_len)
    assert not sack  # nothing for the server to acknowledge: no blocks
    assert payload == bytes.fromhex("0b") + bytes(1231)
    assert payload[0] == PING and decode_frames(payload) == [PingFrame()]


def test_a_migration_starts_the_new_path_at_the_base_size() -> None:
    sim, client, server = connect()
    sim.run(until=sim.now + 3.0)
    assert server.refresh_stats().plpmtu == MAX_DATAGRAM_V4
    new = ("10.0.0.99", 41000)
    sim.clients[new] = sim.clients.pop(CLIENT_ADDR)
    sim.client_events[new] = sim.client_events.pop(CLIENT_ADDR)
    sizes: list[int] = []
    original = sim.network.send

    def tap(data: bytes, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        if dst == new:
            sizes.append(len(data))
        original(data, src, dst, now)

    sim.network.send = tap  # type: ignore[method-assign]
    sim.network.set_mtu(1300)
    client.send_keepalive()
    sim.flush()
    sim.run(until=sim.now + 1.0, condition=lambda: server.peer_addr == new)
    assert server.peer_addr == new
    assert server.refresh_stats().plpmtu == BASE_DATAGRAM  # the new path is not known yet
    sim.run(until=sim.now + 30.0)
    assert 1293 <= server.refresh_stats().plpmtu <= 1300
    assert max(sizes) == MAX_DATAGRAM_V4  # its search probed from the top again
