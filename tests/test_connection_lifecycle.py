"""A connection's life from the owner's side, at the exact boundaries the API promises.

Sans-I/O, on the simulated network (or datagrams passed by hand) with time driven explicitly.
What this file proves:

* `reject` and `close` (before keys) end the connection with the owner's code and reason, as
  our close (`by_peer` False), and a rejection is one sealed datagram flagged ACK|RST; a
  call in the wrong state names the state;
* at the key's packet limit nothing more is sealed (not even the RST of a hand-over) and the
  connection says why; near it the connection closes gracefully asking the client to
  reconnect;
* keepalives have distinct ids, each answered with its RTT, and a server's first keepalive
  starts its keepalive interval;
* `hibernate` reports whether it released anything, releases a cipher a packet rebuilt, and the
  previous key generation's too;
* stale sequenced messages are counted in `stats.drops` by `refresh_stats`;
* the send buffer's backpressure: `drain_wanted` at exactly half the buffer, one
  `SendBufferDrained` per refusal naming the room it leaves;
* carry-over on a resume (PROTOCOL.md 12.4): no send before SESSION settles it, the
  receive budget of the restored streams, the refusal once streams began, the trimming of
  what the peer says it delivered, the DELIVERED frames the server sends (every mark once,
  128 to a frame), and `SessionConfirmed` once the SESSION frame is acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from quantum.carryover import Carryover, CarryoverError, InboundStream
from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode, ConnectionClosedError, MessageError, SendBufferFull
from quantum.events import (
    AuthenticationRequested,
    CarryoverLost,
    ConnectionClosed,
    Event,
    HandshakeCompleted,
    HandshakeRejected,
    KeepaliveAcknowledged,
    KeepaliveReceived,
    MessageReceived,
    SendBufferDrained,
    SessionConfirmed,
)
from quantum.frames import (
    MAX_DELIVERED_MARKS,
    CloseFrame,
    DeliveredFrame,
    Delivery,
    Frame,
    KeepaliveFrame,
    MessageFrame,
    PathResponseFrame,
    SessionFrame,
    decode_frames,
    encode_frames,
)
from quantum.handshake import ClientHandshake, Credentials, ServerHandshake, ServerParams
from quantum.limits import MAX_MESSAGE_SIZE
from quantum.packet import ACK, HEADER_SIZE, RST, decode_header, decode_packet, split_body
from quantum.simulation import (
    CLIENT_ADDR,
    SERVER_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)
from tests.test_connection_receive import sealed_by
from tests.test_protocol_violation import sealed_by_client

ALICE = Credentials(user_id="alice", fec=None)
SESSION_ID = bytes(range(16))
CONFIG = QuantumConfiguration(keepalive_interval=None, fec=None)
#: the smallest key limit, with a window wide enough that only the key limit holds a packet
#: back once the packet numbers are moved up to it
KEY_LIMIT = 2048
KEY_CONFIG = QuantumConfiguration(keepalive_interval=None, fec=None, window=4096,
                                  packets_per_key=KEY_LIMIT, key_update=False)


class Pair:
    """One client and the server's connection for it, on a simulated network. `hold`: the
    server's owner has not answered the credentials yet (the connection is AUTHENTICATING)."""

    def __init__(self, config: QuantumConfiguration = CONFIG, *,
                 credentials: Credentials = ALICE, hold: bool = False,
                 carryover: Carryover | None = None, jitter: float = 0.0,
                 server: SimulatedServer | None = None) -> None:
        simulated = server or SimulatedServer.create(config)
        simulated.authorize = self._authorize
        self.hold = hold
        self.requests: list[tuple[Connection, AuthenticationRequested]] = []
        self.sim = Simulation(SimulatedNetwork(LinkProfile(delay=0.01, jitter=jitter), 1),
                              simulated)
        self.client = Connection.client(SERVER_ADDR, credentials, 0.0, configuration=config,
                                        carry=carryover is not None, carryover=carryover)
        self.sim.clients[CLIENT_ADDR] = self.client
        self.sim.client_events[CLIENT_ADDR] = []
        self.sim.flush()
        if hold:
            self.sim.run(until=2.0, condition=lambda: bool(self.requests))
        else:
            self.sim.run(until=2.0, condition=lambda: (
                self.client.state is ConnectionState.ESTABLISHED))
            assert self.client.state is ConnectionState.ESTABLISHED
        assert self.requests

    def _authorize(self, conn: Connection, request: AuthenticationRequested) -> None:
        self.requests.append((conn, request))
        if not self.hold:
            conn.accept(SESSION_ID, "token-1", 1800.0)

    @property
    def server(self) -> Connection:
        return self.requests[-1][0]

    @property
    def client_events(self) -> list[Event]:
        return self.sim.client_events[CLIENT_ADDR]

    @property
    def server_events(self) -> list[Event]:
        return [e for c, e in self.sim.server.events if c is self.server]

    @property
    def now(self) -> float:
        return self.sim.now

    def run(self, seconds: float, condition: Callable[[], bool] | None = None) -> None:
        self.sim.flush()
        self.sim.run(until=self.sim.now + seconds, condition=condition)


