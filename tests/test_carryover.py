"""Reliable messages survive a resume exactly once, in order, both directions (PROTOCOL.md
12.4), on the simulated network: the carry-over codec, the sans-I/O resume, and a property
test over any sequence of connection losses and resumes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from quantum import carryover as co
from quantum.carryover import Carryover, CarryoverError, InboundStream
from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode, MessageError
from quantum.events import (
    AuthenticationRequested,
    CarryoverLost,
    Event,
    HandshakeCompleted,
    MessageReceived,
    SessionConfirmed,
)
from quantum.frames import Delivery, MessageFrame
from quantum.handshake import Credentials
from quantum.simulation import (
    CLIENT_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)
from tests.profiles import scaled

SESSION_ID = bytes(range(16))
RELIABLE = (Delivery.RELIABLE_ORDERED, Delivery.RELIABLE_UNORDERED)


# ---------------------------------------------------------------------------- the codec


def _sample() -> Carryover:
    return Carryover(
        next_ids=((0, 0, 7), (3, 1, 0xFFFFFFFF)),
        owed=(MessageFrame(0, Delivery.RELIABLE_ORDERED, 5, b"hello"),
              MessageFrame(3, Delivery.RELIABLE_UNORDERED, 0xFFFFFFFE, b"xy", 10, 40)),
        inbound=(InboundStream(0, 0, 12, (), ((14, b"early"),), ((13, 100, ((0, b"ab"),)),)),
                 InboundStream(2, 1, 1 << 33, ((1 + (1 << 33), 5 + (1 << 33)),), (), ())),
    )


def test_a_carryover_survives_its_encoding() -> None:
    sample = _sample()
    assert co.decode(co.encode(sample)) == sample
    empty = Carryover((), (), ())
    assert co.decode(co.encode(empty)) == empty
    assert co.encode(empty) == b"QCRY\x01" + bytes(2 + 4 + 2)


def test_every_truncation_and_trailing_byte_is_refused_with_one_error() -> None:
    blob = co.encode(_sample())
    for cut in range(len(blob)):
        with pytest.raises(CarryoverError):
            co.decode(blob[:cut])
    with pytest.raises(CarryoverError, match="trailing"):
        co.decode(blob + b"\0")


@pytest.mark.parametrize(("blob", "why"), [
    (b"QCRX\x01", "magic"),
    (b"QCRY\x02" + bytes(8), "version"),
    (b"QCRY\x01\x00\x01\x00\x02\x00\x00\x00\x00" + bytes(6), "only reliable"),
    (b"QCRY\x01\x00\x00\xff\xff\xff\xff", "exceeds what follows"),
])
def test_foreign_or_corrupt_blobs_are_refused(blob: bytes, why: str) -> None:
    with pytest.raises(CarryoverError, match=why):
        co.decode(blob)


def test_a_receiving_state_no_receiver_can_be_in_is_refused() -> None:
    waiting_below_mark = Carryover((), (), (InboundStream(0, 0, 12, (), ((3, b"x"),), ()),))
    with pytest.raises(CarryoverError, match="cannot be restored"):
        co.decode(co.encode(waiting_below_mark))
    twice = Carryover((), (), (InboundStream(0, 0, 1), InboundStream(0, 0, 2)))
    with pytest.raises(CarryoverError, match="twice"):
        co.decode(co.encode(twice))


def test_the_repr_holds_no_payload() -> None:
    assert "hello" not in repr(_sample())


# ------------------------------------------------------------------ a resuming server


@dataclass
class ResumingServer:
    """The session service of server.py in miniature: one session, resumed with its token
    (rotated at each resume), the lost connection's carry-over kept as its blob."""

    sim: Simulation | None = None
    token: str = "token-0"
    #: the token the last resume replaced, good until the client acknowledged the new one
    previous: str | None = None
    holder: Connection | None = None
    blob: bytes | None = None
    resumes: int = 0
    carried: int = 0

    def authorize(self, conn: Connection, req: AuthenticationRequested) -> None:
        assert self.sim is not None
        if req.resume is None:
            conn.accept(SESSION_ID, self.token, 1800.0)
            self.holder = conn
            return
        assert req.resume[0] == SESSION_ID and req.resume[1] in (self.token, self.previous)
        carryover = None
        old = self.holder
        if old is not None and old is not conn and old.state is not ConnectionState.CLOSED:
            carryover = old.hand_over("session resumed on another connection", self.sim.now)
        elif self.blob is not None:
            carryover = co.decode(self.blob)
        self.blob = None
        self.resumes += 1
        self.previous, self.token = req.resume[1], f"token-{self.resumes}"
        conn.accept(SESSION_ID, self.token, 1800.0, resumed=True, carryover=carryover)
        self.carried += carryover is not None
        self.holder = conn

    def lose(self) -> None:
        """The server side of the connection is lost (an idle timeout, say)."""
        old = self.holder
        if old is not None and old.state is not ConnectionState.CLOSED:
            carryover = old.carryover()
            old.close("", CloseCode.IDLE_TIMEOUT)
            old.handle_timer(float("inf"))
            self.blob = None if carryover is None else co.encode(carryover)
        self.holder = None


