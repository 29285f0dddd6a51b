"""A lossy UDP relay for tests: it sits between one client and the server and mistreats datagrams.

Real sockets, real timers, seeded randomness. Every datagram in either direction is, in turn,
dropped (probability `loss`), duplicated (`duplicate`) or held back by a random delay up to
`max_delay` (`reorder`) so that later datagrams overtake it. The same seed makes the same
decisions for the same sequence of datagrams; the timing of a real network stack still varies,
so tests assert outcomes (every message arrives once, in order), never exact counts.

    relay = await LossyRelay.start(("127.0.0.1", server_port), RelayProfile(loss=0.1), seed=7)
    client = await quantum.client.connect("127.0.0.1", relay.port, ...)
    ...
    relay.close()
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RelayProfile:
    """How badly the relay treats traffic; probabilities are per datagram, in [0, 1)."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    max_delay: float = 0.02

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value}")
        if not 0.0 < self.max_delay <= 1.0:
            raise ValueError(f"max_delay must be in (0, 1] seconds, got {self.max_delay}")


@dataclass(slots=True)
class RelayStats:
    """What the relay did, per datagram seen (both directions together)."""

    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0


class _Side(asyncio.DatagramProtocol):
    """One socket of the relay; hands what it receives to the relay with its direction."""

    def __init__(self, relay: LossyRelay, to_server: bool) -> None:
        self._relay = relay
        self._to_server = to_server

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._relay._on_datagram(data, addr, self._to_server)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable after the client went away: a lossy network shrugs
        pass


class LossyRelay:
    """Client <-> relay front socket ... relay back socket <-> server. One client at a time.

    The first address that writes to the front socket is the client; replies from the server
    go back to it. `client_addr` can be reset to serve a new client (e.g. a resume test), or
    `follow_client` set so that a new address takes over (a client that reconnects from a new
    socket). `dark` drops everything both ways: the path went dark.
    """

    def __init__(self, server_addr: Address, profile: RelayProfile, seed: int) -> None:
        self.server_addr = server_addr
        self.profile = profile
        self.stats = RelayStats()
        self.client_addr: Address | None = None
        self.follow_client = False
        self.dark = False
        self._rng = random.Random(seed)
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.TimerHandle] = set()
        self._blackhole_to_server = 0
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def start(cls, server_addr: Address, profile: RelayProfile | None = None,
                    seed: int = 0, host: str = "127.0.0.1") -> LossyRelay:
        relay = cls(server_addr, profile or RelayProfile(), seed)
        loop = relay._loop
        front, _ = await loop.create_datagram_endpoint(
            lambda: _Side(relay, to_server=True), local_addr=(host, 0))
        back, _ = await loop.create_datagram_endpoint(
            lambda: _Side(relay, to_server=False), remote_addr=server_addr)
        relay._front, relay._back = front, back
        return relay

    @property
    def port(self) -> int:
        """The port clients connect to."""
        assert self._front is not None, "relay not started"
        return int(self._front.get_extra_info("sockname")[1])

    def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        for transport in (self._front, self._back):
            if transport is not None:
                transport.close()
        self._front = self._back = None

    def drop_next_to_server(self, count: int = 1) -> None:
        """Lose the next `count` client datagrams for certain (a targeted loss, for tests)."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self._blackhole_to_server += count

    # ------------------------------------------------------------------ forwarding

    def _on_datagram(self, data: bytes, addr: Address, to_server: bool) -> None:
        if to_server:
            if self.client_addr is None or (self.follow_client and not self.dark):
                self.client_addr = addr
            elif addr != self.client_addr:
                return  # a stranger on the front socket is not our client
        elif self.client_addr is None:
            return
        stats, profile, rng = self.stats, self.profile, self._rng
        stats.received += 1
        if self.dark:
            stats.dropped += 1
            return
        if to_server and self._blackhole_to_server:
            self._blackhole_to_server -= 1
            stats.dropped += 1
            return
        if rng.random() < profile.loss:
            stats.dropped += 1
            return
        copies = 2 if rng.random() < profile.duplicate else 1
        stats.duplicated += copies - 1
        for _ in range(copies):
            if rng.random() < profile.reorder:
                stats.delayed += 1
                self._later(rng.uniform(0.0, profile.max_delay), data, to_server)
            else:
                self._send(data, to_server)

    def _later(self, delay: float, data: bytes, to_server: bool) -> None:
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            assert handle is not None
            self._pending.discard(handle)
            self._send(data, to_server)

        handle = self._loop.call_later(delay, fire)
        self._pending.add(handle)

    def _send(self, data: bytes, to_server: bool) -> None:
        if to_server:
            if self._back is not None:
                self._back.sendto(data)
                self.stats.forwarded += 1
        elif self._front is not None and self.client_addr is not None:
            self._front.sendto(data, self.client_addr)
            self.stats.forwarded += 1
