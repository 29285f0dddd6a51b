"""The Quantum server: where the wire meets the session service.

One asyncio `DatagramProtocol` (on uvloop where available) serves every client on one UDP socket.
A sans-I/O `quantum.endpoint.ServerEndpoint` routes each datagram by connection id to its
connection, or to the stateless `quantum.listener.Listener` when it is a handshake; all
connection timers share one `quantum.timers.TimerHeap`. What the connections report as events
becomes SessionManager calls in exactly one place, `SessionBridge.handle`, which reads like the
table in its docstring; the application's callbacks are the server's own business (`Peer`,
`Application`).

Run it with `quantum-server` (or `python server.py`); the command line lives in
`quantum_server/cli.py`, the configuration in `quantum_server/config.py`.

This module is on the per-packet path, so setup.py compiles it with mypyc like the protocol core
(docs/ARCHITECTURE.md, "The compiled core"); it is ordinary typed Python all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from mypy_extensions import mypyc_attr

from quantum.addresses import address_text, ip_text
from quantum.auth import Authenticator, AuthError
from quantum.config import QuantumConfiguration
from quantum.connection import Address, Connection, ConnectionState
from quantum.endpoint import ServerEndpoint
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
from quantum.handshake import ServerHandshake, ServerParams
from quantum.keys import ServerKeyFile, fingerprint
from quantum.listener import ConnectionQuota, Listener
from quantum.timers import TimerHeap
from quantum_server.config import ServerConfig
from quantum_server.housekeeping import DeadlineWheel, StallProbe
from quantum_server.restart import RestartSnapshot
from quantum_server.retained import RetainedStore
from quantum_server.system import bind_udp, enlarge_socket_buffers, return_free_memory
from quantum_server.transport import ConnectionTotals
from session.errors import (
    SessionError,
    SessionExpired,
    SessionLimitExceeded,
    SessionNotFound,
    StoreUnavailable,
    TooManyUserSessions,
)
from session.logs import LazyLogger
from session.manager import SessionManager
from session.model import Session, State, Stats

__all__ = ["Application", "Peer", "QuantumServer", "ServerConfig", "SessionBridge", "run_app"]

#: follows the application's structlog configuration, even one made after this import; without
#: one, INFO and up on stderr (session/logs.py)
log = LazyLogger("quantum.server")
_CLOSED: Final = ConnectionState.CLOSED
_AUTHENTICATING: Final = ConnectionState.AUTHENTICATING
#: a hibernation sweep that released at least this many connections' cipher objects (2.4 KB
#: each, ~1.2 MB here) hands the freed memory back to the OS
TRIM_AFTER_RELEASES: Final = 256
#: the upkeep deadlines' granularity (seconds): an idle session is marked, a quiet connection
#: hibernated, up to this much after its deadline
HOUSEKEEPING_RESOLUTION: Final = 0.25
#: connections looked at per event-loop pass of the upkeep before it yields to the socket
#: (about 1 us each, less for most): a burst of deadlines cannot stall the loop
HOUSEKEEPING_BATCH: Final = 4096
#: session updates (state changes, statistics) applied per event-loop pass before yielding
UPDATE_BATCH: Final = 512
#: after this many connections were opened since the last freeze, the objects that survived
#: (the connections, their sessions) move to the collector's permanent generation
#: (`gc.freeze`): a full collection then stops the world only for what is new, not for every
#: connection ever accepted (1.6 s at 200,000 connections otherwise)
GC_FREEZE_AFTER: Final = 1000

T = TypeVar("T")


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
    check_at: float | None = None  # when its upkeep is due (filed on the server's wheel)
    hibernated: bool = False  # counted in the server's hibernating connections
    retransmissions_counted: int = 0  # its retransmissions already in the server's counters
    drops_counted: dict[str, int] | None = None  # its drops already in the server's counters
    drained: asyncio.Future[None] | None = None  # what `drain()` waits for, while it does
    flush_pending: bool = False  # sent to since the connection was last flushed

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
        sent (nothing is queued then: `await peer.drain()` and send again, or drop it).

        The message leaves with whatever else is sent to this client in the same event-loop
        pass (other messages, the acknowledgement of what it just sent): one datagram for
        all of them where they fit, not one per message."""
        self.conn.send(message, channel, mode)
        if not self.flush_pending:
            self.flush_pending = True
            self.server.flush_soon(self)

    async def drain(self) -> None:
        """Wait until the send buffer has room again: under half its limit, and the largest
        message refused since the last drain fits (at once if so). Raises
        `ConnectionClosedError` if the connection closes first."""
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
    #: the connections' own drops (reason -> count): live ones' as of their last upkeep look,
    #: closed ones' in full
    connection_drops: dict[str, int] = field(default_factory=dict)
    #: handshakes refused after authentication by a limit (code name -> count)
    rejected: dict[str, int] = field(default_factory=dict)
    #: the counters of connections that have closed (the metrics' totals include them)
    closed: ConnectionTotals = field(default_factory=ConnectionTotals)