def frames_in(datagram: bytes, reader: Connection) -> list[Frame]:
    """The frames of a sealed datagram, opened with the keys of the connection it is for.
    (Private: no public call shows what a packet carries; the packet numbers are small, so
    the header's 32-bit one is the full one.)"""
    _, _, _, pn, _, payload_len = decode_header(datagram)
    open_ = reader._open
    assert open_ is not None
    body = open_.open(pn, datagram[:HEADER_SIZE], datagram[HEADER_SIZE:])
    _, payload = split_body(body, payload_len)
    return list(decode_frames(payload))


def events_of(conn: Connection) -> list[Event]:
    out: list[Event] = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


# ------------------------------------------------------------------ reject and close


def test_a_reject_is_one_sealed_rst_and_closes_both_ends_with_its_code_and_reason() -> None:
    p = Pair(hold=True)
    server = p.server
    assert server.state.value == "AUTHENTICATING"
    server.reject(CloseCode.UNKNOWN_USER, "who is alice?", p.now)
    out = server.datagrams_to_send(p.now)
    assert len(out) == 1 and out[0][1] == CLIENT_ADDR
    flags = decode_header(out[0][0])[1]
    assert flags & (ACK | RST) == ACK | RST
    assert server.state is ConnectionState.CLOSED
    assert (server.close_code, server.close_reason) == (CloseCode.UNKNOWN_USER, "who is alice?")
    assert events_of(server) == [ConnectionClosed(CloseCode.UNKNOWN_USER, "who is alice?", False)]
    # the client learns it from the sealed REJECT: rejected, by the peer
    p.client.receive_datagram(out[0][0], SERVER_ADDR, p.now + 0.01)
    assert events_of(p.client) == [
        HandshakeRejected(CloseCode.UNKNOWN_USER, "who is alice?"),
        ConnectionClosed(CloseCode.UNKNOWN_USER, "who is alice?", True)]


def test_rejecting_an_established_connection_is_refused_naming_its_state() -> None:
    p = Pair()
    with pytest.raises(ConnectionClosedError) as refused:
        p.server.reject(CloseCode.BAD_TICKET, "too late", p.now)
    assert str(refused.value) == "cannot reject a connection in state ESTABLISHED"
    assert p.server.state is ConnectionState.ESTABLISHED


def test_a_keepalive_before_the_handshake_is_refused_naming_the_state() -> None:
    client = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=CONFIG)
    with pytest.raises(ConnectionClosedError) as refused:
        client.send_keepalive()
    assert str(refused.value) == "no keepalive in state SYN_SENT"


def test_closing_before_there_are_keys_ends_at_once_with_the_owners_reason() -> None:
    client = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=CONFIG)
    client.close("changed my mind", CloseCode.NORMAL)
    assert client.state is ConnectionState.CLOSED
    assert (client.close_code, client.close_reason) == (CloseCode.NORMAL, "changed my mind")
    assert events_of(client) == [ConnectionClosed(CloseCode.NORMAL, "changed my mind", False)]


def test_closing_while_authenticating_ends_at_once_with_the_owners_reason() -> None:
    p = Pair(hold=True)
    p.server.close("shutting down", CloseCode.SERVER_SHUTDOWN)
    assert p.server.state is ConnectionState.CLOSED
    assert p.server.close_reason == "shutting down"
    assert events_of(p.server) == [
        ConnectionClosed(CloseCode.SERVER_SHUTDOWN, "shutting down", False)]


def test_a_close_without_a_reason_says_none_to_either_end() -> None:
    p = Pair()
    p.client.close()
    assert (p.client.close_code, p.client.close_reason) == (CloseCode.NORMAL, "")
    p.run(5.0)
    assert p.client.state is ConnectionState.CLOSED
    assert [e for e in p.client_events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(CloseCode.NORMAL, "", False)]
    assert [e for e in p.server_events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(CloseCode.NORMAL, "", True)]


# ------------------------------------------------------------------ the key's packet limit


def test_at_the_key_limit_nothing_more_is_sealed_and_the_close_says_why() -> None:
    p = Pair(KEY_CONFIG)
    client = p.client
    events_of(client)
    # as if the key had sealed every packet it may (thousands of round trips otherwise)
    client._flight.next_pn = KEY_LIMIT
    client.send(b"too late")
    assert client.datagrams_to_send(p.now) == []
    assert client._flight.next_pn == KEY_LIMIT
    assert client.state is ConnectionState.CLOSED
    assert (client.close_code, client.close_reason) == (
        CloseCode.KEYS_EXHAUSTED, "packet protection limit reached")
    assert events_of(client) == [
        ConnectionClosed(CloseCode.KEYS_EXHAUSTED, "packet protection limit reached", False)]


