"""The send path of a connection, at each boundary where it decides what leaves and when.

Driven sans-I/O: two `Connection`s (a client, and the server's from a `ServerEndpoint`)
passing datagrams by hand with an explicit `now` (from 0 on). What is proved: the
counters of what was sent (handshake datagrams included), which packet carries what (control
frames, message fragments, FIN, pure ACKs, path MTU probes, parity) and to where, the one
gate on sending (windows, congestion, pacing), the key limit that stops sealing, and a timer
that names exactly the moment the connection acts: `handle_timer` at `get_timer()` acts, a
moment before it does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode
from quantum.events import ConnectionClosed, Event, HandshakeRejected, MessageReceived
from quantum.handshake import Credentials
from quantum.packet import ACK, FEC, FIN, KEY_PHASE, PSH, RST, decode_header
from quantum.simulation import CLIENT_ADDR, SERVER_ADDR, SimulatedServer

ALICE = Credentials(user_id="alice")
OTHER_ADDR = ("10.0.0.3", 40001)


def quiet_config(**changes: object) -> QuantumConfiguration:
    """No keepalives, no FEC unless asked: only what a test sends is on the wire."""
    values: dict[str, object] = {"keepalive_interval": None, "fec": None}
    values.update(changes)
    return QuantumConfiguration(**values)  # type: ignore[arg-type]


@dataclass
class Pair:
    """An established client and server connection, driven by hand at `now`."""

    client: Connection
    server: Connection
    now: float
    #: the largest datagram the path carries: larger ones vanish (as a path MTU would)
    mtu: int = 1472
    client_events: list[Event] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)

    def pull(self, conn: Connection) -> list[bytes]:
        return [d for d, _ in conn.datagrams_to_send(self.now)]

    def events(self) -> None:
        for conn, events in ((self.client, self.client_events),
                             (self.server, self.server_events)):
            while (event := conn.next_event()) is not None:
                events.append(event)

    def to_server(self, datagrams: list[bytes], addr: tuple[str, int] = CLIENT_ADDR) -> None:
        for d in datagrams:
            if len(d) <= self.mtu:
                self.server.receive_datagram(d, addr, self.now)
        self.events()

    def to_client(self, datagrams: list[bytes]) -> None:
        for d in datagrams:
            if len(d) <= self.mtu:
                self.client.receive_datagram(d, SERVER_ADDR, self.now)
        self.events()

    def settle(self, rounds: int = 20) -> None:
        """Exchange datagrams at `now` until neither side has any to send."""
        for _ in range(rounds):
            up, down = self.pull(self.client), self.pull(self.server)
            if not up and not down:
                return
            self.to_server(up)
            self.to_client(down)
        raise AssertionError("the pair did not settle")

    def closed(self, conn: Connection) -> list[ConnectionClosed]:
        events = self.client_events if conn is self.client else self.server_events
        return [e for e in events if isinstance(e, ConnectionClosed)]


def established(config: QuantumConfiguration | None = None, start: float = 100.0,
                rtt: float = 0.02, credentials: Credentials = ALICE, mtu: int = 1472,
                carry: bool = False) -> Pair:
    """A handshake driven by hand from `start` (each flight `rtt / 2` one way), then every
    acknowledgement settled: nothing in flight either way, no ACK owed."""
    cfg = config or quiet_config()
    server_side = SimulatedServer.create(cfg)
    endpoint = server_side.endpoint
    now = start
    client = Connection.client(SERVER_ADDR, credentials, now, configuration=cfg, carry=carry)
    server: Connection | None = None
    for _ in range(20):
        up = [d for d, _ in client.datagrams_to_send(now)]
        now += rtt / 2
        down: list[bytes] = []
        for d in up:
            if len(d) > mtu:
                continue
            conn = endpoint.route(d)
            if conn is not None:
                conn.receive_datagram(d, CLIENT_ADDR, now)
                continue
            replies, new = endpoint.handshake(d, CLIENT_ADDR, now)
            down += [r for r, _ in replies]
            if new is not None:
                endpoint.add(new.connection_id, new)
                server = new
        if server is not None:
            while (event := server.next_event()) is not None:
                if type(event).__name__ == "AuthenticationRequested":
                    server.accept(server.connection_id, "token-x", 1800.0)
            down += [d for d, _ in server.datagrams_to_send(now)]
        now += rtt / 2
        was = client.state
        for d in down:
            if len(d) <= mtu:  # the path's MTU holds both ways
                client.receive_datagram(d, SERVER_ADDR, now)
        if was is not ConnectionState.ESTABLISHED and client.state is ConnectionState.ESTABLISHED:
            # the path MTU search may start at once: the timer says now
            assert client.get_timer() == now
        while client.next_event() is not None:
            pass
        if (server is not None and client.state is ConnectionState.ESTABLISHED
                and not up and not down):
            break
    assert server is not None
    assert client.state is server.state is ConnectionState.ESTABLISHED
    pair = Pair(client, server, now, mtu=mtu)
    # the acknowledgements each side owes, and their delay: nothing left outstanding
    pair.now += cfg.max_ack_delay
    pair.settle()
    pair.events()
    pair.client_events.clear()
    pair.server_events.clear()
    if mtu == 1472:  # else the client's first probe is still out, lost
        assert not client._flight.bytes_in_flight and not server._flight.bytes_in_flight
    return pair


def established_fec(fec: tuple[int, int] = (2, 1), mtu: int = 1472) -> Pair:
    """FEC negotiated, with a target loss so low that any measured loss opens groups."""
    return established(quiet_config(fec=fec, fec_target_loss=1e-6),
                       credentials=Credentials(user_id="alice", fec=fec), mtu=mtu)


def state(conn: Connection) -> ConnectionState:
    """The state now (a call, so that mypy does not keep an earlier narrowing)."""
    return conn.state


def flags_of(datagram: bytes) -> int:
    return decode_header(datagram)[1]


def pn_of(datagram: bytes) -> int:
    return decode_header(datagram)[3]


# ---------------------------------------------------------------- handshake counters


def test_every_handshake_datagram_is_counted_with_its_size() -> None:
    """The SYN, and each resend of it, is one packet and its bytes in the stats."""
    config = quiet_config(handshake_timeout=5.0, handshake_tries=5)
    client = Connection.client(SERVER_ADDR, ALICE, 100.0, configuration=config)
    out = client.datagrams_to_send(100.0)
    assert [a for _, a in out] == [SERVER_ADDR]
    syn = [d for d, _ in out]
    assert (client.stats.packets_sent, client.stats.bytes_sent) == (1, len(syn[0]))
    resend_at = client.get_timer()
    assert resend_at == 101.0  # 5 s over 5 tries
    client.handle_timer(resend_at)
    again = [d for d, _ in client.datagrams_to_send(resend_at)]
    assert len(again) == 1
    assert (client.stats.packets_sent, client.stats.bytes_sent) == (
        2, len(syn[0]) + len(again[0]))


def test_the_finishing_ack_is_counted_with_its_size() -> None:
    """The ACK that answers the server's hello (the credentials) is one packet and its
    bytes in the stats, as the SYN was."""
    config = quiet_config()
    listener = SimulatedServer.create(config).endpoint
    client = Connection.client(SERVER_ADDR, ALICE, 100.0, configuration=config)
    (syn, _), = client.datagrams_to_send(100.0)
    (hello, _), = listener.handshake(syn, CLIENT_ADDR, 100.01)[0]
    client.receive_datagram(hello, SERVER_ADDR, 100.02)
    assert state(client) is ConnectionState.AWAIT_ACCEPT
    (finish, _), = client.datagrams_to_send(100.02)
    assert flags_of(finish) == ACK
    assert (client.stats.packets_sent, client.stats.bytes_sent) == (2, len(syn) + len(finish))


def test_the_handshake_times_out_at_its_deadline_as_the_clients_own_close() -> None:
    config = quiet_config(handshake_timeout=5.0, handshake_tries=5)
    client = Connection.client(SERVER_ADDR, ALICE, 100.0, configuration=config)
    client.datagrams_to_send(100.0)
    while (t := client.get_timer()) is not None and t < 105.0:
        client.handle_timer(t)
        client.datagrams_to_send(t)
    assert state(client) is ConnectionState.SYN_SENT
    assert client.get_timer() == 105.0
    client.handle_timer(105.0)
    assert state(client) is ConnectionState.CLOSED
    assert (client.close_code, client.close_reason) == (CloseCode.HANDSHAKE_TIMEOUT,
                                                        "handshake timeout")
    assert client.next_event() == ConnectionClosed(CloseCode.HANDSHAKE_TIMEOUT,
                                                   "handshake timeout", False)
    assert client.get_timer() is None


def test_a_handshake_only_a_wrong_server_answered_ends_as_bad_server_key() -> None:
    """The timeout reports the wrong key (10.2): HandshakeRejected, then the close, both
    naming BAD_SERVER_KEY and why."""
    config = quiet_config(handshake_timeout=1.0, handshake_tries=1)
    server_side = SimulatedServer.create(config)
    client = Connection.client(SERVER_ADDR, ALICE, 100.0, configuration=config,
                               server_key=bytes(32))
    for d, _ in client.datagrams_to_send(100.0):
        replies, _ = server_side.endpoint.handshake(d, CLIENT_ADDR, 100.01)
        for r, _ in replies:
            client.receive_datagram(r, SERVER_ADDR, 100.02)
    assert client.stats.drops.get("bad_server_key") == 1
    client.handle_timer(101.0)
    rejected = client.next_event()
    assert isinstance(rejected, HandshakeRejected)
    assert rejected.code == CloseCode.BAD_SERVER_KEY and rejected.reason
    assert client.next_event() == ConnectionClosed(CloseCode.BAD_SERVER_KEY, rejected.reason,
                                                   False)
    assert (client.close_code, client.close_reason) == (CloseCode.BAD_SERVER_KEY,
                                                        rejected.reason)


# ---------------------------------------------------------------- the timer: idle


def test_the_idle_timeout_fires_exactly_at_its_deadline() -> None:
    pair = established(quiet_config(idle_timeout=7.0))
    client = pair.client
    deadline = client.last_received_at + 7.0
    assert client.get_timer() == deadline
    client.handle_timer(deadline - 1e-6)
    assert state(client) is ConnectionState.ESTABLISHED
    assert client.refresh_stats().pmtu_probes_lost == 0  # no probe out: none to write off
    client.handle_timer(deadline)
    assert state(client) is ConnectionState.CLOSED
    assert client.next_event() == ConnectionClosed(CloseCode.IDLE_TIMEOUT, "idle timeout",
                                                   False)
    assert (client.close_code, client.close_reason) == (CloseCode.IDLE_TIMEOUT,
                                                        "idle timeout")


def test_a_closed_connection_sends_nothing_more_whatever_was_queued() -> None:
    pair = established(quiet_config(idle_timeout=7.0))
    client = pair.client
    deadline = client.last_received_at + 7.0
    client.send(b"too late")
    client.handle_timer(deadline)
    assert state(client) is ConnectionState.CLOSED
    assert client.datagrams_to_send(deadline) == []
    client.handle_timer(deadline + 100.0)  # nothing acts once closed
    assert client.datagrams_to_send(deadline + 100.0) == []
    assert client.get_timer() is None


def drive(conn: Connection, until: float) -> list[tuple[float, bytes, tuple[str, int]]]:
    """Run `conn`'s timer alone (nothing delivered to it) until `until`, holding it to its
    promise: at each `get_timer()` the connection acts (sends, or closes) or names a later
    moment. Returns what it sent, with when and where."""
    sent: list[tuple[float, bytes, tuple[str, int]]] = []
    while (t := conn.get_timer()) is not None and t <= until:
        conn.handle_timer(t)
        conn.get_timer()  # allowed before the pull too
        out = conn.datagrams_to_send(t)
        sent += [(t, d, a) for d, a in out]
        after = conn.get_timer()
        assert out or after is None or after > t, f"the timer named {t} and nothing happened"
    return sent


# ---------------------------------------------------------------- the timer: each deadline


def test_the_close_deadline_ends_a_close_whose_fin_is_never_acknowledged() -> None:
    pair = established(quiet_config(close_timeout=3.0))
    client = pair.client
    client.close("bye")
    fin = pair.pull(client)
    assert len(fin) == 1 and flags_of(fin[0]) == ACK | FIN
    assert state(client) is ConnectionState.CLOSING
    sent = drive(client, pair.now + 3.0 - 1e-6)
    assert sent and all(flags_of(d) & FIN for _, d, _ in sent)  # the FIN, retransmitted
    assert state(client) is ConnectionState.CLOSING
    assert client.get_timer() == pair.now + 3.0
    client.handle_timer(pair.now + 3.0)
    assert state(client) is ConnectionState.CLOSED
    pair.events()
    assert pair.closed(client) == [ConnectionClosed(CloseCode.NORMAL, "bye", False)]


def test_a_fin_is_acknowledged_and_the_peer_closes_with_its_code_and_reason() -> None:
    pair = established()
    pair.client.close("bye", CloseCode.SESSION_ENDED)
    pair.to_server(pair.pull(pair.client))
    assert state(pair.server) is ConnectionState.CLOSED
    assert pair.closed(pair.server) == [ConnectionClosed(CloseCode.SESSION_ENDED, "bye", True)]
    ack = pair.pull(pair.server)
    assert len(ack) == 1 and flags_of(ack[0]) == ACK
    pair.to_client(ack)
    assert state(pair.client) is ConnectionState.CLOSED  # its FIN acknowledged
    assert pair.closed(pair.client) == [ConnectionClosed(CloseCode.SESSION_ENDED, "bye", False)]


def stalled_client(origin: float, peer_talks_at: float) -> Pair:
    """A client whose first packet after the handshake leaves at `origin` and is never
    acknowledged; the server sends it one message at `peer_talks_at`."""
    # the handshake just before `origin` (at `origin` itself, in no time, when that is 0)
    pair = established(quiet_config(stall_timeout=2.0), start=max(0.0, origin - 1.0),
                       rtt=min(0.02, origin))
    pair.now = origin
    pair.client.send(b"never acknowledged")
    assert pair.pull(pair.client)  # lost
    pair.now = peer_talks_at
    pair.server.send(b"still talking")
    pair.to_client(pair.pull(pair.server))
    assert [e.data for e in pair.client_events if isinstance(e, MessageReceived)] == [
        b"still talking"]
    return pair


def test_a_peer_that_talks_but_acknowledges_nothing_is_aborted_at_the_stall_timeout() -> None:
    """Stall clock from the first unacknowledged packet, at time 0.0 (the clock's start)."""
    pair = stalled_client(0.0, 0.5)
    client = pair.client
    sent = drive(client, 2.0 - 1e-6)
    assert state(client) is ConnectionState.ESTABLISHED and sent  # retransmissions
    sent = drive(client, 2.0)
    assert state(client) is ConnectionState.CLOSED
    assert [flags_of(d) & RST for t, d, _ in sent if t == 2.0] == [RST]
    reason = "peer acknowledged nothing for 2 s"
    pair.events()
    assert pair.closed(client) == [ConnectionClosed(CloseCode.STALLED, reason, False)]
    assert (client.close_code, client.close_reason) == (CloseCode.STALLED, reason)


def test_the_stall_clock_starts_at_a_fractional_time_too() -> None:
    pair = stalled_client(0.5, 0.75)
    drive(pair.client, 2.5 - 1e-6)
    assert state(pair.client) is ConnectionState.ESTABLISHED
    drive(pair.client, 2.5)
    assert pair.client.close_code == CloseCode.STALLED


def test_a_peer_silent_since_the_packet_is_left_to_the_idle_timeout_not_the_stall() -> None:
    """Its last word came at the very moment our unacknowledged packet left: not after."""
    pair = stalled_client(0.5, 0.5)
    drive(pair.client, 10.0)
    assert state(pair.client) is ConnectionState.ESTABLISHED


def test_a_lost_packet_is_retransmitted_exactly_at_the_loss_deadline() -> None:
    pair = established()
    client = pair.client
    client.send(b"lost once")
    assert pair.pull(client)
    deadline = client.get_timer()
    assert deadline is not None and deadline < client.last_received_at + 60.0
    client.handle_timer(deadline - 1e-6)
    assert client.datagrams_to_send(deadline - 1e-6) == []
    assert client.stats.timeout_retransmits == 0
    client.handle_timer(deadline)
    again = [d for d, _ in client.datagrams_to_send(deadline)]
    assert len(again) == 1 and client.stats.timeout_retransmits == 1
    assert client.stats.packets_lost == 1
    pair.now = deadline
    pair.to_server(again)
    assert [e.data for e in pair.server_events if isinstance(e, MessageReceived)] == [
        b"lost once"]


def test_every_protected_datagram_is_counted_with_its_size() -> None:
    pair = established()
    client = pair.client
    packets, size = client.stats.packets_sent, client.stats.bytes_sent
    client.send(bytes(3000))
    out = pair.pull(client)
    assert len(out) == 3
    assert client.stats.packets_sent == packets + 3
    assert client.stats.bytes_sent == size + sum(len(d) for d in out)


def test_each_retransmission_timeout_is_counted() -> None:
    pair = established()
    client = pair.client
    client.send(b"lost twice")
    pair.pull(client)
    sent = drive(client, pair.now + 1.5)
    assert len(sent) >= 2
    assert client.stats.timeout_retransmits == len(sent)


def test_an_owed_ack_leaves_alone_at_its_deadline() -> None:
    pair = established()
    pair.client.send(b"ack me")
    pair.to_server(pair.pull(pair.client))
    server = pair.server
    assert server.datagrams_to_send(pair.now) == []  # held for the ack delay
    deadline = server.get_timer()
    assert deadline is not None and pair.now < deadline <= pair.now + 0.025
    assert server.datagrams_to_send(deadline - 1e-6) == []
    server.handle_timer(deadline)
    ack = [d for d, _ in server.datagrams_to_send(deadline)]
    assert len(ack) == 1 and flags_of(ack[0]) == ACK
    assert server.stats.packets_sent == server.stats.packets_sent  # counted below
    pair.now = deadline
    before = pair.client.stats.packets_received
    pair.to_client(ack)
    assert pair.client.stats.packets_received == before + 1
    assert not pair.client._flight.bytes_in_flight  # what it acknowledged left the flight


def test_a_path_challenge_goes_to_the_new_address_and_again_at_its_deadline() -> None:
    pair = established()
    pair.client.send(b"from elsewhere")
    pair.to_server(pair.pull(pair.client), addr=OTHER_ADDR)
    server = pair.server
    out = server.datagrams_to_send(pair.now)
    assert [a for _, a in out] == [OTHER_ADDR]  # the challenge; the ACK is held
    sent = drive(server, pair.now + 5.0)
    to_other = [t for t, _, a in sent if a == OTHER_ADDR]
    assert len(to_other) >= 1
    assert server.peer_addr == CLIENT_ADDR  # nothing validated the new path


def test_each_keepalive_leaves_on_its_interval_and_measures_its_round_trip() -> None:
    pair = established(quiet_config(keepalive_interval=1.0))
    client = pair.client
    due = client.get_timer()
    assert due is not None
    client.handle_timer(due - 1e-6)
    assert client.datagrams_to_send(due - 1e-6) == []
    client.handle_timer(due)
    out = [d for d, _ in client.datagrams_to_send(due)]
    assert len(out) == 1
    pair.now = due
    pair.to_server(out)
    received = [e for e in pair.server_events if type(e).__name__ == "KeepaliveReceived"]
    assert len(received) == 1
    pair.server.acknowledge_keepalive(received[0].keepalive_id, 100.0)  # type: ignore[attr-defined]
    pair.settle()
    assert client.get_timer() == due + 1.0  # the interval runs from this one


def test_an_asked_keepalive_times_its_round_trip_from_when_it_really_left() -> None:
    pair = established()
    client = pair.client
    asked_at = pair.now
    kid = client.send_keepalive()
    pair.now = asked_at + 0.5  # the owner pulls its datagrams only now
    out = pair.pull(client)
    pair.now += 0.01
    pair.to_server(out)
    pair.server.acknowledge_keepalive(kid, 100.0)
    pair.now += 0.01
    pair.to_client(pair.pull(pair.server))
    answers = [e for e in pair.client_events if type(e).__name__ == "KeepaliveAcknowledged"]
    assert len(answers) == 1
    assert answers[0].keepalive_id == kid  # type: ignore[attr-defined]
    assert abs(answers[0].rtt - 0.02) < 1e-9  # type: ignore[attr-defined]


# ---------------------------------------------------------------- pacing and windows


def test_a_message_queued_between_pulls_makes_the_timer_now() -> None:
    pair = established()
    pair.client.send(b"go")
    assert pair.client.get_timer() == pair.now


@pytest.mark.parametrize("start", [100.0, 0.4], ids=["at-100-s", "below-1-s"])
def test_the_first_burst_stops_once_half_the_window_is_in_flight(start: float) -> None:
    pair = established(start=start)
    client = pair.client
    half = client.refresh_stats().cwnd >> 1
    client.send(bytes(40000))
    sizes = [len(d) for d in pair.pull(client)]
    assert sum(sizes[:-1]) < half <= sum(sizes)
    t = client.get_timer()
    assert t is not None and pair.now < t < pair.now + 0.1  # the pacer's release
    assert client.datagrams_to_send(t - 1e-9) == []
    assert len(client.datagrams_to_send(t)) >= 1


def test_a_flight_at_exactly_half_the_window_is_paced() -> None:
    pair = established()
    client = pair.client
    half = client.refresh_stats().cwnd >> 1
    client.send(bytes(7706))  # five full packets and one of what is left: exactly half
    pair.pull(client)
    assert client._flight.bytes_in_flight == half  # the boundary itself (not in the stats)
    client.send(b"next")
    assert pair.pull(client) == []
    t = client.get_timer()
    assert t is not None and t > pair.now
    assert len(client.datagrams_to_send(t)) == 1


def test_the_send_window_holds_data_and_pure_acks_until_acknowledged() -> None:
    """6.4: no packet number beyond the window, not even for a pure ACK."""
    pair = established(quiet_config(window=16))
    client, server = pair.client, pair.server
    for i in range(40):
        client.send(b"m%d" % i)
        pair.pull(client)  # lost
    server.send(b"owes an ack")
    pair.to_client(pair.pull(server))
    pair.now += 0.1  # past the ack's (held) delay, before any retransmission timeout
    client.handle_timer(pair.now)
    assert pair.pull(client) == []  # the window is full: no pure ACK either
    assert client.stats.timeout_retransmits == 0


def test_control_frames_fill_packets_in_order_each_sent_once() -> None:
    pair = established()
    server = pair.server
    for kid in range(1, 301):
        server.acknowledge_keepalive(kid, 50.0)
    out = pair.pull(server)
    assert 1 < len(out) < 10
    pair.to_client(out)
    acked = [e.keepalive_id for e in pair.client_events  # type: ignore[attr-defined]
             if type(e).__name__ == "KeepaliveAcknowledged"]
    assert acked == list(range(1, 301))


def test_control_frames_and_a_message_share_packets_and_all_arrive() -> None:
    pair = established()
    server = pair.server
    for kid in range(1, 151):
        server.acknowledge_keepalive(kid, 50.0)
        server.send(bytes(kid))
    for _ in range(100):
        pair.now += 0.005
        pair.settle()
    acked = [e.keepalive_id for e in pair.client_events  # type: ignore[attr-defined]
             if type(e).__name__ == "KeepaliveAcknowledged"]
    assert acked == list(range(1, 151))
    assert [len(e.data) for e in pair.client_events if isinstance(e, MessageReceived)] == list(
        range(1, 151))


def test_a_fin_leaves_at_once_when_everything_sent_was_acknowledged() -> None:
    pair = established()
    pair.client.send(b"acknowledged first")
    pair.settle()
    pair.now += 0.05
    pair.settle()
    pair.client.close("done")
    fin = pair.pull(pair.client)
    assert [flags_of(d) for d in fin] == [ACK | FIN]


def test_a_search_that_finds_nothing_larger_names_the_next_one_and_acts_on_it() -> None:
    """Every RAISE_INTERVAL the path MTU search runs again; at the largest size already it
    ends at once, and the timer moves on (never a moment nothing happens)."""
    pair = established(quiet_config(idle_timeout=5000.0))
    drive(pair.client, pair.now + 1300.0)
    assert state(pair.client) is ConnectionState.ESTABLISHED


def test_what_was_sent_stays_in_the_send_buffer_until_acknowledged() -> None:
    pair = established()
    client = pair.client
    client.send(bytes(3000))
    client.send(bytes(500))
    out = pair.pull(client)
    assert client.send_buffered == 3500  # sent, every fragment counted, not acknowledged
    pair.to_server(out)
    pair.now += 0.03
    pair.settle()
    assert client.send_buffered == 0


def test_no_more_packets_than_the_send_window_are_outstanding() -> None:
    pair = established(quiet_config(window=16))
    client = pair.client
    sent = 0
    for i in range(40):
        client.send(b"m%d" % i)
        sent += len(pair.pull(client))
    assert 0 < sent <= 16
    assert client.get_timer() != pair.now  # the rest waits for an acknowledgement


def test_a_fin_goes_out_with_fec_negotiated_and_nothing_owed() -> None:
    pair = established_fec()
    pair.client.close("done")
    assert [flags_of(d) for d in pair.pull(pair.client)] == [ACK | FIN]


def test_no_path_mtu_probe_before_the_handshake_is_complete() -> None:
    """A client holding keys but not yet accepted (AWAIT_ACCEPT) sends no probe (10.1)."""
    config = quiet_config()
    server_side = SimulatedServer.create(config)
    client = Connection.client(SERVER_ADDR, ALICE, 100.0, configuration=config)
    for d, _ in client.datagrams_to_send(100.0):
        replies, _ = server_side.endpoint.handshake(d, CLIENT_ADDR, 100.01)
        for r, _ in replies:
            client.receive_datagram(r, SERVER_ADDR, 100.02)
    assert state(client) is ConnectionState.AWAIT_ACCEPT
    for t in (100.02, 100.5, 101.0):
        client.handle_timer(t)
        client.datagrams_to_send(t)
    assert client.refresh_stats().pmtu_probes_sent == 0


def finish_the_searches(pair: Pair) -> None:
    """Exchange datagrams (larger ones than the path's MTU vanish) and act on each timer
    until both ends' path MTU searches have ended."""
    client, server = pair.client, pair.server
    for _ in range(200):
        if not client._pmtu.searching and not server._pmtu.searching:
            return
        pair.now = min(t for t in (client.get_timer(), server.get_timer()) if t is not None)
        for conn in (client, server):
            t = conn.get_timer()
            if t is not None and t <= pair.now:
                conn.handle_timer(pair.now)
        pair.settle()
    raise AssertionError("the path MTU searches did not end")


@pytest.mark.parametrize("migrating", [False, True])
def test_no_path_mtu_probe_while_a_migration_is_validated(migrating: bool) -> None:
    """The next search (on a 1,300-byte path, so it has a larger size to try) probes at its
    time, unless a migration is being validated then."""
    pair = established(quiet_config(idle_timeout=5000.0), mtu=1300)
    finish_the_searches(pair)
    server = pair.server
    probes = server.refresh_stats().pmtu_probes_sent
    search_at = server.get_timer()  # nothing else pending: the next search
    assert search_at is not None and search_at > pair.now + 100.0
    pair.now = search_at - 0.001
    pair.client.send(b"from elsewhere")
    pair.to_server(pair.pull(pair.client), addr=OTHER_ADDR if migrating else CLIENT_ADDR)
    pair.now = search_at
    server.handle_timer(search_at)
    out = server.datagrams_to_send(search_at)
    assert server.refresh_stats().pmtu_probes_sent == probes + (not migrating)
    assert any(len(d) == 1472 for d, _ in out) is not migrating


def test_no_path_mtu_probe_takes_the_packet_number_the_graceful_close_starts_at() -> None:
    """A search falls due just after a pure ACK brought the next packet number to where the
    graceful close before the key limit starts (1,024): the close begins, and that number
    goes to the FIN, not to a probe."""
    pair = established(quiet_config(packets_per_key=2048, key_update=False,
                                    idle_timeout=5000.0), mtu=1300)
    finish_the_searches(pair)
    client, server = pair.client, pair.server
    search_at = client.get_timer()
    assert search_at is not None and search_at > pair.now + 100.0
    probes = client.refresh_stats().pmtu_probes_sent
    send_packets_until(pair, CLOSE_AT_PN - 2)
    server.send(b"one to acknowledge")
    pair.to_client(pair.pull(server))
    ack_at = client.get_timer()
    assert ack_at is not None and ack_at < search_at
    pair.now = ack_at
    client.handle_timer(ack_at)
    (ack,) = pair.pull(client)
    assert (pn_of(ack), flags_of(ack)) == (CLOSE_AT_PN - 1, ACK)
    assert state(client) is ConnectionState.ESTABLISHED
    sent = drive(client, search_at)
    assert [(t, pn_of(d), flags_of(d)) for t, d, _ in sent][:1] == [(search_at, CLOSE_AT_PN,
                                                                      ACK | FIN)]
    assert state(client) is ConnectionState.CLOSING
    assert client.refresh_stats().pmtu_probes_sent == probes


def fill_the_window(pair: Pair, sender: Connection, data: int = 200_000) -> None:
    """Give `sender` more than its congestion window holds, and pull what it sends through
    the pacer (to the wire, not delivered) until the window itself is full: its next timer is
    then more than a pacing step away."""
    sender.send(bytes(data))
    for _ in range(300):
        t = sender.get_timer()
        assert t is not None
        if t > pair.now + 0.05:
            return
        pair.now = t
        pair.pull(sender)
    raise AssertionError("the window never filled")


def test_an_owed_ack_leaves_even_while_the_congestion_window_holds_the_data() -> None:
    pair = established()
    client, server = pair.client, pair.server
    fill_the_window(pair, client)
    assert client.send_buffered > client.refresh_stats().cwnd
    server.send(b"owes an ack")
    pair.to_client(pair.pull(server))
    pair.now += 0.025
    client.handle_timer(pair.now)
    assert [flags_of(d) for d in pair.pull(client)] == [ACK]


def test_the_key_update_starts_exactly_at_its_packet_number() -> None:
    config = quiet_config(packets_per_key=2048, key_update_packets=20)
    pair = established(config)
    client = pair.client
    phases: list[tuple[int, int]] = []
    for i in range(40):
        client.send(b"k%d" % i)
        out = pair.pull(client)
        phases += [(pn_of(d), flags_of(d) & KEY_PHASE) for d in out]
        pair.to_server(out)
        pair.now += 0.03
        pair.settle()
    flips = [pn for (pn, phase), (_, before) in zip(phases[1:], phases, strict=False)
             if phase != before]
    # the first update point is key_update_packets + 1, each next one an interval later
    assert flips == [21, 41]
    assert client.key_generations[0] == 2


def test_a_flight_that_fills_exactly_a_packet_of_control_frames_takes_one_packet() -> None:
    """Control frames go while they fit: the one that fills the room exactly too."""
    pair = established()
    client = pair.client
    client.send_keepalive()
    client.send_keepalive()  # 2 x 5 bytes
    for kid in range(150):  # 150 x 9 bytes: 1,360, the room of a 1,472-byte datagram
        client.acknowledge_keepalive(kid, 10.0)
    out = pair.pull(client)
    assert len(out) == 1


def test_a_message_is_not_begun_in_the_last_nine_bytes_of_a_packet() -> None:
    """Only more room than a MESSAGE frame's own 9 bytes starts one: an empty message does
    not take the 9 bytes control frames left, it goes in the next packet."""
    pair = established()
    client = pair.client
    client.send_keepalive()
    client.send_keepalive()
    for kid in range(149):  # leaves exactly 9 bytes
        client.acknowledge_keepalive(kid, 10.0)
    client.send(b"")
    out = pair.pull(client)
    assert len(out) == 2


def test_a_search_due_mid_burst_waits_for_the_pacer_and_the_timer_says_so() -> None:
    pair = established(quiet_config(idle_timeout=5000.0))
    client = pair.client
    search_at = client.get_timer()
    assert search_at is not None and search_at > pair.now + 100.0
    pair.now = search_at - 0.0005
    client.send(bytes(40000))
    pair.pull(client)  # a paced burst: its release comes after the search time
    t = client.get_timer()
    assert t is not None and t > search_at
    assert client.datagrams_to_send(t)
    drive(client, t + 0.5)


def test_a_lost_probe_is_neither_a_loss_nor_a_retransmission() -> None:
    """On a path that carries only 1,200 bytes, each probe is lost: counted as a lost
    probe at its deadline, the datagram size stays, and no data is counted lost."""
    pair = established(quiet_config(), mtu=1200)
    client = pair.client
    assert client.refresh_stats().pmtu_probes_sent == 1
    for i in range(30):
        pair.now += 0.02
        client.send(b"d%d" % i)
        pair.settle()
        client.handle_timer(pair.now)
        pair.settle()
    stats = client.refresh_stats()
    assert stats.pmtu_probes_lost >= 1 and stats.pmtu_probes_sent >= 2
    assert stats.plpmtu == 1200
    assert stats.packets_lost == 0 and stats.retransmissions == 0


def test_each_lost_probe_is_counted_at_its_deadline() -> None:
    pair = established(quiet_config(), mtu=1200)
    client = pair.client
    sent = drive(client, pair.now + 3.0)
    stats = client.refresh_stats()
    assert stats.pmtu_probes_sent == 1 + len(sent)
    assert stats.pmtu_probes_lost == len(sent) >= 2
    assert all(len(d) > 1200 for _, d, _ in sent)  # only the probes, sent again


def test_sack_blocks_spare_the_packets_they_acknowledge_a_retransmission() -> None:
    pair = established()
    client, server = pair.client, pair.server
    out = []
    for i in range(4):
        server.send(b"s%d" % i)
        out += pair.pull(server)
    assert len(out) == 4
    pair.to_client([out[0], out[2], out[3]])  # the second lost
    pair.now += 0.03
    client.handle_timer(pair.now)
    ack = pair.pull(client)
    assert len(ack) == 1
    pair.to_server(ack)
    while not (resent := pair.pull(server)):  # to the first retransmission
        t = server.get_timer()
        assert t is not None
        pair.now = t
        server.handle_timer(t)
    assert len(resent) == 1
    assert server.stats.retransmissions == 1  # only the one the SACK did not cover
    pair.to_client(resent)
    got = [e.data for e in pair.client_events if isinstance(e, MessageReceived)]
    assert got == [b"s0", b"s1", b"s2", b"s3"]


def test_a_probe_is_exactly_its_size_with_sack_blocks_in_it() -> None:
    pair = established(quiet_config(), mtu=1200)
    client, server = pair.client, pair.server
    out = []
    for i in range(4):
        server.send(b"s%d" % i)
        out += pair.pull(server)
    pair.to_client([out[0], out[2]])  # a hole: the client's acks carry a SACK block
    sent = drive(client, pair.now + 3.0)
    probes = [d for _, d, _ in sent if len(d) > 1200]
    assert probes and len(probes[0]) == 1472  # the first size, tried again


def lose_one(pair: Pair) -> None:
    """One client packet lost and retransmitted: the loss FEC's policy measures."""
    client = pair.client
    client.send(b"lost once")
    out = pair.pull(client)
    while not client.stats.packets_lost:
        t = client.get_timer()
        assert t is not None
        pair.now = t
        client.handle_timer(t)
        out = pair.pull(client)  # lost too, until the message's loss is declared
    pair.to_server(out)  # its retransmission arrives
    pair.now += 0.03
    pair.settle()
    assert client.stats.packets_lost >= 1
    pair.server_events.clear()


def test_acknowledged_packets_bring_the_measured_loss_back_down() -> None:
    """FEC's loss meter hears every fate: a loss raises it, and each packet acknowledged
    after it lowers it again (an acknowledgement is a zero in the loss average)."""
    pair = established_fec()
    lose_one(pair)
    fec = pair.client._fec
    assert fec is not None
    after_the_loss = fec.meter.loss
    assert after_the_loss > 0.0
    for i in range(20):
        pair.client.send(b"update %d" % i)
        pair.now += 0.05
        pair.settle()
    assert pair.client.stats.packets_lost == 1
    assert 0.0 < fec.meter.loss < after_the_loss


def test_after_a_loss_data_is_sent_in_groups_whose_parity_recovers_a_lost_packet() -> None:
    pair = established_fec()
    client, server = pair.client, pair.server
    lose_one(pair)
    parity_before = client.stats.fec_parity_sent
    client.send(b"g0" + bytes(1200))
    client.send(b"g1" + bytes(1200))  # too large to share the first packet: one each
    out = pair.pull(client)
    data = [d for d in out if not flags_of(d) & FEC]
    parity = [d for d in out if flags_of(d) & FEC]
    assert [flags_of(d) for d in data] == [ACK | PSH, ACK | PSH]
    assert [flags_of(d) for d in parity] == [ACK | FEC]
    assert client.stats.fec_parity_sent == parity_before + 1
    pair.to_server(data[1:] + parity)  # the first data packet lost
    got = [e.data[:2] for e in pair.server_events if isinstance(e, MessageReceived)]
    assert got == [b"g0", b"g1"]
    assert server.stats.fec_recovered == 1


def test_a_partial_group_is_closed_when_the_sender_runs_dry_and_its_parity_sent() -> None:
    pair = established_fec()
    client = pair.client
    lose_one(pair)
    parity_before = client.stats.fec_parity_sent
    client.send(b"alone" + bytes(100))
    out = pair.pull(client)
    assert [flags_of(d) for d in out] == [ACK | PSH, ACK | FEC]
    pair.to_server(out[1:])  # only the parity arrives
    assert [e.data[:5] for e in pair.server_events if isinstance(e, MessageReceived)] == [
        b"alone"]
    assert client.stats.fec_parity_sent == parity_before + 1


def test_a_packet_of_control_frames_alone_joins_no_fec_group() -> None:
    pair = established_fec()
    lose_one(pair)
    pair.client.acknowledge_keepalive(7, 10.0)
    assert [flags_of(d) for d in pair.pull(pair.client)] == [ACK]


@pytest.mark.parametrize(("fec", "mtu", "holes"), [((2, 1), 1472, 6), ((10, 1), 1200, 2)],
                         ids=["room-for-5-blocks", "room-for-1-block"])
def test_a_full_parity_packet_carries_as_many_sack_blocks_as_fit(
        fec: tuple[int, int], mtu: int, holes: int) -> None:
    """Parity around a full-size payload leaves less room than a data packet: the most
    recent SACK blocks that fit go, never a datagram larger than the size in use."""
    pair = established_fec(fec, mtu)
    client, server = pair.client, pair.server
    lose_one(pair)
    down = []
    for i in range(2 * holes + 1):
        server.send(b"s%d" % i)
        down += pair.pull(server)
    pair.to_client(down[::2])  # every other one lost: `holes` SACK blocks owed
    client.send(bytes(fec[0] * 1400))  # full-size packets, a group of them
    parity: list[bytes] = []
    for _ in range(100):
        out = pair.pull(client)
        assert all(len(d) <= mtu for d in out if flags_of(d) & (FEC | PSH))  # probes aside
        parity += [d for d in out if flags_of(d) & FEC]
        if parity:
            break
        t = client.get_timer()
        assert t is not None
        pair.now = t
        client.handle_timer(t)
    assert parity
    assert mtu - 8 < len(parity[0]) <= mtu  # filled up to within one block


def test_nothing_but_the_handshake_leaves_before_the_server_accepts() -> None:
    """10.1: a message sent in AWAIT_ACCEPT (client) or AUTHENTICATING (server) is only
    queued, and leaves once established."""
    config = quiet_config()
    server_side = SimulatedServer.create(config)
    endpoint = server_side.endpoint
    client = Connection.client(SERVER_ADDR, ALICE, 100.0, configuration=config)
    server: Connection | None = None
    for d, _ in client.datagrams_to_send(100.0):
        replies, _ = endpoint.handshake(d, CLIENT_ADDR, 100.01)
        for r, _ in replies:
            client.receive_datagram(r, SERVER_ADDR, 100.02)
    assert state(client) is ConnectionState.AWAIT_ACCEPT
    client.send(b"early")
    finishing = [d for d, _ in client.datagrams_to_send(100.02)]
    assert len(finishing) == 1  # the finishing handshake packet only
    for d in finishing:
        _, new = endpoint.handshake(d, CLIENT_ADDR, 100.03)
        assert new is not None
        server = new
    assert server is not None and state(server) is ConnectionState.AUTHENTICATING
    server.send(b"early too")
    assert server.datagrams_to_send(100.03) == []
    client.handle_timer(100.5)
    assert all(flags_of(d) & 0x01 == 0 or True for d, _ in client.datagrams_to_send(100.5))
    assert client.stats.messages_sent == 1 and server.stats.messages_sent == 1


def lossy_probe_pair() -> tuple[Pair, float, float]:
    """A 300 ms RTT (a retransmission timeout above the probes' 200 ms floor, so a probe's
    own deadline and the timer's meet) on a path that carries only 1,200 bytes: the first
    probe is lost. Returns the pair, when the probe left and its deadline."""
    pair = established(quiet_config(stall_timeout=2.0), mtu=1200, rtt=0.3)
    deadline = pair.client.get_timer()
    assert deadline is not None and pair.client.refresh_stats().pmtu_probes_sent == 1
    return pair, pair.now, deadline


def test_a_lost_probe_does_not_back_off_the_retransmission_timer() -> None:
    pair, _, first = lossy_probe_pair()
    client = pair.client
    deadlines = [first]
    for tries in (1, 2):
        client.handle_timer(deadlines[-1])
        again = client.datagrams_to_send(deadlines[-1])  # the same size tried again
        assert len(again) == 1 and len(again[0][0]) > 1200
        assert client.refresh_stats().pmtu_probes_lost == tries
        next_deadline = client.get_timer()
        assert next_deadline is not None
        deadlines.append(next_deadline)
    assert client.stats.timeout_retransmits == 0
    # each probe waited the same timeout: none of their losses backed the timer off
    assert abs((deadlines[2] - deadlines[1]) - (deadlines[1] - deadlines[0])) < 1e-9


def test_a_lost_probe_does_not_restart_the_stall_clock_of_data_still_owed() -> None:
    """The stall clock runs from the first unacknowledged packet (the probe): writing the
    probe off while data is still outstanding leaves it running."""
    pair, sent_at, _ = lossy_probe_pair()
    client, server = pair.client, pair.server
    client.send(b"never acknowledged")
    pair.pull(client)  # lost, and so is everything the client sends from here
    pair.now = sent_at + 0.1
    server.send(b"still talking")
    pair.to_client(pair.pull(server))
    drive(client, sent_at + 2.0)
    assert client.close_code == CloseCode.STALLED


def test_a_probe_timing_out_before_the_backed_off_retransmission_timer_is_acted_on() -> None:
    """A data packet's timeout backs the retransmission timer off; the probe sent after it
    keeps its own deadline, which the timer names and `handle_timer` acts on."""
    pair, _, first = lossy_probe_pair()
    client = pair.client
    pair.now = first - 0.1
    client.send(b"lost")
    pair.pull(client)
    drive(client, first + 4.0)
    assert client.get_timer() is not None
    stats = client.refresh_stats()
    assert stats.pmtu_probes_lost >= 3 and stats.timeout_retransmits >= 1


KEY_LIMIT_CONFIG = quiet_config(packets_per_key=2048, key_update=False)
#: the graceful close starts at packets_per_key - KEY_LIMIT_HEADROOM (1,024)
CLOSE_AT_PN = 2048 - 1024


def send_packets_until(pair: Pair, last_pn: int) -> list[bytes]:
    """Small client packets, one control frame each (KEEPALIVE_ACK: nothing a closing
    connection refuses, and not ack-eliciting, so none needs an acknowledgement), until it
    has sent packet number `last_pn` or closed; nothing is delivered. Whenever the send
    window is full (behind a packet still outstanding), on to the retransmission timeout.
    Returns everything the client sent."""
    client = pair.client
    sent: list[bytes] = []
    while (not sent or pn_of(sent[-1]) < last_pn) and state(client) is not ConnectionState.CLOSED:
        client.acknowledge_keepalive(1, 1.0)
        out = pair.pull(client)
        if not out:
            t = client.get_timer()
            assert t is not None
            pair.now = t
            client.handle_timer(t)
            out = pair.pull(client)
        sent.extend(out)
    return sent


def test_the_graceful_close_starts_at_the_keys_packet_limit_less_the_headroom() -> None:
    pair = established(KEY_LIMIT_CONFIG)
    client = pair.client
    send_packets_until(pair, CLOSE_AT_PN - 2)
    assert state(client) is ConnectionState.ESTABLISHED
    client.send(b"the last before the limit")
    out = pair.pull(client)
    # that packet brings the next packet number to the limit: the close begins
    assert [pn_of(d) for d in out] == [CLOSE_AT_PN - 1]
    assert state(client) is ConnectionState.CLOSING
    assert (client.close_code, client.close_reason) == (
        CloseCode.KEYS_EXHAUSTED, "packet protection limit reached: reconnect")
    pair.to_server(out)
    assert [e.data for e in pair.server_events if isinstance(e, MessageReceived)][-1] == (
        b"the last before the limit")


def test_no_packet_is_sealed_past_the_keys_packet_limit() -> None:
    """A closing connection (its FIN held back by a message never acknowledged) seals
    packet 2,047, the last the key allows, and then ends at once with KEYS_EXHAUSTED."""
    pair = established(KEY_LIMIT_CONFIG)
    client = pair.client
    client.send(b"never acknowledged")  # outstanding all along: no FIN is due
    pair.pull(client)
    client.close("going")
    sent = send_packets_until(pair, 2047)
    assert state(client) is ConnectionState.CLOSED
    assert max(pn_of(d) for d in sent) == 2047
    assert (client.close_code, client.close_reason) == (
        CloseCode.KEYS_EXHAUSTED, "packet protection limit reached")


@pytest.mark.parametrize("now", [-100.0, -1e-9, float("nan")])
def test_a_connection_on_a_clock_below_zero_is_refused(now: float) -> None:
    """The module docstring: `now` counts from 0 or more (-1 marks "never" inside)."""
    with pytest.raises(ValueError, match="now must be a monotonic time of 0 or more"):
        Connection.client(SERVER_ADDR, ALICE, now, configuration=quiet_config())


def test_a_clock_from_zero_carries_a_large_message() -> None:
    pair = established(start=0.0)
    pair.client.send(bytes(40000))
    for _ in range(200):
        pair.settle()
        t = min(t for t in (pair.client.get_timer(), pair.server.get_timer()) if t is not None)
        pair.now = max(pair.now, t)
        pair.client.handle_timer(pair.now)
        pair.server.handle_timer(pair.now)
        if any(isinstance(e, MessageReceived) for e in pair.server_events):
            break
    assert [len(e.data) for e in pair.server_events if isinstance(e, MessageReceived)] == [
        40000]


def test_what_a_server_shutting_down_queues_after_its_fin_stays_for_the_carryover() -> None:
    """12.4: a server closing for shutdown keeps taking messages for a client that asked for
    carry-over; once its FIN is out nothing more goes on this connection: they are carried
    over to the resume."""
    pair = established(carry=True)
    server = pair.server
    server.close("restart", CloseCode.SERVER_SHUTDOWN)
    fin = pair.pull(server)
    assert [flags_of(d) for d in fin] == [ACK | FIN]
    server.send(b"after the fin")
    assert pair.pull(server) == []
    carryover = server.carryover()
    assert carryover is not None and carryover.owed


def congestion_after_a_burst(idle: float) -> tuple[int, float, str]:
    pair = established(quiet_config(idle_timeout=100.0))
    client = pair.client
    pair.now += idle
    client.send(bytes(6000))
    pair.to_server(pair.pull(client))
    pair.now += 0.01
    pair.to_client(pair.pull(pair.server))
    pair.now += 0.1  # the server's held acknowledgement
    pair.server.handle_timer(pair.now)
    pair.to_client(pair.pull(pair.server))
    stats = pair.client.refresh_stats()
    return stats.cwnd, stats.pacing_rate, stats.bbr_state


def test_a_send_rate_measured_after_an_idle_period_leaves_the_idle_time_out() -> None:
    """A burst after ten quiet seconds, acknowledged like one sent at once: congestion
    control ends in the same state (the delivery rate is measured from the burst's first
    packet, the sender being idle before it)."""
    assert congestion_after_a_burst(10.0) == congestion_after_a_burst(0.0)


def test_the_parity_of_a_full_group_of_sixteen_fills_the_datagram_exactly_and_goes() -> None:
    """With k = 16 the data payload is cut so that the parity packet of full-size data
    packets is exactly the datagram size in use (pmtu.max_data_payload): it fits, and goes."""
    pair = established_fec((16, 1))
    client = pair.client
    lose_one(pair)
    client.send(bytes(16 * 1400))
    parity: list[bytes] = []
    for _ in range(200):
        out = pair.pull(client)
        parity += [d for d in out if flags_of(d) & FEC]
        if parity:
            break
        pair.to_server(out)
        pair.now += 0.005
        pair.server.handle_timer(pair.now)
        pair.to_client(pair.pull(pair.server))
        client.handle_timer(pair.now)
    assert parity and len(parity[0]) == 1472
    assert "parity_skipped" not in client.stats.drops


def test_parity_cut_for_a_size_a_black_hole_took_away_is_skipped_and_data_goes_on() -> None:
    """9: FEC is best effort. Parity still queued when the path stops carrying the size in
    use (a black hole: back to 1,200 bytes) no longer fits a datagram: it is dropped,
    counted as "parity_skipped", and the data behind it goes in the same call."""
    pair = established_fec((1, 1))
    client = pair.client
    lose_one(pair)
    pair.mtu = 1200  # from now on the path drops anything larger
    fill_the_window(pair, client)  # all lost: every packet is larger than the path carries
    skipped_with: list[bytes] = []
    for _ in range(50):
        t = client.get_timer()
        assert t is not None
        pair.now = t
        client.handle_timer(t)
        out = pair.pull(client)
        if client.stats.drops.get("parity_skipped"):
            skipped_with = out
            break
    stats = client.refresh_stats()
    assert stats.pmtu_black_holes == 1 and stats.plpmtu == 1200
    assert stats.drops["parity_skipped"] == 1
    assert skipped_with and all(len(d) <= 1200 for d in skipped_with)


def test_a_fin_arriving_at_the_keys_limit_gets_no_acknowledgement_past_it() -> None:
    """A path challenge (sent as soon as the peer's packet comes from a new address, not
    from `_fill`) takes the key's last packet number, 2,047; the peer's FIN then gets no
    pure ACK: that would be packet 2,048, past the key's limit."""
    pair = established(KEY_LIMIT_CONFIG)
    client, server = pair.client, pair.server
    client.send(b"never acknowledged")
    pair.pull(client)
    client.close("going")
    send_packets_until(pair, 2046)
    server.acknowledge_keepalive(1, 1.0)  # a packet that needs no acknowledgement
    for d in pair.pull(server):
        client.receive_datagram(d, ("10.0.0.9", 9091), pair.now)  # from a new address
    server.close("bye")
    fin = pair.pull(server)
    assert [flags_of(d) for d in fin] == [ACK | FIN]
    pair.to_client(fin)
    assert state(client) is ConnectionState.CLOSED
    assert pair.client.datagrams_to_send(pair.now) == []
    assert pair.closed(client) == [ConnectionClosed(CloseCode.NORMAL, "bye", True)]