@dataclass
class Traffic:
    """What each side sent and received, message by message."""

    sent: dict[tuple[int, Delivery], list[bytes]] = field(default_factory=lambda: defaultdict(list))
    got: dict[tuple[int, Delivery], list[bytes]] = field(default_factory=lambda: defaultdict(list))

    def record(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, MessageReceived):
                self.got[(event.channel, event.mode)].append(event.data)

    def check(self) -> None:
        for stream, sent in self.sent.items():
            got = self.got.get(stream, [])
            if stream[1] is Delivery.RELIABLE_ORDERED:
                assert got == sent, f"stream {stream}: {len(got)} of {len(sent)}"
            else:
                assert sorted(got) == sorted(sent), f"stream {stream}"


def _settled(conn: Connection) -> Callable[[], bool]:
    """Whether the handshake is over (established or failed)."""
    return lambda: conn.state not in (ConnectionState.SYN_SENT, ConnectionState.AWAIT_ACCEPT)


class Harness:
    def __init__(self, seed: int, loss: float = 0.0) -> None:
        config = QuantumConfiguration(keepalive_interval=None, fec=None)
        self.server = ResumingServer()
        simulated = SimulatedServer.create(config)
        simulated.authorize = self.server.authorize
        self.sim = Simulation(SimulatedNetwork(LinkProfile(delay=0.01, loss=loss), seed=seed),
                              simulated)
        self.server.sim = self.sim
        self.config = config
        self.up = Traffic()  # client -> server
        self.down = Traffic()  # server -> client
        self.carryover: Carryover | None = None
        self.token = ""  # the client's: the last one a SESSION frame brought
        self.lost_events: list[CarryoverLost] = []
        self.client = self._connect(None)

    def _connect(self, resume: tuple[bytes, str] | None) -> Connection:
        """Connect (or resume), trying again after a handshake lost to the network, with
        the token the client holds (the last one it received)."""
        for _ in range(20):
            creds = Credentials("alice", resume=resume, fec=None)
            conn = Connection.client(("10.0.0.1", 9090), creds, self.sim.now,
                                     configuration=self.config, carry=True,
                                     carryover=self.carryover)
            self.sim.clients[CLIENT_ADDR] = conn
            self.sim.client_events[CLIENT_ADDR] = []
            self.sim.flush()
            self.sim.run(until=self.sim.now + 10, condition=_settled(conn))
            if conn.state is ConnectionState.ESTABLISHED:
                self._collect()
                assert conn.session_token is not None
                self.token = conn.session_token
                return conn
            assert conn.close_code == CloseCode.HANDSHAKE_TIMEOUT
            del self.sim.clients[CLIENT_ADDR]
            if resume is None:  # the first handshake: the server may have a session for it
                self.server.holder = None
        raise AssertionError("no handshake got through")

    def _collect(self) -> None:
        events = self.sim.client_events[CLIENT_ADDR]
        self.down.record(events)
        self.lost_events += [e for e in events if isinstance(e, CarryoverLost)]
        events.clear()
        for conn, event in self.sim.server.events:
            if isinstance(event, MessageReceived):
                self.up.got[(event.channel, event.mode)].append(event.data)
            elif isinstance(event, SessionConfirmed) and conn is self.server.holder:
                self.server.previous = None
        self.sim.server.events.clear()

    def send_up(self, channel: int, mode: Delivery, data: bytes) -> None:
        self.client.send(data, channel, mode)
        self.up.sent[(channel, mode)].append(data)

    def send_down(self, channel: int, mode: Delivery, data: bytes) -> None:
        holder = self.server.holder
        assert holder is not None
        holder.send(data, channel, mode)
        self.down.sent[(channel, mode)].append(data)

    def run(self, seconds: float) -> None:
        self.sim.flush()
        self.sim.run(until=self.sim.now + seconds)
        self._collect()

    def lose_and_resume(self, server_side_too: bool) -> None:
        """The client's path goes dark: it gives the connection up and resumes on a new one
        (the server's old connection is still live, or lost as well)."""
        self._collect()
        self.carryover = self.client.carryover()
        del self.sim.clients[CLIENT_ADDR]
        if server_side_too:
            self.server.lose()
        self.sim.run(until=self.sim.now + 0.05)  # what was in the air lands nowhere
        self.client = self._connect((SESSION_ID, self.token))

    def settle(self) -> None:
        self.run(30.0)

    def settle_and_check(self) -> None:
        """Let everything arrive; then every reliable message did, once, both ways."""
        self.settle()
        self.up.check()
        self.down.check()


