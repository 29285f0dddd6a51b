"""The Quantum server: where the wire meets the session service.

One asyncio `DatagramProtocol` (on uvloop where available) serves every client on one UDP socket.
Datagrams are routed by connection id to sans-I/O `quantum.Connection`s; new connection ids go to
the stateless `quantum.Listener`. All connection timers live in one heap armed with a single
`loop.call_at`. What the connections report as events becomes SessionManager calls in exactly one
place, `SessionBridge.handle`, which reads like the table in docs/ARCHITECTURE.md.

Run it with `quantum-server` (or `python server.py`); `quantum-server --help` lists the flags.

This module is on the per-packet path, so setup.py compiles it with mypyc like the protocol core
(docs/ARCHITECTURE.md, "The compiled core"); it is ordinary typed Python all the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import heapq
import math
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeGuard, TypeVar

import structlog
from mypy_extensions import mypyc_attr

from quantum.auth import (
    MAX_TICKET_TTL,
    AnonymousAuthenticator,
    Authenticator,
    AuthError,
    TicketAuthenticator,
)
from quantum.config import MIN_SEND_BUFFER, QuantumConfiguration
from quantum.connection import Address, Connection, ConnectionState
from quantum.errors import CloseCode, ConnectionClosedError
from quantum.events import (
    AuthenticationRequested,
    ConnectionClosed,
    Event,
    KeepaliveReceived,
    MessageReceived,
    PathMigrated,
    SendBufferDrained,
)
from quantum.frames import Delivery
from quantum.handshake import MAX_PARAM_MS, ServerHandshake, ServerParams
from quantum.keys import KeyFileError, ServerKeyFile, default_key_path, fingerprint
from quantum.listener import ConnectionQuota, Listener
from quantum.packet import HEADER_SIZE, MAGIC
from session.errors import (
    SessionError,
    SessionExpired,
    SessionLimitExceeded,
    SessionNotFound,
    StoreUnavailable,
    TooManyUserSessions,
)
from session.manager import MAX_TIMEOUT, ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, State, Stats

log = structlog.get_logger("quantum.server")
_CLOSED: Final = ConnectionState.CLOSED
#: a hibernation sweep that released at least this many connections' cipher objects (2.4 KB
#: each, ~1.2 MB here) hands the freed memory back to the OS
TRIM_AFTER_RELEASES: Final = 256

T = TypeVar("T")


# ----------------------------------------------------------------------------- the timers


class Timed(Protocol):
    """Anything scheduled on a TimerHeap records its pending deadline here (None: none) and
    names a unique key that breaks ties between equal deadlines (loop times step in whole
    milliseconds, so ties are common): an object it already holds, compared in C."""

    timer_at: float | None

    @property
    def timer_key(self) -> bytes: ...


TimedT = TypeVar("TimedT", bound=Timed)


class TimerHeap(Generic[TimedT]):
    """The deadlines of many sans-I/O connections in one heap, with one `loop.call_at`.

    Re-scheduling does not search the heap: the owner's `timer_at` names its live deadline and
    any other entry for it is skipped when popped, as are entries whose owner `alive` denies.
    A deadline that moves *later* is not pushed at all: when the earlier entry comes due, the
    owner's real deadline is asked again (`deadline`) and, if it is still ahead, re-filed
    without firing. Every ACK moves the retransmission deadline later, so this turns a heap
    push and a stale pop per packet into one early wake-up per deadline.
    """

    def __init__(self, fire: Callable[[TimedT, float], None],
                 alive: Callable[[TimedT], bool],
                 deadline: Callable[[TimedT], float | None] | None = None) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the owner starts
        self._fire = fire
        self._alive = alive
        self._deadline = deadline  # the owner's current deadline (None: take entries as due)
        # (deadline, owner's tie-break key, owner): no new object per entry but the tuple
        self._heap: list[tuple[float, bytes, TimedT]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at: float | None = None

    def schedule(self, item: TimedT, at: float | None) -> None:
        if at is None:
            return
        current = item.timer_at
        if current is not None and current <= at:
            return  # the live entry fires first; its owner re-schedules then
        item.timer_at = at
        heapq.heappush(self._heap, (at, item.timer_key, item))
        if self._handle_at is None or at < self._handle_at:
            self._arm(at)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, at: float) -> None:
        assert self.loop is not None, "TimerHeap.loop is set when its owner starts"
        if self._handle is not None:
            self._handle.cancel()
        self._handle_at = at
        self._handle = self.loop.call_at(at, self._run)

    def _run(self) -> None:
        """Fire every live deadline that is due, each at most once, then arm for the earliest
        live one left and return to the event loop.

        The entries due are taken off the heap before any fires: whatever firing schedules,
        even at or before `now` (an owner whose deadline did not move), waits for the next
        pass, after the loop has polled the socket. No owner can keep this loop running."""
        assert self.loop is not None
        self._handle = None
        self._handle_at = None
        now = self.loop.time()
        heap, alive, deadline = self._heap, self._alive, self._deadline
        due: list[TimedT] = []
        while heap and heap[0][0] <= now:
            at, key, item = heapq.heappop(heap)
            if item.timer_at != at or not alive(item):
                continue  # superseded by a later scheduling, or gone
            real = deadline(item) if deadline is not None else None
            if real is not None and real > now:  # an early wake-up: the deadline moved later
                item.timer_at = real
                heapq.heappush(heap, (real, key, item))
                continue
            item.timer_at = None
            due.append(item)
        for item in due:
            if alive(item):  # an earlier one of this pass may have ended it
                self._fire(item, now)
        while heap:
            at, _, item = heap[0]
            if item.timer_at == at and alive(item):
                self._arm(at)
                break
            heapq.heappop(heap)



# ---------------------------------------------------------------------------------- the peers


@dataclass(eq=False, slots=True)
class Peer:
    """One connected client as the application sees it."""

    server: QuantumServer
    conn: Connection
    user_id: str = ""
    session_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    last_keepalive: float = 0.0
    idle: bool = False
    superseded: bool = False  # a resume moved the session to another connection
    stats_pushed_at: int = 0  # packets_received when the stats last went to the manager
    timer_at: float | None = None
    drained: asyncio.Future[None] | None = None  # what `drain()` waits for, while it does

    @property
    def connection_id(self) -> str:
        return str(uuid.UUID(bytes=self.conn.connection_id))

    @property
    def timer_key(self) -> bytes:
        return self.conn.connection_id  # unique among live connections: a TimerHeap tie-break

    @property
    def address(self) -> Address:
        return self.conn.peer_addr

    def send(self, message: bytes, channel: int = 0,
             mode: Delivery = Delivery.RELIABLE_ORDERED) -> None:
        """Queue a message to this client. Raises `MessageError` for a bad one, and its
        subclass `SendBufferFull` when the client has not acknowledged enough of what it was
        sent (nothing is queued then: `await peer.drain()` and send again, or drop it)."""
        self.conn.send(message, channel, mode)
        self.server.flush(self)

    async def drain(self) -> None:
        """Wait until the send buffer is back under half its limit (at once if it is).
        Raises `ConnectionClosedError` if the connection closes first."""
        if self.conn.state is _CLOSED:
            raise ConnectionClosedError("connection closed")
        if not self.conn.drain_wanted():
            return
        if self.drained is None:
            self.drained = self.server.loop.create_future()
        await asyncio.shield(self.drained)

    def close(self, reason: str = "", code: int = CloseCode.NORMAL) -> None:
        """Close this client's connection gracefully (queued data first, then FIN)."""
        self.conn.close(reason, code)
        self.server.flush(self)

    def _wake_drained(self, error: BaseException | None) -> None:
        waiter, self.drained = self.drained, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
                waiter.exception()  # retrieved: nobody may be left awaiting it


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled here, subclassed by applications
class Application:
    """What a game or collaboration server overrides. Callbacks run on the event loop; return a
    coroutine to do async work (it is scheduled as a task)."""

    def on_connect(self, peer: Peer) -> Awaitable[None] | None:
        return None

    def on_message(self, peer: Peer, message: bytes, channel: int,
                   mode: Delivery) -> Awaitable[None] | None:
        return None

    def on_disconnect(self, peer: Peer, reason: str) -> Awaitable[None] | None:
        return None


