"""A deterministic in-memory network and virtual clock for driving connections without sockets.

Used by the protocol tests and by `benchmarks.protocol_bench`: two (or more) endpoints exchange
datagrams through `SimulatedNetwork`, which applies seeded loss, reordering (delay jitter),
duplication, a fixed one-way delay and a path MTU (larger datagrams vanish, as on a path
that does not fragment; per direction, changeable mid-run). Time only moves when `run` jumps
to the next datagram arrival or connection timer, so minutes of protocol time take
milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from quantum import bbr
from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection
from quantum.endpoint import ServerEndpoint
from quantum.events import AuthenticationRequested, Event
from quantum.handshake import Credentials, ServerHandshake, ServerParams
from quantum.listener import Listener
from quantum.packet import BASE_DATAGRAM, MAX_DATAGRAM

SERVER_ADDR: Address = ("10.0.0.1", 9090)
CLIENT_ADDR: Address = ("10.0.0.2", 40000)


@dataclass(slots=True)
class LinkProfile:
    """How the network treats every datagram (each direction independently)."""

    delay: float = 0.02
    jitter: float = 0.0  # extra uniform delay in [0, jitter): reorders datagrams
    loss: float = 0.0
    duplicate: float = 0.0
    #: the largest datagram the path carries (UDP payload bytes); larger ones are dropped
    mtu: int = MAX_DATAGRAM

    def __post_init__(self) -> None:
        if not (0.0 <= self.loss < 1.0 and 0.0 <= self.duplicate < 1.0):
            raise ValueError("loss and duplicate must be probabilities in [0, 1)")
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("delay and jitter must not be negative")
        _check_mtu(self.mtu)


def _check_mtu(mtu: int) -> None:
    if not BASE_DATAGRAM <= mtu <= MAX_DATAGRAM:
        raise ValueError(f"path MTU {mtu} outside {BASE_DATAGRAM}..{MAX_DATAGRAM}")


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    #: dropped for exceeding the path MTU
    too_big: int = 0


class SimulatedNetwork:
    """Datagrams in flight, ordered by arrival time; deterministic for a given seed."""

    def __init__(self, profile: LinkProfile, seed: int = 0) -> None:
        self.profile = profile
        self.seed = seed
        self.random = random.Random(seed)
        self.stats = NetworkStats()
        self._queue: list[tuple[float, int, bytes, Address, Address]] = []
        self._counter = itertools.count()
        #: path MTU toward one address (overrides `profile.mtu` in that direction)
        self._mtu_to: dict[Address, int] = {}

    def set_mtu(self, mtu: int, toward: Address | None = None) -> None:
        """The path MTU from now on: toward one address only (one direction), or (None) in
        every direction without an override of its own."""
        _check_mtu(mtu)
        if toward is None:
            self.profile.mtu = mtu
        else:
            self._mtu_to[toward] = mtu

    def mtu_toward(self, dst: Address) -> int:
        return self._mtu_to.get(dst, self.profile.mtu)

    def send(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        if len(data) > MAX_DATAGRAM:  # every simulated run checks the no-fragmentation promise
            raise ValueError(f"a {len(data)}-byte datagram exceeds {MAX_DATAGRAM} bytes")
        p, rnd = self.profile, self.random
        self.stats.sent += 1
        if len(data) > self._mtu_to.get(dst, p.mtu):
            self.stats.too_big += 1
            return
        copies = 2 if p.duplicate and rnd.random() < p.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            if p.loss and rnd.random() < p.loss:
                self.stats.lost += 1
                continue
            arrival = now + p.delay + (rnd.random() * p.jitter if p.jitter else 0.0)
            heapq.heappush(self._queue, (arrival, next(self._counter), data, src, dst))

    def next_arrival(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def pop(self) -> tuple[float, bytes, Address, Address]:
        arrival, _, data, src, dst = heapq.heappop(self._queue)
        self.stats.delivered += 1
        return arrival, data, src, dst


Authorizer = Callable[[Connection, AuthenticationRequested], None]


def accept_everyone(conn: Connection, request: AuthenticationRequested) -> None:
    """Default server policy for simulations: every client gets a fresh fake session."""
    conn.accept(conn.connection_id, "token-" + conn.connection_id.hex()[:8], 1800.0)


@dataclass
class SimulatedServer:
    """A server endpoint (the listener and its connections), as server.py holds one, minus
    the sockets: the connections are their own owners."""

    listener: Listener
    authorize: Authorizer = accept_everyone
    events: list[tuple[Connection, Event]] = field(default_factory=list)
    endpoint: ServerEndpoint[Connection] = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint = ServerEndpoint(self.listener)

    @property
    def connections(self) -> dict[bytes, Connection]:
        """Connection id -> live connection."""
        return self.endpoint.owners

    @classmethod
    def create(cls, configuration: QuantumConfiguration | None = None,
               static_private: bytes | None = None, keepalive_interval: float = 10.0,
               **listener_args: object) -> SimulatedServer:
        """A server announcing `keepalive_interval` and its configuration's idle timeout in
        its hello (the keepalives it expects; it sends none itself)."""
        config = configuration or QuantumConfiguration(keepalive_interval=None)
        params = ServerParams(fec=config.fec, keepalive_interval=keepalive_interval,
                              idle_timeout=config.idle_timeout)
        key = static_private if static_private is not None else bytes(range(1, 33))
        handshake = ServerHandshake(key, params, ciphers=config.ciphers)
        return cls(Listener(handshake, config, **listener_args))  # type: ignore[arg-type]


class Simulation:
    """Drives one server and any number of client connections over a simulated network."""

    def __init__(self, network: SimulatedNetwork, server: SimulatedServer) -> None:
        # BBR draws its PROBE_BW starting phase from one module-wide RNG: seeded here from
        # the network's seed, so that a simulation, and a benchmark run on one, is
        # deterministic for its seed (unseeded, two runs of one case differed by 5x in p50)
        bbr._SHARED_RNG.seed(network.seed)
        self.network = network
        self.server = server
        self.now = 0.0
        self.clients: dict[Address, Connection] = {}
        self.client_events: dict[Address, list[Event]] = {}

    def add_client(self, credentials: Credentials, addr: Address = CLIENT_ADDR,
                   configuration: QuantumConfiguration | None = None,
                   server_key: bytes | str | None = None) -> Connection:
        conn = Connection.client(SERVER_ADDR, credentials, self.now,
                                 configuration=configuration, server_key=server_key)
        self.clients[addr] = conn
        self.client_events[addr] = []
        self.flush()
        return conn

    # ------------------------------------------------------------------ the loop

    def flush(self) -> None:
        """Send everything every endpoint has queued, and collect events."""
        net, now = self.network, self.now
        for addr, conn in self.clients.items():
            for data, dst in conn.datagrams_to_send(now):
                net.send(data, addr, dst, now)
            events = self.client_events[addr]
            while (event := conn.next_event()) is not None:
                events.append(event)
        for conn in list(self.server.connections.values()):
            self._drain_server(conn)

    def _drain_server(self, conn: Connection) -> None:
        while (event := conn.next_event()) is not None:
            self.server.events.append((conn, event))
            if isinstance(event, AuthenticationRequested):
                self.server.authorize(conn, event)
        for data, dst in conn.datagrams_to_send(self.now):
            self.network.send(data, SERVER_ADDR, dst, self.now)
        if conn.state.value == "CLOSED":
            self.server.endpoint.remove(conn.connection_id, self.now)

    def next_time(self) -> float | None:
        times = [t for t in (self.network.next_arrival(),) if t is not None]
        for conn in self.clients.values():
            t = conn.get_timer()
            if t is not None:
                times.append(t)
        for conn in self.server.connections.values():
            t = conn.get_timer()
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def step(self) -> bool:
        """Advance to the next arrival or timer and process it; False when nothing is left."""
        t = self.next_time()
        if t is None:
            return False
        self.now = max(self.now, t)
        now = self.now
        net = self.network
        while (arrival := net.next_arrival()) is not None and arrival <= now:
            _, data, src, dst = net.pop()
            self._deliver(data, src, dst)
        for conn in list(self.clients.values()):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
        for conn in list(self.server.connections.values()):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
        self.flush()
        return True

    def _deliver(self, data: bytes, src: Address, dst: Address) -> None:
        now = self.now
        if dst == SERVER_ADDR:
            endpoint = self.server.endpoint
            conn = endpoint.route(data)
            if conn is not None:
                conn.receive_datagram(data, src, now)
                return
            replies, new = endpoint.handshake(data, src, now)
            for reply, to in replies:
                self.network.send(reply, SERVER_ADDR, to, now)
            if new is not None:
                endpoint.add(new.connection_id, new)
        else:
            client = self.clients.get(dst)
            if client is not None:
                client.receive_datagram(data, src, now)

    def run(self, until: float | None = None, condition: Callable[[], bool] | None = None,
            max_steps: int = 10_000_000) -> None:
        """Step until `condition()` holds, virtual time passes `until`, or nothing is left."""
        for _ in range(max_steps):
            if condition is not None and condition():
                return
            t = self.next_time()
            if t is None or (until is not None and t > until):
                if until is not None:
                    self.now = max(self.now, until)
                return
            self.step()
        raise RuntimeError("simulation did not settle within max_steps")