def test_near_the_key_limit_the_connection_closes_gracefully_asking_to_reconnect() -> None:
    p = Pair(KEY_CONFIG)
    client = p.client
    # as if the key had sealed all but the headroom (see above)
    client._flight.next_pn = KEY_LIMIT - 1024
    client.send(b"last words")
    p.run(5.0)
    reason = "packet protection limit reached: reconnect"
    assert client.state is ConnectionState.CLOSED
    assert (client.close_code, client.close_reason) == (CloseCode.KEYS_EXHAUSTED, reason)
    assert [e.data for e in p.server_events if isinstance(e, MessageReceived)] == [b"last words"]
    assert [e for e in p.server_events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(CloseCode.KEYS_EXHAUSTED, reason, True)]
    assert [e for e in p.client_events if isinstance(e, ConnectionClosed)] == [
        ConnectionClosed(CloseCode.KEYS_EXHAUSTED, reason, False)]


def test_a_hand_over_sends_its_rst_but_not_past_the_key_limit() -> None:
    p = Pair(KEY_CONFIG)
    server = p.server
    events_of(server)
    assert server.hand_over("resumed elsewhere", p.now) is None  # no carry-over asked for
    (rst, to), = server.datagrams_to_send(p.now)
    assert to == CLIENT_ADDR and decode_header(rst)[1] & (ACK | RST) == ACK | RST
    assert events_of(server) == [
        ConnectionClosed(CloseCode.SESSION_ENDED, "resumed elsewhere", False)]

    q = Pair(KEY_CONFIG)
    server = q.server
    events_of(server)
    server._flight.next_pn = KEY_LIMIT  # as above: the key may seal nothing more
    server.hand_over("resumed elsewhere", q.now)
    assert server.datagrams_to_send(q.now) == []
    assert server._flight.next_pn == KEY_LIMIT
    assert events_of(server) == [
        ConnectionClosed(CloseCode.SESSION_ENDED, "resumed elsewhere", False)]


# ------------------------------------------------------------------ keepalives


def test_keepalives_have_distinct_ids_and_each_answer_its_own_rtt() -> None:
    p = Pair()
    first, second = p.client.send_keepalive(), p.client.send_keepalive()
    assert first != second
    p.run(1.0)
    received = [e.keepalive_id for e in p.server_events if isinstance(e, KeepaliveReceived)]
    assert received == [first, second]
    p.server.acknowledge_keepalive(first, 100.0)
    p.server.acknowledge_keepalive(second, 99.0)
    p.run(1.0)
    acks = [e for e in p.client_events if isinstance(e, KeepaliveAcknowledged)]
    assert [(a.keepalive_id, a.remaining) for a in acks] == [(first, 100.0), (second, 99.0)]
    assert all(a.rtt is not None and a.rtt > 0 for a in acks)


def test_a_servers_first_keepalive_starts_its_keepalive_interval() -> None:
    # a server connection keeps no keepalive clock until it sends a keepalive; the first one
    # starts the interval from the moment it is asked for
    server_config = QuantumConfiguration(keepalive_interval=5.0, fec=None)
    p = Pair(server=SimulatedServer.create(server_config))
    asked_at = p.now
    p.server.send_keepalive()
    timer = p.server.get_timer()
    assert timer is not None and timer <= asked_at + 5.0
    p.run(5.0 + 0.5)
    received = [e for e in p.client_events if isinstance(e, KeepaliveReceived)]
    assert [e.keepalive_id for e in received] == [1, 2]  # asked for, then the interval's


# ------------------------------------------------------------------ hibernation


def test_hibernate_says_whether_it_released_anything() -> None:
    client = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=CONFIG)
    assert client.hibernate() is False  # no keys yet
    p = Pair()
    assert p.client.hibernating is False
    assert p.client.hibernate() is True
    assert p.client.hibernating is True
    assert p.client.hibernate() is False  # nothing left to release


def test_hibernate_releases_the_one_cipher_a_packet_rebuilt() -> None:
    p = Pair()
    assert p.client.hibernate() is True
    p.client.send(b"wake up")
    assert p.client.datagrams_to_send(p.now)  # sealing rebuilt the send cipher only
    assert p.client.hibernating is False
    assert p.client.hibernate() is True
    assert p.client.hibernating is True


def test_hibernate_releases_the_previous_key_generation_too() -> None:
    config = QuantumConfiguration(keepalive_interval=None, fec=None, key_update_packets=2)
    p = Pair(config)
    for i in range(6):
        p.server.send(b"update %d" % i)
        p.run(0.5)
    previous = p.client._previous_keys  # no public view of the previous generation
    assert previous is not None and p.client.key_generations[1] >= 1
    assert previous.protection.loaded
    assert p.client.hibernate() is True
    assert not previous.protection.loaded


# ------------------------------------------------------------------ stats