# ------------------------------------------------------------------------- the event mapping


class BridgePort(Protocol):
    """What the event -> session table needs from its server: three verbs."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine as a task the server watches (its errors are logged)."""

    def flush(self, peer: Peer) -> None:
        """Send what the peer's connection has queued, at once."""

    def bind(self, peer: Peer) -> None:
        """`peer` now holds its session (`peer.session_id` is set): the client is connected."""


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
    | MessageReceived                        | IDLE session -> ACTIVE                           |
    | PathMigrated                           | session's client address follows                 |
    | no keepalive for 3 intervals (sweep)   | ACTIVE -> IDLE                                   |
    | stats (sweep, every few s, and close)  | record_stats (coalesced, never per packet)       |
    | ConnectionClosed by client FIN         | delete_session(reason "client closed")           |
    | ConnectionClosed otherwise (idle ...)  | DISCONNECTING, kept until expiry for a resume    |
    | session deleted/expired in the manager | its connection is closed with that reason        |

    It knows sessions, not sockets: its server is a `BridgePort` (spawn a task, flush a peer,
    bind a peer to its session), so it can be driven without one (tests/test_bridge.py).
    """

    def __init__(self, manager: SessionManager, authenticator: Authenticator,
                 port: BridgePort, counters: ServerCounters, *, keepalive_interval: float,
                 max_connections_per_user: int, clock: Callable[[], float]) -> None:
        self.manager = manager
        self.authenticator = authenticator
        self.port = port
        self.counters = counters
        self.keepalive_interval = keepalive_interval
        self.clock = clock  # the connections' clock (time.monotonic on the server)
        #: the server's address as sessions record it (set when it has one)
        self.server_addr: str | None = None
        #: session id -> the peer holding it
        self.by_session: dict[str, Peer] = {}
        self.user_connections = ConnectionQuota(max_connections_per_user)
        #: session id -> the state it is to be given: applied by one task, in batches
        self._states: dict[str, State] = {}
        #: statistics to record, collected by the upkeep and applied by one task
        self._stats: list[tuple[str, Stats]] = []
        self._applying = False

    def handle(self, peer: Peer, event: Event) -> None:
        if isinstance(event, KeepaliveReceived):
            self.counters.heartbeats += 1
            peer.last_keepalive = peer.conn.last_received_at  # when it arrived
            peer.idle = False
            self._heartbeat(peer, event.keepalive_id)
        elif isinstance(event, MessageReceived):
            self.counters.messages_received += 1
            if peer.idle:
                peer.idle = False
                if peer.session_id is not None:
                    self._set_state(peer.session_id, State.ACTIVE)
        elif isinstance(event, AuthenticationRequested):
            self.port.spawn(self._authenticate(peer, event))
        elif isinstance(event, PathMigrated):
            if peer.session_id is not None:
                self.port.spawn(self._migrated(peer, event.new_addr))
        elif isinstance(event, ConnectionClosed):
            self._closed(peer, event)

    def peer_for(self, session_id: str) -> Peer | None:
        """The peer holding a session, if one does here."""
        return self.by_session.get(session_id)

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
            self.port.spawn(self._heartbeat_async(peer, keepalive_id, sid))

    async def _heartbeat_async(self, peer: Peer, keepalive_id: int, session_id: str) -> None:
        try:
            remaining = await self.manager.heartbeat_with_io(session_id)
        except SessionError as exc:
            self._session_gone(peer, exc)
            return
        peer.conn.acknowledge_keepalive(keepalive_id, remaining)
        self.port.flush(peer)

    def _session_gone(self, peer: Peer, exc: SessionError) -> None:
        if isinstance(exc, (SessionNotFound, SessionExpired)):
            peer.session_id = None
            peer.conn.close(f"session ended: {exc}", CloseCode.SESSION_ENDED)
            self.port.flush(peer)
        else:
            log.warning("heartbeat failed", connection_id=peer.connection_id, error=str(exc))

    # -- handshake

    async def _authenticate(self, peer: Peer, req: AuthenticationRequested) -> None:
        conn = peer.conn
        addr = conn.peer_addr
        ip, port = ip_text(addr[0]), addr[1]  # an IPv4 client on a dual-stack socket: its IPv4
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
                user_id = self.authenticator.authenticate(req.user_id, req.ticket, time.time())
                self._admit(peer, user_id)
                session, token = await self.manager.create_session(
                    user_id, ip, port, cid, metadata=req.metadata, server_addr=self.server_addr)
            else:
                token = req.resume[1] if req.resume else ""
            remaining = await self.manager.heartbeat(session.session_id)  # CONNECTING -> ACTIVE
        except AuthError as exc:
            if exc.code == CloseCode.TOO_MANY_CONNECTIONS:
                self._count_reject(exc.code)  # a limit, not a failed authentication
            else:
                self.counters.auth_failures += 1
            log.info("handshake rejected", connection_id=cid, user_id=req.user_id,
                     reason=exc.code.name.lower(), detail=exc.message)
            self._reject(peer, exc.code, exc.message)
            return
        except SessionLimitExceeded as exc:
            code = (CloseCode.TOO_MANY_SESSIONS if isinstance(exc, TooManyUserSessions)
                    else CloseCode.SESSIONS_FULL)
            self._count_reject(code)
            log.info("handshake rejected", connection_id=cid, user_id=req.user_id,
                     reason=code.name.lower(), detail=str(exc))
            self._reject(peer, code, str(exc)[:200])
            return
        except StoreUnavailable as exc:
            log.error("session store unavailable", connection_id=cid, error=str(exc))
            self._reject(peer, CloseCode.STORE_UNAVAILABLE, "session store unavailable")
            return
        except (SessionError, ValueError) as exc:
            self.counters.auth_failures += 1
            self._reject(peer, CloseCode.BAD_REQUEST, str(exc)[:200])
            return
        if conn.state is not _AUTHENTICATING:
            # the client gave up while we were busy: undo what we created
            self.user_connections.release(conn.connection_id)
            if not resumed:
                await self.manager.delete_session(session.session_id, "handshake abandoned")
            return
        # `session` is the manager's copy, ours alone: its metadata needs no second copy
        peer.user_id, peer.session_id = session.user_id, session.session_id
        peer.metadata = session.metadata
        peer.last_keepalive = self.clock()
        self.by_session[session.session_id] = peer
        conn.accept(uuid.UUID(session.session_id).bytes, token, remaining, resumed=resumed)
        log.info("connection established", connection_id=cid, session_id=session.session_id,
                 user_id=session.user_id, resumed=resumed, client=address_text(addr))
        self.port.bind(peer)
        self.port.flush(peer)

    def _reject(self, peer: Peer, code: CloseCode, reason: str) -> None:
        peer.conn.reject(code, reason, self.clock())
        self.port.flush(peer)

    def _count_reject(self, code: CloseCode) -> None:
        rejected = self.counters.rejected
        rejected[code.name.lower()] = rejected.get(code.name.lower(), 0) + 1

    def _admit(self, peer: Peer, user_id: str, replacing: Peer | None = None) -> None:
        """Count the connection against its user's connection quota (until it closes, see
        `_closed`), or refuse it with TOO_MANY_CONNECTIONS. `replacing`: the connection a
        resume is about to supersede, which does not stand in its successor's way."""
        if peer.conn.state is _CLOSED:
            return  # it ended while we awaited: `_closed` has run, nothing to count
        quota = self.user_connections
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
        addr = peer.conn.peer_addr
        ip, port = ip_text(addr[0]), addr[1]
        try:
            await self.manager.check_resume(sid, token, req.user_id)
        except (SessionError, ValueError) as exc:
            log.info("resume refused", session_id=sid, reason=str(exc))
            return None
        holder = self.by_session.get(sid)
        self._admit(peer, req.user_id, replacing=holder if holder is not peer else None)
        self._states.pop(sid, None)  # a pending IDLE or DISCONNECTING: the resume supersedes
        try:
            session = await self.manager.resume_session(
                sid, token, cid, ip, port, server_addr=self.server_addr, user_id=req.user_id)
        except (SessionError, ValueError) as exc:
            self.user_connections.release(peer.conn.connection_id)
            log.info("resume refused", session_id=sid, reason=str(exc))
            return None
        old = self.by_session.get(sid)
        if old is not None and old is not peer:
            self.user_connections.release(old.conn.connection_id)
            old.superseded = True
            old.conn.close("session resumed on another connection", CloseCode.SESSION_ENDED)
            self.port.flush(old)
        return session

    async def _migrated(self, peer: Peer, addr: Address) -> None:
        assert peer.session_id is not None
        try:
            await self.manager.update_client_address(peer.session_id, ip_text(addr[0]), addr[1])
        except SessionError as exc:
            log.warning("address update failed", session_id=peer.session_id, error=str(exc))

    # -- periodic work and the end of a connection

    def _set_state(self, sid: str, state: State) -> None:
        """Queue a session state change: the latest one per session is applied, by the one
        task that applies them all (never a task per session)."""
        self._states[sid] = state
        self._apply_soon()

    def _apply_soon(self) -> None:
        if not self._applying:
            self._applying = True
            self.port.spawn(self._apply_updates())

    async def _apply_updates(self) -> None:
        """Apply the queued state changes and statistics, `UPDATE_BATCH` at a time with a
        yield to the event loop between batches: a store that answers at once (MemoryStore)
        would otherwise run thousands of them in one loop pass."""
        update, record = self.manager.update_session, self.manager.record_stats
        try:
            done = 0
            while self._states or self._stats:
                if self._states:
                    sid = next(iter(self._states))
                    state = self._states.pop(sid)
                    try:
                        await update(sid, state=state)
                    except SessionError as exc:
                        log.debug("session update skipped", session_id=sid, error=str(exc))
                else:
                    sid, stats = self._stats.pop()
                    with contextlib.suppress(SessionError):
                        await record(sid, stats)
                done += 1
                if done % UPDATE_BATCH == 0:
                    await asyncio.sleep(0)
        finally:
            self._applying = False

    def check(self, peer: Peer, now: float) -> float | None:
        """A connection's session upkeep, when its deadline comes (`QuantumServer`'s wheel):
        ACTIVE -> IDLE after three keepalive intervals without one, and its statistics
        when they changed (coalesced: at most once per look, never per packet). Returns when
        it next needs a look for the session's sake: None while there is nothing to wait for
        (no session, or idle already), in which case the next packet files it again."""
        sid = peer.session_id
        if sid is None:
            return None
        idle_at = peer.last_keepalive + 3 * self.keepalive_interval
        if not peer.idle and now > idle_at:
            peer.idle = True
            self._set_state(sid, State.IDLE)
        received = peer.conn.stats.packets_received
        if received != peer.stats_pushed_at:
            peer.stats_pushed_at = received
            # recording is local on both stores (MemoryStore; EtcdStore writes it with the
            # next lease refresh): queued for the update task with the state changes
            self._stats.append((sid, _session_stats(peer.conn)))
            self._apply_soon()
        return None if peer.idle else idle_at

    def _push_stats(self, peer: Peer) -> None:
        assert peer.session_id is not None
        self._stats.append((peer.session_id, _session_stats(peer.conn)))
        self._apply_soon()

    def _closed(self, peer: Peer, event: ConnectionClosed) -> None:
        self.user_connections.release(peer.conn.connection_id)
        sid = peer.session_id
        if sid is None or peer.superseded:
            return
        if self.by_session.get(sid) is peer:
            del self.by_session[sid]
        self._push_stats(peer)
        if event.by_peer and event.code == CloseCode.NORMAL:
            self._states.pop(sid, None)  # nothing left to update
            self.port.spawn(self._delete(sid, "client closed"))
        elif event.code == CloseCode.SESSION_ENDED:
            pass  # the session service ended it; nothing left to update
        else:
            self._set_state(sid, State.DISCONNECTING)
        log.info("connection closed", connection_id=peer.connection_id, session_id=sid,
                 reason=event.reason, by_peer=event.by_peer)

    async def _delete(self, session_id: str, reason: str) -> None:
        with contextlib.suppress(SessionError):
            await self.manager.delete_session(session_id, reason)

    def on_session_ended(self, session: Session, reason: str) -> None:
        """Manager listener: a session deleted or expired closes its connection."""
        self._states.pop(session.session_id, None)
        peer = self.by_session.pop(session.session_id, None)
        if peer is None or peer.conn.state is _CLOSED:
            return
        peer.session_id = None
        peer.conn.close(f"session {reason}", CloseCode.SESSION_ENDED)
        self.port.flush(peer)


