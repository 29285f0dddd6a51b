"""The server's front door, sans-I/O: handshakes for connection ids it does not know yet.

Until a client has echoed the server cookie (proving it receives at its address), nothing is
remembered about it: the SYN is answered from the stateless `ServerHandshake`, never with more
bytes than the SYN carried, and when handshakes arrive faster than `retry_above_rate` the server
first asks for a cheap HMAC retry cookie instead of doing any Diffie-Hellman. Per-source rate
limits and the connection cap refuse new handshakes with an explicit reason; connections that
exist are never affected. The datagrams of known connections go straight to their `Connection`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection
from quantum.errors import CloseCode
from quantum.frames import RejectFrame, encode_frames
from quantum.handshake import HandshakeError, ServerHandshake, ServerParams
from quantum.packet import VERSION, Flags, Packet, PacketError, decode_packet, encode_packet

#: how many sources the per-source rate limiter remembers (the oldest are forgotten first)
MAX_TRACKED_SOURCES = 65536


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBucket:
    """A rate limit: `rate` events per second with bursts of up to `burst`."""

    __slots__ = ("_bucket", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._bucket = _Bucket(burst, 0.0)

    def allow(self, now: float) -> bool:
        return _take(self._bucket, self.rate, self.burst, now)


def _take(bucket: _Bucket, rate: float, burst: float, now: float) -> bool:
    bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
    bucket.stamp = now
    if bucket.tokens >= 1.0:
        bucket.tokens -= 1.0
        return True
    return False


@dataclass(slots=True)
class ListenerStats:
    handshakes_started: int = 0
    handshakes_completed: int = 0
    retries_sent: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)


class Listener:
    """Turns SYNs and handshake ACKs from unknown connection ids into replies or connections."""

    def __init__(
        self,
        handshake: ServerHandshake,
        configuration: QuantumConfiguration,
        *,
        max_connections: int = 10_000,
        per_source_rate: float = 20.0,
        per_source_burst: float = 40.0,
        retry_above_rate: float = 500.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if per_source_rate <= 0 or per_source_burst < 1 or retry_above_rate <= 0:
            raise ValueError("rates must be positive and bursts at least 1")
        self.handshake = handshake
        self.config = configuration
        self.max_connections = max_connections
        self.per_source_rate = per_source_rate
        self.per_source_burst = per_source_burst
        self._global = TokenBucket(retry_above_rate, retry_above_rate)
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._recently_closed: OrderedDict[bytes, float] = OrderedDict()
        # negotiated parameters take a handful of values: connections share one object each
        self._params: dict[ServerParams, ServerParams] = {}
        self.stats = ListenerStats()

    def receive_datagram(
        self, data: bytes, addr: Address, now: float, connection_count: int
    ) -> tuple[list[tuple[bytes, Address]], Connection | None]:
        """Handle a datagram for an unknown connection id: replies, and a new connection if any."""
        try:
            packet = decode_packet(data)
        except PacketError:
            self._drop("malformed")
            return [], None
        if packet.flags & Flags.SYN and not packet.flags & Flags.ACK:
            return self._on_syn(packet, data, addr, now, connection_count), None
        if packet.flags == Flags.ACK and packet.seq == 0:
            return self._on_finish(packet, addr, now, connection_count)
        self._drop("unknown_connection")
        return [], None

    def forget(self, connection_id: bytes, now: float) -> None:
        """A connection ended: refuse replays of its handshake while its cookie could be valid."""
        self._recently_closed[connection_id] = now + self.handshake.cookie_lifetime
        self._expire_recent(now)

    # ------------------------------------------------------------------ SYN

    def _on_syn(self, packet: Packet, data: bytes, addr: Address, now: float,
                connection_count: int) -> list[tuple[bytes, Address]]:
        if packet.version != VERSION:
            return self._reject(packet, len(data), addr, CloseCode.VERSION_NOT_SUPPORTED,
                                f"version {packet.version} not supported; this server speaks "
                                f"{VERSION}")
        if not self._source_allows(addr[0], now):
            return self._reject(packet, len(data), addr, CloseCode.RATE_LIMITED,
                                "too many handshakes from this address")
        if connection_count >= self.max_connections:
            return self._reject(packet, len(data), addr, CloseCode.SERVER_FULL,
                                "server full")
        cid = packet.connection_id
        try:
            if not self._global.allow(now) and self.handshake.needs_retry(packet.payload, cid,
                                                                          addr, now):
                self.stats.retries_sent += 1
                retry = self.handshake.make_retry(cid, addr, now)
                return self._reply(Flags.SYN | Flags.URG, cid, retry, len(data), addr)
            server_hello = self.handshake.on_client_hello(cid, packet.payload, addr, now)
        except HandshakeError:
            self._drop("bad_hello")
            return []
        self.stats.handshakes_started += 1
        return self._reply(Flags.SYN | Flags.ACK, cid, server_hello, len(data), addr)

    def _source_allows(self, ip: str, now: float) -> bool:
        sources = self._sources
        bucket = sources.get(ip)
        if bucket is None:
            if len(sources) >= MAX_TRACKED_SOURCES:
                sources.popitem(last=False)
            bucket = sources[ip] = _Bucket(self.per_source_burst, now)
        else:
            sources.move_to_end(ip)
        return _take(bucket, self.per_source_rate, self.per_source_burst, now)

    # ------------------------------------------------------------------ handshake ACK

    def _on_finish(self, packet: Packet, addr: Address, now: float,
                   connection_count: int) -> tuple[list[tuple[bytes, Address]], Connection | None]:
        cid = packet.connection_id
        self._expire_recent(now)
        if cid in self._recently_closed:
            self._drop("replayed_handshake")
            return [], None
        try:
            keys, credentials, params = self.handshake.on_client_finish(cid, packet.payload,
                                                                        addr, now)
        except HandshakeError:
            self._drop("bad_finish")
            return [], None
        shared = self._params.get(params)
        if shared is not None:
            params = shared
        elif len(self._params) < 64:
            self._params[params] = params
        conn = Connection.server(cid, addr, keys, credentials, params, now,
                                 configuration=self.config)
        if connection_count >= self.max_connections:
            self._count_reject(CloseCode.SERVER_FULL)
            conn.reject(CloseCode.SERVER_FULL, "server full", now)
            return conn.datagrams_to_send(now), None
        self.stats.handshakes_completed += 1
        return [], conn

    # ------------------------------------------------------------------ replies

    def _reject(self, packet: Packet, budget: int, addr: Address, code: CloseCode,
                reason: str) -> list[tuple[bytes, Address]]:
        self._count_reject(code)
        payload = encode_frames([RejectFrame(int(code), reason)])
        return self._reply(Flags.RST, packet.connection_id, payload, budget, addr)

    def _reply(self, flags: int, cid: bytes, payload: bytes, budget: int,
               addr: Address) -> list[tuple[bytes, Address]]:
        datagram = encode_packet(Packet(flags, cid, 0, 0, (), payload))
        if len(datagram) > budget:  # never amplify: answer with at most what we were sent
            self._drop("amplification_limit")
            return []
        return [(datagram, addr)]

    def _count_reject(self, code: CloseCode) -> None:
        rejected = self.stats.rejected
        rejected[code.name.lower()] = rejected.get(code.name.lower(), 0) + 1

    def _drop(self, reason: str) -> None:
        drops = self.stats.drops
        drops[reason] = drops.get(reason, 0) + 1

    def _expire_recent(self, now: float) -> None:
        recent = self._recently_closed
        while recent:
            cid, until = next(iter(recent.items()))
            if until > now:
                break
            del recent[cid]