def test_stale_sequenced_messages_are_counted_as_drops() -> None:
    p = Pair()
    client, server = p.client, p.server
    sent = []
    for data in (b"old", b"new"):
        client.send(data, channel=1, mode=Delivery.UNRELIABLE_SEQUENCED)
        sent += [d for d, _ in client.datagrams_to_send(p.now)]
    assert len(sent) == 2
    events_of(server)
    for data in reversed(sent):  # the newer arrives first
        server.receive_datagram(data, CLIENT_ADDR, p.now + 0.01)
    assert [e.data for e in events_of(server) if isinstance(e, MessageReceived)] == [b"new"]
    assert dict(server.refresh_stats().drops) == {"stale_sequenced": 1}


# ------------------------------------------------------------------ backpressure


def test_drain_is_wanted_only_past_exactly_half_the_send_buffer() -> None:
    limit = 1 << 20
    p = Pair(QuantumConfiguration(keepalive_interval=None, fec=None, max_send_buffer=limit))
    p.client.send(b"x" * (limit >> 1))
    assert p.client.send_buffered == limit >> 1
    assert p.client.drain_wanted() is False
    p.client.send(b"y")
    assert p.client.drain_wanted() is True


def test_one_drain_event_per_refusal_naming_the_room_left_then() -> None:
    limit = 1 << 20
    p = Pair(QuantumConfiguration(keepalive_interval=None, fec=None, max_send_buffer=limit),
             jitter=0.002)  # distinct arrival times: one acknowledgement per step
    client = p.client
    chunk = 64 << 10
    with pytest.raises(SendBufferFull):
        for _ in range(limit // chunk + 1):
            client.send(b"z" * chunk)
    p.client_events.clear()
    p.run(10.0, condition=lambda: any(isinstance(e, SendBufferDrained)
                                      for e in p.client_events))
    drained = [e for e in p.client_events if isinstance(e, SendBufferDrained)]
    assert len(drained) == 1
    # what is still unacknowledged then: some, at most half the buffer
    assert 0 < client.send_buffered <= limit >> 1
    assert drained[0].available == limit - client.send_buffered
    p.run(10.0)
    assert client.send_buffered == 0
    assert len([e for e in p.client_events if isinstance(e, SendBufferDrained)]) == 1


# ------------------------------------------------------------------ carry-over


EMPTY = Carryover((), (), ())


def resuming(carryover: Carryover) -> Pair:
    """A client continuing a lost connection's streams, its credentials not answered yet."""
    credentials = Credentials("alice", resume=(SESSION_ID, "token-0"), fec=None)
    p = Pair(credentials=credentials, carryover=carryover, hold=True)
    assert p.server.continues
    events_of(p.server)
    return p


def test_sending_before_the_resume_settles_is_refused_saying_what_to_wait_for() -> None:
    client = resuming(EMPTY).client
    assert client.state.value == "AWAIT_ACCEPT"  # where a send is queued, if not resuming
    with pytest.raises(MessageError) as refused:
        client.send(b"too soon")
    assert str(refused.value) == (
        "cannot send before the resume says whether the lost connection's streams continue "
        "(wait for HandshakeCompleted)")
    assert client.send_buffered == 0


def test_a_restored_stream_gets_the_receive_budget_of_a_fresh_one() -> None:
    budget = 4 * MAX_MESSAGE_SIZE
    waiting = 96  # what one complete message waiting for an earlier one costs beyond its data

    def holding(extra: int) -> Carryover:
        sizes = [MAX_MESSAGE_SIZE] * 3 + [MAX_MESSAGE_SIZE - 4 * waiting + extra]
        ready = tuple((i + 1, bytes(size)) for i, size in enumerate(sizes))
        return Carryover((), (), (InboundStream(0, Delivery.RELIABLE_ORDERED, 0, ready=ready),))

    assert sum(len(d) + waiting for _, d in holding(0).inbound[0].ready) == budget
    over = resuming(EMPTY)
    with pytest.raises(CarryoverError):
        over.server.accept(SESSION_ID, "token-1", 1800.0, resumed=True, carryover=holding(1))
    assert over.server.state is ConnectionState.AUTHENTICATING  # nothing changed
    assert events_of(over.server) == []
    fits = resuming(EMPTY)
    fits.server.accept(SESSION_ID, "token-1", 1800.0, resumed=True, carryover=holding(0))
    assert fits.server.state is ConnectionState.ESTABLISHED


def test_carry_over_is_refused_once_the_server_began_sending() -> None:
    p = resuming(EMPTY)
    p.server.send(b"early")  # queued while authenticating: its streams began
    with pytest.raises(CarryoverError) as refused:
        p.server.accept(SESSION_ID, "token-1", 1800.0, resumed=True, carryover=EMPTY)
    assert str(refused.value) == "streams already began on this connection"
    assert p.server.state is ConnectionState.AUTHENTICATING


ORDERED = Delivery.RELIABLE_ORDERED
#: the client's lost connection: it owes messages 0 and 1 on channel 0 (the server delivered
#: 0 already), and delivered the server's message 0 on channel 1
CLIENT_SIDE = Carryover(((0, ORDERED, 2),),
                        (MessageFrame(0, ORDERED, 0, b"up-0"),
                         MessageFrame(0, ORDERED, 1, b"up-1")),
                        (InboundStream(1, ORDERED, 1),))
#: the server's: it owes messages 0 and 1 on channel 1; it delivered message 0 on channel 0,
#: and has 129 receiving streams in all (DELIVERED frames hold 128 marks)
SERVER_SIDE = Carryover(((1, ORDERED, 2),),
                        (MessageFrame(1, ORDERED, 0, b"down-0"),
                         MessageFrame(1, ORDERED, 1, b"down-1")),
                        tuple(InboundStream(c, ORDERED, 1 if c == 0 else 7) for c in range(129)))


def test_a_continued_resume_trims_what_each_side_delivered_and_says_how_far() -> None:
    p = resuming(CLIENT_SIDE)
    server, client = p.server, p.client
    assert p.requests[-1][1].delivered == ((1, ORDERED, 1),)
    server.accept(SESSION_ID, "token-1", 1800.0, resumed=True, carryover=SERVER_SIDE)
    # the client has down-0: only down-1 is owed
    assert server.send_buffered == len(b"down-1")
    out = [d for d, _ in server.datagrams_to_send(p.now)]
    frames = [f for d in out for f in frames_in(d, client)]
    delivered = [f.marks for f in frames if isinstance(f, DeliveredFrame)]
    marks = [(c, int(ORDERED), 1 if c == 0 else 7) for c in range(129)]
    assert delivered == [tuple(marks[:MAX_DELIVERED_MARKS]), tuple(marks[MAX_DELIVERED_MARKS:])]
    for d in out:
        client.receive_datagram(d, SERVER_ADDR, p.now + 0.01)
    # the server has up-0: only up-1 is owed, and the client sends no DELIVERED of its own
    assert client.send_buffered == len(b"up-1")
    sent = [f for d, _ in client.datagrams_to_send(p.now + 0.01) for f in frames_in(d, server)]
    assert not any(isinstance(f, DeliveredFrame) for f in sent)
    for f in sent:
        if isinstance(f, MessageFrame):
            assert f.data == b"up-1"


def test_the_server_hears_once_the_client_acknowledged_its_session() -> None:
    credentials = Credentials("alice", resume=(SESSION_ID, "token-0"), fec=None)
    p = Pair(credentials=credentials, hold=True)
    server, client = p.server, p.client
    events_of(server)
    now = p.now
    server.accept(SESSION_ID, "token-1", 1800.0, resumed=True)
    # the packet with the SESSION frame (and nothing else) is the only one the client gets:
    # its acknowledgement alone says the client holds the new token
    out = [d for d, _ in server.datagrams_to_send(now)]
    with_session = [d for d in out
                    if any(isinstance(f, SessionFrame) for f in frames_in(d, client))]
    assert len(with_session) == 1
    assert [type(f) for f in frames_in(with_session[0], client)] == [SessionFrame]
    client.receive_datagram(with_session[0], SERVER_ADDR, now + 0.01)
    assert client.session_token == "token-1"
    assert not any(isinstance(e, SessionConfirmed) for e in events_of(server))
    later = now + 0.01 + CONFIG.max_ack_delay
    client.handle_timer(later)
    for d, _ in client.datagrams_to_send(later):
        server.receive_datagram(d, CLIENT_ADDR, later + 0.01)
    assert [e for e in events_of(server) if isinstance(e, SessionConfirmed)] == [
        SessionConfirmed()]


# ------------------------------------------------------------------ the end is the end


def test_nothing_follows_the_close_when_the_fins_ack_carries_more_frames() -> None:
    """`ConnectionClosed` is the last event (next_event): a peer's packet that acknowledges
    our FIN and carries a KEEPALIVE ends the connection, and the keepalive is not reported
    after it (nor answered)."""
    pair = Pair()
    pair.run(1.0)
    server, client = pair.server, pair.client
    events_of(server)
    server.close("bye")
    at = pair.now
    for datagram, _ in server.datagrams_to_send(at):
        client.receive_datagram(datagram, SERVER_ADDR, at + 0.01)
    sealed = sealed_by_client(client, encode_frames([KeepaliveFrame(7)]))
    server.receive_datagram(sealed, CLIENT_ADDR, at + 0.02)
    events = events_of(server)
    assert [type(e) for e in events] == [ConnectionClosed]
    assert server.state is ConnectionState.CLOSED
    assert server.datagrams_to_send(at + 0.02) == []


@pytest.mark.parametrize("code", [CloseCode.NORMAL, CloseCode.SERVER_SHUTDOWN])
def test_a_close_code_is_the_same_plain_number_in_both_builds(code: CloseCode) -> None:
    """`close_code` is the code as an int, known or not, in the compiled build as in pure
    Python (once a CloseCode member in one and an int in the other); CloseCode names it."""
    pair = Pair()
    pair.run(1.0)
    pair.client.close("done", code)
    pair.run(1.0)
    for conn in (pair.client, pair.server):
        assert conn.state is ConnectionState.CLOSED
        assert type(conn.close_code) is int and CloseCode(conn.close_code) is code


def test_a_close_code_this_version_does_not_know_stays_its_number() -> None:
    pair = Pair()
    pair.run(1.0)
    pair.server.receive_datagram(
        sealed_by_client(pair.client, encode_frames([CloseFrame(0x7777, "from the future")])),
        CLIENT_ADDR, pair.now + 0.01)
    assert pair.server.state is ConnectionState.CLOSED
    assert type(pair.server.close_code) is int and pair.server.close_code == 0x7777


# ---------------------------------------------------- the client's carry-over at SESSION


def sealed_by_server(server: Connection, frames: list[Frame]) -> bytes:
    """An authenticated datagram from the server carrying `frames` (a SESSION frame of the
    test's choosing), sealed as tests/test_connection_receive.py's `sealed_by` does."""
    return sealed_by(server, list(frames))[1]


def session_then_message(pair: Pair, *, resumed: bool, carried: bool) -> list[Event]:
    """The server's SESSION frame and, in the same packet, a KEEPALIVE and a message after
    it: the client's events."""
    frames: list[Frame] = [SessionFrame(SESSION_ID, "token-1", 60_000, resumed, carried),
                           KeepaliveFrame(7),
                           MessageFrame(0, Delivery.RELIABLE_ORDERED, 0, b"after")]
    pair.client.receive_datagram(sealed_by_server(pair.server, frames), SERVER_ADDR,
                                 pair.now + 0.01)
    return events_of(pair.client)


def violation_closes(events: list[Event], client: Connection, reason: str) -> None:
    """The SESSION frame ended the connection as a protocol violation: nothing after it was
    processed, and the server is told why with an RST."""
    assert [type(e) for e in events] == [HandshakeCompleted, ConnectionClosed]
    assert events[-1] == ConnectionClosed(CloseCode.PROTOCOL_VIOLATION, reason, False)
    assert client.state is ConnectionState.CLOSED
    rst = [d for d, _ in client.datagrams_to_send(client.last_received_at)]
    assert [decode_header(d)[1] & RST for d in rst] == [RST]


def test_a_session_frame_claiming_a_carry_over_nobody_asked_for_is_a_violation() -> None:
    pair = Pair(hold=True)  # a client that did not ask for its streams to be carried
    events = session_then_message(pair, resumed=True, carried=True)
    violation_closes(events, pair.client, "SESSION says carried, but none was asked for")


def test_a_carry_over_the_client_cannot_restore_is_a_violation_naming_why() -> None:
    """The client's own carry-over holds more than a fresh stream may buffer (as the server's
    refusal in test_a_restored_stream_gets_the_receive_budget_of_a_fresh_one): the server says
    it carried it, and the client cannot take it up."""
    ready = tuple((i + 1, bytes(MAX_MESSAGE_SIZE)) for i in range(5))
    too_much = Carryover((), (), (InboundStream(0, Delivery.RELIABLE_ORDERED, 0, ready=ready),))
    with pytest.raises(CarryoverError) as refused:
        too_much.receiver(4 * MAX_MESSAGE_SIZE)
    pair = resuming(too_much)
    events = session_then_message(pair, resumed=True, carried=True)
    violation_closes(events, pair.client, str(refused.value))


@pytest.mark.parametrize(("resumed", "reason"), [
    (True, "the server kept nothing of the lost connection"),
    (False, "the session could not be resumed: a new one began"),
])
def test_a_session_without_the_carry_over_says_what_was_lost(resumed: bool, reason: str) -> None:
    pair = resuming(CLIENT_SIDE)  # two messages owed, one stream received on
    events = session_then_message(pair, resumed=resumed, carried=False)
    lost = [e for e in events if isinstance(e, CarryoverLost)]
    assert lost == [CarryoverLost(2, reason)]
    assert pair.client.state is ConnectionState.ESTABLISHED
    assert [e.data for e in events if isinstance(e, MessageReceived)] == [b"after"]
    assert [e.keepalive_id for e in events if isinstance(e, KeepaliveReceived)] == [7]


def test_every_message_sent_is_counted() -> None:
    pair = Pair()
    for i in range(3):
        pair.client.send(b"m%d" % i)
    assert pair.client.stats.messages_sent == 3


# ------------------------------------------------------------------ the server's accept


def resumed_only() -> Pair:
    """A client resuming its session without asking for its streams to continue."""
    p = Pair(credentials=Credentials("alice", resume=(SESSION_ID, "token-0"), fec=None),
             hold=True)
    assert not p.server.continues
    events_of(p.server)
    return p


@pytest.mark.parametrize(("how", "resumed", "carried"), [
    ("fresh", False, False), ("resumed", True, False), ("continued", True, True)])
def test_accept_reports_the_session_it_handed_over_at_both_ends(how: str, resumed: bool,
                                                                carried: bool) -> None:
    """The server's HandshakeCompleted names what it handed over; the client's, from the
    SESSION frame, says the same (resumed and carried included)."""
    p = Pair(hold=True) if how == "fresh" else resumed_only() if how == "resumed" else (
        resuming(EMPTY))
    events_of(p.server)
    p.server.accept(SESSION_ID, "token-1", 1800.0, resumed=resumed,
                    carryover=EMPTY if carried else None)
    handed = HandshakeCompleted(SESSION_ID, "token-1", 1800.0, resumed, carried)
    assert events_of(p.server) == [handed]
    p.run(1.0)
    heard = [e for e in p.client_events if isinstance(e, HandshakeCompleted)]
    assert heard == [handed]


def test_accepting_twice_is_refused_naming_the_state() -> None:
    p = Pair()
    with pytest.raises(ConnectionClosedError) as refused:
        p.server.accept(SESSION_ID, "token-2", 1800.0)
    assert str(refused.value) == "cannot accept a connection in state ESTABLISHED"


def test_a_continued_resume_holds_messages_until_the_client_has_its_session() -> None:
    """12.4: the client learns from SESSION whether its streams continue, so no message goes
    before that frame is acknowledged; then it goes."""
    p = resuming(EMPTY)
    p.server.accept(SESSION_ID, "token-1", 1800.0, resumed=True, carryover=EMPTY)
    p.server.send(b"after the session")
    first = [d for d, _ in p.server.datagrams_to_send(p.now)]
    frames = [f for d in first for f in frames_in(d, p.client)]
    assert any(isinstance(f, SessionFrame) for f in frames)
    assert not any(isinstance(f, MessageFrame) for f in frames)
    for datagram in first:
        p.client.receive_datagram(datagram, SERVER_ADDR, p.now + 0.01)
    p.run(1.0)
    assert [e.data for e in p.client_events if isinstance(e, MessageReceived)] == [
        b"after the session"]


def test_a_resume_that_does_not_continue_sends_messages_with_the_session() -> None:
    """Nothing to hold for a client that did not ask to continue: a message sent at accept
    leaves in the SESSION frame's packet."""
    p = resumed_only()
    p.server.accept(SESSION_ID, "token-1", 1800.0, resumed=True)
    p.server.send(b"at once")
    packets = [{type(f) for f in frames_in(d, p.client)}
               for d, _ in p.server.datagrams_to_send(p.now)]
    assert any({SessionFrame, MessageFrame} <= kinds for kinds in packets)


def test_any_protected_packet_from_the_server_stops_the_finish_being_sent_again() -> None:
    """Waiting for SESSION, a client resends its ClientFinish until the server shows it has
    it: any authenticated packet does (its keys come from that finish)."""
    resent = Pair(hold=True)
    at = resent.client.get_timer()
    assert at is not None
    resent.client.handle_timer(at)
    assert resent.client.datagrams_to_send(at)  # nothing heard: the finish goes again
    proven = Pair(hold=True)
    at = proven.client.get_timer()
    assert at is not None
    proven.client.receive_datagram(sealed_by_server(proven.server, []), SERVER_ADDR,
                                   proven.now + 0.001)
    proven.client.handle_timer(at)
    assert proven.client.datagrams_to_send(at) == []
    assert proven.client.state is ConnectionState.AWAIT_ACCEPT


def test_the_server_hears_the_credentials_as_the_client_sent_them() -> None:
    credentials = Credentials("alice", "v1.ticket", resume=(SESSION_ID, "token-0"),
                              resume_fallback=True, metadata={"room": "lobby"}, fec=None)
    p = Pair(credentials=credentials, hold=True)
    conn, request = p.requests[-1]
    assert conn.is_client is False
    assert (request.user_id, request.ticket, request.resume, request.resume_fallback,
            request.metadata) == ("alice", "v1.ticket", (SESSION_ID, "token-0"), True,
                                  {"room": "lobby"})


def test_a_path_response_with_no_migration_under_way_changes_nothing() -> None:
    p = Pair()
    p.run(1.0)
    events_of(p.server)
    p.server.receive_datagram(sealed_by_client(p.client, encode_frames(
        [PathResponseFrame(bytes(8))])), CLIENT_ADDR, p.now + 0.01)
    assert p.server.state is ConnectionState.ESTABLISHED
    assert events_of(p.server) == [] and p.server.peer_addr == CLIENT_ADDR


# ------------------------------------------------------------------ what the server's params bound


@pytest.mark.parametrize(("server_keepalive", "server_idle", "keepalive", "idle"), [
    (10.0, 120.0, 10.0, 60.0),  # only the keepalive interval is the server's
    (20.0, 40.0, 20.0, 40.0),   # only the idle timeout is
    (20.0, 60.0, 20.0, 60.0),   # neither: the client's own configuration, unchanged
])
def test_the_servers_keepalive_and_idle_timeout_bound_the_clients(
        server_keepalive: float, server_idle: float, keepalive: float, idle: float) -> None:
    """PROTOCOL.md 5.2.6: the client keeps alive at least as often as the server expects and
    gives up no later than the server would, each bound applying on its own."""
    own = QuantumConfiguration(fec=None, keepalive_interval=20.0, idle_timeout=60.0)
    server = SimulatedServer.create(QuantumConfiguration(fec=None, idle_timeout=server_idle),
                                    keepalive_interval=server_keepalive)
    p = Pair(own, server=server)
    assert (p.client.config.keepalive_interval, p.client.config.idle_timeout) == (keepalive,
                                                                                  idle)
    assert p.client.config.fec_target_loss == own.fec_target_loss  # the rest is its own
    if (keepalive, idle) == (20.0, 60.0):
        assert p.client.config is own


def test_negotiated_fec_measures_against_the_clients_configured_target_loss() -> None:
    target = 0.0123
    config = QuantumConfiguration(keepalive_interval=None, fec=(4, 2), fec_target_loss=target)
    p = Pair(config, credentials=Credentials(user_id="alice", fec=(4, 2)))
    fec = p.client._fec
    assert fec is not None and (fec.k, fec.m) == (4, 2)
    assert fec.target == target


# ------------------------------------------------------------------ a client as it is made


def test_a_new_connection_has_no_params_and_reads_a_normal_empty_close() -> None:
    client = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=CONFIG)
    assert client.params is None  # until the server's hello
    assert (client.close_code, client.close_reason) == (CloseCode.NORMAL, "")
    assert type(client.close_code) is int