def test_messages_in_flight_both_ways_arrive_once_after_a_resume() -> None:
    h = Harness(seed=1)
    for i in range(40):
        h.send_up(i % 3, RELIABLE[i % 2], b"up-%d" % i + bytes(i * 50))
        h.send_down(i % 2, RELIABLE[i % 2], b"down-%d" % i + bytes(i * 70))
    h.sim.flush()
    h.sim.step()  # a few packets leave, none is acknowledged yet
    h.lose_and_resume(server_side_too=False)
    h.settle_and_check()
    assert h.server.carried == 1 and not h.lost_events


def test_a_server_side_loss_keeps_the_blob_and_the_resume_restores_it() -> None:
    h = Harness(seed=2, loss=0.2)
    for i in range(30):
        h.send_up(1, Delivery.RELIABLE_ORDERED, b"u%d" % i * 300)
        h.send_down(2, Delivery.RELIABLE_ORDERED, b"d%d" % i * 300)
    h.run(0.05)
    h.lose_and_resume(server_side_too=True)
    h.settle_and_check()


def test_a_large_message_partly_sent_is_carried_from_its_offset() -> None:
    h = Harness(seed=3)
    big = bytes(range(256)) * 2000  # 512 KB: hundreds of fragments
    h.send_up(0, Delivery.RELIABLE_ORDERED, big)
    h.send_down(0, Delivery.RELIABLE_ORDERED, big[::-1])
    h.run(0.1)
    h.lose_and_resume(server_side_too=True)
    h.run(0.1)
    h.lose_and_resume(server_side_too=False)
    h.settle_and_check()


def test_unreliable_messages_are_not_replayed() -> None:
    h = Harness(seed=4)
    h.client.send(b"u" * 500, 0, Delivery.UNRELIABLE)
    h.sim.flush()
    carried = h.client.carryover()
    assert carried is not None and not carried.owed and not carried.next_ids