@dataclass(slots=True)
class ServerCounters:
    connections_opened: int = 0
    connections_closed: int = 0
    heartbeats: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    retransmissions: int = 0
    auth_failures: int = 0
    drops: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------- the event mapping


def _session_stats(conn: Connection) -> Stats:
    """The connection's counters and RTT as the session service records them."""
    s = conn.refresh_stats()
    return Stats(packets_sent=s.packets_sent, packets_received=s.packets_received,
                 bytes_sent=s.bytes_sent, bytes_received=s.bytes_received,
                 retransmissions=s.retransmissions, current_rtt_ms=(s.srtt or 0.0) * 1000)


class SessionBridge:
    """Protocol events -> session-manager calls. The whole mapping is `handle`:

    | event                                  | session service                                  |
    |----------------------------------------|--------------------------------------------------|
    | AuthenticationRequested                | authenticate; user's connection quota;           |
    |                                        | create_session / resume_session                  |
    | KeepaliveReceived                      | heartbeat -> keepalive-ack carries remaining     |
    | MessageReceived                        | application.on_message; IDLE session -> ACTIVE   |
    | PathMigrated                           | session's client address follows                 |
    | no keepalive for 3 intervals (sweep)   | ACTIVE -> IDLE                                   |
    | stats (sweep, every few s, and close)  | record_stats (coalesced, never per packet)       |
    | ConnectionClosed by client FIN         | delete_session(reason "client closed")           |
    | ConnectionClosed otherwise (idle ...)  | DISCONNECTING, kept until expiry for a resume    |
    | session deleted/expired in the manager | its connection is closed with that reason        |
    """

    def __init__(self, server: QuantumServer) -> None:
        self.server = server
        self.manager = server.manager

    def handle(self, peer: Peer, event: Event) -> None:
        server = self.server
        if isinstance(event, KeepaliveReceived):
            server.counters.heartbeats += 1
            peer.last_keepalive = peer.conn.last_received_at  # when it arrived (loop time)
            peer.idle = False
            self._heartbeat(peer, event.keepalive_id)
        elif isinstance(event, MessageReceived):
            server.counters.messages_received += 1
            if peer.idle:
                peer.idle = False
                self._set_state(peer, State.ACTIVE)
            server.call_app(server.app.on_message, peer, event.data, event.channel, event.mode)
        elif isinstance(event, AuthenticationRequested):
            server.spawn(self._authenticate(peer, event))
        elif isinstance(event, PathMigrated):
            if peer.session_id is not None:
                server.spawn(self._migrated(peer, event.new_addr))
        elif isinstance(event, SendBufferDrained):
            peer._wake_drained(None)
        elif isinstance(event, ConnectionClosed):
            self._closed(peer, event)

    # -- keepalives: the hot path. `heartbeat_nowait` finishes at once whenever the store
    # -- can (MemoryStore always, EtcdStore between lease refreshes): no Task per heartbeat.

    def _heartbeat(self, peer: Peer, keepalive_id: int) -> None:
        sid = peer.session_id
        if sid is None:
            peer.conn.acknowledge_keepalive(keepalive_id, None)
            return
        try:
            remaining = self.manager.heartbeat_nowait(sid)
        except SessionError as exc:
            self._session_gone(peer, exc)
            return
        if remaining is not None:
            peer.conn.acknowledge_keepalive(keepalive_id, remaining)
        else:
            self.server.spawn(self._heartbeat_async(peer, keepalive_id, sid))

    async def _heartbeat_async(self, peer: Peer, keepalive_id: int, session_id: str) -> None:
        try:
            remaining = await self.manager.heartbeat_with_io(session_id)
        except SessionError as exc:
            self._session_gone(peer, exc)
            return
        peer.conn.acknowledge_keepalive(keepalive_id, remaining)
        self.server.flush(peer)

    def _session_gone(self, peer: Peer, exc: SessionError) -> None:
        if isinstance(exc, (SessionNotFound, SessionExpired)):
            peer.session_id = None
            peer.conn.close(f"session ended: {exc}", CloseCode.SESSION_ENDED)
            self.server.flush(peer)
        else:
            log.warning("heartbeat failed", connection_id=peer.connection_id, error=str(exc))

    # -- handshake

    async def _authenticate(self, peer: Peer, req: AuthenticationRequested) -> None:
        server, conn = self.server, peer.conn
        ip, port = conn.peer_addr
        cid = str(uuid.UUID(bytes=conn.connection_id))
        try:
            session: Session | None = None
            resumed = False
            if req.resume is not None:
                session = await self._try_resume(peer, req, cid)
                resumed = session is not None
                if session is None and not req.resume_fallback:
                    raise AuthError(CloseCode.BAD_RESUME, "session cannot be resumed")
            if session is None:
                user_id = server.authenticator.authenticate(req.user_id, req.ticket, time.time())
                self._admit(peer, user_id)
                session, token = await self.manager.create_session(
                    user_id, ip, port, cid, metadata=req.metadata, server_addr=server.address_text)
            else:
                token = req.resume[1] if req.resume else ""
            remaining = await self.manager.heartbeat(session.session_id)  # CONNECTING -> ACTIVE
        except AuthError as exc:
            if exc.code == CloseCode.TOO_MANY_CONNECTIONS:
                server.listener.count_reject(exc.code)  # a limit, not a failed authentication
            else:
                server.counters.auth_failures += 1
            log.info("handshake rejected", connection_id=cid, user_id=req.user_id,
                     reason=exc.code.name.lower(), detail=exc.message)
            conn.reject(exc.code, exc.message, server.loop.time())
            server.flush(peer)
            return
        except SessionLimitExceeded as exc:
            code = (CloseCode.TOO_MANY_SESSIONS if isinstance(exc, TooManyUserSessions)
                    else CloseCode.SESSIONS_FULL)
            server.listener.count_reject(code)
            log.info("handshake rejected", connection_id=cid, user_id=req.user_id,
                     reason=code.name.lower(), detail=str(exc))
            conn.reject(code, str(exc)[:200], server.loop.time())
            server.flush(peer)
            return
        except StoreUnavailable as exc:
            log.error("session store unavailable", connection_id=cid, error=str(exc))
            conn.reject(CloseCode.STORE_UNAVAILABLE, "session store unavailable",
                        server.loop.time())
            server.flush(peer)
            return
        except (SessionError, ValueError) as exc:
            server.counters.auth_failures += 1
            conn.reject(CloseCode.BAD_REQUEST, str(exc)[:200], server.loop.time())
            server.flush(peer)
            return
        if conn.state is not ConnectionState.AUTHENTICATING:
            # the client gave up while we were busy: undo what we created
            server.user_connections.release(conn.connection_id)
            if not resumed:
                await self.manager.delete_session(session.session_id, "handshake abandoned")
            return
        # `session` is the manager's copy, ours alone: its metadata needs no second copy
        peer.user_id, peer.session_id = session.user_id, session.session_id
        peer.metadata = session.metadata
        peer.last_keepalive = server.loop.time()
        server.by_session[session.session_id] = peer
        conn.accept(uuid.UUID(session.session_id).bytes, token, remaining, resumed=resumed)
        log.info("connection established", connection_id=cid, session_id=session.session_id,
                 user_id=session.user_id, resumed=resumed, client=f"{ip}:{port}")
        server.call_app(server.app.on_connect, peer)
        server.flush(peer)

    def _admit(self, peer: Peer, user_id: str, replacing: Peer | None = None) -> None:
        """Count the connection against its user's connection quota (until it closes, see
        `_closed`), or refuse it with TOO_MANY_CONNECTIONS. `replacing`: the connection a
        resume is about to supersede, which does not stand in its successor's way."""
        if peer.conn.state is _CLOSED:
            return  # it ended while we awaited: `_closed` has run, nothing to count
        quota = self.server.user_connections
        old = replacing.conn.connection_id if replacing is not None else None
        if not quota.acquire(user_id, peer.conn.connection_id, replacing=old):
            raise AuthError(CloseCode.TOO_MANY_CONNECTIONS,
                            f"too many connections for this user (at most {quota.limit})")

    async def _try_resume(self, peer: Peer, req: AuthenticationRequested,
                          cid: str) -> Session | None:
        """The resumed session, or None if it cannot be resumed. Token, user, expiry and the
        user's connection quota are all checked before the store is written: a refused resume
        changes nothing."""
        assert req.resume is not None
        sid_bytes, token = req.resume
        sid = str(uuid.UUID(bytes=sid_bytes))
        ip, port = peer.conn.peer_addr
        server = self.server
        try:
            await self.manager.check_resume(sid, token, req.user_id)
        except (SessionError, ValueError) as exc:
            log.info("resume refused", session_id=sid, reason=str(exc))
            return None
        holder = server.by_session.get(sid)
        self._admit(peer, req.user_id, replacing=holder if holder is not peer else None)
        try:
            session = await self.manager.resume_session(
                sid, token, cid, ip, port, server_addr=server.address_text, user_id=req.user_id)
        except (SessionError, ValueError) as exc:
            server.user_connections.release(peer.conn.connection_id)
            log.info("resume refused", session_id=sid, reason=str(exc))
            return None
        old = server.by_session.get(sid)
        if old is not None and old is not peer:
            server.user_connections.release(old.conn.connection_id)
            old.superseded = True
            old.conn.close("session resumed on another connection", CloseCode.SESSION_ENDED)
            self.server.flush(old)
        return session

    async def _migrated(self, peer: Peer, addr: Address) -> None:
        assert peer.session_id is not None
        try:
            await self.manager.update_client_address(peer.session_id, addr[0], addr[1])
        except SessionError as exc:
            log.warning("address update failed", session_id=peer.session_id, error=str(exc))

    # -- periodic work and the end of a connection

    def _set_state(self, peer: Peer, state: State) -> None:
        if peer.session_id is not None:
            self.server.spawn(self._update(peer.session_id, state=state))

    async def _update(self, session_id: str, state: State | None = None,
                      stats: Stats | None = None) -> None:
        try:
            await self.manager.update_session(session_id, state=state, stats=stats)
        except SessionError as exc:
            log.debug("session update skipped", session_id=session_id, error=str(exc))

    def sweep(self, peers: Iterable[Peer], now: float) -> None:
        """Every few seconds: idle detection and coalesced statistics."""
        interval = self.server.config.keepalive_interval
        changed: list[tuple[str, Stats]] = []
        for peer in peers:
            sid = peer.session_id
            if sid is None:
                continue
            if not peer.idle and now - peer.last_keepalive > 3 * interval:
                peer.idle = True
                self._set_state(peer, State.IDLE)
            received = peer.conn.stats.packets_received
            if received != peer.stats_pushed_at:
                peer.stats_pushed_at = received
                changed.append((sid, _session_stats(peer.conn)))
        if changed:
            # one task for the whole sweep, not one per session: recording is local on both
            # stores (MemoryStore; EtcdStore writes it with the next lease refresh)
            self.server.spawn(self._record(changed))

    def _push_stats(self, peer: Peer) -> None:
        assert peer.session_id is not None
        self.server.spawn(self._record([(peer.session_id, _session_stats(peer.conn))]))

    async def _record(self, changed: list[tuple[str, Stats]]) -> None:
        record = self.manager.record_stats
        for session_id, stats in changed:
            with contextlib.suppress(SessionError):
                await record(session_id, stats)

    def _closed(self, peer: Peer, event: ConnectionClosed) -> None:
        server = self.server
        server.user_connections.release(peer.conn.connection_id)
        sid = peer.session_id
        peer._wake_drained(ConnectionClosedError(f"connection closed: {event.reason}"))
        server.call_app(server.app.on_disconnect, peer, event.reason)
        if sid is None or peer.superseded:
            return
        if server.by_session.get(sid) is peer:
            del server.by_session[sid]
        self._push_stats(peer)
        if event.by_peer and event.code == CloseCode.NORMAL:
            server.spawn(self._delete(sid, "client closed"))
        elif event.code == CloseCode.SESSION_ENDED:
            pass  # the session service ended it; nothing left to update
        else:
            server.spawn(self._update(sid, state=State.DISCONNECTING))
        log.info("connection closed", connection_id=peer.connection_id, session_id=sid,
                 reason=event.reason, by_peer=event.by_peer)

    async def _delete(self, session_id: str, reason: str) -> None:
        with contextlib.suppress(SessionError):
            await self.manager.delete_session(session_id, reason)

    def on_session_ended(self, session: Session, reason: str) -> None:
        """Manager listener: a session deleted or expired closes its connection."""
        peer = self.server.by_session.pop(session.session_id, None)
        if peer is None or peer.conn.state is ConnectionState.CLOSED:
            return
        peer.session_id = None
        peer.conn.close(f"session {reason}", CloseCode.SESSION_ENDED)
        self.server.flush(peer)