@pytest.mark.parametrize("size", [0, 15, 17])
def test_a_connection_id_must_be_16_bytes(size: int) -> None:
    with pytest.raises(ValueError) as info:
        Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=CONFIG,
                          connection_id=bytes(size))
    assert str(info.value) == "connection_id must be 16 bytes"


def test_a_client_uses_the_connection_id_and_ephemeral_key_it_is_given() -> None:
    cid, private = bytes(range(16)), bytes(range(32, 64))
    client = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=CONFIG,
                               connection_id=cid, ephemeral_private=private)
    assert client.connection_id == cid
    (syn, _), = client.datagrams_to_send(0.0)
    public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    assert decode_packet(syn).payload[:32] == public  # the hello opens with its public key


def test_a_client_asks_for_a_carry_over_only_when_told() -> None:
    plain = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=CONFIG)
    asking = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=CONFIG, carry=True)
    assert plain.credentials is not None and asking.credentials is not None
    assert (plain.credentials.carry, asking.credentials.carry) == (False, True)


def test_a_carry_over_without_a_resume_continues_nothing() -> None:
    """Streams continue only into a resume: given a carry-over but no session to resume, the
    client asks to be carried (its own losses from now on) but sends no delivery marks."""
    client = Connection.client(SERVER_ADDR, ALICE, 0.0, configuration=CONFIG, carryover=EMPTY)
    credentials = client.credentials
    assert credentials is not None
    assert (credentials.carry, credentials.delivered) == (True, None)


