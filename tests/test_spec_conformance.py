"""Places where the code must do what docs/PROTOCOL.md 1.0 says (reasons, unauthenticated
handshake replies, datagram sizes, nothing before acceptance)."""

from __future__ import annotations

import pytest

from quantum.channels import ChannelSender
from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode
from quantum.events import ConnectionClosed, Event, KeepaliveReceived, MessageReceived
from quantum.frames import (
    MAX_REASON_BYTES,
    Delivery,
    KeepaliveFrame,
    RejectFrame,
    cut_reason,
    encode_frames,
)
from quantum.handshake import RETRY_COOKIE_SIZE, Credentials
from quantum.packet import (
    ACK,
    MAX_DATAGRAM,
    RST,
    SYN,
    URG,
    VERSION,
    Packet,
    PacketError,
    decode_header,
    decode_packet,
    encode_packet,
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


def make_sim() -> Simulation:
    return Simulation(SimulatedNetwork(LinkProfile(), 1),
                      SimulatedServer.create(QuantumConfiguration(keepalive_interval=None)))


def server_conn(sim: Simulation) -> Connection:
    return next(iter(sim.server.connections.values()))


def state_of(conn: Connection) -> ConnectionState:
    """The state now (a call, so the type checker does not keep an earlier narrowing)."""
    return conn.state


def drain(conn: Connection) -> list[Event]:
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    return events


def closed_events(sim: Simulation) -> list[ConnectionClosed]:
    return [e for _, e in sim.server.events if isinstance(e, ConnectionClosed)]


@pytest.mark.parametrize("reason", ["é" * 300, "a" * 511 + "€", "x" * 600, "ok"])
def test_cut_reason_keeps_at_most_512_utf8_bytes_at_a_character_boundary(reason: str) -> None:
    cut = cut_reason(reason)
    raw = cut.encode("utf-8")
    assert len(raw) <= MAX_REASON_BYTES
    assert reason.startswith(cut)
    # nothing more fits: the next character would pass the bound
    if cut != reason:
        assert len((cut + reason[len(cut)]).encode("utf-8")) > MAX_REASON_BYTES


def test_close_with_a_long_non_ascii_reason_sends_the_cut_reason() -> None:
    sim = make_sim()
    client = sim.add_client(ALICE)
    sim.run(until=2.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    client.close("é" * 300)
    sim.flush()  # raised PacketError out of datagrams_to_send before the reason was cut
    sim.run(until=10.0)
    assert client.state is ConnectionState.CLOSED
    closed = closed_events(sim)
    assert closed and closed[0].by_peer and closed[0].reason == "é" * 256


def test_abort_and_reject_cut_a_long_non_ascii_reason_by_bytes() -> None:
    sim = make_sim()
    client = sim.add_client(ALICE)
    sim.run(until=2.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    now = sim.now
    client._abort(CloseCode.PROTOCOL_VIOLATION, "é" * 300, now)
    datagrams = client.datagrams_to_send(now)
    assert datagrams
    server = server_conn(sim)
    server.receive_datagram(datagrams[-1][0], CLIENT_ADDR, now)
    closed = [e for e in drain(server) if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].reason == "é" * 256

    sim2 = make_sim()

    def refuse(conn: Connection, _request: object) -> None:
        conn.reject(CloseCode.BAD_TICKET, "€" * 200, sim2.now)

    sim2.server.authorize = refuse
    sim2.add_client(ALICE)
    sim2.run(until=3.0)
    rejected = [e for e in sim2.client_events[CLIENT_ADDR] if isinstance(e, ConnectionClosed)]
    assert rejected and rejected[0].code == CloseCode.BAD_TICKET
    assert rejected[0].reason == "€" * 170


def _server_reply(sim: Simulation) -> tuple[bytes, Connection]:
    """Run until the server's reply to the SYN is on its way; take it off the network."""
    client = sim.add_client(ALICE)
    sim.run(until=0.03)
    arrival = sim.network.next_arrival()
    assert arrival is not None and arrival > sim.now
    _, reply, src, dst = sim.network.pop()
    assert (src, dst) == (SERVER_ADDR, CLIENT_ADDR)
    return reply, client


def _with_payload(datagram: bytes, payload: bytes, flags: int | None = None) -> bytes:
    packet = decode_packet(datagram)
    return encode_packet(Packet(packet.flags if flags is None else flags,
                                packet.connection_id, 0, 0, (), payload))


def test_forged_handshake_replies_are_dropped_and_the_genuine_hello_completes() -> None:
    sim = make_sim()
    hello, client = _server_reply(sim)
    payload = decode_packet(hello).payload
    now = sim.now
    forged = [
        _with_payload(hello, payload[:-1] + bytes([payload[-1] ^ 1])),  # confirmation fails
        _with_payload(hello, payload[:-5]),  # malformed
        _with_payload(hello, bytes(10), flags=SYN | URG),  # a Retry of the wrong size
    ]
    for datagram in forged:
        client.receive_datagram(datagram, SERVER_ADDR, now)
        assert client.state is ConnectionState.SYN_SENT
    assert client.stats.drops["bad_server_key"] == 1
    assert client.stats.drops["malformed_handshake"] == 2
    client.receive_datagram(hello, SERVER_ADDR, now)
    assert client.state is ConnectionState.AWAIT_ACCEPT
    sim.flush()
    sim.run(until=2.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    assert state_of(client) is ConnectionState.ESTABLISHED
    assert not any(isinstance(e, ConnectionClosed) for e in sim.client_events[CLIENT_ADDR])


def test_a_wrong_server_key_is_reported_only_when_the_handshake_times_out() -> None:
    sim = make_sim()
    client = sim.add_client(ALICE, server_key=bytes(32))
    sim.run(until=4.9)
    assert client.state is ConnectionState.SYN_SENT  # a genuine hello could still come
    assert client.stats.drops["bad_server_key"] >= 1
    sim.run(until=6.0)
    closed = [e for e in sim.client_events[CLIENT_ADDR] if isinstance(e, ConnectionClosed)]
    assert [(c.code, c.by_peer) for c in closed] == [(CloseCode.BAD_SERVER_KEY, False)]
    assert "does not match the pinned key" in closed[0].reason


@pytest.mark.parametrize("flags", [SYN | ACK, SYN | URG, RST])
def test_a_handshake_reply_of_another_version_is_dropped(flags: int) -> None:
    sim = make_sim()
    hello, client = _server_reply(sim)
    packet = decode_packet(hello)
    payloads = {SYN | ACK: packet.payload, SYN | URG: bytes(RETRY_COOKIE_SIZE),
                RST: encode_frames([RejectFrame(CloseCode.BAD_TICKET, "no")])}
    other = encode_packet(Packet(flags, packet.connection_id, 0, 0, (), payloads[flags],
                                 VERSION + 1))
    sent_before = client.stats.packets_sent
    for _ in range(6):  # a REJECT answering the last SYN would end the handshake
        client.receive_datagram(other, SERVER_ADDR, sim.now)
    assert client.state is ConnectionState.SYN_SENT
    assert client.stats.drops["wrong_version"] == 6
    assert client.stats.packets_sent == sent_before  # no new SYN for a foreign Retry
    assert client.handshake_reject is None
    client.receive_datagram(hello, SERVER_ADDR, sim.now)
    assert state_of(client) is ConnectionState.AWAIT_ACCEPT


def test_a_protected_datagram_over_1472_bytes_is_dropped_before_decryption() -> None:
    sim = make_sim()
    client = sim.add_client(ALICE)
    sim.run(until=2.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    server = server_conn(sim)
    client.send(b"x" * 100)
    datagrams = client.datagrams_to_send(sim.now)
    assert datagrams
    genuine = datagrams[0][0]
    # the same authentic packet with trailing bytes past 1472: the tag check would fail
    # anyway, but the size rule drops it as malformed without spending a decryption
    oversized = genuine + bytes(MAX_DATAGRAM + 1 - len(genuine))
    before = dict(server.stats.drops)
    server.receive_datagram(oversized, CLIENT_ADDR, sim.now)
    assert server.stats.drops.get("malformed", 0) == before.get("malformed", 0) + 1
    assert server.stats.drops.get("auth_failed", 0) == before.get("auth_failed", 0)
    with pytest.raises(PacketError, match="exceeds 1472"):
        decode_header(oversized)
    server.receive_datagram(genuine, CLIENT_ADDR, sim.now)  # the real one still counts
    assert [e.data for e in drain(server) if isinstance(e, MessageReceived)] == [b"x" * 100]


def _held_at_authentication(sim: Simulation) -> tuple[Connection, list[Connection]]:
    """A client whose server connection waits in AUTHENTICATING (the owner has not decided)."""
    pending: list[Connection] = []
    sim.server.authorize = lambda conn, _request: pending.append(conn)
    client = sim.add_client(ALICE)
    sim.run(until=1.0, condition=lambda: client.state is ConnectionState.AWAIT_ACCEPT
            and bool(pending))
    sim.run(until=sim.now + 0.1)  # the finish has arrived; both sides are waiting
    assert client.state is ConnectionState.AWAIT_ACCEPT
    assert [c.state for c in pending] == [ConnectionState.AUTHENTICATING]
    return client, pending


def server_messages(sim: Simulation) -> list[bytes]:
    return [e.data for _, e in sim.server.events if isinstance(e, MessageReceived)]


def test_send_before_acceptance_is_queued_and_sent_once_established() -> None:
    sim = make_sim()
    client, pending = _held_at_authentication(sim)
    client.send(b"early")
    sim.flush()
    sim.run(until=sim.now + 0.5)
    assert server_messages(sim) == []
    assert pending[0].stats.messages_received == 0
    pending[0].accept(pending[0].connection_id, "token", 1800.0)
    sim.flush()
    sim.run(until=sim.now + 1.0, condition=lambda: bool(server_messages(sim)))
    assert state_of(client) is ConnectionState.ESTABLISHED
    assert server_messages(sim) == [b"early"]


def test_the_server_discards_messages_and_keepalives_while_authenticating() -> None:
    sim = make_sim()
    client, pending = _held_at_authentication(sim)
    outbox = ChannelSender(packet_room=1000)
    outbox.queue(b"sneaky", 0, Delivery.RELIABLE_ORDERED, room=1 << 20)
    message = outbox.pop_frame(1000)
    assert message is not None
    client._send_protected([message, KeepaliveFrame(7)], sim.now, flags=ACK)
    sim.flush()
    sim.run(until=sim.now + 0.5)
    server = pending[0]
    assert server.state is ConnectionState.AUTHENTICATING
    assert server.stats.drops["before_accept"] == 2
    assert not [e for _, e in sim.server.events
                if isinstance(e, (MessageReceived, KeepaliveReceived))]
