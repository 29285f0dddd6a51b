"""A protocol violation ends the connection and tells the peer why (PROTOCOL.md: "An
authenticated one that breaks a frame rule ends the connection with PROTOCOL_VIOLATION, an RST
tells the peer why"), on the simulated network (sans-I/O).

The violating packets are sealed with the client's own keys, so they authenticate: only then
is a broken rule the peer's doing. The same bytes unsealed, or sealed for another packet number
already seen, are dropped and change nothing (anyone could have sent them).
"""

from __future__ import annotations

import struct

import pytest

from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode
from quantum.events import ConnectionClosed
from quantum.frames import CloseFrame
from quantum.packet import Flags, build_header, decode_header
from quantum.simulation import CLIENT_ADDR, SERVER_ADDR
from tests.test_migration import (
    config,
    frames_for_client,
    make_sim,
    server_conn,
)


def sealed_by_client(client: Connection, payload: bytes) -> bytes:
    """An authenticated datagram from the client carrying `payload` as its frames."""
    seal = client._seal
    assert seal is not None
    pn = client._flight.allocate_pn()
    ack32, _ = client._acks.ack_fields()
    header = build_header(Flags.ACK, client.connection_id, pn & 0xFFFFFFFF, ack32, len(payload))
    return header + seal.seal(pn, header, payload)


# frames as Quantum 1.0 lays them out (docs/PROTOCOL.md 4): 0x0B is PING, 0x0C is unassigned;
# a whole MESSAGE is channel, mode, id u32, length u16, data; a fragment (mode bit 7) adds
# offset u32 and total u32 before the length
VIOLATIONS = {
    "unknown frame type": b"\x0c",
    "truncated MESSAGE": b"\x01" + bytes(5),
    "unknown delivery mode": b"\x01\x00\x04" + struct.pack("!IH", 1, 1) + b"x",
    "fragment beyond its total": b"\x01\x00\x80" + struct.pack("!IIIH", 1, 2, 2, 1) + b"x",
    "non-zero padding": b"\x00\x01",
}


@pytest.mark.parametrize("payload", list(VIOLATIONS.values()), ids=list(VIOLATIONS))
def test_an_authenticated_violation_closes_and_sends_the_peer_an_rst_saying_why(
        payload: bytes) -> None:
    sim, client, wire = make_sim(config(fec=False))
    server = server_conn(sim)
    to_client_before = len(wire.received_by.get(CLIENT_ADDR, []))
    wire.inject(sealed_by_client(client, payload), CLIENT_ADDR, SERVER_ADDR, sim.now + 0.001)
    sim.run(until=sim.now + 1.0)

    assert server.state is ConnectionState.CLOSED
    assert server.close_code == CloseCode.PROTOCOL_VIOLATION
    # the server told the client, in one sealed RST carrying a CLOSE with the code
    answers = wire.received_by.get(CLIENT_ADDR, [])[to_client_before:]
    rst = [d for d in answers if decode_header(d)[1] & Flags.RST]
    assert len(rst) == 1
    closes = [f for f in frames_for_client(client, rst[0]) if isinstance(f, CloseFrame)]
    assert [c.code for c in closes] == [CloseCode.PROTOCOL_VIOLATION]
    assert closes[0].reason == server.close_reason and closes[0].reason
    # and the client closed on hearing it, with the server's code and reason, by the peer
    assert client.state is ConnectionState.CLOSED
    closed = [e for e in sim.client_events[CLIENT_ADDR] if isinstance(e, ConnectionClosed)]
    assert [(e.code, e.reason, e.by_peer) for e in closed] == [
        (CloseCode.PROTOCOL_VIOLATION, server.close_reason, True)]


def test_the_same_bytes_unauthenticated_or_replayed_change_nothing() -> None:
    sim, client, wire = make_sim(config(fec=False))
    server = server_conn(sim)
    violation = sealed_by_client(client, VIOLATIONS["unknown frame type"])
    # the ciphertext altered by one bit no longer authenticates: dropped, the connection lives
    forged = violation[:-1] + bytes([violation[-1] ^ 1])
    wire.inject(forged, CLIENT_ADDR, SERVER_ADDR, sim.now + 0.001)
    sim.run(until=sim.now + 1.0)
    assert server.state is ConnectionState.ESTABLISHED
    assert server.stats.drops.get("auth_failed") == 1
    # an authenticated packet seen once is dropped the second time (a replay), unread
    fine = sealed_by_client(client, b"")
    for _ in range(2):
        wire.inject(fine, CLIENT_ADDR, SERVER_ADDR, sim.now + 0.001)
        sim.run(until=sim.now + 1.0)
    assert server.stats.drops.get("duplicate") == 1
    assert server.state is ConnectionState.ESTABLISHED
    assert client.state is ConnectionState.ESTABLISHED