@pytest.mark.parametrize(("configured", "asked"), [((10, 3), (10, 3)), (None, None)])
def test_a_client_asks_for_fec_in_its_configurations_shape(
        configured: tuple[int, int] | None, asked: tuple[int, int] | None) -> None:
    """FEC is asked for only if both the credentials and the configuration want it, with the
    configuration's (k, m), whatever shape the credentials named."""
    config = QuantumConfiguration(keepalive_interval=None, fec=configured)
    client = Connection.client(SERVER_ADDR, Credentials(user_id="alice", fec=(4, 2)), 0.0,
                               configuration=config)
    assert client.credentials is not None
    assert client.credentials.fec == asked


def made_by_the_listener(credentials: Credentials | None) -> Connection:
    """A server connection as the listener makes it, before anything else is called on it:
    from a real handshake's keys (`credentials` None: refused ones, made only to reject)."""
    server = ServerHandshake(bytes(range(1, 33)), ServerParams(None, 10.0, 60.0))
    cid = bytes(range(16))
    client = ClientHandshake(cid, ALICE, server_key=server.static_public)
    client.on_server_hello(server.on_client_hello(cid, client.client_hello(), CLIENT_ADDR, 5.0))
    keys, _, params = server.on_client_finish(cid, client.client_finish(), CLIENT_ADDR, 5.0)
    return Connection.server(cid, CLIENT_ADDR, keys, credentials, params, 5.0,
                             configuration=CONFIG)


def test_a_server_connection_accepted_at_once_names_its_next_timer() -> None:
    """The owner may accept the moment the listener hands the connection over, before any
    datagram or timer reached it: its timer is then now (the SESSION frame, and the path MTU
    search, go out at once)."""
    conn = made_by_the_listener(ALICE)
    conn.accept(SESSION_ID, "token-1", 1800.0)
    assert conn.get_timer() == 5.0
    assert conn.datagrams_to_send(5.0)


def test_a_connection_refused_before_its_credentials_were_read_carries_and_continues_nothing(
        ) -> None:
    conn = made_by_the_listener(None)
    assert (conn.carries, conn.continues) == (False, False)
    assert conn.carryover() is None
