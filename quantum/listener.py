"""The server's front door, sans-I/O: handshakes for connection ids it does not know yet.

Until a client has echoed a cookie (proving it receives at its address), nothing is remembered
about it but rate-limit counters: a SYN is answered from the stateless `ServerHandshake`, never
with more bytes than the datagram it answers. The policy, in the order it is applied (the
normative text is docs/PROTOCOL.md, section 10.4):

* Only well-formed hellos count. A SYN of another version gets a REJECT; one whose hello is not
  exactly right (size, zero padding, cookie length) is dropped before it costs anything, so
  spoofed garbage cannot drain a victim's rate limit.
* A hello echoing a valid retry cookie comes from a proven address. It is charged once, to the
  source's *proven* bucket, which spoofed traffic cannot reach; when that is empty the answer is
  a REJECT (RATE_LIMITED) to the proven address, which the client retries.
* Any other hello: above `retry_above_rate` handshakes per second in total, or when its source's
  bucket is empty, the answer is a RETRY (one HMAC, no Diffie-Hellman, nothing charged), never a
  REJECT: the client proves its address by echoing the cookie and is served from its proven
  bucket. So each handshake is charged exactly once, and a spoofed flood from a victim's
  address costs the victim one round trip, not its connection.
* A ClientFinish is charged to the source's finish bucket once its server cookie authenticates
  (which binds the client's address), before the two Diffie-Hellman operations; beyond the rate
  it is dropped (the client resends it). Authentic credentials that are malformed or past a
  bound of `quantum.limits` are refused with a sealed REJECT (BAD_REQUEST, the field named).
  Refused finishes (bad request, server full, address full) are remembered for a cookie
  lifetime, so replaying one costs a dictionary lookup.
* The connection cap and the per-address cap (`ConnectionQuota`, counted per source from the
  handshake to `forget`) refuse with an explicit reason; connections that exist are never
  affected.
* Once the owner stops accepting (`stop_accepting`: the server is shutting down), every
  well-formed hello is refused with SERVER_SHUTDOWN and its reason, and a finish that
  authenticates with a sealed SERVER_SHUTDOWN, so a client goes elsewhere at once rather than
  retrying into a closing socket.

Sources are IPv4 addresses, and IPv6 addresses by their /64 (`source_key`). The datagrams of
known connections go straight to their `Connection`.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection
from quantum.crypto import CIPHERS
from quantum.errors import CloseCode
from quantum.frames import RejectFrame, cut_reason, encode_frames
from quantum.handshake import (
    Credentials,
    CredentialsRefused,
    HandshakeError,
    ServerHandshake,
    ServerParams,
    SessionKeys,
    decode_hello,
)
from quantum.packet import (
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Flags,
    Packet,
    PacketError,
    decode_packet,
    encode_packet,
)

#: how many sources each per-source rate limiter remembers (the least recently seen are
#: forgotten first, and start again with a full bucket)
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


class SourceLimiter:
    """A token bucket per source: `rate` per second, bursts of `burst`, for at most
    `max_sources` sources at a time (memory is bounded whatever the sources)."""

    __slots__ = ("_buckets", "burst", "max_sources", "rate")

    def __init__(self, rate: float, burst: float, max_sources: int = MAX_TRACKED_SOURCES) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        """Take one token from `source`'s bucket; False (taking nothing) if it is empty."""
        buckets = self._buckets
        bucket = buckets.get(source)
        if bucket is None:
            if len(buckets) >= self.max_sources:
                buckets.popitem(last=False)
            bucket = buckets[source] = _Bucket(self.burst, now)
        else:
            buckets.move_to_end(source)
        return _take(bucket, self.rate, self.burst, now)

    def __len__(self) -> int:
        return len(self._buckets)