def test_the_server_holds_messages_until_the_client_has_its_session() -> None:
    h = Harness(seed=5)
    h.send_down(0, Delivery.RELIABLE_ORDERED, b"before")
    h.run(1.0)
    h.lose_and_resume(server_side_too=True)
    # the resumed connection's first packet from the server: SESSION and DELIVERED, no data
    confirmed = [e for _, e in h.sim.server.events if isinstance(e, SessionConfirmed)]
    assert confirmed or h.down.got  # it ran to establishment; the rest settles below
    h.settle()
    h.down.check()


def test_a_server_with_nothing_kept_declares_the_in_flight_data_lost() -> None:
    h = Harness(seed=6)
    for i in range(10):
        h.send_up(0, Delivery.RELIABLE_ORDERED, b"x%d" % i)
    h.sim.flush()
    h.carryover = h.client.carryover()
    del h.sim.clients[CLIENT_ADDR]
    h.server.lose()
    h.server.blob = None  # another node, a restart without snapshot, over its cap
    h.client = h._connect((SESSION_ID, h.token))
    assert [e.unacknowledged for e in h.lost_events] == [10]
    established = [e for e in h.sim.client_events.get(CLIENT_ADDR, [])
                   if isinstance(e, HandshakeCompleted)]
    assert not established  # collected already: the client saw resumed, not carried
    h.send_up(0, Delivery.RELIABLE_ORDERED, b"after")  # ids start at 0 again, and arrive
    h.settle()
    assert h.up.got[(0, Delivery.RELIABLE_ORDERED)][-1] == b"after"


def test_sending_before_the_resume_settles_is_refused() -> None:
    h = Harness(seed=7)
    h.send_up(0, Delivery.RELIABLE_ORDERED, b"owed")
    carryover = h.client.carryover()
    del h.sim.clients[CLIENT_ADDR]
    conn = Connection.client(("10.0.0.1", 9090),
                             Credentials("alice", resume=(SESSION_ID, h.token), fec=None),
                             h.sim.now, configuration=h.config, carryover=carryover)
    h.sim.clients[CLIENT_ADDR] = conn
    h.sim.client_events[CLIENT_ADDR] = []
    h.sim.run(condition=lambda: conn.state is ConnectionState.AWAIT_ACCEPT)
    with pytest.raises(MessageError, match="resume says"):
        conn.send(b"too early")
    h.sim.run(condition=lambda: conn.state is ConnectionState.ESTABLISHED)
    conn.send(b"in time")


# --------------------------------------------------------------- the property


_step = st.one_of(
    st.tuples(st.just("up"), st.integers(0, 3), st.sampled_from(RELIABLE),
              st.integers(0, 3000)),
    st.tuples(st.just("down"), st.integers(0, 3), st.sampled_from(RELIABLE),
              st.integers(0, 3000)),
    st.tuples(st.just("run"), st.floats(0.0, 0.2)),
    st.tuples(st.just("lose"), st.booleans()),
)


@settings(max_examples=scaled(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, max_size=40), seed=st.integers(0, 2**16),
       loss=st.sampled_from([0.0, 0.1, 0.3]))
@example(steps=[("up", 0, Delivery.RELIABLE_ORDERED, 10), ("lose", False),
                ("lose", True), ("down", 1, Delivery.RELIABLE_UNORDERED, 2000)],
         seed=0, loss=0.3)
def test_any_sequence_of_losses_and_resumes_delivers_every_reliable_message_once(
        steps: list[tuple[object, ...]], seed: int, loss: float) -> None:
    h = Harness(seed=seed, loss=loss)
    n = 0
    for step in steps:
        kind = step[0]
        if kind in ("up", "down"):
            _, channel, mode, size = step
            assert isinstance(channel, int) and isinstance(mode, Delivery)
            assert isinstance(size, int)
            n += 1
            data = b"%s-%d-" % (str(kind).encode(), n) + bytes(size)
            (h.send_up if kind == "up" else h.send_down)(channel, mode, data)
        elif kind == "run":
            seconds = step[1]
            assert isinstance(seconds, float)
            h.run(seconds)
        else:
            h.lose_and_resume(server_side_too=bool(step[1]))
    h.settle_and_check()
    assert not h.lost_events