# ------------------------------------------------------------------------------ the server


# an ordinary Python class, not a compiled one: its __post_init__ names the field of a value
# of the wrong type, where a compiled class would raise a bare TypeError first
@mypyc_attr(native_class=False)
@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 9090
    keepalive_interval: float = 10.0
    idle_timeout: float = 60.0
    fec: bool = True
    max_connections: int = 10_000
    #: connections one user may hold at once (counted from authentication to close)
    max_connections_per_user: int = 8
    #: connections one source address (IPv4, or IPv6 /64) may hold at once: generous, since a
    #: NAT puts many users behind one address
    max_connections_per_address: int = 64
    #: handshakes per second one source may start (bursts of `handshake_burst`) before it is
    #: asked to prove its address with a retry cookie; also the ClientFinish rate per source
    handshake_rate: float = 20.0
    handshake_burst: float = 40.0
    #: above this many handshakes per second in all, every new source must first echo a retry
    #: cookie (one HMAC to check) before the server does any Diffie-Hellman for it
    retry_above_rate: float = 500.0
    stats_interval: float = 2.0
    report_interval: float = 60.0
    #: seconds without a packet from the client after which a connection releases its cipher
    #: objects (checked every `stats_interval`): well below the 10 s keepalive interval, so an
    #: idle client's connection spends most of its time hibernated, while one with real-time
    #: traffic never is; waking costs ~1.4 us, once per quiet spell
    hibernate_after: float = 2.0
    #: bytes one client may have queued or unacknowledged (`QuantumConfiguration.
    #: max_send_buffer`): past it `Peer.send` raises `SendBufferFull`
    max_send_buffer: int = 4 << 20
    #: a client that acknowledges nothing for this long while data is outstanding is closed
    stall_timeout: float = 30.0

    def __post_init__(self) -> None:
        """Refuse a configuration the server could not run with, naming the field."""
        # the fields as plain objects: they may hold anything the caller passed
        given: dict[str, object] = vars(self)
        host, port = given["host"], given["port"]
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, got {host!r}")
        if type(port) is not int or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        for name in ("max_connections", "max_connections_per_user",
                     "max_connections_per_address"):
            value = given[name]
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("handshake_rate", "retry_above_rate"):
            rate = given[name]
            if not (_is_number(rate) and 0 < rate < float("inf")):
                raise ValueError(f"{name} must be a positive number per second, got {rate!r}")
        burst = given["handshake_burst"]
        if not (_is_number(burst) and 1 <= burst < float("inf")):
            raise ValueError(f"handshake_burst must be a number of at least 1, got {burst!r}")
        max_send_buffer = given["max_send_buffer"]
        if type(max_send_buffer) is not int or not MIN_SEND_BUFFER <= max_send_buffer <= 1 << 40:
            raise ValueError(f"max_send_buffer must be an integer of {MIN_SEND_BUFFER} to "
                             f"2**40 bytes, got {max_send_buffer!r}")
        for name in ("keepalive_interval", "idle_timeout", "stats_interval", "report_interval",
                     "hibernate_after", "stall_timeout"):
            value = given[name]
            if not (_is_number(value) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class QuantumServer(asyncio.DatagramProtocol):
    """The UDP server. `await server.start()`, then `await server.stop()`."""

    def __init__(
        self,
        manager: SessionManager,
        key: ServerKeyFile,
        authenticator: Authenticator,
        config: ServerConfig | None = None,
        app: Application | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.manager = manager
        self.key = key
        self.authenticator = authenticator
        self.app = app or Application()
        self.counters = ServerCounters()
        self.peers: dict[bytes, Peer] = {}
        self.by_session: dict[str, Peer] = {}
        self.address_text = ""
        cfg = self.config
        self.quantum_config = QuantumConfiguration(
            keepalive_interval=None, idle_timeout=cfg.idle_timeout,
            fec=(10, 3) if cfg.fec else None, max_send_buffer=cfg.max_send_buffer,
            stall_timeout=cfg.stall_timeout)
        params = ServerParams(fec=self.quantum_config.fec,
                              keepalive_interval=cfg.keepalive_interval,
                              idle_timeout=cfg.idle_timeout)
        self.listener = Listener(ServerHandshake(key.private_key, params), self.quantum_config,
                                 max_connections=cfg.max_connections,
                                 max_connections_per_address=cfg.max_connections_per_address,
                                 per_source_rate=cfg.handshake_rate,
                                 per_source_burst=cfg.handshake_burst,
                                 retry_above_rate=cfg.retry_above_rate)
        self.user_connections = ConnectionQuota(cfg.max_connections_per_user)
        self.bridge = SessionBridge(self)
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timers: TimerHeap[Peer] = TimerHeap(
            self._on_timer, lambda peer: peer.conn.connection_id in self.peers,
            lambda peer: peer.conn.get_timer())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._periodic: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = self._timers.loop = asyncio.get_running_loop()
        self.manager.add_listener(self.bridge.on_session_ended)
        await self.manager.start()
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.config.host, self.config.port))
        _enlarge_socket_buffers(transport)
        host, port = transport.get_extra_info("sockname")[:2]
        self.address_text = f"{host}:{port}"
        self._periodic = self.loop.create_task(self._periodic_work())
        log.info("server started", address=self.address_text,
                 fingerprint=fingerprint(self.key.public_key),
                 max_connections=self.config.max_connections, fec=self.config.fec)

    @property
    def port(self) -> int:
        return int(self.address_text.rsplit(":", 1)[1])

    async def stop(self, reason: str = "server shutdown") -> None:
        """Stop accepting, close every connection with a reason, update sessions, release."""
        self._accepting = False
        for peer in list(self.peers.values()):
            peer.conn.close(reason, CloseCode.SERVER_SHUTDOWN)
            self.flush(peer)
        deadline = self.loop.time() + 2.0
        while self.peers and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for peer in list(self.peers.values()):  # unresponsive clients: give up on them
            peer.conn.handle_timer(float("inf"))
            self._drain(peer, self.loop.time())
        if self._periodic is not None:
            self._periodic.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self._transport is not None:
            self._transport.close()
        self._timers.close()
        await self.manager.close()
        log.info("server stopped", reason=reason)

    # ------------------------------------------------------------------ DatagramProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(data) < HEADER_SIZE or data[:4] != MAGIC:
            self._drop("not_quantum")
            return
        peer = self.peers.get(data[6:22])
        now = self.loop.time()
        if peer is not None:
            peer.conn.receive_datagram(data, addr, now)
            self._drain(peer, now)
            return
        if not self._accepting:
            self._drop("shutting_down")
            return
        replies, conn = self.listener.receive_datagram(data, addr, now, len(self.peers))
        transport = self._transport
        if transport is not None:
            for reply, to in replies:
                transport.sendto(reply, to)
        if conn is not None:
            peer = Peer(self, conn, last_keepalive=now)
            self.peers[conn.connection_id] = peer
            self.counters.connections_opened += 1
            self._drain(peer, now)

    def error_received(self, exc: Exception) -> None:
        self._drop("socket_error")

    # ------------------------------------------------------------------ per-connection work

    def _drain(self, peer: Peer, now: float) -> None:
        """After any input at `now`: turn the connection's events into session calls, then
        flush."""
        conn, bridge = peer.conn, self.bridge
        while (event := conn.next_event()) is not None:
            try:
                bridge.handle(peer, event)  # a direct call once compiled: no bound method
            except Exception:
                log.exception("event handling failed", connection_id=peer.connection_id,
                              event_type=type(event).__name__)
        self.flush(peer, now)

    def flush(self, peer: Peer, now: float | None = None) -> None:
        """Send what the connection has queued; re-arm its timer (or forget it once closed).
        `now`: the loop time, when the caller already read it."""
        conn = peer.conn
        transport = self._transport
        # Any: the (datagram, address) pairs pass through as the objects they are; typed, the
        # compiled loop would unpack each address into a C struct and box it again for sendto
        datagrams: list[Any] = conn.datagrams_to_send(self.loop.time() if now is None else now)
        if transport is not None:
            for data, addr in datagrams:
                transport.sendto(data, addr)
        if conn.state is _CLOSED:
            if self.peers.pop(conn.connection_id, None) is not None:
                self.counters.connections_closed += 1
                self.counters.retransmissions += conn.stats.retransmissions
                self.listener.forget(conn.connection_id, self.loop.time())
                while (event := conn.next_event()) is not None:
                    self.bridge.handle(peer, event)
            return
        at = conn.get_timer()
        current = peer.timer_at
        # schedule() would return at once for a deadline no earlier than the live one, the
        # common case (a packet only moves the idle deadline later); asked here, where Peer's
        # type is known, that check is a field read rather than a generic attribute lookup
        if at is not None and (current is None or at < current):
            self._timers.schedule(peer, at)

    def _on_timer(self, peer: Peer, now: float) -> None:
        peer.conn.handle_timer(now)
        self._drain(peer, now)

    # ------------------------------------------------------------------ background work

    async def _periodic_work(self) -> None:
        next_report = self.loop.time() + self.config.report_interval
        while True:
            await asyncio.sleep(self.config.stats_interval)
            now = self.loop.time()
            peers = list(self.peers.values())
            self.bridge.sweep(peers, now)
            self._hibernate_quiet(peers, now)
            if now >= next_report:
                next_report = now + self.config.report_interval
                log.info("server counters", **self.snapshot())

    def _hibernate_quiet(self, peers: Iterable[Peer], now: float) -> None:
        """Connections that heard nothing for `hibernate_after` seconds drop their cipher
        objects, most of an idle connection's memory (see `Connection.hibernate`)."""
        quiet_since = now - self.config.hibernate_after
        released = 0
        for peer in peers:
            conn = peer.conn
            if conn.last_received_at <= quiet_since and conn.hibernate():
                released += 1
        if released >= TRIM_AFTER_RELEASES:
            _return_free_memory()

    def snapshot(self) -> dict[str, Any]:
        """Counters for people and dashboards: connections, heartbeats, drops by reason..."""
        c = self.counters
        drops = dict(c.drops)
        for reason, n in self.listener.stats.drops.items():
            drops[f"handshake_{reason}"] = n
        for peer in self.peers.values():
            for reason, n in peer.conn.stats.drops.items():
                drops[reason] = drops.get(reason, 0) + n
        live_retx = sum(p.conn.stats.retransmissions for p in self.peers.values())
        return {
            "connections": len(self.peers),
            "connections_hibernating": sum(p.conn.hibernating for p in self.peers.values()),
            "connections_opened": c.connections_opened,
            "connections_closed": c.connections_closed,
            "heartbeats": c.heartbeats,
            "messages_received": c.messages_received,
            "retransmissions": c.retransmissions + live_retx,
            "auth_failures": c.auth_failures,
            "handshakes_rejected": dict(self.listener.stats.rejected),
            "drops": drops,
        }

    def spawn(self, coro: Coroutine[Any, Any, T]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", error=repr(task.exception()))

    def call_app(self, callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
        try:
            result = callback(*args)
        except Exception:
            log.exception("application callback failed", callback=callback.__name__)
            return
        if result is not None:
            self.spawn(_await(result))

    def send(self, target: Peer | str, message: bytes, channel: int = 0,
             mode: Delivery = Delivery.RELIABLE_ORDERED) -> None:
        """Send to a peer, or to the connection currently holding a session id."""
        peer = target if isinstance(target, Peer) else self.by_session.get(target)
        if peer is None:
            raise SessionNotFound(f"session not found: {target}")
        peer.send(message, channel, mode)
        self.counters.messages_sent += 1

    def _drop(self, reason: str) -> None:
        drops = self.counters.drops
        drops[reason] = drops.get(reason, 0) + 1


#: a burst from many clients at once must not overflow the kernel's default UDP buffer
SOCKET_BUFFER_BYTES: Final = 4 * 1024 * 1024


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        return None
    return trim


_MALLOC_TRIM: Final = _load_malloc_trim()


def _return_free_memory() -> None:
    """Give the pages freed by hibernation back to the OS. glibc keeps freed chunks for reuse,
    so without this the resident size stays at its high-water mark; malloc_trim(0) releases
    every whole free page (in the middle of the heap too) in a few milliseconds."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _enlarge_socket_buffers(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        # capped by the OS (net.core.rmem_max): keep what it allows
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable



# ---------------------------------------------------------------------------------- the CLI


#: the longest duration the wire carries (keepalive interval, idle timeout: u32 milliseconds)
MAX_WIRE_SECONDS: Final = MAX_PARAM_MS / 1000
#: the longest ticket `issue-ticket` signs: a year (a longer one is a ticket that never expires)


def _positive(kind: type[float] | type[int], minimum: float = 0.0,
              maximum: float | None = None) -> Callable[[str], float | int]:
    """An argparse type: a finite number above zero (at least `minimum` if that is set) and at
    most `maximum`."""
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {_plain(minimum)}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {_plain(maximum)}, got {text}")
        return value
    return parse


def _plain(number: float) -> str:
    """A bound as people write it: 31536000, 4294967.295, 0.001."""
    return f"{number:.3f}".rstrip("0").rstrip(".")


def _host(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantum-server",
        description="Quantum-protocol UDP server with a built-in session service. "
                    "Subcommands: 'keygen' and 'issue-ticket' (see 'quantum-server keygen -h').")
    p.add_argument("--host", type=_host, default="0.0.0.0",
                   help="address to bind (default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=9090, help="UDP port (default 9090; 0 = any)")
    p.add_argument("--store", choices=("memory", "etcd"), default="memory",
                   help="session store (default memory)")
    p.add_argument("--etcd-endpoints", default="127.0.0.1:2379",
                   help="comma-separated host:port list of one etcd cluster")
    p.add_argument("--etcd-prefix", default="/quantum", help="etcd key prefix (default /quantum)")
    p.add_argument("--session-timeout", type=_positive(float, maximum=MAX_TIMEOUT),
                   default=1800.0,
                   help="seconds a session lives without heartbeats (default 1800, at most a "
                        "year)")
    wire_seconds = _positive(float, minimum=0.001, maximum=MAX_WIRE_SECONDS)
    p.add_argument("--keepalive-interval", type=wire_seconds, default=10.0,
                   help="keepalive interval clients are told to use (default 10)")
    p.add_argument("--idle-timeout", type=wire_seconds, default=60.0,
                   help="seconds of silence before a connection is dropped (default 60)")
    p.add_argument("--fec", action=argparse.BooleanOptionalAction, default=True,
                   help="Reed-Solomon forward error correction, 10+3 (default on)")
    p.add_argument("--key-file", type=Path, default=None,
                   help=f"server key file (default {default_key_path()}; created if missing)")
    p.add_argument("--allow-anonymous", action="store_true",
                   help="DEVELOPMENT ONLY: accept any claimed user id without a ticket")
    p.add_argument("--max-connections", type=_positive(int), default=10_000,
                   help="connection cap; handshakes beyond it are refused (default 10000)")
    p.add_argument("--max-send-buffer", type=_positive(int), default=4 << 20,
                   help="bytes one client may have queued or unacknowledged before sends "
                        f"are refused (default 4 MiB, at least {MIN_SEND_BUFFER})")
    p.add_argument("--stall-timeout", type=_positive(float), default=30.0,
                   help="seconds a client may go on sending without acknowledging anything "
                        "before it is closed (default 30)")
    p.add_argument("--max-connections-per-user", type=_positive(int), default=8,
                   help="connections one user may hold at once (default 8)")
    p.add_argument("--max-connections-per-address", type=_positive(int), default=64,
                   help="connections one source address (IPv6: /64) may hold at once "
                        "(default 64; raise it for clients behind a large NAT)")
    p.add_argument("--max-sessions-per-user", type=_positive(int), default=8,
                   help="sessions one user may hold; the least recently active disconnected "
                        "one is evicted for a new one (default 8)")
    p.add_argument("--max-sessions", type=_positive(int), default=100_000,
                   help="sessions the session service holds in all (default 100000)")
    p.add_argument("--handshake-rate", type=_positive(float), default=20.0,
                   help="handshakes per second one source address may start before it must "
                        "prove its address with a retry cookie (default 20)")
    p.add_argument("--handshake-burst", type=_positive(float, minimum=1.0), default=40.0,
                   help="burst allowed above --handshake-rate (default 40)")
    p.add_argument("--retry-above-rate", type=_positive(float), default=500.0,
                   help="handshakes per second in all above which every new source must echo "
                        "a retry cookie first (default 500)")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return p


def _keygen_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantum-server keygen",
                                description="Write a new server key file (mode 0600).")
    p.add_argument("--key-file", type=Path, default=None,
                   help=f"where to write it (default {default_key_path()})")
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    return p


def _ticket_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantum-server issue-ticket",
                                description="Print a signed login ticket for a user.")
    p.add_argument("--user", required=True, help="user id the ticket is for")
    p.add_argument("--ttl", type=_positive(float, maximum=MAX_TICKET_TTL), default=3600.0,
                   help="seconds the ticket is valid (default 3600, at most a year: 31536000)")
    p.add_argument("--key-file", type=Path, default=None,
                   help=f"server key file (default {default_key_path()})")
    return p


def _keygen(argv: list[str]) -> int:
    args = _keygen_parser().parse_args(argv)
    path = args.key_file or default_key_path()
    if path.exists() and not args.force:
        print(f"quantum-server keygen: {path} exists; use --force to replace it", file=sys.stderr)
        return 2
    try:
        key = ServerKeyFile.generate(path)
    except KeyFileError as exc:
        print(f"quantum-server keygen: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    print(f"public key:  {key.public_key_text}")
    print(f"fingerprint: {fingerprint(key.public_key)}")
    return 0


def _issue_ticket(argv: list[str]) -> int:
    from quantum.auth import issue_ticket

    args = _ticket_parser().parse_args(argv)
    path = args.key_file or default_key_path()
    try:
        key = ServerKeyFile.load(path)
        print(issue_ticket(key.ticket_secret, args.user, args.ttl, time.time()))
    except (KeyFileError, ValueError) as exc:
        print(f"quantum-server issue-ticket: {exc}", file=sys.stderr)
        return 2
    return 0


async def _build_store(args: argparse.Namespace) -> Any:
    if args.store == "memory":
        return MemoryStore()
    from session.etcd import EtcdStore

    endpoints = [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()]
    return EtcdStore(endpoints, prefix=args.etcd_prefix)


async def serve(args: argparse.Namespace, app: Application | None = None,
                name: str = "quantum-server") -> int:
    """Run a server (with `app`, if given) configured by the CLI flags until SIGINT/SIGTERM."""
    from session.logs import configure_logging

    configure_logging(args.log_format, args.log_level)
    path = args.key_file or default_key_path()
    try:
        key, created = ServerKeyFile.load_or_create(path)
    except KeyFileError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    if created:
        log.warning("created a new server key file", path=str(path))
    authenticator: Authenticator
    if args.allow_anonymous:
        authenticator = AnonymousAuthenticator()
        log.warning("ANONYMOUS MODE: any claimed user id is accepted without a ticket; "
                    "never run this in production")
    else:
        authenticator = TicketAuthenticator(key.ticket_secret)
    try:
        config = ServerConfig(host=args.host, port=args.port,
                              keepalive_interval=args.keepalive_interval,
                              idle_timeout=args.idle_timeout, fec=args.fec,
                              max_connections=args.max_connections,
                              max_connections_per_user=args.max_connections_per_user,
                              max_connections_per_address=args.max_connections_per_address,
                              handshake_rate=args.handshake_rate,
                              handshake_burst=args.handshake_burst,
                              retry_above_rate=args.retry_above_rate,
                              max_send_buffer=args.max_send_buffer,
                              stall_timeout=args.stall_timeout)
        # checked before any store is built (its own store comes next: an etcd client must not
        # be created for a configuration that is refused anyway)
        manager_config = ManagerConfig(store=MemoryStore(), default_timeout=args.session_timeout,
                                       max_sessions_per_user=args.max_sessions_per_user,
                                       max_sessions=args.max_sessions)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    manager_config.store = await _build_store(args)
    manager = SessionManager(manager_config)
    server = QuantumServer(manager, key, authenticator, config, app)
    try:
        await server.start()
    except (OSError, StoreUnavailable) as exc:
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        return 1
    print(f"{name} ready on {server.address_text} store={args.store} "
          f"fingerprint={fingerprint(key.public_key)} public-key={key.public_key_text}",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await asyncio.wait_for(server.stop(), timeout=4.5)
    return 0


def run_app(app: Application | None, argv: list[str] | None = None,
            name: str = "quantum-server") -> int:
    """Parse the quantum-server flags and serve `app` on uvloop (plain asyncio on Windows)."""
    parser = build_parser()
    parser.prog = name
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args, app, name))
    status: int = uvloop.run(serve(args, app, name))
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "keygen":
        return _keygen(argv[1:])
    if argv and argv[0] == "issue-ticket":
        return _issue_ticket(argv[1:])
    return run_app(None, argv)


if __name__ == "__main__":
    # `python server.py` runs this file as __main__, always as source: import the module by name
    # instead, which loads the compiled build where there is one
    from server import main as _main

    sys.exit(_main())