class ConnectionQuota:
    """At most `limit` connections per key (a source address, a user), each connection named
    by a holder id (its connection id). Counters change on `acquire` and `release` only: O(1),
    no scan, whatever the number of connections."""

    __slots__ = ("_count", "_key_of", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a connection quota must be at least 1, got {limit}")
        self.limit = limit
        self._count: dict[str, int] = {}
        self._key_of: dict[bytes, str] = {}

    def acquire(self, key: str, holder: bytes, replacing: bytes | None = None) -> bool:
        """Count `holder` against `key` if the key is below its limit; False if it is not.

        `replacing`: a holder of the same key that is about to be released (a connection a
        resume supersedes), so it does not stand in the way of its successor.
        """
        if holder in self._key_of:
            return self._key_of[holder] == key
        count = self._count.get(key, 0)
        spare = 1 if replacing is not None and self._key_of.get(replacing) == key else 0
        if count - spare >= self.limit:
            return False
        self._count[key] = count + 1
        self._key_of[holder] = key
        return True

    def release(self, holder: bytes) -> None:
        """Stop counting `holder`; a holder that is not counted is ignored."""
        key = self._key_of.pop(holder, None)
        if key is None:
            return
        count = self._count[key] - 1
        if count:
            self._count[key] = count
        else:
            del self._count[key]

    def count(self, key: str) -> int:
        return self._count.get(key, 0)

    def __len__(self) -> int:
        """How many holders are counted, over all keys."""
        return len(self._key_of)


def source_key(ip: str) -> str:
    """What per-source limits count by: an IPv4 address as it is; an IPv6 address by its /64
    (one subscriber's prefix, as easy for an attacker to fill as a single address); an
    IPv4-mapped IPv6 address (a dual-stack socket) as its IPv4 address."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.partition("%")[0])
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


@dataclass(slots=True)
class ListenerStats:
    handshakes_started: int = 0
    handshakes_completed: int = 0
    #: RETRYs sent, for any reason; `retries_rate_limited` of them because the source's bucket
    #: was empty (the others because of the total handshake rate)
    retries_sent: int = 0
    retries_rate_limited: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)


class Listener:
    """Turns SYNs and handshake ACKs from unknown connection ids into replies or connections.

    Limits (each per source: an IPv4 address or an IPv6 /64):
    `max_connections` in total, `max_connections_per_address`; hellos that cost
    Diffie-Hellman at `per_source_rate` per second with bursts of `per_source_burst` (from
    unproven and from proven sources separately); ClientFinishes at `finish_rate` /
    `finish_burst` (default: the hello rate); a RETRY first above `retry_above_rate`
    handshakes per second in total; `max_tracked_sources` sources remembered per limiter.
    """

    def __init__(
        self,
        handshake: ServerHandshake,
        configuration: QuantumConfiguration,
        *,
        max_connections: int = 10_000,
        max_connections_per_address: int = 64,
        per_source_rate: float = 20.0,
        per_source_burst: float = 40.0,
        finish_rate: float | None = None,
        finish_burst: float | None = None,
        retry_above_rate: float = 500.0,
        max_tracked_sources: int = MAX_TRACKED_SOURCES,
    ) -> None:
        if max_connections < 1 or max_connections_per_address < 1 or max_tracked_sources < 1:
            raise ValueError("max_connections, max_connections_per_address and "
                             "max_tracked_sources must be at least 1")
        finish_rate = per_source_rate if finish_rate is None else finish_rate
        finish_burst = per_source_burst if finish_burst is None else finish_burst
        if (min(per_source_rate, finish_rate, retry_above_rate) <= 0
                or min(per_source_burst, finish_burst) < 1):
            raise ValueError("rates must be positive and bursts at least 1")
        self.handshake = handshake
        self.config = configuration
        self.max_connections = max_connections
        self.per_source_rate = per_source_rate
        self.per_source_burst = per_source_burst
        self._global = TokenBucket(retry_above_rate, retry_above_rate)
        self._hellos = SourceLimiter(per_source_rate, per_source_burst, max_tracked_sources)
        self._proven_hellos = SourceLimiter(per_source_rate, per_source_burst,
                                            max_tracked_sources)
        self._finishes = SourceLimiter(finish_rate, finish_burst, max_tracked_sources)
        self.per_address = ConnectionQuota(max_connections_per_address)
        self._recently_closed: OrderedDict[bytes, float] = OrderedDict()
        #: set by `stop_accepting`: the reason every new handshake is refused with
        self.stopping: str | None = None
        # negotiated parameters take a handful of values: connections share one object each
        self._params: dict[ServerParams, ServerParams] = {}
        self.stats = ListenerStats()

    def receive_datagram(
        self, data: bytes, addr: Address, now: float, connection_count: int
    ) -> tuple[list[tuple[bytes, Address]], Connection | None]:
        """Handle a datagram for an unknown connection id: replies, and a new connection if any."""
        if len(data) < HEADER_SIZE or data[:4] != MAGIC:
            self._drop("not_quantum")  # not even a Quantum header: someone else's traffic
            return [], None
        try:
            packet = decode_packet(data)
        except PacketError:
            self._drop("malformed")
            return [], None
        if packet.flags & Flags.SYN and not packet.flags & Flags.ACK:
            return self._on_syn(packet, len(data), addr, now, connection_count), None
        if packet.flags == Flags.ACK and packet.seq == 0:
            return self._on_finish(packet, len(data), addr, now, connection_count)
        self._drop("unknown_connection")
        return [], None

    def stop_accepting(self, reason: str = "server shutting down") -> None:
        """Refuse every handshake from now on (SERVER_SHUTDOWN, with `reason`)."""
        self.stopping = reason

    def forget(self, connection_id: bytes, now: float) -> None:
        """A connection ended: free its address slot, and refuse replays of its handshake
        while its cookie could be valid."""
        self.per_address.release(connection_id)
        self._refuse_replays(connection_id, now)

    # ------------------------------------------------------------------ SYN

    def _on_syn(self, packet: Packet, budget: int, addr: Address, now: float,
                connection_count: int) -> list[tuple[bytes, Address]]:
        if packet.version != VERSION:
            return self._reject(packet, budget, addr, CloseCode.VERSION_NOT_SUPPORTED,
                                f"version {packet.version} not supported; this server speaks "
                                f"{VERSION}")
        cid = packet.connection_id
        try:
            hello = decode_hello(packet.payload)
        except HandshakeError:
            self._drop("bad_hello")  # before any limit is charged: garbage costs nothing
            return []
        if self.stopping is not None:
            return self._reject(packet, budget, addr, CloseCode.SERVER_SHUTDOWN, self.stopping)
        if hello.choose(self.handshake.ciphers) is None:
            names = ", ".join(CIPHERS[c] for c in self.handshake.ciphers)
            return self._reject(packet, budget, addr, CloseCode.CIPHER_NOT_SUPPORTED,
                                f"no offered cipher is enabled here; this server has {names}")
        if connection_count >= self.max_connections:
            return self._reject(packet, budget, addr, CloseCode.SERVER_FULL, "server full")
        source = source_key(addr[0])
        if hello.retry_cookie is not None and not self.handshake.needs_retry(
                packet.payload, cid, addr, now):
            # it echoed our retry cookie, so it receives at this address: charged once, to a
            # bucket that nobody spoofing this address can drain
            if not self._proven_hellos.allow(source, now):
                return self._reject(packet, budget, addr, CloseCode.RATE_LIMITED,
                                    "too many handshakes from this address")
        elif not self._global.allow(now):
            return self._retry(cid, addr, now, budget)  # overloaded: no Diffie-Hellman yet
        elif not self._hellos.allow(source, now):
            self.stats.retries_rate_limited += 1
            return self._retry(cid, addr, now, budget)  # prove the address, then be served
        try:
            server_hello = self.handshake.on_client_hello(cid, packet.payload, addr, now)
        except HandshakeError:
            self._drop("bad_hello")
            return []
        self.stats.handshakes_started += 1
        return self._reply(Flags.SYN | Flags.ACK, cid, server_hello, budget, addr)

    def _retry(self, cid: bytes, addr: Address, now: float,
               budget: int) -> list[tuple[bytes, Address]]:
        self.stats.retries_sent += 1
        return self._reply(Flags.SYN | Flags.URG, cid, self.handshake.make_retry(cid, addr, now),
                           budget, addr)

    # ------------------------------------------------------------------ handshake ACK

    def _on_finish(self, packet: Packet, budget: int, addr: Address, now: float,
                   connection_count: int) -> tuple[list[tuple[bytes, Address]], Connection | None]:
        cid = packet.connection_id
        self._expire_recent(now)
        if cid in self._recently_closed:
            self._drop("replayed_handshake")
            return [], None
        # the cookie first: one AES-GCM open and no Diffie-Hellman, before the finish limit
        # is charged (a spoofer cannot drain a victim's bucket without a cookie issued to the
        # victim); opened once, for the finish below too
        opened = self.handshake.open_finish_cookie(cid, packet.payload, addr, now)
        if opened is None:
            self._drop("bad_finish")
            return [], None
        source = source_key(addr[0])
        if not self._finishes.allow(source, now):
            self._drop("finish_rate_limited")
            return [], None
        try:
            keys, credentials, params = self.handshake.on_client_finish(cid, packet.payload,
                                                                        addr, now, opened)
        except CredentialsRefused as exc:
            # authentic, but what the session service would refuse: say so, sealed
            refused = self._connection(cid, addr, exc.keys, None, exc.params, now)
            return self._refuse(refused, exc.code, exc.message, budget, now), None
        except HandshakeError:
            self._drop("bad_finish")
            return [], None
        shared = self._params.get(params)
        if shared is not None:
            params = shared
        elif len(self._params) < 64:
            self._params[params] = params
        conn = self._connection(cid, addr, keys, credentials, params, now)
        if self.stopping is not None:
            return self._refuse(conn, CloseCode.SERVER_SHUTDOWN, self.stopping, budget,
                                now), None
        if connection_count >= self.max_connections:
            return self._refuse(conn, CloseCode.SERVER_FULL, "server full", budget, now), None
        if not self.per_address.acquire(source, cid):
            return self._refuse(conn, CloseCode.ADDRESS_FULL,
                                f"too many connections from this address (at most "
                                f"{self.per_address.limit})", budget, now), None
        self.stats.handshakes_completed += 1
        return [], conn

    def _connection(self, cid: bytes, addr: Address, keys: SessionKeys,
                    credentials: Credentials | None, params: ServerParams,
                    now: float) -> Connection:
        """The server's end of a verified handshake, made with this listener's configuration
        (also the one made only to seal a refusal)."""
        return Connection.server(cid, addr, keys, credentials, params, now,
                                 configuration=self.config)

    def _refuse(self, conn: Connection, code: CloseCode, reason: str, budget: int,
                now: float) -> list[tuple[bytes, Address]]:
        """Answer a verified finish with a sealed REJECT; replays of it are dropped unread."""
        self.count_reject(code)
        conn.reject(code, reason, now)
        self._refuse_replays(conn.connection_id, now)
        replies = conn.datagrams_to_send(now)
        if any(len(datagram) > budget for datagram, _ in replies):
            self._drop("amplification_limit")
            return []
        return replies

    # ------------------------------------------------------------------ replies

    def _reject(self, packet: Packet, budget: int, addr: Address, code: CloseCode,
                reason: str) -> list[tuple[bytes, Address]]:
        self.count_reject(code)
        payload = encode_frames([RejectFrame(int(code), cut_reason(reason))])
        return self._reply(Flags.RST, packet.connection_id, payload, budget, addr)

    def _reply(self, flags: int, cid: bytes, payload: bytes, budget: int,
               addr: Address) -> list[tuple[bytes, Address]]:
        datagram = encode_packet(Packet(flags, cid, 0, 0, (), payload))
        if len(datagram) > budget:  # never amplify: answer with at most what we were sent
            self._drop("amplification_limit")
            return []
        return [(datagram, addr)]

    def count_reject(self, code: CloseCode) -> None:
        """Count a refused handshake in `stats.rejected` by reason. The owner counts here too
        the ones it refuses after authentication for a limit (TOO_MANY_CONNECTIONS...), so
        that every refusal for a limit shows in one place."""
        rejected = self.stats.rejected
        rejected[code.name.lower()] = rejected.get(code.name.lower(), 0) + 1

    def _drop(self, reason: str) -> None:
        drops = self.stats.drops
        drops[reason] = drops.get(reason, 0) + 1

    def _refuse_replays(self, connection_id: bytes, now: float) -> None:
        recent = self._recently_closed
        recent[connection_id] = now + self.handshake.cookie_lifetime
        recent.move_to_end(connection_id)  # kept in expiry order
        self._expire_recent(now)

    def _expire_recent(self, now: float) -> None:
        recent = self._recently_closed
        while recent:
            cid, until = next(iter(recent.items()))
            if until >= now:  # a cookie still opens at issued + lifetime: keep it to then
                break
            del recent[cid]