# ------------------------------------------------------------------------------ the server


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
        self.address_text = ""
        cfg = self.config
        #: what lost connections left for their sessions' resumes, written to the snapshot
        self.retained = RetainedStore(cfg.retain_session_bytes, cfg.retain_total_bytes)
        #: the sessions' snapshot file across a restart (`quantum_server.restart`; the CLI sets
        #: it for a MemoryStore): loaded by `start` before the socket opens, written by `stop`
        self.restart_snapshot: RestartSnapshot | None = None
        self.quantum_config = QuantumConfiguration(
            keepalive_interval=None, idle_timeout=cfg.idle_timeout,
            fec=(10, 3) if cfg.fec else None, max_send_buffer=cfg.max_send_buffer,
            stall_timeout=cfg.stall_timeout, ciphers=cfg.ciphers)
        params = ServerParams(fec=self.quantum_config.fec,
                              keepalive_interval=cfg.keepalive_interval,
                              idle_timeout=cfg.idle_timeout)
        handshake = ServerHandshake(key.private_key, params, ciphers=cfg.ciphers)
        self.listener = Listener(handshake, self.quantum_config,
                                 max_connections=cfg.max_connections,
                                 max_connections_per_address=cfg.max_connections_per_address,
                                 per_source_rate=cfg.handshake_rate,
                                 per_source_burst=cfg.handshake_burst,
                                 retry_above_rate=cfg.retry_above_rate)
        self.endpoint: ServerEndpoint[Peer] = ServerEndpoint(self.listener)
        #: connection id -> peer, for every live connection (the endpoint's routing table)
        self.peers = self.endpoint.owners
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop()
        self.bridge = SessionBridge(manager, authenticator, self, self.counters,
                                    keepalive_interval=cfg.keepalive_interval,
                                    max_connections_per_user=cfg.max_connections_per_user,
                                    clock=self._now)
        self._transport: asyncio.DatagramTransport | None = None
        self._timers: TimerHeap[Peer] = TimerHeap(
            self._on_timer, lambda peer: peer.conn.connection_id in self.peers,
            lambda peer: peer.conn.get_timer())
        self._tasks: set[asyncio.Task[Any]] = set()
        self._periodic: asyncio.Task[None] | None = None
        #: every connection's next upkeep (idle detection, statistics, hibernation)
        #: how soon after it is first heard from a connection gets its upkeep look
        self._first_look = min(cfg.stats_interval, cfg.hibernate_after)
        self._upkeep: DeadlineWheel[Peer] = DeadlineWheel(
            min(HOUSEKEEPING_RESOLUTION, self._first_look))
        #: connections whose cipher objects are released (running count, for `snapshot`)
        self.hibernating = 0
        #: the longest event-loop stall (None: not measured, `stall_probe_interval` 0)
        self.stall_probe: StallProbe | None = (
            StallProbe(cfg.stall_probe_interval) if cfg.stall_probe_interval > 0 else None)
        self._frozen_at_opened = 0  # connections_opened at the last gc.freeze()
        # peers sent to outside their own input's processing, flushed once per loop pass
        self._flush_queue: list[Peer] = []

    @property
    def by_session(self) -> dict[str, Peer]:
        """Session id -> the peer holding it (the bridge's table)."""
        return self.bridge.by_session

    @property
    def user_connections(self) -> ConnectionQuota:
        return self.bridge.user_connections

    def _now(self) -> float:
        # the connections' clock: high resolution, unlike uvloop's loop.time() (quantum.timers)
        return time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.loop = self._timers.loop = asyncio.get_running_loop()
        self.manager.add_listener(self.bridge.on_session_ended)
        await self.manager.start()
        if self.restart_snapshot is not None:
            await self.restart_snapshot.load(self)
        addresses = await self.loop.getaddrinfo(self.config.host, self.config.port,
                                                type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        transport, _ = await self.loop.create_datagram_endpoint(
            lambda: self, sock=bind_udp(addresses))
        enlarge_socket_buffers(transport)
        sockname = transport.get_extra_info("sockname")
        # `[::1]:9097`, `0.0.0.0:9090`: with --port 0, the port the system chose
        self.address_text = self.bridge.server_addr = address_text(sockname)
        self._periodic = self.loop.create_task(self._periodic_work())
        if self.stall_probe is not None:
            self.stall_probe.start(self.loop)
        log.info("server started", address=self.address_text,
                 fingerprint=fingerprint(self.key.public_key),
                 max_connections=self.config.max_connections, fec=self.config.fec)

    @property
    def port(self) -> int:
        return int(self.address_text.rsplit(":", 1)[1])

    async def stop(self, reason: str = "server shutdown") -> None:
        """Stop accepting (new handshakes are refused with SERVER_SHUTDOWN), close every
        connection with `reason`, update sessions, release."""
        self.listener.stop_accepting(f"{reason}: not accepting connections")
        for peer in list(self.peers.values()):
            peer.conn.close(reason, CloseCode.SERVER_SHUTDOWN)
            self.flush(peer)
        deadline = time.monotonic() + 2.0
        while self.peers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for peer in list(self.peers.values()):  # unresponsive clients: give up on them
            peer.conn.handle_timer(float("inf"))
            self._process(peer, time.monotonic())
        if self._periodic is not None:
            self._periodic.cancel()
        if self.stall_probe is not None:
            self.stall_probe.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self._transport is not None:
            self._transport.close()
        self._timers.close()
        if self.restart_snapshot is not None:  # every session is DISCONNECTING by now
            await self.restart_snapshot.save(self)
        await self.manager.close()
        log.info("server stopped", reason=reason)

    # ------------------------------------------------------------------ DatagramProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        now = time.monotonic()
        peer = self.endpoint.route(data)
        if peer is not None:
            peer.conn.receive_datagram(data, addr, now)
            self._process(peer, now)
            return
        replies, conn = self.endpoint.handshake(data, addr, now)
        transport = self._transport
        if transport is not None:
            for reply, to in replies:
                transport.sendto(reply, to)
        if conn is not None:
            peer = Peer(self, conn, last_keepalive=now)
            self.endpoint.add(conn.connection_id, peer)
            self.counters.connections_opened += 1
            self._process(peer, now)

    def error_received(self, exc: Exception) -> None:
        self._drop("socket_error")

    # ------------------------------------------------------------------ per-connection work

    def _process(self, peer: Peer, now: float) -> None:
        """After any input at `now`: the connection's events to the session table and the
        application, its datagrams to the wire, then its timer re-armed, or, once it is
        closed, the connection forgotten. The one place a connection's output is handled."""
        conn = peer.conn
        transport = self._transport
        event = conn.next_event()
        while True:
            while event is not None:
                self._dispatch(peer, event)
                event = conn.next_event()
            # Any: the (datagram, address) pairs pass through as the objects they are; typed,
            # the compiled loop would unpack each address into a C struct and box it again
            datagrams: list[Any] = conn.datagrams_to_send(now)
            if transport is not None:
                for data, addr in datagrams:
                    transport.sendto(data, addr)
            event = conn.next_event()  # sending can end it (the key's packet limit)
            if event is None:
                break
        peer.flush_pending = False
        if conn.state is _CLOSED:
            if self.endpoint.remove(conn.connection_id, now) is not None:
                self._forget(peer)
            return
        check_at = peer.check_at
        if check_at is None or check_at > now + self._first_look:
            # heard from after a quiet spell: its upkeep (statistics, hibernating again) is
            # due soon, not at the far deadline it was filed for (idle detection), if any
            self._upkeep.file(peer, now + self._first_look)
        at = conn.get_timer()
        current = peer.timer_at
        # schedule() would return at once for a deadline no earlier than the live one, the
        # common case (a packet only moves the idle deadline later); asked here, where Peer's
        # type is known, that check is a field read rather than a generic attribute lookup
        if at is not None and (current is None or at < current):
            self._timers.schedule(peer, at)

    def _dispatch(self, peer: Peer, event: Event) -> None:
        """One event: the session table first, then what the application is told."""
        try:
            self.bridge.handle(peer, event)  # a direct call once compiled: no bound method
            kind = type(event)
            if kind is MessageReceived:
                assert isinstance(event, MessageReceived)
                self.call_app(self.app.on_message, peer, event.data, event.channel, event.mode)
            elif kind is SendBufferDrained:
                peer._wake_drained(None)
            elif kind is ConnectionClosed:
                assert isinstance(event, ConnectionClosed)
                peer._wake_drained(ConnectionClosedError(f"connection closed: {event.reason}"))
                self.call_app(self.app.on_disconnect, peer, event.reason)
        except Exception:
            log.exception("event handling failed", connection_id=peer.connection_id,
                          event_type=type(event).__name__)

    def flush(self, peer: Peer) -> None:
        """Send what the peer's connection has queued, now (`BridgePort.flush`)."""
        self._process(peer, time.monotonic())

    def flush_soon(self, peer: Peer) -> None:
        """Flush `peer` once, at the end of this event-loop pass: what is sent to it meanwhile
        (several replies, a broadcast, the ack of what it sent) shares its datagrams."""
        queue = self._flush_queue
        queue.append(peer)
        if len(queue) == 1:
            self.loop.call_soon(self._flush_queued)

    def _flush_queued(self) -> None:
        queue, self._flush_queue = self._flush_queue, []
        now = time.monotonic()
        for peer in queue:
            if peer.flush_pending:  # not flushed by its own input's processing meanwhile
                self._process(peer, now)

    def bind(self, peer: Peer) -> None:
        """`BridgePort.bind`: the client is connected with its session."""
        self.call_app(self.app.on_connect, peer)

    def _on_timer(self, peer: Peer, now: float) -> None:
        peer.conn.handle_timer(now)
        self._process(peer, now)

    # ------------------------------------------------------------------ background work

    async def _periodic_work(self) -> None:
        """The connections' upkeep as it comes due, the counters' report, the collector's
        freeze: each pass costs what is due, never a walk over every connection."""
        next_report = time.monotonic() + self.config.report_interval
        while True:
            await asyncio.sleep(self._upkeep.resolution)
            now = time.monotonic()
            due = self._upkeep.take_due(now)
            released = 0
            for start in range(0, len(due), HOUSEKEEPING_BATCH):
                if start:
                    await asyncio.sleep(0)  # let the socket in between batches
                    now = time.monotonic()
                released += self._look_at(due[start:start + HOUSEKEEPING_BATCH], now)
            if released >= TRIM_AFTER_RELEASES:
                return_free_memory()
            self._freeze_survivors()
            if now >= next_report:
                next_report = now + self.config.report_interval
                log.info("server counters", **self.snapshot())

    def _look_at(self, due: list[Peer], now: float) -> int:
        """The upkeep of connections whose deadline came: the session's (idle detection,
        statistics), hibernation of the quiet ones, their counters folded into the server's.
        Each is filed again for when it next needs a look, or left until its next packet.
        Returns how many released their cipher objects."""
        peers, bridge = self.peers, self.bridge
        quiet_for = self.config.hibernate_after
        stats_every = self.config.stats_interval
        released = 0
        for peer in due:
            conn = peer.conn
            if peers.get(conn.connection_id) is not peer or peer.check_at is not None:
                continue  # closed meanwhile, or filed again since it was taken
            heard = conn.stats.packets_received != peer.stats_pushed_at
            self._fold_counters(peer)
            at = bridge.check(peer, now)
            if peer.hibernated and not conn.hibernating:  # woke on a packet since
                peer.hibernated = False
                self.hibernating -= 1
            if not peer.hibernated:
                quiet_at = conn.last_received_at + quiet_for
                if quiet_at <= now:
                    if conn.hibernate():
                        released += 1
                    if conn.hibernating:
                        peer.hibernated = True
                        self.hibernating += 1
                elif at is None or quiet_at < at:
                    at = quiet_at
            if heard:
                # busy: its statistics are pushed again in `stats_interval`
                busy_at = now + stats_every
                if at is None or busy_at < at:
                    at = busy_at
            if at is not None:
                self._upkeep.file(peer, at)
        return released

    def _fold_counters(self, peer: Peer) -> None:
        """Add what a connection counted since its last look to the server's counters, so
        that `snapshot` reads running totals instead of every connection."""
        stats = peer.conn.stats
        retx = stats.fast_retransmits + stats.timeout_retransmits
        self.counters.retransmissions += retx - peer.retransmissions_counted
        peer.retransmissions_counted = retx
        if stats.drops:  # rare: a dict only for the connections that dropped something
            counted = peer.drops_counted
            if counted is None:
                counted = peer.drops_counted = {}
            drops = self.counters.connection_drops
            for reason, n in stats.drops.items():
                new = n - counted.get(reason, 0)
                if new:
                    drops[reason] = drops.get(reason, 0) + new
                    counted[reason] = n

    def _forget(self, peer: Peer) -> None:
        """A closed connection leaves: its counters join the closed connections' totals."""
        conn = peer.conn
        self.counters.connections_closed += 1
        self._fold_counters(peer)
        self.counters.closed.add(conn.stats)
        if peer.hibernated:
            peer.hibernated = False
            self.hibernating -= 1

    def _freeze_survivors(self) -> None:
        """After a burst of accepts, move what survived into the collector's permanent
        generation (`GC_FREEZE_AFTER`). Closed connections leave no reference cycles (the
        tests check), so what is frozen is freed by reference counting when it ends."""
        opened = self.counters.connections_opened
        if opened - self._frozen_at_opened >= GC_FREEZE_AFTER:
            self._frozen_at_opened = opened
            gc.collect(1)  # the young garbage first: it would otherwise be frozen with them
            gc.freeze()

    def snapshot(self) -> dict[str, Any]:
        """Counters for people and dashboards: connections, heartbeats, drops by reason...
        Running totals: a live connection's retransmissions and drops are counted at its
        upkeep looks (every `stats_interval` while it is busy) and when it closes."""
        c = self.counters
        drops = dict(c.drops)
        for reason, n in c.connection_drops.items():
            drops[reason] = drops.get(reason, 0) + n
        for reason, n in self.listener.stats.drops.items():
            drops[f"handshake_{reason}"] = n
        rejected = dict(self.listener.stats.rejected)
        for code, n in c.rejected.items():
            rejected[code] = rejected.get(code, 0) + n
        probe = self.stall_probe
        return {
            "connections": len(self.peers),
            "connections_hibernating": self.hibernating,
            "connections_opened": c.connections_opened,
            "connections_closed": c.connections_closed,
            "heartbeats": c.heartbeats,
            "messages_received": c.messages_received,
            "retransmissions": c.retransmissions,
            "auth_failures": c.auth_failures,
            "handshakes_rejected": rejected,
            "drops": drops,
            "loop_stall_max_s": round(probe.max_lag_ever, 4) if probe is not None else None,
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
        peer = target if isinstance(target, Peer) else self.bridge.peer_for(target)
        if peer is None:
            raise SessionNotFound(f"session not found: {target}")
        peer.send(message, channel, mode)
        self.counters.messages_sent += 1

    def _drop(self, reason: str) -> None:
        drops = self.counters.drops
        drops[reason] = drops.get(reason, 0) + 1


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable


def run_app(app: Application | None, argv: list[str] | None = None,
            name: str = "quantum-server") -> int:
    """Parse the quantum-server flags and serve `app` on uvloop (see quantum_server.cli)."""
    from quantum_server.cli import run_app as run

    return run(app, argv, name)


def main(argv: list[str] | None = None) -> int:
    """The `quantum-server` command (see quantum_server.cli)."""
    from quantum_server.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    # `python server.py` runs this file as __main__, always as source: import the module by name
    # instead, which loads the compiled build where there is one
    import sys

    from server import main as _main

    sys.exit(_main())
